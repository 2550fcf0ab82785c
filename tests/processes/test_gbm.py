"""Geometric Brownian motion against closed forms.

The closed forms (and their derivation) are in tests/gbm_closed_forms.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbm_closed_forms import (
    DRIFT,
    DTYPES,
    MU,
    PROC,
    SIGMA,
    V0,
    W,
    M,
    assert_within,
    exact_score,
    lognormal_data_score,
    lognormal_log_density,
    mixture_log_density,
    mixture_params,
    mixture_score,
    sample_mixture,
)
from genflow.processes import (
    GeometricBrownianMotion,
    from_positive,
    gbm_score_loss,
    to_positive,
)


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
    key = jax.random.key(0)
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


@pytest.mark.parametrize("sigma", [0.8, jnp.array([0.5, 0.8, 1.0])])
def test_log_snr_is_the_noise_scale_of_log_x_and_inverts(sigma):
    """log_snr(t) = -log(sigma sqrt(t)) (geometric mean of a per-channel sigma), strictly
    decreasing, +inf at t = 0, and t_from_log_snr is its inverse (the sampler grids use both)."""
    proc = GeometricBrownianMotion(mu=0.1, sigma=sigma)
    t = jnp.geomspace(1e-6, 1.0, 50)
    lam = proc.log_snr(t)
    log_sigma = np.mean(np.log(np.asarray(sigma, np.float64)))
    np.testing.assert_allclose(lam, -(log_sigma + 0.5 * np.log(np.asarray(t))), rtol=1e-12)
    assert lam.shape == t.shape and np.all(np.diff(np.asarray(lam)) < 0)
    assert float(proc.log_snr(0.0)) == np.inf
    np.testing.assert_allclose(proc.t_from_log_snr(lam), t, rtol=1e-12)
    assert proc.log_snr(jnp.float32(0.5)).dtype == jnp.float32

