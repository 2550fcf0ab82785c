"""The reverse-time GBM solvers (samplers.GBMExponential, samplers.GBMEulerMaruyama) against the
closed forms of tests/gbm_closed_forms.py.

With the exact score of a log-normal mixture both reverse samplers, started from the exact law
at ``t = 1``, must return the mixture at ``t_end`` (weights, log-means and log-variances within
sampling error). These are the tests of the former ``processes.sample_gbm(method=..., grid=...)``
with every assertion: ``method="exponential"`` is ``GBMExponential()``, ``"euler_maruyama"`` is
``GBMEulerMaruyama()``, ``grid="quadratic"`` / ``"log"`` are ``samplers.quadratic`` /
``samplers.log_snr_uniform``; a float64 prior draw is passed as ``x_init`` (``sample()`` draws
the prior in float32), with the key split as ``sample()`` splits it, so the numbers are those of
the former function. The per-channel contract test is in test_contract.py.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbm_closed_forms import (
    DRIFT,
    MU,
    PROC,
    SIGMA,
    W,
    assert_within,
    exact_score,
    lognormal_data_score,
    mixture_params,
    mixture_score,
    sample_mixture,
)
from genflow.processes import GeometricBrownianMotion, VPLinear
from genflow.samplers import (
    DynamicThresholding,
    GBMEulerMaruyama,
    GBMExponential,
    GBMScore,
    Heun,
    invert,
    log_snr_uniform,
    quadratic,
    sample,
    uniform,
)

SOLVERS = {"exponential": GBMExponential(), "euler_maruyama": GBMEulerMaruyama()}
N_SAMPLES = 20_000


def prior64(proc, key, shape):
    """The float64 prior draw that sample(key=key, shape=shape) would make in float32."""
    return proc.prior_sample(jax.random.split(key)[0], shape, jnp.float64)


# --------------------------------------------------------------------------- arguments
def test_invalid_arguments_say_what_to_do():
    key, ok = jax.random.key(0), dict(shape=(4, 1), num_steps=3, prediction="score")
    exp = GBMExponential()
    for solver, exc, match, kw in [
        ("exponential", TypeError, "solver must be a genflow solver", ok),  # was method=...
        (exp, ValueError, "x_init or shape", dict(num_steps=3, prediction="score")),
        (exp, ValueError, "exactly one of", dict(ok, x_init=jnp.ones((4, 1)))),
        (exp, ValueError, "num_steps", dict(ok, num_steps=0)),
        (exp, ValueError, "t_end < t_start", dict(ok, t_start=0.1, t_end=0.5)),
        (exp, ValueError, "prediction='score'", dict(ok, prediction="eps")),
        (exp, ValueError, "thresholding", dict(ok, thresholding=DynamicThresholding())),
        (Heun(), TypeError, "GBMEulerMaruyama, GBMExponential", ok),
    ]:
        with pytest.raises(exc, match=match):
            sample(exact_score, PROC, solver, key=key, **kw)
    with pytest.raises(TypeError, match="GBMScore needs a geometric Brownian motion.*Heun"):
        sample(exact_score, VPLinear(), exp, key=key, **ok)
    with pytest.raises(ValueError, match="deterministic"):
        invert(exact_score, PROC, exp, x=jnp.ones((4, 1)), prediction="score", num_steps=3)


def test_field_class_and_order():
    for solver in SOLVERS.values():
        assert solver.field_class is GBMScore and solver.stochastic and solver.order == 0.5
    field = GBMScore(exact_score, PROC, "score")
    assert field.process is PROC and field.calls == 0
    x = jnp.array([[0.5], [2.0]])
    np.testing.assert_allclose(field.score(x, 0.3), exact_score(x, jnp.full(2, 0.3)))
    assert field.calls == 1
    # denoise_final's Tweedie step in log space, written out:
    # log x0_hat = log x - (mu - sigma^2/2) t + sigma^2 t (x score + 1).
    t = 0.05
    want = np.exp(np.log(x) - DRIFT * t + SIGMA**2 * t * (x * exact_score(x, jnp.full(2, t)) + 1))
    np.testing.assert_allclose(field.final(x, t), want, rtol=1e-12)


# --------------------------------------------------------------------------- grids
@pytest.mark.parametrize("proc", [PROC, GeometricBrownianMotion(sigma=jnp.array([0.5, 1.0]))])
@pytest.mark.parametrize("t_start,t_end", [(1.0, 1e-3), (0.7, 1e-5)])
def test_grids_reproduce_the_former_gbm_grids(proc, t_start, t_end):
    """grid="log" was geomspace(t_start, t_end) and grid="quadratic" linspace in sqrt(t),
    squared, both with exact end points; log_snr_uniform and quadratic give them to round-off,
    for a per-channel sigma too."""
    n = 17
    log_old = np.geomspace(t_start, t_end, n + 1)
    quad_old = np.linspace(math.sqrt(t_start), math.sqrt(t_end), n + 1) ** 2
    log_old[[0, -1]] = quad_old[[0, -1]] = t_start, t_end
    log_new = np.asarray(log_snr_uniform(proc, t_start, t_end, n))
    quad_new = np.asarray(quadratic(proc, t_start, t_end, n))
    np.testing.assert_allclose(log_new, log_old, rtol=1e-12)
    np.testing.assert_allclose(quad_new, quad_old, rtol=1e-12)
    assert log_new[0] == quad_new[0] == t_start and log_new[-1] == quad_new[-1] == t_end
    np.testing.assert_allclose(uniform(proc, t_start, t_end, n),
                               np.linspace(t_start, t_end, n + 1), rtol=1e-14)


# --------------------------------------------------------------------------- samplers
def check_mixture(x, t):
    """Component weights, log-means and log-variances of samples x against p_t."""
    y = np.log(np.asarray(x, np.float64))[:, 0]
    m, v = mixture_params(t)
    lab = y > 0.5 * (m[0] + m[1])  # the components are > 8 log-sd apart at t_end
    n = y.size
    # Sampling error plus a small allowance for the O(step) bias of the samplers.
    assert_within(1 - lab.mean(), W[0], math.sqrt(W[0] * W[1] / n), slack=0.005, what="w")
    for i, sel in enumerate([~lab, lab]):
        yi = y[sel]
        ni = yi.size
        assert_within(yi.mean(), m[i], math.sqrt(v / ni), slack=0.01, what=f"mean {i}")
        assert_within(yi.var(), v, v * math.sqrt(2 / ni), slack=0.05 * v, what=f"var {i}")


def scaled_score(x, t, cond):
    """``a * score + b / x`` with ``(a, b) = cond``: (1, 0) is exact; cond is traced, so a
    perturbed score reuses the compiled sampler."""
    return cond[0] * mixture_score(x, t) + cond[1] / x


@partial(jax.jit, static_argnames=("num_steps", "t_end"))
def SAMPLE(solver, process, key, x_init, cond, num_steps, t_end):
    return sample(scaled_score, process, solver, key=key, x_init=x_init, prediction="score",
                  num_steps=num_steps, t_end=t_end, cond=cond)


@pytest.mark.parametrize("method", ["exponential", "euler_maruyama"])
def test_samplers_recover_mixture_with_exact_score(method):
    t_end = 1e-3
    x1 = sample_mixture(jax.random.key(6), N_SAMPLES, 1.0, jnp.float64)
    kw = dict(key=jax.random.key(7), x_init=x1, num_steps=400, t_end=t_end)
    res = SAMPLE(SOLVERS[method], PROC, cond=jnp.array([1.0, 0.0]), **kw)
    assert res.nfe == 400 and res.x.shape == x1.shape
    check_mixture(res.x, t_end)
    # The check has teeth: a moderately wrong score gives a detectably wrong law.
    bad = SAMPLE(SOLVERS[method], PROC, cond=jnp.array([0.7, -0.3]), **kw)
    with pytest.raises(AssertionError):
        check_mixture(bad.x, t_end)


@pytest.mark.parametrize("method", ["exponential", "euler_maruyama"])
def test_samplers_from_prior_recover_lognormal_data(method):
    """Log-normal data: the moment-matched prior is exact and the score is
    x grad log p_t = -1 - (log x - m_t)/v_t; sampling from the prior returns N(m0, v0) in log x."""
    m0, s0 = 0.3, 0.25
    proc = GeometricBrownianMotion(mu=MU, sigma=SIGMA, data_log_mean=m0, data_log_std=s0)

    score = lognormal_data_score(m0, s0**2)
    key = jax.random.key(8)
    res = sample(score, proc, SOLVERS[method], key=key, x_init=prior64(proc, key, (N_SAMPLES, 1)),
                 prediction="score", num_steps=200, t_end=0.0)
    y = np.log(np.asarray(res.x))[:, 0]
    v0 = s0**2
    assert_within(y.mean(), m0, math.sqrt(v0 / y.size), slack=0.01, what="log-mean")
    assert_within(y.var(), v0, v0 * math.sqrt(2 / y.size), slack=0.05 * v0, what="log-var")


def test_prior_draw_with_shape_is_positive_float32():
    """shape= draws process.prior_sample (float32, the key split as sample() does)."""
    key = jax.random.key(3)
    res = sample(exact_score, PROC, GBMExponential(), key=key, shape=(6, 1), prediction="score",
                 num_steps=2, return_trajectory=True)
    np.testing.assert_array_equal(res.trajectory[0], PROC.prior_sample(jax.random.split(key)[0],
                                                                       (6, 1)))
    assert res.x.dtype == jnp.float32 and bool(jnp.all(res.x > 0))


def test_exponential_sampler_keeps_positivity():
    x1 = sample_mixture(jax.random.key(9), N_SAMPLES, 1.0, jnp.float32)
    x1 = x1.at[:3, 0].set(jnp.array([1e-20, 1e-3, 1e3], jnp.float32))  # extreme starts
    kw = dict(key=jax.random.key(10), x_init=x1, num_steps=4, t_end=1e-2, prediction="score")
    exp_res = sample(exact_score, PROC, GBMExponential(), **kw)
    assert exp_res.x.dtype == jnp.float32
    assert bool(jnp.all(exp_res.x > 0)) and bool(jnp.all(jnp.isfinite(exp_res.x)))
    # The same coarse grid drives the additive (ambient) Euler-Maruyama step below zero.
    em_res = sample(exact_score, PROC, GBMEulerMaruyama(), **kw)
    assert bool(jnp.any(em_res.x <= 0))


def test_log_grid_and_final_tweedie_step_on_lognormal_data():
    """Log-normal data, exact score, geometric grid: stopping at t_end leaves log x ~
    N(m0 + drift t, v0 + sigma^2 t); the final Tweedie step returns E[log x0 | log x_t], whose
    law is N(m0, v0^2 / (v0 + sigma^2 t)) (one more evaluation)."""
    m0, s0, t_end = 0.3, 0.25, 0.05
    v0, v_end = s0**2, s0**2 + SIGMA**2 * t_end
    proc = GeometricBrownianMotion(mu=MU, sigma=SIGMA, data_log_mean=m0, data_log_std=s0)

    score = lognormal_data_score(m0, s0**2)

    key = jax.random.key(9)
    kw = dict(key=key, x_init=prior64(proc, key, (N_SAMPLES, 1)), num_steps=200,
              grid=log_snr_uniform, t_end=t_end, prediction="score")
    for denoise, mean, var, nfe in [(False, m0 + DRIFT * t_end, v_end, 200),
                                    (True, m0, v0**2 / v_end, 201)]:
        res = sample(score, proc, GBMExponential(), denoise_final=denoise, **kw)
        y = np.log(np.asarray(res.x))[:, 0]
        assert res.nfe == nfe
        assert_within(y.mean(), mean, math.sqrt(var / y.size), slack=0.005, what="log-mean")
        assert_within(y.var(), var, var * math.sqrt(2 / y.size), slack=0.03 * var, what="var")
    # Geometric in t needs t_end > 0: the log-SNR is infinite at t = 0.
    with pytest.raises(ValueError, match="finite log-SNR"):
        sample(score, proc, GBMExponential(), **(kw | {"t_end": 0.0}))
