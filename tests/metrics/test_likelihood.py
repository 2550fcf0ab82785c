"""Likelihood through the probability-flow ODE (genflow.metrics._likelihood), against closed forms.

Truth. For 2-D Gaussian-mixture data ``p_0 = sum_k w_k N(m_k, S_k)`` the marginal on a Gaussian
path is ``p_t = sum_k w_k N(alpha_t m_k, C_k)``, ``C_k = alpha_t^2 S_k + sigma_t^2 I``, and the exact
networks follow from the per-component posteriors (``d_k = x - alpha m_k``, responsibilities
``r_k``): ``eps = sigma sum_k r_k C_k^{-1} d_k``, ``score = -eps / sigma``,
``x0 = sum_k r_k (m_k + alpha S_k C_k^{-1} d_k)`` and ``velocity = alpha' x0 + sigma' eps``. The
PF-ODE likelihood from ``t_start`` with the exact end density ``p_1`` must reproduce
``log p_{t_start}(x)``. Schedule coefficients come from tests/vp_closed_forms.py (written by hand).

Between two Gaussians, the stochastic interpolant ``x_t = (1-t) x0 + t x1 + t(1-t) z`` has the
drift ``b = E[dI/dt + gamma' z | x_t]`` in closed form (see tests/processes/
test_stochastic_interpolant.py), and transports ``N(M1, S1)`` back to ``N(M0, S0)`` exactly.

Bits per dimension are checked against a hand computation, a uniform model (exactly
``log2 num_bins`` bits) and the invariance under a change of the data range.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from genflow.metrics import (
    bits_per_dim,
    dequantize,
    log_likelihood,
    log_likelihood_from_velocity,
    log_prob_to_bits_per_dim,
    marginal_log_prob,
)
from genflow.metrics._likelihood import _draw_probes
from genflow.processes import VE, RectifiedFlow, StochasticInterpolant, SubVP, VPLinear
from vp_closed_forms import coefs

W = np.array([0.35, 0.65])
MEANS = np.array([[-1.0, 0.6], [0.9, -0.4]])
COVS = np.array([[[0.09, 0.05], [0.05, 0.16]], [[0.25, -0.1], [-0.1, 0.12]]])
T_START = 1e-5
TOL = 1e-8
DT0 = 1e-3  # a given first step skips Hairer's probe (less to compile); one test uses it
# Points spread over both components and their tails.
X_DATA = np.array([[-1.0, 0.6], [-1.4, 0.2], [-0.7, 1.1], [0.9, -0.4], [1.5, -0.8], [0.2, 0.1]])


def _inv2(c):
    """Inverse and determinant of ``(..., 2, 2)`` symmetric matrices."""
    det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] ** 2
    row0 = jnp.stack([c[..., 1, 1], -c[..., 0, 1]], -1)
    row1 = jnp.stack([-c[..., 0, 1], c[..., 0, 0]], -1)
    return jnp.stack([row0, row1], -2) / det[..., None, None], det


def mixture_log_prob(x, alpha, sigma, xp=jnp):
    """``log p_t(x)`` of the mixture, ``x: (b, 2)``, scalar ``alpha``, ``sigma``."""
    c = alpha**2 * COVS + sigma**2 * np.eye(2)
    d = x[:, None, :] - alpha * MEANS  # (b, K, 2)
    if xp is np:
        inv, det = np.linalg.inv(c), np.linalg.det(c)
        maha = np.einsum("bki,kij,bkj->bk", d, inv, d)
        logits = np.log(W) - 0.5 * np.log(4 * np.pi**2 * det) - 0.5 * maha
        top = logits.max(-1)
        return top + np.log(np.exp(logits - top[:, None]).sum(-1))
    inv, det = _inv2(jnp.asarray(c))
    maha = jnp.einsum("bki,kij,bkj->bk", d, inv, d)
    logits = jnp.log(W) - 0.5 * jnp.log(4 * jnp.pi**2 * det) - 0.5 * maha
    return jax.nn.logsumexp(logits, axis=-1)


def mixture_model(name, kind):
    """The exact ``model_fn`` predicting ``kind`` for the mixture on the path ``name``."""

    def model_fn(x, t, cond=None):
        alpha, sigma, d_alpha, d_sigma, _ = (c[:, None, None] for c in coefs(name, t, jnp))
        c = alpha[..., None] ** 2 * COVS + sigma[..., None] ** 2 * jnp.eye(2)  # (b, K, 2, 2)
        inv, det = _inv2(c)
        d = x[:, None, :] - alpha * MEANS  # (b, K, 2)
        sol = jnp.einsum("bkij,bkj->bki", inv, d)
        logits = jnp.log(W) - 0.5 * jnp.log(det) - 0.5 * jnp.sum(d * sol, -1)
        r = jax.nn.softmax(logits, axis=-1)[..., None]  # (b, K, 1)
        if kind == "score":
            return -jnp.sum(r * sol, 1)
        eps = sigma[:, 0] * jnp.sum(r * sol, 1)
        if kind == "eps":
            return eps
        x0 = jnp.sum(r * (MEANS + alpha * jnp.einsum("kij,bkj->bki", COVS, sol)), 1)
        return d_alpha[:, 0] * x0 + d_sigma[:, 0] * eps  # velocity

    return model_fn


def end_density(name):
    alpha, sigma, *_ = coefs(name, np.float64(1.0), np)
    return lambda z: mixture_log_prob(z, alpha, sigma)


def truth(name, t=T_START, x=X_DATA):
    alpha, sigma, *_ = coefs(name, np.float64(t), np)
    return mixture_log_prob(np.asarray(x), alpha, sigma, xp=np)


# (process, closed-form name, prediction kind, t_start, default prior?); VP: see vp_run below.
CASES = {
    "subvp": (SubVP(), "subvp", "score", T_START, False),
    "ve": (VE(), "ve", "eps", T_START, False),
    # alpha_1 = 0: p_1 = N(0, I) is the process's own prior, exactly; velocity is finite on [0, 1].
    "cond_ot": (RectifiedFlow(), "rf", "velocity", 0.0, True),
}


def _check_exact(label, res, name, t_start=T_START, x=X_DATA):
    err = np.abs(np.asarray(res.log_prob) - truth(name, t_start, x)) / x.shape[-1]  # per dim
    print(f"{label}: max |error| per dim {err.max():.2e}, nfe {int(res.nfe)}")
    assert np.all(err < 1e-3), err
    assert err.max() < 1e-5, err  # tolerance 1e-8: far inside the required 1e-3
    np.testing.assert_array_equal(res.std_error, 0.0)
    assert int(res.nfe) == 1 + 6 * int(res.num_steps)  # dt0 given: no probe evaluation


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_trace_matches_mixture_log_density(case):
    proc, name, kind, t_start, default_prior = CASES[case]
    prior = None if default_prior else end_density(name)
    run = jax.jit(lambda x: log_likelihood(mixture_model(name, kind), proc, x, prediction=kind,
                                           t_start=t_start, rtol=TOL, atol=TOL, dt0=DT0,
                                           prior_log_prob=prior))
    res = run(jnp.asarray(X_DATA))
    _check_exact(case, res, name, t_start)
    if default_prior:
        np.testing.assert_allclose(res.prior_log_prob, proc.prior_log_prob(res.z), rtol=1e-12)


@pytest.fixture(scope="module")
def vp_exact():
    """The exact mixture model on VP, jitted once (exact-trace and bits/dim tests)."""
    model, prior = mixture_model("linear", "eps"), end_density("linear")
    return jax.jit(lambda x: log_likelihood(model, VPLinear(), x, prediction="eps", rtol=TOL,
                                            atol=TOL, dt0=DT0, prior_log_prob=prior))


def test_exact_trace_matches_mixture_log_density_vp(vp_exact):
    _check_exact("vp", vp_exact(jnp.asarray(X_DATA)), "linear")


def test_bits_per_dim_matches_closed_form(vp_exact):
    """Two-pixel 'images' of the mixture, two dequantisation draws each: bits/dim from the exact
    model equals -log p_{t_start}(x) / (D log 2) + log2(256 / 2) from the closed form, averaged
    over the draws (the same key gives the same draws)."""
    pixels = jnp.array([[0, 205], [243, 77], [128, 128]], jnp.uint8)
    key = jax.random.key(5)
    got = bits_per_dim(vp_exact, pixels, key=key, num_samples=2)
    x = np.asarray(dequantize(key, jnp.concatenate([pixels, pixels])))
    expected = (-truth("linear", x=x) / (2 * np.log(2)) + 7.0).reshape(2, 3).mean(0)
    print(f"bits/dim {np.asarray(got)}, closed form {expected}")
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def _mlp_init(key, hidden=8):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (3, hidden)) / math.sqrt(3),
        "b1": jnp.full(hidden, 0.1, jnp.float64),
        "w2": jax.random.normal(k2, (hidden, 2)) / math.sqrt(hidden),
        "b2": jnp.full(2, 0.1, jnp.float64),
    }


def _mlp(params, x, t):
    h = jnp.tanh(jnp.concatenate([x, t[:, None]], -1) @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def test_gradient_wrt_parameters_matches_central_differences():
    """d mean-NLL / d params of a tiny eps-MLP through diffrax agrees with central differences
    (float64) along three random directions."""
    x = jnp.asarray(X_DATA)
    flat, unravel = ravel_pytree(_mlp_init(jax.random.key(0)))

    def nll(flat_params):
        p = unravel(flat_params)
        res = log_likelihood(lambda x_, t, cond=None: _mlp(p, x_, t), VPLinear(), x,
                             prediction="eps", rtol=1e-10, atol=1e-10, dt0=DT0)
        return -jnp.mean(res.log_prob)

    value_and_grad = jax.jit(jax.value_and_grad(nll))
    value, grad = value_and_grad(flat)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.abs(np.asarray(grad)) > 0)  # every parameter matters
    f = lambda p: float(value_and_grad(p)[0])  # noqa: E731  (the same compiled program)
    h = 1e-3
    for direction in jax.random.normal(jax.random.key(1), (3, flat.size)):
        direction = direction / jnp.linalg.norm(direction)
        fd = (f(flat + h * direction) - f(flat - h * direction)) / (2 * h)
        ad = float(grad @ direction)
        print(f"directional derivative: autodiff {ad:.8f}, central difference {fd:.8f}")
        assert abs(ad - fd) < 1e-5 * max(1.0, abs(fd)), (ad, fd)


def counted(model_fn, log):
    def fn(x, t, cond=None):
        jax.debug.callback(lambda t_: log.append(float(t_[0])), t)
        return model_fn(x, t, cond)

    return fn


def as_images(model_fn):
    """The 2-D model on ``(b, 1, 2)`` data (exercises a multi-axis data shape)."""
    return lambda x, t, cond=None: model_fn(x.reshape(-1, 2), t).reshape(x.shape)


def test_hutchinson_within_its_standard_error_and_nfe_is_the_host_count():
    """16 Rademacher probes: each example within 4 standard errors of the exact log-density;
    the reported NFE (first step by Hairer's rule) is the number of model calls executed,
    counted on the host."""
    log = []
    model = counted(as_images(mixture_model("linear", "eps")), log)
    prior = end_density("linear")
    run = jax.jit(lambda x, key: log_likelihood(
        model, VPLinear(), x, prediction="eps", key=key, divergence="hutchinson",
        num_probes=16, rtol=1e-6, atol=1e-6,
        prior_log_prob=lambda z: prior(z.reshape(-1, 2))))
    res = run(jnp.asarray(X_DATA)[:, None, :], jax.random.key(3))
    jax.effects_barrier()
    err = np.asarray(res.log_prob) - truth("linear")
    se = np.asarray(res.std_error)
    print(f"hutchinson: |error| {np.abs(err)}, se {se}, |z| {np.abs(err) / se}")
    assert np.all(se > 1e-3) and np.all(np.isfinite(se)), se  # the mixture's Jacobian is not diagonal
    assert np.all(np.abs(err) < 4 * se), (err, se)
    assert int(res.nfe) == len(log), (int(res.nfe), len(log))
    assert int(res.nfe) == 2 + 6 * int(res.num_steps)


def test_marginal_log_prob_and_probes_against_closed_forms():
    """marginal_log_prob is log N(x; 0, (alpha_t^2 s^2 + sigma_t^2) I); data_std = 0 at t = 1 on
    VE is score_sde's prior N(0, sigma_max^2 I). Probes have E[e e^T] = I."""
    x = np.random.default_rng(1).standard_normal((3, 2, 2))
    for proc, name, t, s in ((SubVP(), "subvp", 0.3, 0.5), (VE(), "ve", 1.0, 0.0)):
        alpha, sigma, *_ = coefs(name, np.float64(t), np)
        v = alpha**2 * s**2 + sigma**2
        expected = -0.5 * np.sum(x**2, (1, 2)) / v - 2 * np.log(2 * np.pi * v)
        got = marginal_log_prob(proc, jnp.asarray(x), t, data_std=s)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(marginal_log_prob(VE(), jnp.asarray(x), 1.0, data_std=0.0),
                               VE().prior_log_prob(jnp.asarray(x)), rtol=1e-12)
    for probe in ("rademacher", "gaussian"):
        e = np.asarray(_draw_probes(jax.random.key(0), probe, 4000, jnp.zeros((1, 3))))
        second = np.einsum("kbi,kbj->ij", e, e) / 4000
        np.testing.assert_allclose(second, np.eye(3), atol=5 * math.sqrt(3 / 4000))
        if probe == "rademacher":
            np.testing.assert_array_equal(np.abs(e), 1.0)


def test_stochastic_interpolant_drift_between_two_gaussians():
    """velocity_fn entry point: the interpolant's exact drift b carries N(M1, S1) at t = 1 back to
    N(M0, S0) at t = 0 (both ends exact, no t_start offset); data shaped (b, 1, 2)."""
    m0, s0 = np.array([1.0, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]])
    m1, s1 = np.array([-1.0, 2.0]), np.array([[2.0, -0.6], [-0.6, 1.0]])
    si = StochasticInterpolant("linear", gamma="quadratic")

    def b_fn(x, t, cond=None):
        a, da, be, dbe = (c[:, None, None] for c in si.coefficients(t))
        g, dg = (c[:, None, None] for c in (si.gamma(t), si.d_gamma(t)))
        cov_x = a**2 * s0 + be**2 * s1 + g**2 * jnp.eye(2)
        cov_bx = da * a * s0 + dbe * be * s1 + g * dg * jnp.eye(2)
        mu = a[:, 0] * m0 + be[:, 0] * m1
        inv, _ = _inv2(cov_x)
        return da[:, 0] * m0 + dbe[:, 0] * m1 + jnp.einsum("bij,bjk,bk->bi", cov_bx, inv, x - mu)

    def gauss(z, m, s):
        d = z.reshape(-1, 2) - m
        maha = jnp.einsum("bi,ij,bj->b", d, jnp.asarray(np.linalg.inv(s)), d)
        return -0.5 * maha - 0.5 * math.log(np.linalg.det(2 * np.pi * s))

    x = m0 + np.random.default_rng(0).standard_normal((5, 2)) @ np.linalg.cholesky(s0).T
    run = jax.jit(lambda x: log_likelihood_from_velocity(
        as_images(b_fn), x, prior_log_prob=lambda z: gauss(z, m1, s1), rtol=TOL, atol=TOL,
        dt0=DT0))
    res = run(jnp.asarray(x)[:, None, :])
    d = x - m0
    expected = (-0.5 * np.einsum("bi,ij,bj->b", d, np.linalg.inv(s0), d)
                - 0.5 * np.log(np.linalg.det(2 * np.pi * s0)))
    err = np.abs(np.asarray(res.log_prob) - expected) / 2
    print(f"interpolant: max |error| per dim {err.max():.2e}")
    assert err.max() < 1e-5, err


