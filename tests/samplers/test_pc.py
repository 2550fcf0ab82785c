"""Predictor–corrector sampling against closed forms for Gaussian data.

With the exact Gaussian model (see _gaussian.py) every predictor and corrector step is affine in
x plus independent Gaussian noise, x' = A x + B + C z, so the mean and variance of a PC sampler
follow exactly from a recursion written here, in numpy, from the methods' formulas. The Langevin
corrector's step size depends on batch averages of norms; with 20k samples they are within about
1% of their expectations (a folded-normal mean in 1-D), which the recursion uses.
"""

import math

import jax
import numpy as np
import pytest

from _gaussian import PROCESSES, X1, gaussian_model
from genflow.samplers import DDIM, Denoiser, sample
from genflow.samplers._pc import (
    AncestralPredictor,
    AnnealedLangevinCorrector,
    EulerMaruyamaPredictor,
    LangevinCorrector,
    NoCorrector,
    NoPredictor,
    PredictorCorrector,
    ReverseDiffusionPredictor,
)
from vp_closed_forms import coefs

T_START, T_END = 1.0, 1e-3
PREDICTORS = {
    "em": EulerMaruyamaPredictor(),
    "rd": ReverseDiffusionPredictor(),
    "anc": AncestralPredictor(),
    "none": NoPredictor(),
}
CORRECTORS = {
    "langevin": LangevinCorrector(snr=0.16),
    "annealed": AnnealedLangevinCorrector(snr=0.16),
    "none": NoCorrector(),
}
PRED_NFE = {"em": 1, "rd": 1, "anc": 1, "none": 0}
CORR_NFE = {"langevin": 1, "annealed": 1, "none": 0}


# --------------------------------------------------------------------------- nfe
def traced_nfe(solver, n_steps=3):
    """sample()'s nfe, from an abstract trace only (nothing is compiled)."""
    out = {}

    def f(x):
        r = sample(gaussian_model("linear", "eps"), PROCESSES["linear"], solver,
                   key=jax.random.key(0), x_init=x, prediction="eps", num_steps=n_steps)
        out["nfe"] = r.nfe
        return r.x

    jax.eval_shape(f, X1)
    return out["nfe"]


def test_nfe_of_every_combination():
    for p in PREDICTORS:
        for c in CORRECTORS:
            for k in (0, 1, 3):
                solver = PredictorCorrector(PREDICTORS[p], CORRECTORS[c], corrector_steps=k)
                expected = 3 * (PRED_NFE[p] + k * CORR_NFE[c])
                assert traced_nfe(solver) == expected, (p, c, k)
                stochastic = p != "none" or (k > 0 and c != "none")
                assert solver.stochastic == stochastic, (p, c, k)


@pytest.mark.parametrize("p,c,k", [("rd", "langevin", 2), ("anc", "annealed", 1),
                                   ("none", "langevin", 3), ("em", "none", 2)])
def test_nfe_counts_real_evaluations(p, c, k):
    """Under jax.disable_jit every model call is a real, concrete evaluation: count them."""
    counter = []
    with jax.disable_jit():
        res = sample(gaussian_model("cosine", "eps", counter=counter), PROCESSES["cosine"],
                     PredictorCorrector(PREDICTORS[p], CORRECTORS[c], corrector_steps=k),
                     key=jax.random.key(1), x_init=X1, prediction="eps", num_steps=2)
    assert counter.count("run") == res.nfe == 2 * (PRED_NFE[p] + k * CORR_NFE[c])
    assert np.all(np.isfinite(np.asarray(res.x)))


