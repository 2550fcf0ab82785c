"""Time densities against closed forms: moments of the drawn noise levels, written out by hand.

Each density is sampled N = 200_000 times; a sample mean is compared with its closed form within
5 standard errors (sd / sqrt(N)), a sample variance within 5 of its standard errors
(var * sqrt(2 / (N - 1)) for normal draws, from the fourth central moment for uniform ones).
The noise level of EDM's path is recomputed here from its formula
``sigma_t = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``, not from
the process under test.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.losses import Uniform, denoising_loss
from genflow.prediction import Prediction
from genflow.processes import EDM, RectifiedFlow, VPCosine, VPLinear
from genflow.time_densities import (
    AbstractTimeDensity,
    LogitNormalTime,
    LogNormalNoise,
    LogUniformNoise,
    UniformTime,
)

N = 200_000
EDM_PATH = EDM(sigma_min=0.002, sigma_max=80.0, rho=7.0)


def edm_log_sigma(t):
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    return 7.0 * np.log(lo + np.asarray(t, np.float64) * (hi - lo))


@jax.jit
def draw(density, process, key, t_min, t_max):
    """One compilation per (density class, process class): both are pytrees."""
    return density.sample(key, process, (N,), t_min=t_min, t_max=t_max, dtype=jnp.float64)


def assert_mean_var(x, mean, var, *, uniform=False):
    x = np.asarray(x, np.float64)
    se_mean = math.sqrt(var / N)
    assert abs(x.mean() - mean) < 5 * se_mean, (x.mean(), mean, se_mean)
    # Var of the sample variance: (mu4 - var^2) / N; mu4 = 3 var^2 (normal), 9/5 var^2 (uniform).
    mu4 = (9 / 5 if uniform else 3.0) * var**2
    se_var = math.sqrt((mu4 - var**2) / N)
    assert abs(x.var(ddof=1) - var) < 5 * se_var, (x.var(ddof=1), var, se_var)


# --------------------------------------------------------------------------- uniform
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_uniform_is_jax_random_uniform_bit_for_bit(dtype):
    key = jax.random.key(11)
    got = UniformTime().sample(key, VPLinear(), (1000,), t_min=1e-5, t_max=1.0, dtype=dtype)
    want = jax.random.uniform(key, (1000,), dtype=dtype, minval=1e-5, maxval=1.0)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(want, np.float64))


def test_default_loss_draws_the_times_it_always_drew():
    """denoising_loss's default draw is uniform(split(key)[0], (b,), x0.dtype, t_min, t_max):
    runs from before time densities existed give bit-identical losses."""
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(64, 3)), jnp.float32)
    key = jax.random.key(5)
    seen = {}

    def model_fn(x, t, cond=None):
        seen["t"] = t
        return 0.3 * x

    loss = denoising_loss(model_fn, VPLinear(), x0, key=key, t_min=0.02, t_max=0.9)
    key_t, key_eps = jax.random.split(key)
    t = jax.random.uniform(key_t, (64,), dtype=jnp.float32, minval=0.02, maxval=0.9)
    np.testing.assert_array_equal(np.asarray(seen["t"]), np.asarray(t))
    x_t, eps = VPLinear().sample_xt(key_eps, x0, t)
    want = jnp.mean(Uniform().per_example(VPLinear(), Prediction.EPS, 0.3 * x_t, x0, eps, x_t,
                                          t))
    assert float(loss) == float(want)
    explicit = denoising_loss(model_fn, VPLinear(), x0, key=key, t_min=0.02, t_max=0.9,
                              time_density=UniformTime())
    assert float(explicit) == float(loss)


# --------------------------------------------------------------------------- EDM log-normal
def test_log_normal_noise_on_edm_has_the_prescribed_moments():
    """ln sigma ~ N(p_mean, p_std^2); with p_std = 0.8 the path's range [-6.2, 4.4] is more than
    6.5 sd from p_mean = -1.0, so clipping is negligible (< 1e-10 of the draws)."""
    density = LogNormalNoise(p_mean=-1.0, p_std=0.8)
    t = draw(density, EDM_PATH, jax.random.key(0), 0.0, 1.0)
    assert np.all((t >= 0.0) & (t <= 1.0))
    assert_mean_var(edm_log_sigma(t), -1.0, 0.64)


def test_log_normal_noise_defaults_on_a_vp_path():
    """EDM's defaults (-1.2, 1.2) on VP cosine: ln(sigma/alpha) of the drawn t, by the VP formula
    alpha = cos(pi/2 (t t_max + s)/(1 + s)) / cos(pi/2 s/(1 + s)), sigma = sqrt(1 - alpha^2).
    The path spans ln(sigma/alpha) in [-7.4, 4.8], about 5 sd from -1.2 on either side, so
    about 0.1 of the N draws are expected to be clipped."""
    assert LogNormalNoise() == LogNormalNoise(p_mean=-1.2, p_std=1.2)
    t = np.asarray(draw(LogNormalNoise(), VPCosine(), jax.random.key(1), 1e-5, 1.0))
    s, tm = 0.008, 0.9946
    alpha = np.cos(np.pi / 2 * (t * tm + s) / (1 + s)) / np.cos(np.pi / 2 * s / (1 + s))
    log_noise = np.log(np.sqrt(1 - alpha**2) / alpha)
    assert_mean_var(log_noise, -1.2, 1.44)


def test_log_normal_noise_is_clipped_to_the_time_range():
    """Draws beyond the range land on its ends: P(t = t_max) = P(ln s > ln s(t_max))."""
    t_min, t_max, p_mean, p_std = 0.2, 0.6, 0.0, 1.5
    t = np.asarray(draw(LogNormalNoise(p_mean=p_mean, p_std=p_std), EDM_PATH, jax.random.key(2),
                        t_min, t_max))
    assert t.min() >= t_min and t.max() <= t_max
    for end, frac in ((t_max, np.mean(t == t_max)), (t_min, np.mean(t == t_min))):
        z = (edm_log_sigma(end) - p_mean) / p_std
        p_above = 0.5 * math.erfc(z / math.sqrt(2))
        p = p_above if end == t_max else 1 - p_above
        assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / N), (end, frac, p)


# --------------------------------------------------------------------------- SD3 logit-normal
def test_logit_normal_time_has_the_prescribed_logit_moments():
    """logit t ~ N(m, s^2); logit(1e-5) = -11.5 is 17 sd away: no clipping."""
    density = LogitNormalTime(mean=0.5, std=0.7)
    t = np.asarray(draw(density, VPLinear(), jax.random.key(3), 1e-5, 1.0))
    assert np.all((t > 0) & (t < 1))
    assert_mean_var(np.log(t) - np.log1p(-t), 0.5, 0.49)
    # The default is SD3's best, m = 0, s = 1: E[t] = 1/2 by symmetry of logit t about 0.
    t0 = np.asarray(draw(LogitNormalTime(), VPLinear(), jax.random.key(4), 1e-5, 1.0))
    assert_mean_var(np.log(t0) - np.log1p(-t0), 0.0, 1.0)


# --------------------------------------------------------------------------- log-uniform
def test_log_uniform_noise_is_uniform_in_log_sigma():
    """ln sigma ~ U[a, b] with a = ln s(t_min), b = ln s(t_max): mean (a+b)/2, variance
    (b-a)^2/12 and the range's ends. (Uniform t would give mean +0.49, not -0.48, on EDM.)"""
    t_min, t_max = 0.05, 0.95
    t = draw(LogUniformNoise(), EDM_PATH, jax.random.key(5), t_min, t_max)
    log_s = edm_log_sigma(t)
    a, b = edm_log_sigma(t_min), edm_log_sigma(t_max)
    assert_mean_var(log_s, (a + b) / 2, (b - a) ** 2 / 12, uniform=True)
    # The smallest and largest of N uniform draws lie within ~(b - a)/N of the ends.
    assert a - 1e-9 <= log_s.min() < a + 20 * (b - a) / N
    assert b - 20 * (b - a) / N < log_s.max() <= b + 1e-9
    # A quarter of the draws in each quarter of [a, b].
    counts = np.histogram(log_s, bins=4, range=(a, b))[0] / N
    np.testing.assert_allclose(counts, 0.25, atol=5 * math.sqrt(0.25 * 0.75 / N))


