"""Geometric Brownian motion (GBM): multiplicative-noise forward process, log-normal marginals.

Following Shetty, Prasath & Seelamantula, "Dale meets Langevin: A Multiplicative Denoising
Diffusion Model" (arXiv 2510.02730; authors' code Madhavaprasath23/Dale-Meets-Langevin), the
forward process runs, elementwise on positive data ``x > 0``, the SDE

    dX = mu X dt + sigma X dW,        t in [0, 1] (t = 0 data, t = 1 noise),

with constant ``mu`` and ``sigma`` (the paper's choice; the authors' MNIST setting is
``sigma = 0.8``, ``mu = sigma^2 / 2`` on a grid of N = 1000 steps over ``[0, 1]``, the defaults
here). By Ito's formula ``Y = log X`` is a Brownian motion with drift,
``dY = (mu - sigma^2/2) dt + sigma dW`` (the Lamperti transform), so the transition kernel is
log-normal:

    log X_t | X_0 ~ N(log X_0 + (mu - sigma^2/2) t, sigma^2 t),
    X_t = X_0 exp((mu - sigma^2/2) t + sigma sqrt(t) z),   z ~ N(0, I).

Its exact conditional score (the Jacobian of ``y = log x`` contributes ``-1/x``) is

    grad_x log p(x_t | x_0) = -(1 + (log x_t - log x_0 - (mu - sigma^2/2) t) / (sigma^2 t)) / x_t,

so the *Hyvarinen score* ``x_t * grad log p = -1 - z / (sigma sqrt(t))`` is what the samplers
and the loss use. It diverges like ``t^{-1/2}`` as ``t -> 0``; :meth:`conditional_score`
evaluates it at ``max(t, T_FLOOR)`` (``T_FLOOR = 1e-5``), and the loss
(:func:`genflow.processes.gbm_score_loss`) never divides by ``t`` at all.

There is no stationary law: the prior at ``t = 1`` is the log-normal that matches the first two
moments of ``log X_1`` when ``log X_0`` has mean ``data_log_mean`` and standard deviation
``data_log_std`` (per channel in the authors' code):
``log X_1 ~ N(data_log_mean + mu - sigma^2/2, data_log_std^2 + sigma^2)``. It is exact when the
data are themselves log-normal. (The authors' code samples fitted constants instead, e.g. for
MNIST ``log X_1 ~ N(0.1565, 0.8353^2)``; :meth:`GeometricBrownianMotion.from_data` sets the
moments from a data sample.)

Reverse-time sampling (the solvers :class:`genflow.samplers.GBMExponential` and
:class:`genflow.samplers.GBMEulerMaruyama`): with ``g(x) = sigma x`` elementwise, Anderson's
reverse SDE ``dX = [f - div(g g^T) - g^2 grad log p_t] dt + g dW_bar`` reads

    dX = [mu X - 2 sigma^2 X - sigma^2 X o X o grad log p_t(X)] dt + sigma X dW_bar,

and in log space (``grad_y log p_Y = x o grad_x log p_X + 1``)

    dY = [(mu - sigma^2/2) - sigma^2 (x o grad log p_t + 1)] dt + sigma dW_bar.

Positive data come from ``[-1, 1]`` by the affine map :func:`to_positive` (inverse
:func:`from_positive`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from genflow.processes._base import (
    AbstractForwardSDE,
    as_float_array as _as_float,
    broadcast_to_data,
    pytree_dataclass,
)

T_FLOOR = 1e-5
"""Smallest time at which :meth:`GeometricBrownianMotion.conditional_score` is evaluated."""

def _time_like(t: ArrayLike, x: Array) -> Array:
    # Times in the wider of t's and x's precision, at least float32. (as_float_array alone
    # would turn a weakly typed float64 array, e.g. from jnp.where(c, 0.5, 0.25), into float32.)
    return jnp.asarray(t, dtype=jnp.result_type(t, x.dtype, jnp.float32))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_range(low: Any, high: Any) -> None:
    if _is_number(low) and _is_number(high) and not 0.0 < low < high:
        raise ValueError(
            f"The positive range needs 0 < low < high, got low={low}, high={high}; "
            "pick e.g. low=1.0, high=2.0 (the authors' images + 1) or low=c, high=1 - c."
        )


def check_positive(x0: ArrayLike) -> None:
    """Refuse data that are not strictly positive (checked when ``x0`` is concrete)."""
    try:
        low = float(np.min(np.asarray(x0)))
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced inside jit: the caller owns it
    if not low > 0:
        raise ValueError(
            f"geometric Brownian motion needs strictly positive data, got a minimum of {low}; "
            "map data in [-1, 1] with to_positive(x) (and back with from_positive)."
        )


def to_positive(
    x: Float[ArrayLike, "*s"], *, low: float = 1.0, high: float = 2.0
) -> Float[Array, "*s"]:
    """Map data in ``[-1, 1]`` affinely onto ``[low, high]`` with ``0 < low < high``.

    ``y = low + (x + 1) / 2 * (high - low)``. The defaults ``[1, 2]`` are the authors' choice
    (images in ``[0, 1]`` shifted by one), which keeps ``log y`` in ``[0, log 2]``; the form
    ``(x + 1)/2 (1 - 2c) + c`` is ``low = c, high = 1 - c``. A small ``low`` stretches
    ``log y`` far below zero, where the GBM noise then hardly moves it.
    """
    _check_range(low, high)
    x = _as_float(x)
    return low + 0.5 * (x + 1.0) * (high - low)


def from_positive(
    y: Float[ArrayLike, "*s"], *, low: float = 1.0, high: float = 2.0
) -> Float[Array, "*s"]:
    """Inverse of :func:`to_positive`: ``x = 2 (y - low) / (high - low) - 1``."""
    _check_range(low, high)
    y = _as_float(y)
    return 2.0 * (y - low) / (high - low) - 1.0


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class GeometricBrownianMotion(AbstractForwardSDE):
    """GBM ``dX = mu X dt + sigma X dW`` on ``t in [0, 1]``, elementwise on ``X > 0``.

    Marginals: ``log X_t | X_0 ~ N(log X_0 + (mu - sigma^2/2) t, sigma^2 t)``, so
    ``E[X_t | X_0] = X_0 e^{mu t}`` and ``E[X_t^2 | X_0] = X_0^2 e^{(2 mu + sigma^2) t}``.

    Every field is a pytree leaf (a scalar, or an array broadcasting against one example,
    e.g. ``(C, 1, 1)`` per channel), so changing them does not recompile.

    Attributes:
      mu: drift rate. ``mu = sigma^2 / 2`` (default) makes ``log X`` driftless.
      sigma: volatility, > 0 (default 0.8, as in the authors' MNIST runs).
      data_log_mean, data_log_std: mean and standard deviation of ``log X_0`` over the data,
        used only by :meth:`prior_sample` (the defaults describe data equal to 1).
    """

    mu: float = 0.32
    sigma: float = 0.8
    data_log_mean: float = 0.0
    data_log_std: float = 0.0

    def __post_init__(self):
        if _is_number(self.sigma) and not self.sigma > 0:
            raise ValueError(f"GeometricBrownianMotion needs sigma > 0, got sigma={self.sigma}.")
        if _is_number(self.data_log_std) and not self.data_log_std >= 0:
            raise ValueError(
                "GeometricBrownianMotion needs data_log_std >= 0 (the standard deviation of "
                f"log x0 over the data), got {self.data_log_std}."
            )

    @classmethod
    def from_data(
        cls, x0: Float[ArrayLike, "n *d"], *, sigma: float = 0.8, mu: float | None = None
    ) -> GeometricBrownianMotion:
        """The GBM whose prior matches positive data ``x0``: ``data_log_mean`` and
        ``data_log_std`` are the mean and standard deviation of ``log x0`` over all entries.

        Args:
          x0: positive data (any shape; e.g. a sample of the training set after
            :func:`to_positive`).
          sigma: the volatility.
          mu: the drift rate; default ``sigma^2 / 2`` (``log X`` without drift).
        """
        check_positive(x0)
        log_x = np.log(np.asarray(x0, np.float64))
        return cls(
            mu=0.5 * sigma**2 if mu is None else mu, sigma=sigma,
            data_log_mean=float(log_x.mean()), data_log_std=float(log_x.std()),
        )

    # ------------------------------------------------------------------ SDE coefficients
    def drift(self, x: Float[Array, "b *d"], t: ArrayLike) -> Float[Array, "b *d"]:
        """``f(x, t) = mu x`` (``t`` is unused: the coefficients are constant)."""
        return (self.mu * x).astype(x.dtype)

    def diffusion(self, x: Float[Array, "b *d"], t: ArrayLike) -> Float[Array, "b *d"]:
        """``g(x, t) = sigma x``, elementwise (diagonal multiplicative noise)."""
        return (self.sigma * x).astype(x.dtype)

    # ------------------------------------------------------------------ marginals
    def log_moments(
        self, x0: Float[Array, "b *d"], t: Float[ArrayLike, "b"]
    ) -> tuple[Array, Array]:
        """Mean and variance of ``log X_t | X_0 = x0``:
        ``(log x0 + (mu - sigma^2/2) t, sigma^2 t)``, broadcast like ``x0``."""
        t = broadcast_to_data(_time_like(t, x0), x0)
        mean = jnp.log(x0) + (self.mu - 0.5 * self.sigma**2) * t
        var = self.sigma**2 * t * jnp.ones_like(mean)
        return mean, var

    def sample_xt(
        self, key: PRNGKeyArray, x0: Float[Array, "b *d"], t: Float[ArrayLike, "b"]
    ) -> tuple[Float[Array, "b *d"], Float[Array, "b *d"]]:
        """``x_t = x0 exp((mu - sigma^2/2) t + sigma sqrt(t) z)``; returns ``(x_t, z)``.

        Exact in law for every ``t >= 0``; ``x_t = x0`` at ``t = 0``. ``t`` is a scalar or
        has shape ``(b,)``; ``x0`` must be positive.
        """
        check_positive(x0)
        z = jax.random.normal(key, x0.shape, x0.dtype)
        t = broadcast_to_data(_time_like(t, x0), x0)
        log_gain = (self.mu - 0.5 * self.sigma**2) * t + self.sigma * jnp.sqrt(t) * z
        return (x0 * jnp.exp(log_gain)).astype(x0.dtype), z

    def conditional_score(
        self, x_t: Float[Array, "b *d"], x0: Float[Array, "b *d"], t: Float[ArrayLike, "b"]
    ) -> Float[Array, "b *d"]:
        """Exact ``grad_{x_t} log p(x_t | x0)`` of the log-normal kernel.

        ``-(1 + (log x_t - m_t) / v_t) / x_t`` with ``m_t, v_t`` from :meth:`log_moments`.
        ``v_t = sigma^2 t`` is evaluated at ``max(t, T_FLOOR)`` with ``T_FLOOR = 1e-5`` so that
        ``t = 0`` gives a finite (very steep) value instead of a division by zero.
        """
        t = jnp.maximum(_time_like(t, x_t), T_FLOOR)
        mean, var = self.log_moments(x0, t)
        return (-(1.0 + (jnp.log(x_t) - mean) / var) / x_t).astype(x_t.dtype)

    def prior_log_moments(self, dtype=jnp.float32) -> tuple[Array, Array]:
        """Mean and variance of ``log X_1`` for data with the declared log-moments:
        ``(data_log_mean + mu - sigma^2/2, data_log_std^2 + sigma^2)``, in ``dtype`` or wider."""
        dtype = jnp.result_type(dtype, jnp.float32)
        mean = jnp.asarray(self.data_log_mean, dtype) + self.mu - 0.5 * self.sigma**2
        var = jnp.asarray(self.data_log_std, dtype) ** 2 + self.sigma**2
        return mean, var

    # ------------------------------------------------------------------ noise scale (grids)
    def _log_sigma(self, dtype) -> Array:
        # The geometric mean of a per-channel sigma: grids depend on ratios of the noise scale
        # only, so any constant scale gives the same grid.
        return jnp.mean(jnp.log(jnp.asarray(self.sigma, dtype)))

    def log_snr(self, t: ArrayLike) -> Array:
        """``-log(sigma sqrt(t))``, minus the log of the noise scale of ``log x_t | x_0``.

        Strictly decreasing (``+inf`` at ``t = 0``), so that the grids of
        :mod:`genflow.samplers` apply: ``log_snr_uniform`` is geometric in ``t`` (uniform in
        the log of the noise scale) and ``karras`` uniform in ``(sigma sqrt t)^(1/rho)``. For a
        per-channel ``sigma`` its geometric mean is the scale (the grids do not depend on it).
        """
        t = _as_float(t)
        return -(self._log_sigma(t.dtype) + 0.5 * jnp.log(t))

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        """Inverse of :meth:`log_snr`: ``t = exp(-2 (lam + log sigma))``."""
        lam = _as_float(lam)
        return jnp.exp(-2.0 * (lam + self._log_sigma(lam.dtype)))

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw ``X_1 = exp(m_1 + sqrt(v_1) z)`` (log-normal, always positive), with
        ``(m_1, v_1)`` from :meth:`prior_log_moments` broadcast against ``shape``."""
        mean, var = self.prior_log_moments(dtype)
        z = jax.random.normal(key, shape, dtype)
        return jnp.exp(mean + jnp.sqrt(var) * z).astype(dtype)