# --------------------------------------------------------------------------- exact identities
def test_ancestral_predictor_is_ddim_eta_one():
    """Same key, same draws: the posterior step equals DDIM(eta=1) up to round-off, on both
    processes and with x0 prediction too; and NoPredictor + NoCorrector is the identity."""
    with jax.disable_jit():
        for name in PROCESSES:
            for kind in ("eps", "x0"):
                run = lambda s: np.asarray(sample(  # noqa: E731
                    gaussian_model(name, kind), PROCESSES[name], s, key=jax.random.key(3),
                    x_init=X1, prediction=kind, num_steps=4, return_trajectory=True).trajectory)
                ddim = run(DDIM(eta=1.0))
                for k in (0, 1):
                    pc = run(PredictorCorrector(AncestralPredictor(), NoCorrector(), k))
                    np.testing.assert_allclose(pc, ddim, rtol=1e-12, atol=1e-12)
        same = sample(gaussian_model("linear", "eps"), PROCESSES["linear"],
                      PredictorCorrector(NoPredictor(), NoCorrector(), 2),
                      key=jax.random.key(0), x_init=X1, prediction="eps", num_steps=2)
        np.testing.assert_array_equal(np.asarray(same.x), X1)


def test_corrector_steps_stay_static_under_jit():
    """The solver passed as a jit argument: corrector_steps must stay a Python int (part of the
    tree structure) while snr is data; jit agrees with op-by-op execution."""
    solver = PredictorCorrector(ReverseDiffusionPredictor(), LangevinCorrector(snr=0.2), 2)
    leaves, treedef = jax.tree_util.tree_flatten(solver)
    assert len(leaves) == 2 and 2 not in leaves  # snr, num_scales; not corrector_steps

    def run(s, x):
        return sample(gaussian_model("linear", "eps"), PROCESSES["linear"], s,
                      key=jax.random.key(5), x_init=x, prediction="eps", num_steps=3).x

    got = np.asarray(jax.jit(run)(solver, X1))
    with jax.disable_jit():
        ref = np.asarray(run(solver, X1))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="corrector_steps"):
        PredictorCorrector(AncestralPredictor(), NoCorrector(), corrector_steps=-1)
    with pytest.raises(ValueError, match="corrector_steps"):
        PredictorCorrector(AncestralPredictor(), NoCorrector(), corrector_steps=1.5)
    with pytest.raises(TypeError, match="predictor"):
        PredictorCorrector(DDIM(), NoCorrector())
    with pytest.raises(TypeError, match="corrector"):
        PredictorCorrector(AncestralPredictor(), AncestralPredictor())


@pytest.mark.parametrize("corr", ["langevin", "annealed"])
def test_one_step_is_corrector_then_predictor(corr):
    """One PC step t = 0.6 -> 0.35 with 2 corrector steps, against the formulas evaluated here:
    correctors first at t_cur (keys fold_in(key, 1), fold_in(key, 2)), then the reverse-diffusion
    predictor (the step's key); score = -(x - a m) / S of the exact model, alpha_i in closed form."""
    name, t_cur, t_next, snr = "linear", 0.6, 0.35, 0.3
    m, var = np.array([0.8, -0.5]), np.array([0.2, 2.5])
    key = jax.random.key(11)
    solver = PredictorCorrector(ReverseDiffusionPredictor(),
                                CORRECTORS[corr].__class__(snr=snr), corrector_steps=2)

    def score(x, t):
        a, s, *_ = coefs(name, t, np)
        return -(x - a * m) / (a**2 * var + s**2)

    a_c, s_c, *_ = coefs(name, t_cur, np)
    a_n, s_n, *_ = coefs(name, t_next, np)
    alpha_i = (a_c / coefs(name, t_cur - 1e-3, np)[0]) ** 2
    x = X1.copy()
    for i in (1, 2):
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), X1.shape, X1.dtype))
        g = score(x, t_cur)
        if corr == "langevin":  # per-example norms, averaged over the batch
            ratio = np.linalg.norm(z, axis=1).mean() / np.linalg.norm(g, axis=1).mean()
            step = 2 * alpha_i * (snr * ratio) ** 2
        else:
            step = 2 * alpha_i * (snr * s_c) ** 2
        x = x + step * g + np.sqrt(2 * step) * z
    a = a_c / a_n
    G2 = s_c**2 - a**2 * s_n**2
    z = np.asarray(jax.random.normal(key, X1.shape, X1.dtype))
    expected = (2 - a) * x + G2 * score(x, t_cur) + np.sqrt(G2) * z
    with jax.disable_jit():
        denoise = Denoiser(gaussian_model(name, "eps"), PROCESSES[name], "eps")
        got, _ = solver.step(denoise, None, X1, np.float64(t_cur), np.float64(t_next), key=key)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------- moments