def test_log_uniform_noise_needs_a_finite_log_snr():
    LogUniformNoise().check(VPLinear(), 1e-5, 1.0)  # finite at both ends: accepted
    with pytest.raises(ValueError, match="finite log-SNR"):
        LogUniformNoise().check(RectifiedFlow(), 1e-5, 1.0)  # lambda_1 = -inf
    LogUniformNoise().check(RectifiedFlow(), 1e-5, 0.99)
    for density in (UniformTime(), LogNormalNoise(), LogitNormalTime()):
        density.check(RectifiedFlow(), 1e-5, 1.0)


# --------------------------------------------------------------------------- contract
def test_precision_dtype_and_determinism():
    """A bfloat16 request is computed in float32 and rounded once at the end."""
    key = jax.random.key(6)
    for density in (LogNormalNoise(), LogitNormalTime(), LogUniformNoise()):
        kw = dict(t_min=1e-3, t_max=1.0)
        lo = density.sample(key, VPLinear(), (257,), dtype=jnp.bfloat16, **kw)
        hi = density.sample(key, VPLinear(), (257,), dtype=jnp.float32, **kw)
        assert lo.dtype == jnp.bfloat16 and hi.dtype == jnp.float32 and lo.shape == (257,)
        np.testing.assert_array_equal(np.asarray(lo, np.float32),
                                      np.asarray(hi.astype(jnp.bfloat16), np.float32))
        again = density.sample(key, VPLinear(), (257,), dtype=jnp.float32, **kw)
        np.testing.assert_array_equal(np.asarray(again), np.asarray(hi))
        other = density.sample(jax.random.key(7), VPLinear(), (257,), dtype=jnp.float32, **kw)
        assert not np.array_equal(np.asarray(other), np.asarray(hi))


def test_densities_are_distinct_pytrees_with_parameters_as_leaves():
    ts = jax.tree_util.tree_structure
    classes = [UniformTime(), LogNormalNoise(), LogitNormalTime(), LogUniformNoise()]
    assert len({ts(d) for d in classes}) == len(classes)
    assert all(isinstance(d, AbstractTimeDensity) for d in classes)
    assert ts(LogNormalNoise(0.0, 1.0)) == ts(LogNormalNoise())  # a sweep does not recompile
    assert jax.tree.leaves(LogNormalNoise(-1.0, 0.5)) == [-1.0, 0.5]
    with pytest.raises(ValueError, match="p_std"):
        LogNormalNoise(p_std=0.0)
    with pytest.raises(ValueError, match="std"):
        LogitNormalTime(std=-1.0)
