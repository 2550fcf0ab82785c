"""Convergence orders and sampled moments against exact solutions for Gaussian(-mixture) data.

For data N(m, v) (per dimension) on a path x_t = alpha x0 + sigma eps, S_t = alpha^2 v + sigma^2:

* the exact noise model is eps_hat(x, t) = sigma (x - alpha m) / S and
  E[x0 | x_t] = m + alpha v (x - alpha m) / S;
* the probability-flow ODE maps x_{t1} to x_{t0} = alpha0 m + sqrt(S0 / S1) (x_{t1} - alpha1 m).

For a Gaussian mixture the exact eps is the responsibility-weighted sum of the components'.
The schedule coefficients are the closed forms of _gaussian.py, not the package's.

To fit an order with one compilation per solver, every grid (each step count, each grid type)
is padded at the data end with copies of t_end to a common length: a step from t to t is the
identity for Euler, Heun and DDIM (all increments are proportional to the step), so a padded
grid gives the same answer as the short one, and the grids are vmapped in one jitted call.
"""

import math
from functools import partial

import jax
import numpy as np
import pytest

from _gaussian import (
    fit_order,
    KINDS,
    MIX_M,
    M,
    PROCESSES,
    SOLVERS as ALL_SOLVERS,
    VAR,
    X1,
    coefs,
    exact_flow,
    gaussian_model,
    log_snr,
    mixture_eps_model,
    nojit_run,
    t_from_log_snr,
)
from genflow.processes import VPLinear
from genflow.samplers import DDIM, Euler, EulerMaruyama, Heun, sample

T_START, T_END = 1.0, 1e-3


def grid(kind, name, steps):
    """Uniform in t, or uniform in the closed-form half log-SNR (computed here, in numpy)."""
    if kind == "uniform":
        return np.linspace(T_START, T_END, steps + 1)
    lam = np.linspace(log_snr(name, T_START), log_snr(name, T_END), steps + 1)
    ts = t_from_log_snr(name, lam)
    ts[0], ts[-1] = T_START, T_END
    return ts


def padded(ts, n_max, at_start=False):
    pad = np.full(n_max + 1 - ts.shape[0], ts[0] if at_start else ts[-1])
    return np.concatenate([pad, ts] if at_start else [ts, pad])


# --------------------------------------------------------------------------- Gaussian orders
@partial(jax.jit, static_argnames=("name",))
def solve_grids(solver, proc, ts_batch, x1, name):
    """Solve from x1 on each (padded) grid of ts_batch: (G, n + 1) -> (G, *x1.shape)."""
    model = gaussian_model(name, "eps")
    run = lambda ts: sample(model, proc, solver, key=jax.random.key(0), x_init=x1,  # noqa: E731
                            prediction="eps", ts=ts).x
    return jax.vmap(run)(ts_batch)


SOLVERS = {
    # name: (solver, expected order, step counts)
    "euler": (Euler(), 1.0, [16, 32, 64, 128]),
    "heun": (Heun(), 2.0, [8, 16, 32, 64]),
    "ddim": (DDIM(eta=0.0), 1.0, [16, 32, 64, 128]),
}
GRIDS = ["uniform", "log_snr"]


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_gaussian_convergence_order(solver_name, name):
    solver, order, steps = SOLVERS[solver_name]
    n_max = steps[-1]
    ts_batch = [padded(grid(g, name, n), n_max) for g in GRIDS for n in steps]
    # Control: the coarsest uniform grid with its padding at the noisy end instead.
    ts_batch.append(padded(grid("uniform", name, steps[0]), n_max, at_start=True))
    xs = np.asarray(solve_grids(solver, PROCESSES[name], np.stack(ts_batch), X1, name))
    np.testing.assert_allclose(xs[-1], xs[0], rtol=1e-12, atol=1e-12)  # zero steps are no-ops
    exact = exact_flow(name, X1, T_START, T_END)
    errors = np.abs(xs[:-1] - exact).max(axis=(1, 2)).reshape(len(GRIDS), len(steps))
    for g, errs in zip(GRIDS, errors):
        assert np.all(np.diff(errs) < 0), (g, errs)
        fitted = fit_order(steps, errs)
        print(f"fitted order {solver_name} {name} {g}: {fitted:.3f}")
        assert abs(fitted - order) < 0.3, (solver_name, name, g, fitted, errs)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_heun_down_to_t_zero(name):
    """sample() accepts t_end = 0 (sigma = 0), where the velocity alpha' x0 + sigma' eps is
    0 * inf: Heun must stay finite there and keep converging to the exact flow map."""
    steps, n_max = [16, 32, 64], 64
    # Padding at the noisy end (zero steps at t = 1); 9 rows, as in the order test's batch.
    grids = [padded(np.linspace(T_START, 0.0, n + 1), n_max, at_start=True) for n in steps]
    xs = np.asarray(solve_grids(Heun(), PROCESSES[name], np.stack(grids + grids * 2), X1, name))
    assert np.all(np.isfinite(xs)), xs[:3]
    errors = np.abs(xs[:3] - exact_flow(name, X1, T_START, 0.0)).max(axis=(1, 2))
    assert errors[0] < 0.05 and abs(fit_order(steps, errors) - 2.0) < 0.3, errors


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("solver_name", list(ALL_SOLVERS))
def test_every_prediction_kind_gives_the_same_answer(solver_name, name):
    """The exact model given as x0, v, velocity or score reproduces the eps run up to round-off
    (the same key, so stochastic solvers draw the same noise). Runs shared with test_contract."""
    ref = nojit_run(solver_name, name, "eps")
    for kind in KINDS[1:]:
        got = nojit_run(solver_name, name, kind)
        np.testing.assert_allclose(got["trajectory"], ref["trajectory"], rtol=1e-9, atol=1e-9,
                                   err_msg=kind)