def folded_mean(mu, v):
    """E|Y| for Y ~ N(mu, v)."""
    s = math.sqrt(v)
    return s * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * v)) + mu * math.erf(
        mu / (s * math.sqrt(2)))


def moment_recursion(name, pred, corr, k, ts, m, var, snr):
    """Mean and variance of the PC chain for N(m, var) data, from the exact marginal at ts[0].

    Per step (score_sde's order): k corrector steps at t_cur, then the predictor to t_next.
    The exact model's score at t is -(x - a m) / S with S = a^2 var + s^2.
    """
    a1, s1, *_ = coefs(name, ts[0], np)
    mean, v = a1 * m, a1**2 * var + s1**2
    for tc, tn in zip(ts[:-1], ts[1:]):
        ac, sc, _, _, g2 = coefs(name, tc, np)
        an, sn, *_ = coefs(name, tn, np)
        S = ac**2 * var + sc**2
        with np.errstate(divide="ignore"):  # sigma' = inf at t = 0; only alpha is used
            a_prev, *_ = coefs(name, max(tc - 1e-3, 0.0), np)
        alpha_i = (ac / a_prev) ** 2  # (alpha_t / alpha_{t - 1/1000})^2
        for _ in range(k):
            if corr == "langevin":  # 2 alpha_i (snr E|z| / E|score|)^2, E|z| = sqrt(2/pi)
                step = 2 * alpha_i * snr**2 * (2 / math.pi) * S**2 / folded_mean(mean - ac * m, v) ** 2
            else:  # annealed: 2 alpha_i (snr sigma_t)^2
                step = 2 * alpha_i * snr**2 * sc**2
            A, B, C2 = 1 - step / S, step * ac * m / S, 2 * step
            mean, v = A * mean + B, A * A * v + C2
        if pred == "em":  # x - h (f x - g^2 score) + sqrt(g^2 h) z, VP: f = -g^2 / 2
            h = tc - tn
            A, B, C2 = 1 + h * g2 / 2 - h * g2 / S, h * g2 * ac * m / S, g2 * h
        elif pred == "rd":  # (2 - a) x + G^2 score + G z, a = ac / an, G^2 = sc^2 - a^2 sn^2
            a = ac / an
            G2 = sc**2 - a**2 * sn**2
            A, B, C2 = 2 - a - G2 / S, G2 * ac * m / S, G2
        else:  # posterior q(x_next | x, x0_hat), r = exp(-2 (lambda_next - lambda_cur))
            r = (ac * sn / (sc * an)) ** 2
            cx, cx0 = sn / sc * math.sqrt(r), an * (1 - r)
            A = cx + cx0 * ac * var / S  # x0_hat = m + ac var (x - ac m) / S
            B, C2 = cx0 * (m - ac**2 * var * m / S), sn**2 * (1 - r)
        mean, v = A * mean + B, A * A * v + C2
    return mean, v


MOMENT_CASES = {
    # id: (predictor, corrector, corrector_steps, process)
    "em": ("em", "none", 0, "linear"),
    "rd": ("rd", "none", 0, "cosine"),
    "anc": ("anc", "none", 0, "linear"),
    "rd+langevin": ("rd", "langevin", 1, "linear"),
    "em+annealed": ("em", "annealed", 1, "cosine"),
    "anc+langevin2": ("anc", "langevin", 2, "cosine"),
}


