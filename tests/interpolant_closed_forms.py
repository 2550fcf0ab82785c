"""Closed forms of stochastic interpolants between two Gaussians, shared by the process and
sampler tests (not a test module), written out here independently of genflow.

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