# --------------------------------------------------------------------------- bits per dimension
PIXELS = np.random.default_rng(2).integers(0, 256, (4, 6)).astype(np.uint8)


def test_uniform_model_costs_exactly_log2_levels():
    pixels = PIXELS
    for low, high in ((-1.0, 1.0), (0.0, 1.0), (-3.0, 5.0)):
        uniform = lambda x, lo=low, hi=high: jnp.full(4, -6 * math.log(hi - lo))  # noqa: E731
        bpd = bits_per_dim(uniform, pixels, key=jax.random.key(2), low=low, high=high)
        np.testing.assert_allclose(bpd, 8.0, rtol=1e-12)
    five_bit = pixels // 8
    bpd = bits_per_dim(lambda x: jnp.full(4, -6 * math.log(2.0)), five_bit,
                       key=jax.random.key(2), num_bins=32)
    np.testing.assert_allclose(bpd, 5.0, rtol=1e-12)


def test_offset_term_is_invariant_to_the_data_range():
    """The same model written on [-1, 1] and on [0, 1] (density times 2^D) has the same bits/dim;
    and the offset is 7 bits on [-1, 1], 8 on [0, 1]."""
    pixels = PIXELS

    def on_pm1(x):  # a correlated Gaussian-like density on [-1, 1]
        return -0.5 * jnp.sum((x - 0.1) ** 2 / 0.3, -1) - 0.5 * jnp.sum(x[:, 1:] * x[:, :-1], -1)

    def on_01(y):
        return on_pm1(2 * y - 1) + y.shape[1] * math.log(2.0)

    key = jax.random.key(4)
    a = bits_per_dim(on_pm1, pixels, key=key, low=-1.0, high=1.0, num_samples=1)
    b = bits_per_dim(on_01, pixels, key=key, low=0.0, high=1.0, num_samples=1)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    lp = jnp.array([-3.0, 2.5])
    np.testing.assert_allclose(log_prob_to_bits_per_dim(lp, 6), -lp / (6 * math.log(2)) + 7.0)
    np.testing.assert_allclose(log_prob_to_bits_per_dim(lp, 6, low=0.0, high=1.0),
                               -lp / (6 * math.log(2)) + 8.0)