@pytest.mark.parametrize("case", list(MOMENT_CASES))
def test_pc_reproduces_marginal_moments(case):
    """20k samples in 1-D from the exact marginal at t = 1 to t_end, two grids in one vmapped run:
    200 uniform steps, and 8 uniform steps padded at the data end with 192 zero steps (the
    predictor is the identity there; correctors keep running at t_end, driving the chain to the
    corrector's own stationary law, which tests their step size); corrector cases also run the
    padded grid at snr = 0.5, where that law is far from the marginal (unadjusted Langevin).

    Both runs must match the scheme's exact moments (recursion above). The 200-step run must also
    match the exact marginal, up to the scheme's own bias, which is asserted to be small: O(h) for
    the predictors (halving h about halves it), plus the Langevin corrector's bias of about
    snr^2 relative variance (unadjusted Langevin at step 2 snr^2 S).
    """
    p, c, k, name = MOMENT_CASES[case]
    m, var, snr = 1.5, 0.3, 0.16
    n_samples, n_fine, n_coarse = 20_000, 200, 8
    model = gaussian_model(name, "eps", m=np.array([m]), var=np.array([var]))

    def solver(snr):
        corrector = CORRECTORS[c] if c == "none" else type(CORRECTORS[c])(snr=snr)
        return PredictorCorrector(PREDICTORS[p], corrector, corrector_steps=k)

    a1, s1, *_ = coefs(name, T_START, np)
    x1 = a1 * m + math.sqrt(a1**2 * var + s1**2) * np.random.default_rng(0).standard_normal(
        (n_samples, 1))
    fine = np.linspace(T_START, T_END, n_fine + 1)
    coarse = np.concatenate([np.linspace(T_START, T_END, n_coarse + 1),
                             np.full(n_fine - n_coarse, T_END)])
    rows = [(fine, snr), (coarse, snr)] + ([(coarse, 0.5)] if c != "none" else [])
    run = jax.jit(jax.vmap(lambda ts, snr_: sample(
        model, PROCESSES[name], solver(snr_), key=jax.random.key(7), x_init=x1,
        prediction="eps", ts=ts).x))
    xs = np.asarray(run(*(np.stack(r) for r in zip(*rows))))[:, :, 0]
    x_fine, x_coarse = xs[0], xs[1]

    def check(x, target_mean, target_var, allow_mean=0.0, allow_var=0.0):
        mean, v_hat = x.mean(), x.var(ddof=1)
        se_mean = math.sqrt(target_var / n_samples)
        se_var = target_var * math.sqrt(2 / (n_samples - 1))
        assert abs(mean - target_mean) < 5 * se_mean + allow_mean, (mean, target_mean, se_mean)
        assert abs(v_hat - target_var) < 5 * se_var + allow_var, (v_hat, target_var, se_var)

    rec = lambda ts: moment_recursion(name, p, c, k, ts, m, var, snr)  # noqa: E731
    check(x_coarse, *rec(coarse))
    if c != "none":  # a large snr: the corrector's own bias is large and specific
        check(xs[2], *moment_recursion(name, p, c, k, coarse, m, var, 0.5))
    rec_mean, rec_var = rec(fine)
    check(x_fine, rec_mean, rec_var)

    a, s, *_ = coefs(name, T_END, np)
    print(f"{case}: bias of the scheme at {n_fine} steps: mean {rec_mean - a * m:+.4f}, "
          f"variance {(rec_var - a**2 * var - s**2) / (a**2 * var + s**2):+.2%}")
    mean_exact, var_exact = a * m, a**2 * var + s**2
    bias_mean, bias_var = rec_mean - mean_exact, rec_var - var_exact
    assert abs(bias_mean) < 0.01 and abs(bias_var) < 0.07 * var_exact, (bias_mean, bias_var)
    if c == "none":  # the predictor alone converges to the exact marginal at order 1
        rec2_mean, rec2_var = rec(np.linspace(T_START, T_END, 2 * n_fine + 1))
        assert 1.6 < bias_var / (rec2_var - var_exact) < 2.4
        assert abs(bias_mean) < 1e-3 or 1.6 < bias_mean / (rec2_mean - mean_exact) < 2.4
    check(x_fine, mean_exact, var_exact, abs(bias_mean), abs(bias_var))
