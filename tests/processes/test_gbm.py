"""Geometric Brownian motion against closed forms written out here, independently.

Forward ``dX = mu X dt + sigma X dW`` (t = 0 data, t = 1 noise), so ``log X_t | x0`` is
``N(log x0 + (mu - sigma^2/2) t, sigma^2 t)``. If ``log X_0`` is the mixture
``sum_i w_i N(m_i, v0)`` (``v0 = 0``: point masses at ``a_i = e^{m_i}``), then ``log X_t`` is
the mixture ``sum_i w_i N(m_i(t), v(t))`` with ``m_i(t) = m_i + (mu - sigma^2/2) t`` and
``v(t) = v0 + sigma^2 t``, and, with responsibilities ``r_i(x) ~ w_i N(log x; m_i(t), v(t))``,

    p_t(x) = (1/x) sum_i w_i N(log x; m_i(t), v(t)),
    x grad log p_t(x) = -1 - sum_i r_i(x) (log x - m_i(t)) / v(t).

With this exact score both reverse samplers, started from the exact law at ``t = 1``, must
return the mixture at ``t_end`` (weights, log-means and log-variances within sampling error).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.processes import (
    GeometricBrownianMotion,
    from_positive,
    gbm_score_loss,
    sample_gbm,
    to_positive,
)

MU, SIGMA = 0.1, 0.8
DRIFT = MU - SIGMA**2 / 2  # drift of log X
PROC = GeometricBrownianMotion(mu=MU, sigma=SIGMA)
W = np.array([0.3, 0.7])  # mixture weights
M = np.array([-1.0, 1.0])  # log-means of the components at t = 0
V0 = 0.1  # log-variance of each component at t = 0
DTYPES = [jnp.float32, jnp.float64]


# --------------------------------------------------------------------------- closed forms
def mixture_params(t, v0=V0):
    return M + DRIFT * t, v0 + SIGMA**2 * t


def mixture_log_density(x, t, v0=V0):
    """log p_t(x) of the log-normal mixture, elementwise in x (x-space, Jacobian 1/x)."""
    m, v = mixture_params(t, v0)
    y = jnp.log(x)[..., None]
    comp = jnp.log(W) - 0.5 * jnp.log(2 * math.pi * v) - (y - m) ** 2 / (2 * v)
    return jax.nn.logsumexp(comp, axis=-1) - jnp.log(x)


def mixture_score(x, t, v0=V0):
    """grad_x log p_t(x) from the closed form in the module docstring; t broadcasts to x.

    Two components: r_1 = sigmoid(log(w_1/w_0) - ((y - m_1)^2 - (y - m_0)^2) / (2 v)), y = log x
    (written without a trailing component axis, which XLA on CPU reduces slowly).
    """
    t = jnp.reshape(t, jnp.shape(t) + (1,) * (x.ndim - jnp.ndim(t)))
    m0, m1, v = M[0] + DRIFT * t, M[1] + DRIFT * t, v0 + SIGMA**2 * t
    y = jnp.log(x)
    d0, d1 = y - m0, y - m1
    r1 = jax.nn.sigmoid(math.log(W[1] / W[0]) - (d1**2 - d0**2) / (2 * v))
    return ((-1.0 - ((1 - r1) * d0 + r1 * d1) / v) / x).astype(x.dtype)


def exact_score(x, t, cond=None):
    """The mixture score as a model function ``(x, t, cond) -> score``."""
    return mixture_score(x, t)


def sample_mixture(key, n, t, dtype, v0=V0):
    """Exact draws of X_t, shape (n, 1)."""
    m, v = mixture_params(t, v0)
    k1, k2 = jax.random.split(key)
    lab = jax.random.bernoulli(k1, W[1], (n, 1)).astype(jnp.int32)
    y = jnp.asarray(m)[lab] + math.sqrt(v) * jax.random.normal(k2, (n, 1), jnp.float64)
    return jnp.exp(y).astype(dtype)


def lognormal_log_density(x, x0, t):
    m, v = jnp.log(x0) + DRIFT * t, SIGMA**2 * t
    return -jnp.log(x) - 0.5 * jnp.log(2 * math.pi * v) - (jnp.log(x) - m) ** 2 / (2 * v)


def lognormal_data_score(m0, v0):
    """Exact score ``(x, t, cond) -> grad log p_t`` for data with log x0 ~ N(m0, v0)."""

    def score(x, t, cond=None):
        t = t[:, None]
        return (-1.0 - (jnp.log(x) - m0 - DRIFT * t) / (v0 + SIGMA**2 * t)) / x

    return score


def assert_within(est, truth, se, k=5.0, slack=0.0, what=""):
    assert abs(est - truth) <= k * se + slack, f"{what}: {est} vs {truth} (se {se})"


# --------------------------------------------------------------------------- basic contract
def test_affine_map_ends_and_inverse():
    x = jnp.linspace(-1.0, 1.0, 11)
    for low, high in [(1.0, 2.0), (1e-3, 1 - 1e-3)]:
        y = to_positive(x, low=low, high=high)
        np.testing.assert_allclose([y[0], y[-1]], [low, high], rtol=1e-12)
        assert jnp.all(y > 0)
        np.testing.assert_allclose(from_positive(y, low=low, high=high), x, atol=1e-12)
    assert to_positive(jnp.zeros(2, jnp.float32)).dtype == jnp.float32
    for low, high in [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)]:
        with pytest.raises(ValueError, match="0 < low < high"):
            to_positive(x, low=low, high=high)


def test_invalid_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="sigma > 0"):
        GeometricBrownianMotion(sigma=0.0)
    with pytest.raises(ValueError, match="data_log_std >= 0"):
        GeometricBrownianMotion(data_log_std=-1.0)
    key, ok = jax.random.key(0), dict(shape=(4, 1), num_steps=3)
    for match, kw in [("method must be one of", dict(ok, method="heun")),
                      ("exactly one of", dict(num_steps=3)),
                      ("exactly one of", dict(ok, x_init=jnp.ones((4, 1)))),
                      ("num_steps", dict(ok, num_steps=0)),
                      ("t_start > t_end", dict(ok, t_start=0.1, t_end=0.5))]:
        with pytest.raises(ValueError, match=match):
            sample_gbm(exact_score, PROC, key=key, **kw)
    x0 = jnp.ones((4, 1))
    with pytest.raises(ValueError, match="weighting"):
        gbm_score_loss(exact_score, PROC, x0, key=key, weighting="uniform")
    with pytest.raises(ValueError, match="t_min < t_max"):
        gbm_score_loss(exact_score, PROC, x0, key=key, t_min=0.5, t_max=0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_boundary_values(dtype):
    x0 = jnp.array([[0.2, 1.0, 3.5]], dtype)
    x_t, z = PROC.sample_xt(jax.random.key(1), x0, jnp.zeros(1))
    assert x_t.dtype == dtype and z.shape == x0.shape
    np.testing.assert_array_equal(x_t, x0)  # t = 0 is the data
    np.testing.assert_allclose(PROC.drift(x0, 0.3), MU * x0, rtol=1e-6)
    np.testing.assert_allclose(PROC.diffusion(x0, 0.3), SIGMA * x0, rtol=1e-6)
    mean, var = PROC.log_moments(x0, 1.0)
    np.testing.assert_allclose(mean, np.log(np.asarray(x0, np.float64)) + DRIFT, rtol=1e-6)
    np.testing.assert_allclose(var, SIGMA**2 * np.ones((1, 3)), rtol=1e-6)
    # The score at t = 0 is finite (evaluated at T_FLOOR); positive t is unaffected.
    assert jnp.all(jnp.isfinite(PROC.conditional_score(x0 * 1.01, x0, jnp.zeros(1))))
    # Prior: log X_1 ~ N(m0 + mu - sigma^2/2, s0^2 + sigma^2), positive, in the asked dtype.
    proc = GeometricBrownianMotion(mu=MU, sigma=SIGMA, data_log_mean=0.4, data_log_std=0.3)
    x1 = proc.prior_sample(jax.random.key(2), (200_000, 1), dtype)
    assert x1.dtype == dtype and bool(jnp.all(x1 > 0))
    y = np.log(np.asarray(x1, np.float64))
    v1 = 0.3**2 + SIGMA**2
    assert_within(y.mean(), 0.4 + DRIFT, math.sqrt(v1 / y.size), what="prior log-mean")
    assert_within(y.var(), v1, v1 * math.sqrt(2 / y.size), what="prior log-var")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [0.02, 0.5, 1.0])
def test_sample_xt_log_moments(dtype, t):
    n = 100_000
    x0 = jnp.tile(jnp.array([0.5, 1.0, 2.0, 7.0], dtype), (n, 1))
    # Per-example times: half the batch at t, half at t/2 (checks the (b,) broadcast).
    ts = jnp.where(jnp.arange(n) % 2 == 0, t, t / 2)
    x_t, z = PROC.sample_xt(jax.random.key(3), x0, ts)
    assert x_t.dtype == dtype and bool(jnp.all(x_t > 0))
    y = np.log(np.asarray(x_t, np.float64))
    for half, tt in [(0, t), (1, t / 2)]:
        yy = y[half::2]
        m = np.log(np.asarray(x0[0], np.float64)) + DRIFT * tt
        v = SIGMA**2 * tt
        se_m, se_v = math.sqrt(v / yy.shape[0]), v * math.sqrt(2 / yy.shape[0])
        for j in range(4):
            assert_within(yy[:, j].mean(), m[j], se_m, slack=1e-6, what=f"mean t={tt}")
            assert_within(yy[:, j].var(), v, se_v, slack=1e-6, what=f"var t={tt}")
    # The returned noise is the one that made x_t.
    tc = np.asarray(ts)[:, None]
    recon = np.log(np.asarray(x0, np.float64)) + DRIFT * tc + SIGMA * np.sqrt(tc) * np.asarray(z)
    np.testing.assert_allclose(y, recon, atol=1e-5 if dtype == jnp.float32 else 1e-10)


def test_forward_sde_reproduces_marginals():
    """Euler-Maruyama of drift()/diffusion() with small steps matches E[X_t] = x0 e^{mu t},
    E[X_t^2] = x0^2 e^{(2 mu + sigma^2) t} and the log-moments of the kernel."""
    n, steps, t1, x0 = 50_000, 200, 1.0, 1.5
    dt = t1 / steps

    @jax.jit
    def simulate(key):
        def body(x, k):
            dw = math.sqrt(dt) * jax.random.normal(k, x.shape)
            return x + PROC.drift(x, 0.0) * dt + PROC.diffusion(x, 0.0) * dw, None

        x, _ = jax.lax.scan(body, jnp.full((n, 1), x0), jax.random.split(key, steps))
        return x

    x = np.asarray(simulate(jax.random.key(4)))[:, 0]
    assert_within(x.mean(), x0 * math.exp(MU * t1), x.std() / math.sqrt(n), what="E[X]")
    m2 = x0**2 * math.exp((2 * MU + SIGMA**2) * t1)
    assert_within((x**2).mean(), m2, (x**2).std() / math.sqrt(n), slack=0.01 * m2, what="E[X^2]")
    y = np.log(x)
    v = SIGMA**2 * t1
    # The O(dt) bias of Euler-Maruyama on log X is about sigma^4 dt / 4 ~ 5e-4.
    assert_within(y.mean(), math.log(x0) + DRIFT * t1, math.sqrt(v / n), slack=3e-3, what="Elog")
    assert_within(y.var(), v, v * math.sqrt(2 / n), slack=5e-3, what="Var log")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conditional_score_matches_autodiff(dtype):
    key = jax.random.split(jax.random.key(5), 3)
    x0 = jnp.exp(jax.random.normal(key[0], (64, 3), dtype))
    t = jnp.geomspace(1e-3, 1.0, 64).astype(dtype)
    x_t, z = PROC.sample_xt(key[1], x0, t)
    want = jax.jit(jax.vmap(jax.grad(lambda x, a, tt: jnp.sum(lognormal_log_density(x, a, tt)))))(
        x_t.astype(jnp.float64), x0.astype(jnp.float64), t.astype(jnp.float64)
    )
    got = PROC.conditional_score(x_t, x0, t)
    assert got.dtype == dtype
    rtol = 2e-3 if dtype == jnp.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    # Hyvarinen form: x_t * score = -1 - z / (sigma sqrt(t)).
    hyv = -1.0 - np.asarray(z, np.float64) / (SIGMA * np.sqrt(np.asarray(t, np.float64)))[:, None]
    np.testing.assert_allclose(x_t * got, hyv, rtol=rtol, atol=rtol)


@jax.jit
def _mixture_score_checks(x, t, v0):
    want = jax.grad(lambda xx: jnp.sum(mixture_log_density(xx, t, v0=v0)))(x)
    # Point masses (v0 = 0): the posterior mean of the process's conditional score.
    m, v = mixture_params(t, v0=0.0)
    resp = jax.nn.softmax(jnp.log(W) - (jnp.log(x) - m) ** 2 / (2 * v), axis=-1)
    post = sum(resp[:, i:i + 1] * PROC.conditional_score(x, jnp.full_like(x, math.exp(M[i])), t)
               for i in range(2))
    return mixture_score(x, t, v0=v0), want, post


@pytest.mark.parametrize("v0", [0.0, V0])
def test_mixture_score_closed_form(v0):
    """The closed-form mixture score equals autodiff of the mixture density and, for point
    masses, the posterior mean of the process's conditional score (the DSM identity)."""
    x = jnp.exp(jnp.linspace(-3.0, 3.0, 41))[:, None]
    for t in [0.01, 0.3, 1.0]:
        got, want, post = _mixture_score_checks(x, t, v0)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        if v0 == 0.0:
            np.testing.assert_allclose(post, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- samplers
N_SAMPLES = 20_000


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


SAMPLE = jax.jit(sample_gbm, static_argnames=("score_fn", "num_steps", "method"))


@pytest.mark.parametrize("method", ["exponential", "euler_maruyama"])
def test_samplers_recover_mixture_with_exact_score(method):
    t_end = 1e-3
    x1 = sample_mixture(jax.random.key(6), N_SAMPLES, 1.0, jnp.float64)
    kw = dict(key=jax.random.key(7), x_init=x1, num_steps=400, method=method, t_end=t_end)
    res = SAMPLE(scaled_score, PROC, cond=jnp.array([1.0, 0.0]), **kw)
    assert res.nfe == 400 and res.x.shape == x1.shape
    check_mixture(res.x, t_end)
    # The check has teeth: a moderately wrong score gives a detectably wrong law.
    bad = SAMPLE(scaled_score, PROC, cond=jnp.array([0.7, -0.3]), **kw)
    with pytest.raises(AssertionError):
        check_mixture(bad.x, t_end)


@pytest.mark.parametrize("method", ["exponential", "euler_maruyama"])
def test_samplers_from_prior_recover_lognormal_data(method):
    """Log-normal data: the moment-matched prior is exact and the score is
    x grad log p_t = -1 - (log x - m_t)/v_t; sampling from shape= returns N(m0, v0) in log x."""
    m0, s0 = 0.3, 0.25
    proc = GeometricBrownianMotion(mu=MU, sigma=SIGMA, data_log_mean=m0, data_log_std=s0)

    score = lognormal_data_score(m0, s0**2)
    res = sample_gbm(score, proc, key=jax.random.key(8), shape=(N_SAMPLES, 1), num_steps=200,
                     method=method, t_end=0.0, dtype=jnp.float64)
    y = np.log(np.asarray(res.x))[:, 0]
    v0 = s0**2
    assert_within(y.mean(), m0, math.sqrt(v0 / y.size), slack=0.01, what="log-mean")
    assert_within(y.var(), v0, v0 * math.sqrt(2 / y.size), slack=0.05 * v0, what="log-var")


def test_exponential_sampler_keeps_positivity():
    x1 = sample_mixture(jax.random.key(9), N_SAMPLES, 1.0, jnp.float32)
    x1 = x1.at[:3, 0].set(jnp.array([1e-20, 1e-3, 1e3], jnp.float32))  # extreme starts
    kw = dict(key=jax.random.key(10), x_init=x1, num_steps=4, t_end=1e-2)
    exp_res = sample_gbm(exact_score, PROC, method="exponential", **kw)
    assert exp_res.x.dtype == jnp.float32
    assert bool(jnp.all(exp_res.x > 0)) and bool(jnp.all(jnp.isfinite(exp_res.x)))
    # The same coarse grid drives the additive (ambient) Euler-Maruyama step below zero.
    em_res = sample_gbm(exact_score, PROC, method="euler_maruyama", **kw)
    assert bool(jnp.any(em_res.x <= 0))


def contract_score(x, t, cond=None):
    assert t.shape == (x.shape[0],) and cond == "c"
    return -1.0 / x * (1.0 + jnp.log(x))


@pytest.mark.parametrize(
    "method, dtype", [("exponential", jnp.float32), ("euler_maruyama", jnp.float64)]
)
def test_sampler_contract(method, dtype):
    """Shape and dtype kept, jit == no-jit, deterministic per key, exact nfe, trajectory."""
    calls = []

    def score(x, t, cond=None):
        calls.append(1)
        return contract_score(x, t, cond)

    # Per-channel coefficients broadcast against one example (2, 3).
    proc = GeometricBrownianMotion(mu=jnp.array([0.1, 0.2, 0.3]), sigma=jnp.array([0.5, 0.8, 1.0]))
    kw = dict(shape=(5, 2, 3), num_steps=7, method=method, cond="c", dtype=dtype)
    res = sample_gbm(score, proc, key=jax.random.key(11), return_trajectory=True, **kw)
    assert len(calls) == 1 and res.nfe == 7  # traced once by lax.scan, 7 evaluations
    assert res.x.shape == (5, 2, 3) and res.x.dtype == dtype
    assert res.trajectory.shape == (8, 5, 2, 3) and res.trajectory.dtype == dtype
    np.testing.assert_array_equal(res.trajectory[-1], res.x)
    jitted = jax.jit(lambda p, k: sample_gbm(contract_score, p, key=k, **kw).x)
    x_jit = jitted(proc, jax.random.key(11))
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(x_jit, res.x, rtol=tol)
    np.testing.assert_array_equal(jitted(proc, jax.random.key(11)), x_jit)  # same key
    assert not np.allclose(jitted(proc, jax.random.key(12)), x_jit)  # another key


# --------------------------------------------------------------------------- loss
def test_loss_at_exact_score_equals_closed_form_minimum():
    """For log x0 ~ N(m0, v0) the minimum at time t is v0 / (v0 + sigma^2 t) per dimension
    ("noise"), times sigma^2 t ("paper"); averaged over t ~ U(t_min, t_max)."""
    m0, s0, t_min, t_max = 0.3, 0.4, 1e-5, 1.0
    v0, s2 = s0**2, SIGMA**2

    score = lognormal_data_score(m0, s0**2)

    def one(key):
        k1, k2 = jax.random.split(key)
        x0 = jnp.exp(m0 + s0 * jax.random.normal(k1, (4000, 2)))
        return [gbm_score_loss(score, PROC, x0, key=k2, t_min=t_min, t_max=t_max, weighting=w)
                for w in ("noise", "paper")]

    noise, paper = map(np.asarray, jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(13), 50)))
    span, log_ratio = t_max - t_min, math.log((v0 + s2 * t_max) / (v0 + s2 * t_min))
    noise_min = v0 / (s2 * span) * log_ratio
    for vals, want in [(noise, noise_min), (paper, v0 * (1.0 - v0 / (s2 * span) * log_ratio))]:
        assert_within(vals.mean(), want, vals.std() / math.sqrt(vals.size))