@pytest.mark.parametrize("name", list(PROCESSES))
@pytest.mark.parametrize("solver_name", ["euler", "heun", "ddim0"])
def test_one_step_is_the_method(solver_name, name):
    """One step from t = 0.6 to 0.35 equals the method's formula evaluated here in closed form
    (the orders alone would not see, e.g., Euler evaluating the velocity at the wrong end)."""
    t_cur, t_next = 0.6, 0.35
    h = t_next - t_cur

    def velocity(x, t):  # dx/dt = alpha' x0_hat + sigma' eps_hat for the exact Gaussian model
        a, s, da, ds, _ = coefs(name, t, np)
        S = a**2 * VAR + s**2
        return da * (M + a * VAR * (x - a * M) / S) + ds * s * (x - a * M) / S

    if solver_name == "euler":
        expected = X1 + h * velocity(X1, t_cur)
    elif solver_name == "heun":
        x_e = X1 + h * velocity(X1, t_cur)
        expected = X1 + h / 2 * (velocity(X1, t_cur) + velocity(x_e, t_next))
    else:  # DPM-Solver-1 form: x' = (a'/a) x - s' (e^{lam' - lam} - 1) eps_hat
        a, s, *_ = coefs(name, t_cur, np)
        a_n, s_n, *_ = coefs(name, t_next, np)
        eps_hat = s * (X1 - a * M) / (a**2 * VAR + s**2)
        h_lam = log_snr(name, t_next) - log_snr(name, t_cur)
        expected = a_n / a * X1 - s_n * np.expm1(h_lam) * eps_hat
    with jax.disable_jit():
        got = sample(gaussian_model(name, "eps"), PROCESSES[name], ALL_SOLVERS[solver_name],
                     key=jax.random.key(0), x_init=X1, prediction="eps",
                     ts=np.array([t_cur, t_next])).x
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- Gaussian mixture
@jax.jit
def solve_mixture(ts_batch, x1):
    model = mixture_eps_model("linear")
    run = lambda ts: sample(model, VPLinear(), Heun(), key=jax.random.key(0),  # noqa: E731
                            x_init=x1, prediction="eps", ts=ts).x
    return jax.vmap(run)(ts_batch)


def test_gaussian_mixture_heun_order():
    steps, n_ref = [16, 32, 64, 128], 2048
    ts_batch = np.stack([padded(grid("uniform", "linear", n), n_ref) for n in steps + [n_ref]])
    x1 = np.linspace(-2.5, 2.5, 7)[:, None]
    xs = np.asarray(solve_mixture(ts_batch, x1))
    errors = np.abs(xs[:-1] - xs[-1]).max(axis=(1, 2))
    assert np.all(np.diff(errors) < 0), errors
    fitted = fit_order(steps, errors)
    print(f"fitted order heun linear mixture: {fitted:.3f}")
    assert abs(fitted - 2.0) < 0.3, (fitted, errors)
    # The flow separates the modes: the reference ends near the component means.
    assert np.all(np.abs(xs[-1, :, 0][:, None] - MIX_M).min(axis=1) < 2.0)


