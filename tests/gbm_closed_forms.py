"""Closed forms of geometric Brownian motion shared by the process and sampler tests (not a
test module), written out here independently of genflow.

Forward ``dX = mu X dt + sigma X dW`` (t = 0 data, t = 1 noise), so ``log X_t | x0`` is
``N(log x0 + (mu - sigma^2/2) t, sigma^2 t)``. If ``log X_0`` is the mixture
``sum_i w_i N(m_i, v0)`` (``v0 = 0``: point masses at ``a_i = e^{m_i}``), then ``log X_t`` is
the mixture ``sum_i w_i N(m_i(t), v(t))`` with ``m_i(t) = m_i + (mu - sigma^2/2) t`` and
``v(t) = v0 + sigma^2 t``, and, with responsibilities ``r_i(x) ~ w_i N(log x; m_i(t), v(t))``,

    p_t(x) = (1/x) sum_i w_i N(log x; m_i(t), v(t)),
    x grad log p_t(x) = -1 - sum_i r_i(x) (log x - m_i(t)) / v(t).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from genflow.processes import GeometricBrownianMotion

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