@functools.partial(jax.jit, static_argnames="weighting")
def perturbed_loss(x0, key, eps, shift, weighting):
    """The loss at the exact mixture score plus (eps phi + shift) / x, phi arbitrary."""

    def score(x, t, cond=None):
        phi = jnp.sin(2 * jnp.log(x)) + t[:, None]
        return mixture_score(x, t) + (eps * phi + shift) / x

    return gbm_score_loss(score, PROC, x0, key=key, weighting=weighting)


@functools.partial(jax.jit, static_argnames="weighting")
def loss_slopes(x0, keys, eps, weighting):
    """d loss / d eps on independent batches (rows of x0, one key each)."""
    grad = jax.grad(perturbed_loss, argnums=2)
    return jax.vmap(lambda x, k: grad(x, k, eps, 0.0, weighting))(x0, keys)


@pytest.mark.parametrize("weighting", ["paper"])  # same minimiser for "noise" (per-t weight)
def test_loss_is_minimised_by_the_exact_marginal_score(weighting):
    """Mixture data: perturbed scores give a larger loss, and at the exact score the
    derivative of the loss along a perturbation vanishes in expectation."""
    x0 = sample_mixture(jax.random.key(14), 40_000, 0.0, jnp.float64)
    key = jax.random.key(15)
    base = float(perturbed_loss(x0, key, 0.0, 0.0, weighting))
    for eps, shift in [(0.2, 0.0), (-0.2, 0.0), (0.0, 0.1), (0.0, -0.1)]:
        assert float(perturbed_loss(x0, key, eps, shift, weighting)) > base
    # At eps = 0 the slope is a mean of zero-mean terms; at eps = 0.3 it is clearly positive.
    batches, keys = x0.reshape(40, 1000, 1), jax.random.split(jax.random.key(16), 40)
    at_exact = np.asarray(loss_slopes(batches, keys, 0.0, weighting))
    assert abs(at_exact.mean()) < 4 * at_exact.std() / math.sqrt(at_exact.size)
    off = np.asarray(loss_slopes(batches, keys, 0.3, weighting))
    assert off.mean() > 4 * off.std() / math.sqrt(off.size)