# --------------------------------------------------------------------------- SDE moments
def moment_recursion(name, solver_name, ts, m, var):
    """Mean and variance after each stochastic solver step, derived here for a Gaussian model.

    With the exact model every step is affine in x plus Gaussian noise, x' = A x + B + C z, so
    the moments follow exactly: mean' = A mean + B, var' = A^2 var + C^2. Starts from N(0, 1).
    """
    mean, v_x = 0.0, 1.0
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        a, s, _, _, g2 = coefs(name, t_cur, np)
        S = a**2 * var + s**2
        if solver_name == "em":  # x' = x - h (f x - g^2 score) + sqrt(g^2 h) z, f = -g^2/2
            h = t_cur - t_next
            A = 1 + h * g2 / 2 - h * g2 / S
            B, C2 = h * g2 * a * m / S, g2 * h
        else:  # DDIM eta = 1: x' = a' x0_hat + sqrt(s'^2 - c^2) eps_hat + c z
            a_n, s_n, *_ = coefs(name, t_next, np)
            c2 = s_n**2 * (1 - (a / s) ** 2 / (a_n / s_n) ** 2)  # s'^2 (1 - e^{-2 (lam' - lam)})
            k = math.sqrt(s_n**2 - c2)
            A = a_n * a * var / S + k * s / S
            B = a_n * (m - a**2 * var * m / S) - k * s * a * m / S
            C2 = c2
        mean, v_x = A * mean + B, A**2 * v_x + C2
    return mean, v_x


@pytest.mark.parametrize("solver_name,name", [("em", "linear"), ("ddim1", "cosine")])
def test_sde_sampler_reproduces_marginal_moments(solver_name, name):
    """From the prior N(0, 1) at t = 1 to t_end, 20k samples, exact Gaussian model.

    Two grids in one vmapped run: 500 uniform steps (checked against the exact marginal), and
    8 uniform steps padded with zero steps (identities: h = 0 adds no drift and no noise), where
    the scheme's own bias is large and specific: a wrong noise scale or drift shows there.
    """
    m, var = 1.5, 0.3
    n_samples, n_fine, n_coarse = 20_000, 500, 8
    proc = PROCESSES[name]
    solver = EulerMaruyama() if solver_name == "em" else DDIM(eta=1.0)
    model = gaussian_model(name, "eps", m=np.array([m]), var=np.array([var]))
    fine = np.linspace(T_START, T_END, n_fine + 1)
    coarse = np.linspace(T_START, T_END, n_coarse + 1)
    run = jax.jit(jax.vmap(lambda ts: sample(model, proc, solver, key=jax.random.key(7),
                                             shape=(n_samples, 1), prediction="eps", ts=ts).x))
    x_fine, x_coarse = np.asarray(run(np.stack([fine, padded(coarse, n_fine)])))[:, :, 0]

    a, s, *_ = coefs(name, T_END, np)
    mean_exact, var_exact = a * m, a**2 * var + s**2

    def check(x, target_mean, target_var, allow_mean=0.0, allow_var=0.0):
        mean, v_hat = x.mean(), x.var(ddof=1)
        se_mean = math.sqrt(target_var / n_samples)
        se_var = target_var * math.sqrt(2 / (n_samples - 1))
        assert abs(mean - target_mean) < 5 * se_mean + allow_mean, (mean, target_mean, se_mean)
        assert abs(v_hat - target_var) < 5 * se_var + allow_var, (v_hat, target_var, se_var)
        return se_mean

    # The samples follow this scheme's exact moments (prior mismatch at t = 1 included) ...
    check(x_coarse, *moment_recursion(name, solver_name, coarse, m, var))
    rec_mean, rec_var = moment_recursion(name, solver_name, fine, m, var)
    se_mean = check(x_fine, rec_mean, rec_var)
    # ... whose bias is O(h) (halving h halves it) and small at 500 steps (DDPM ancestral: -1.4%
    # of the variance; EM: +0.3%), so it is the allowance added to the sampling error.
    finer = np.linspace(T_START, T_END, 2 * n_fine + 1)
    rec2_mean, rec2_var = moment_recursion(name, solver_name, finer, m, var)
    bias_mean, bias_var = rec_mean - mean_exact, rec_var - var_exact
    assert abs(bias_var) < 0.03 * var_exact
    assert 1.6 < bias_var / (rec2_var - var_exact) < 2.4
    assert abs(bias_mean) < 0.5 * se_mean or 1.6 < bias_mean / (rec2_mean - mean_exact) < 2.4
    check(x_fine, mean_exact, var_exact, abs(bias_mean), abs(bias_var))
