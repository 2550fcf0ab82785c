"""Stochastic interpolants between two densities, against closed forms.

The closed forms (and their derivation) are in tests/interpolant_closed_forms.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.processes import StochasticInterpolant, interpolant_loss
from interpolant_closed_forms import (
    M0,
    M1,
    S0,
    S1,
    exact_fields,
    gaussian,
    paper_coefs,
)

CONFIGS = [("linear", "sqrt"), ("linear", "quadratic"), ("linear", "sin2"), ("linear", "zero"),
           ("trig", "sqrt"), ("trig", "quadratic"), ("trig", "zero"), ("encdec", "sqrt"),
           ("encdec", "sin2"), ("one_sided_linear", "zero"), ("one_sided_trig", "zero"),
           ("mirror", "quadratic"), ("mirror", "sin2")]
IDS = [f"{i}-{g}" for i, g in CONFIGS]
T_INSIDE = jnp.array([0.03, 0.2, 0.37, 0.57, 0.8, 0.97])


# ------------------------------------------------------------------------- the path
@pytest.mark.parametrize("interpolant,gamma", CONFIGS, ids=IDS)
def test_coefficients_boundaries_and_derivatives(interpolant, gamma):
    proc = StochasticInterpolant(interpolant, gamma, a=2.0 if gamma == "sqrt" else 1.0)
    ref = paper_coefs(interpolant, gamma, a=2.0 if gamma == "sqrt" else 1.0)
    x0, x1 = jnp.array([[1.0, -2.0]]), jnp.array([[3.0, 0.5]])
    ends = jnp.array([0.0, 1.0])
    np.testing.assert_allclose(proc.interpolate(0.0, x0, x1), x0, atol=1e-12)
    np.testing.assert_allclose(proc.interpolate(1.0, x0, x1), x0 if interpolant == "mirror" else x1, atol=1e-12)
    np.testing.assert_allclose(proc.gamma(ends), 0.0, atol=1e-12)
    # closed forms on the interior
    al, dal, be, dbe, g2, ggd = ref(T_INSIDE)
    np.testing.assert_allclose(proc.coefficients(T_INSIDE), (al, dal, be, dbe), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(proc.gamma(T_INSIDE), jnp.sqrt(g2), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(proc.gamma(T_INSIDE) * proc.d_gamma(T_INSIDE), ggd, rtol=1e-9, atol=1e-12)
    # derivatives against forward-mode autodiff
    xs0, xs1 = jnp.tile(x0, (6, 1)), jnp.tile(x1, (6, 1))
    one = jnp.ones_like(T_INSIDE)
    _, d_i = jax.jvp(lambda t: proc.interpolate(t, xs0, xs1), (T_INSIDE,), (one,))
    np.testing.assert_allclose(proc.d_interpolate(T_INSIDE, xs0, xs1), d_i, rtol=1e-9, atol=1e-12)
    _, d_g = jax.jvp(proc.gamma, (T_INSIDE,), (one,))
    np.testing.assert_allclose(proc.d_gamma(T_INSIDE), d_g, rtol=1e-9, atol=1e-12)


def test_d_gamma_limits_at_the_ends():
    ends = jnp.array([0.0, 1.0])
    np.testing.assert_array_equal(StochasticInterpolant("linear", "sqrt").d_gamma(ends), [np.inf, -np.inf])
    np.testing.assert_allclose(StochasticInterpolant("linear", "quadratic").d_gamma(ends), [1.0, -1.0])
    np.testing.assert_allclose(StochasticInterpolant("linear", "sin2").d_gamma(ends), [0.0, 0.0], atol=1e-12)


def test_callable_gamma_matches_named_and_autodiff():
    named = StochasticInterpolant("trig", "quadratic")
    custom = StochasticInterpolant("trig", lambda t: t * (1 - t), d_gamma=lambda t: 1 - 2 * t)
    auto = StochasticInterpolant("trig", lambda t: t * (1 - t))  # derivative by jax.jvp
    for proc in (custom, auto):
        np.testing.assert_allclose(proc.coefficients(T_INSIDE), named.coefficients(T_INSIDE), rtol=1e-12)
        np.testing.assert_allclose(proc.d_gamma(T_INSIDE), named.d_gamma(T_INSIDE), rtol=1e-12)


def test_sample_xt_moments():
    proc = StochasticInterpolant("encdec", "sin2")
    n, t = 40_000, 0.3
    x0 = jnp.tile(jnp.array([[1.0, -2.0]]), (n, 1))
    x1 = jnp.tile(jnp.array([[3.0, 0.5]]), (n, 1))
    xt, z = proc.sample_xt(jax.random.key(0), x0, x1, jnp.full((n,), t))
    c2 = math.cos(math.pi * t) ** 2
    gamma = math.sin(math.pi * t) ** 2
    np.testing.assert_allclose(xt.mean(0), c2 * np.array([1.0, -2.0]), atol=5 * gamma / math.sqrt(n))
    np.testing.assert_allclose(xt.std(0), gamma, rtol=0.03)
    np.testing.assert_allclose(xt, proc.interpolate(t, x0, x1) + gamma * z, rtol=1e-12)


def test_pytree_leaf_a_under_jit():
    f = jax.jit(lambda p, t: p.gamma(t))
    t = jnp.array([0.25])
    for a in (1.0, 2.0):
        np.testing.assert_allclose(f(StochasticInterpolant("linear", "sqrt", a=a), t), math.sqrt(a * 0.1875))


# ------------------------------------------------------------------------- losses
LOSS_CONFIGS = [("linear", "sqrt"), ("one_sided_trig", "zero")]


@pytest.mark.parametrize("interpolant,gamma", LOSS_CONFIGS, ids=[f"{i}-{g}" for i, g in LOSS_CONFIGS])
def test_losses_are_minimised_by_the_exact_fields(interpolant, gamma):
    m1, s1 = (np.zeros(2), np.eye(2)) if interpolant.startswith("one_sided") else (M1, S1)
    proc = StochasticInterpolant(interpolant, gamma)
    fields = exact_fields(interpolant, gamma, m1=m1, s1=s1)
    k0, k1, kl = jax.random.split(jax.random.key(1), 3)
    x0, x1 = gaussian(k0, M0, S0, 32_768), gaussian(k1, m1, s1, 32_768)
    u, p = jnp.array([1.0, -0.5]), jnp.array([[0.5, 1.0], [-1.0, 0.3]])  # perturbation directions

    @jax.jit
    def losses(c_const, c_lin):
        def perturbed(f):
            return lambda x, t, cond=None: f(x, t) + c_const * u + c_lin * t[:, None] * (x @ p)

        return {target: interpolant_loss(perturbed(f), proc, x0, x1, key=kl, target=target)
                for target, f in fields.items()}

    h = 0.2
    base = losses(0.0, 0.0)
    for direction in ((h, 0.0), (0.0, h)):
        plus, minus = losses(*direction), losses(*(-c for c in direction))
        for target in fields:
            l0, lp, lm = float(base[target]), float(plus[target]), float(minus[target])
            # The loss is quadratic along F + c d; its minimum c* = 0 for the exact F up to
            # sampling error (a wrong target moves it: a flipped sign of gamma' z by 0.07, of the score by O(1)).
            c_star = -h * (lp - lm) / (2.0 * (lp + lm - 2.0 * l0))
            assert lp > l0 and lm > l0, (target, direction, l0, lp, lm)
            assert abs(c_star) < 0.02, (target, direction, c_star)


@pytest.mark.parametrize("target,gamma", [("b", "sqrt"), ("s", "quadratic")])
def test_antithetic_estimator_has_lower_variance(target, gamma):
    proc = StochasticInterpolant("linear", gamma)
    model = exact_fields("linear", gamma)[target]
    k0, k1 = jax.random.split(jax.random.key(2))
    x0, x1 = gaussian(k0, M0, S0, 256), gaussian(k1, M1, S1, 256)
    x0_2, x1_2 = jnp.concatenate([x0, x0]), jnp.concatenate([x1, x1])  # same model calls
    keys = jax.random.split(jax.random.key(3), 200)

    @jax.jit
    def both(k):
        return (interpolant_loss(model, proc, x0, x1, key=k, target=target),
                interpolant_loss(model, proc, x0_2, x1_2, key=k, target=target, antithetic=False))

    anti, plain = jax.vmap(both)(keys)
    # Antithetic pairs cancel the terms singular at the ends (s . z / gamma, gamma' b . z):
    # measured variance ratios: 25 (b, sqrt), 160 (s, quadratic); 4 for (b, quadratic), 2.3 for
    # (s, sqrt), where the singular terms are milder.
    assert jnp.var(anti) < 0.25 * jnp.var(plain), (jnp.var(anti), jnp.var(plain))


# ------------------------------------------------------------------------- float32
def test_path_and_loss_keep_float32():
    """(Generation keeps float32 too: tests/samplers/test_interpolant.py.)"""
    proc = StochasticInterpolant("linear", "quadratic")
    x = jax.random.normal(jax.random.key(7), (64, 2), jnp.float32)

    def field(x, t, cond=None):  # a float32 network stand-in
        return -x * t[:, None].astype(x.dtype)

    xt, z = proc.sample_xt(jax.random.key(0), x, x, jnp.full((64,), 0.5, jnp.float32))
    assert xt.dtype == z.dtype == jnp.float32
    assert interpolant_loss(field, proc, x, x, key=jax.random.key(0)).dtype == jnp.float32


def test_prior_sample_is_standard_normal():
    """The t = 1 end without a source data set: N(0, I) in the asked dtype."""
    key = jax.random.key(3)
    for proc in (StochasticInterpolant("one_sided_linear"), StochasticInterpolant("linear")):
        x = proc.prior_sample(key, (4, 2))
        assert x.dtype == jnp.float32
        np.testing.assert_array_equal(x, jax.random.normal(key, (4, 2), jnp.float32))
        assert proc.prior_sample(key, (3,), jnp.float64).dtype == jnp.float64


# ------------------------------------------------------------------------- bad input
def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"gamma must vanish at t = 0 and t = 1 \(got gamma\(0\)=0.1"):
        StochasticInterpolant("linear", lambda t: 0.1 + t * (1 - t))
    with pytest.raises(ValueError, match=r"gamma\(1\)=0.5"):
        StochasticInterpolant("linear", lambda t: 0.5 * t)
    with pytest.raises(ValueError, match="interpolant must be one of"):
        StochasticInterpolant("cubic")
    with pytest.raises(ValueError, match="gamma must be one of"):
        StochasticInterpolant("linear", "brownian")
    with pytest.raises(ValueError, match="encdec.*needs latent noise"):
        StochasticInterpolant("encdec", "zero")
    with pytest.raises(ValueError, match="encdec.*needs latent noise"):
        StochasticInterpolant("encdec", lambda t: 0.0 * t)
    with pytest.raises(ValueError, match="has no latent gamma"):
        StochasticInterpolant("one_sided_linear", "sqrt")
    with pytest.raises(ValueError, match=r"\|gamma\(t\)\| < 1"):
        StochasticInterpolant("trig", "sin2")
    proc = StochasticInterpolant("linear", "sqrt")
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="t_min=1e-3"):
        interpolant_loss(lambda x, t, c: x, proc, x, x, key=jax.random.key(0), target="s", t_min=0.0)
    with pytest.raises(ValueError, match="target must be one of"):
        interpolant_loss(lambda x, t, c: x, proc, x, x, key=jax.random.key(0), target="x0")