def test_non_positive_data_is_refused():
    process = GeometricBrownianMotion()
    bad = jnp.asarray([[0.5, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="strictly positive.*to_positive"):
        process.sample_xt(jax.random.key(0), bad, jnp.asarray([0.5, 0.5]))
    with pytest.raises(ValueError, match="strictly positive"):
        gbm_score_loss(lambda x, t, c=None: x, process, -bad, key=jax.random.key(0))


def test_log_grid_and_final_tweedie_step_on_lognormal_data():
    """Log-normal data, exact score, geometric grid: stopping at t_end leaves log x ~
    N(m0 + drift t, v0 + sigma^2 t); the final Tweedie step returns E[log x0 | log x_t], whose
    law is N(m0, v0^2 / (v0 + sigma^2 t)) (one more evaluation)."""
    m0, s0, t_end = 0.3, 0.25, 0.05
    v0, v_end = s0**2, s0**2 + SIGMA**2 * t_end
    proc = GeometricBrownianMotion(mu=MU, sigma=SIGMA, data_log_mean=m0, data_log_std=s0)

    score = lognormal_data_score(m0, s0**2)

    kw = dict(key=jax.random.key(9), shape=(N_SAMPLES, 1), num_steps=200, grid="log",
              t_end=t_end, dtype=jnp.float64)
    for denoise, mean, var, nfe in [(False, m0 + DRIFT * t_end, v_end, 200),
                                    (True, m0, v0**2 / v_end, 201)]:
        res = sample_gbm(score, proc, denoise_final=denoise, **kw)
        y = np.log(np.asarray(res.x))[:, 0]
        assert res.nfe == nfe
        assert_within(y.mean(), mean, math.sqrt(var / y.size), slack=0.005, what="log-mean")
        assert_within(y.var(), var, var * math.sqrt(2 / y.size), slack=0.03 * var, what="var")
    with pytest.raises(ValueError, match="t_end > 0"):
        sample_gbm(score, proc, **(kw | {"t_end": 0.0}))


def test_log_uniform_time_sampling_has_its_closed_form_minimum():
    """With log t ~ U(log t_min, log t_max) the "noise" loss at the exact score averages
    v0 / (v0 + sigma^2 t) over log t: (L - log((v0 + s2 t_max) / (v0 + s2 t_min))) / L,
    L = log(t_max / t_min) (uniform t gives a different number: the draw is really log-uniform)."""
    m0, s0, t_min, t_max = 0.3, 0.4, 1e-5, 1.0
    v0, s2 = s0**2, SIGMA**2

    score = lognormal_data_score(m0, s0**2)

    def one(key):
        k1, k2 = jax.random.split(key)
        x0 = jnp.exp(m0 + s0 * jax.random.normal(k1, (4000, 2)))
        return gbm_score_loss(score, PROC, x0, key=k2, t_min=t_min, t_max=t_max,
                              weighting="noise", t_sampling="log_uniform")

    vals = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(14), 50)))
    span = math.log(t_max / t_min)
    want = (span - math.log((v0 + s2 * t_max) / (v0 + s2 * t_min))) / span
    assert_within(vals.mean(), want, vals.std() / math.sqrt(vals.size))
    uniform = v0 / (s2 * (t_max - t_min)) * math.log((v0 + s2 * t_max) / (v0 + s2 * t_min))
    assert abs(want - uniform) > 20 * vals.std() / math.sqrt(vals.size)
    with pytest.raises(ValueError, match="t_min > 0"):
        gbm_score_loss(score, PROC, jnp.ones((4, 2)), key=jax.random.key(0), t_min=0.0,
                       t_sampling="log_uniform")