def test_dequantize_fills_each_cell():
    pixels = jnp.arange(256, dtype=jnp.uint8).reshape(2, 128)
    x = np.asarray(dequantize(jax.random.key(0), pixels))
    cell = np.floor((x + 1.0) * 128).astype(int)
    np.testing.assert_array_equal(cell, np.asarray(pixels))
    assert x.min() >= -1.0 and x.max() < 1.0
    w = (x + 1.0) * 128 - np.asarray(pixels)
    assert abs(w.mean() - 0.5) < 4 * math.sqrt(1 / 12 / w.size)
    y = np.asarray(dequantize(jax.random.key(0), pixels, low=0.0, high=1.0))
    np.testing.assert_allclose(y, (x + 1) / 2, atol=1e-12)


# --------------------------------------------------------------------------- errors
def _eps_model(x, t, cond=None):
    return 0.1 * x


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(divergence="trace"), "divergence"),
        (dict(divergence="hutchinson"), "key"),
        (dict(probe="sphere", key=jax.random.key(0), divergence="hutchinson"), "probe"),
        (dict(num_probes=0), "num_probes"),
        (dict(t_start=0.5, t_end=0.5), "t_start < t_end"),
        (dict(rtol=-1.0), "rtol"),
        (dict(solver="euler"), "solver"),
        (dict(prediction="noise"), "prediction"),
    ],
)
def test_bad_options_raise_value_error(kwargs, match):
    kwargs = {"prediction": "eps", **kwargs}
    with pytest.raises(ValueError, match=match):
        log_likelihood(_eps_model, VPLinear(), jnp.zeros((2, 2)), **kwargs)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="floating-point"):
        log_likelihood(_eps_model, VPLinear(), jnp.zeros((2, 2), jnp.int32), prediction="eps")
    with pytest.raises(ValueError, match="batch first"):
        log_likelihood(_eps_model, VPLinear(), jnp.zeros(2), prediction="eps")
    with pytest.raises(ValueError, match="shaped like x"):
        log_likelihood(lambda x, t, c=None: x[:, :1], VPLinear(), jnp.zeros((2, 2)),
                       prediction="eps")
    with pytest.raises(ValueError, match="integers"):
        dequantize(jax.random.key(0), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        bits_per_dim(lambda x: x.sum(-1), jnp.full((2, 3), 40, jnp.uint8), key=jax.random.key(0),
                     num_bins=32)
    with pytest.raises(ValueError, match="one log-density per example"):
        bits_per_dim(lambda x: x, jnp.zeros((2, 3), jnp.uint8), key=jax.random.key(0))
