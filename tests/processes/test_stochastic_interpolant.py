"""Stochastic interpolants between two densities, against closed forms written out here.

Coefficients in genflow's time (data x0 at t = 0), transcribed from Albergo, Boffi &
Vanden-Eijnden (2023) with s = 1 - t: I = alpha x0 + beta x1 with linear (1 - t, t); trig
sqrt(1 - g^2) (cos(pi t/2), sin(pi t/2)); encdec cos^2(pi t) ([t < 1/2], [t > 1/2]); mirror
(1, 0); latent g^2 = a t(1-t), (t(1-t))^2, sin^4(pi t).

Gaussian ends. x0 ~ N(m0, S0), x1 ~ N(m1, S1), z ~ N(0, I) independent, so x_t is Gaussian:

    mu_t = alpha m0 + beta m1,      Sigma_t = alpha^2 S0 + beta^2 S1 + g^2 I.

For a target y jointly Gaussian with x_t, E[y | x_t = x] = E y + Cov(y, x_t) Sigma_t^{-1} (x - mu_t):

    y = dI + g' z:  Cov = alpha' alpha S0 + beta' beta S1 + g g' I   -> b(t, x)
    y = dI:         Cov = alpha' alpha S0 + beta' beta S1             -> v(t, x)
    y = z:          Cov = g I   (one-sided: y = x1, Cov = beta S1)    -> eta(t, x)
    s(t, x) = grad log N(x; mu_t, Sigma_t) = -Sigma_t^{-1} (x - mu_t).

b is finite at both ends (g g' is), so the ODE and SDE run on [0, 1] exactly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.processes import StochasticInterpolant, interpolant_ode, interpolant_sde, interpolant_loss

M0, S0 = np.array([1.5, -0.5]), np.array([[0.5, 0.2], [0.2, 0.3]])  # rho_0: the data
M1, S1 = np.array([-1.0, 2.0]), np.array([[2.0, -0.6], [-0.6, 1.0]])  # rho_1: the other end
N = 20_000


def paper_coefs(interpolant, gamma, a=1.0):
    """``t -> (alpha, alpha', beta, beta', g^2, g g')``, written independently of genflow."""

    def g2_fn(t):
        if gamma == "sqrt":
            return a * t * (1 - t), a * (1 - 2 * t)
        if gamma == "quadratic":
            q = t * (1 - t)
            return q**2, 2 * q * (1 - 2 * t)
        if gamma == "sin2":
            sn, cs = jnp.sin(math.pi * t), jnp.cos(math.pi * t)
            return sn**4, 4 * math.pi * sn**3 * cs
        return 0 * t, 0 * t

    def coefs(t):
        g2, dg2 = g2_fn(t)
        one, zero = jnp.ones_like(t), jnp.zeros_like(t)
        kind = interpolant.replace("one_sided_", "")
        if kind == "linear":
            al, dal, be, dbe = 1 - t, -one, t, one
        elif kind == "trig":
            r, dr = jnp.sqrt(1 - g2), -0.5 * dg2 / jnp.sqrt(1 - g2)
            c, d = jnp.cos(math.pi * t / 2), jnp.sin(math.pi * t / 2)
            al, dal = r * c, dr * c - math.pi / 2 * r * d
            be, dbe = r * d, dr * d + math.pi / 2 * r * c
        elif kind == "encdec":
            c2, dc2 = jnp.cos(math.pi * t) ** 2, -math.pi * jnp.sin(2 * math.pi * t)
            lo, hi = t < 0.5, t > 0.5
            al, dal = jnp.where(lo, c2, 0.0), jnp.where(lo, dc2, 0.0)
            be, dbe = jnp.where(hi, c2, 0.0), jnp.where(hi, dc2, 0.0)
        else:  # mirror
            al, dal, be, dbe = one, zero, zero, zero
        return al, dal, be, dbe, g2, 0.5 * dg2

    return coefs


def inv2(m):
    """Inverse of a batch of 2x2 matrices (adjugate over determinant)."""
    p, q, r, u = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    adj = jnp.stack([jnp.stack([u, -q], -1), jnp.stack([-r, p], -1)], -2)
    return adj / (p * u - q * r)[..., None, None]


def exact_fields(interpolant, gamma, m0=M0, s0=S0, m1=M1, s1=S1, a=1.0):
    """Exact b, v, s, eta (``f(x, t, cond)``) for independent Gaussian ends (module docstring)."""
    coefs = paper_coefs(interpolant, gamma, a)
    m0, s0, m1, s1 = (jnp.asarray(v) for v in (m0, s0, m1, s1))
    eye = jnp.eye(2)

    def parts(x, t):
        al, dal, be, dbe, g2, ggd = (c[:, None, None] for c in coefs(t))
        mu = al[..., 0] * m0 + be[..., 0] * m1
        sigma = al**2 * s0 + be**2 * s1 + g2 * eye
        white = inv2(sigma) @ (x - mu)[..., None]  # Sigma^{-1} (x - mu), (b, 2, 1)
        mean_di = dal[..., 0] * m0 + dbe[..., 0] * m1
        cov_v = dal * al * s0 + dbe * be * s1
        return white, mean_di, cov_v, ggd, be, g2

    def b(x, t, cond=None):
        white, mean_di, cov_v, ggd, _, _ = parts(x, t)
        return mean_di + ((cov_v + ggd * eye) @ white)[..., 0]

    def v(x, t, cond=None):
        white, mean_di, cov_v, *_ = parts(x, t)
        return mean_di + (cov_v @ white)[..., 0]

    def s(x, t, cond=None):
        return -parts(x, t)[0][..., 0]

    def eta(x, t, cond=None):
        white, *_, be, g2 = parts(x, t)
        cov = be * s1 if interpolant.startswith("one_sided") else jnp.sqrt(g2) * eye
        return (cov @ white)[..., 0]

    return {"b": b, "v": v, "s": s, "eta": eta}


def gaussian(key, m, s, n=N):
    return jnp.asarray(m) + jax.random.normal(key, (n, 2)) @ np.linalg.cholesky(s).T


def assert_gaussian(x, m, s, n_se=5.0):
    """Mean and covariance of ``x`` match N(m, s) within ``n_se`` standard errors."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mean_se = np.sqrt(np.diag(s) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - m), n_se * mean_se)
    cov_se = np.sqrt((np.outer(np.diag(s), np.diag(s)) + s**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(x.T) - s), n_se * cov_se)


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


# ------------------------------------------------------------------------- generation
@pytest.mark.parametrize("interpolant,gamma", [("linear", "sqrt"), ("trig", "quadratic"), ("encdec", "sin2")])
def test_ode_maps_rho1_to_rho0(interpolant, gamma):
    b = exact_fields(interpolant, gamma)["b"]
    x1 = gaussian(jax.random.key(4), M1, S1)
    out = interpolant_ode(b, StochasticInterpolant(interpolant, gamma), x1, num_steps=100)
    assert out.nfe == 200 and out.x.shape == x1.shape and out.x.dtype == x1.dtype
    assert_gaussian(out.x, M0, S0)
    if interpolant == "linear":  # and back: forward in time the same flow returns x1 (Euler)
        back = interpolant_ode(b, StochasticInterpolant(interpolant, gamma), out.x, num_steps=400,
                             t_start=0.0, t_end=1.0, method="euler")
        assert back.nfe == 400
        np.testing.assert_allclose(back.x, x1, atol=0.05)


@pytest.mark.parametrize("interpolant,kind,epsilon", [
    ("linear", "s", 0.5), ("linear", "eta", lambda t: 2.0 * t * (1 - t)), ("mirror", "s", 1.0)],
    ids=["score-constant-eps", "eta-vanishing-eps", "mirror"])
def test_sde_maps_rho1_to_rho0(interpolant, kind, epsilon):
    """For ``mirror`` rho_1 = rho_0 and the SDE must keep it (a diffusion that resamples it)."""
    m1, s1 = (M0, S0) if interpolant == "mirror" else (M1, S1)
    proc = StochasticInterpolant(interpolant, "sqrt")
    fields = exact_fields(interpolant, "sqrt", m1=m1, s1=s1)
    x1 = gaussian(jax.random.key(5), m1, s1)
    out = interpolant_sde(fields["b"], fields[kind], proc, x1, key=jax.random.key(6), num_steps=400,
                        epsilon=epsilon, s_kind=kind, return_trajectory=True)
    assert out.nfe == 800 and out.trajectory.shape == (401, N, 2)
    assert bool(jnp.all(jnp.isfinite(out.x)))
    assert_gaussian(out.x, M0, S0)


def test_sde_with_the_wrong_sign_fails():
    """Negative control: b + eps s (the forward-time drift) run backwards misses rho_0."""
    proc = StochasticInterpolant("linear", "sqrt")
    fields = exact_fields("linear", "sqrt")
    x1 = gaussian(jax.random.key(5), M1, S1)
    out = interpolant_sde(fields["b"], lambda x, t, c=None: -fields["s"](x, t), proc, x1,
                        key=jax.random.key(6), num_steps=400, epsilon=0.5)
    with pytest.raises(AssertionError):
        assert_gaussian(out.x, M0, S0)


def test_sampling_is_deterministic_per_key_and_keeps_float32():
    proc = StochasticInterpolant("linear", "quadratic")
    x = jax.random.normal(jax.random.key(7), (64, 2), jnp.float32)

    def field(x, t, cond=None):  # a float32 network stand-in
        return -x * t[:, None].astype(x.dtype)

    run = jax.jit(lambda k: interpolant_sde(field, field, proc, x, key=k, num_steps=5).x)
    a1, a2, a3 = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    assert a1.dtype == jnp.float32
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, a3)
    assert interpolant_ode(field, proc, x, num_steps=3, method="euler").x.dtype == jnp.float32
    xt, z = proc.sample_xt(jax.random.key(0), x, x, jnp.full((64,), 0.5, jnp.float32))
    assert xt.dtype == z.dtype == jnp.float32
    assert interpolant_loss(field, proc, x, x, key=jax.random.key(0)).dtype == jnp.float32


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
    with pytest.raises(ValueError, match="t_start = 1 - 1e-3"):
        interpolant_sde(lambda x, t, c: x, lambda x, t, c: x, proc, x, key=jax.random.key(0),
                      num_steps=2, s_kind="eta", epsilon=1.0)
    with pytest.raises(ValueError, match="num_steps"):
        interpolant_ode(lambda x, t, c: x, proc, x, num_steps=0)
