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

Reverse-time sampling (:func:`sample_gbm`): with ``g(x) = sigma x`` elementwise, Anderson's
reverse SDE ``dX = [f - div(g g^T) - g^2 grad log p_t] dt + g dW_bar`` reads

    dX = [mu X - 2 sigma^2 X - sigma^2 X o X o grad log p_t(X)] dt + sigma X dW_bar,

and in log space (``grad_y log p_Y = x o grad_x log p_X + 1``)

    dY = [(mu - sigma^2/2) - sigma^2 (x o grad log p_t + 1)] dt + sigma dW_bar.

Positive data come from ``[-1, 1]`` by the affine map :func:`to_positive` (inverse
:func:`from_positive`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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

_METHODS = ("exponential", "euler_maruyama")


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

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw ``X_1 = exp(m_1 + sqrt(v_1) z)`` (log-normal, always positive), with
        ``(m_1, v_1)`` from :meth:`prior_log_moments` broadcast against ``shape``."""
        mean, var = self.prior_log_moments(dtype)
        z = jax.random.normal(key, shape, dtype)
        return jnp.exp(mean + jnp.sqrt(var) * z).astype(dtype)


# ---------------------------------------------------------------------- reverse samplers
def _exponential_step(process, x, h, z, delta):
    # Dale-Langevin (sign-preserving) step: Euler-Maruyama of the reverse SDE of Y = log X,
    # exponentiated: x <- x exp(delta sigma^2 h - delta (mu - 3/2 sigma^2) + sigma sqrt(delta) z).
    s2 = process.sigma**2
    noise = process.sigma * jnp.sqrt(delta) * z
    log_gain = delta * s2 * h - delta * (process.mu - 1.5 * s2) + noise
    return x * jnp.exp(log_gain)


def _euler_maruyama_step(process, x, h, z, delta):
    # Sign-agnostic step: Euler-Maruyama of the ambient reverse SDE,
    # x <- x [1 + delta (2 sigma^2 - mu) + delta sigma^2 h + sigma sqrt(delta) z].
    s2 = process.sigma**2
    noise = process.sigma * jnp.sqrt(delta) * z
    gain = 1.0 + delta * (2.0 * s2 - process.mu) + delta * s2 * h + noise
    return x * gain


_STEPS = {"exponential": _exponential_step, "euler_maruyama": _euler_maruyama_step}
_GRIDS = ("uniform", "quadratic", "log")


def sample_gbm(
    score_fn: Callable[..., Array],
    process: GeometricBrownianMotion,
    *,
    key: PRNGKeyArray,
    shape: tuple[int, ...] | None = None,
    x_init: Float[Array, "b *d"] | None = None,
    num_steps: int,
    method: str = "exponential",
    t_start: float = 1.0,
    t_end: float = 1e-3,
    grid: str = "uniform",
    denoise_final: bool = False,
    cond: Any = None,
    dtype=jnp.float32,
    return_trajectory: bool = False,
):
    """Sample the reverse-time GBM on the uniform grid ``t_start = t_0 > ... > t_N = t_end``.

    With ``h = x o score_fn(x, t_k)`` (the Hyvarinen score), ``delta = t_k - t_{k+1}`` and
    ``z ~ N(0, I)``, one step is

    * ``"exponential"`` (the paper's Dale-Langevin sampler, Euler-Maruyama in ``log x``):
      ``x <- x o exp(delta sigma^2 h - delta (mu - 3/2 sigma^2) + sigma sqrt(delta) z)``;
      it keeps the sign of every entry, so positive samples stay positive;
    * ``"euler_maruyama"`` (sign-agnostic, Euler-Maruyama of the ambient reverse SDE
      ``dX = [mu X - 2 sigma^2 X - sigma^2 X o X o grad log p_t] dt + sigma X dW_bar``):
      ``x <- x o [1 + delta (2 sigma^2 - mu) + delta sigma^2 h + sigma sqrt(delta) z]``;
      it can leave the positive orthant when a step is large.

    This is the plain discretisation of the reverse SDE on the time grid. The authors' samplers
    use a tuned constant step (not ``1/N``), several inner steps per level and noise annealed
    by 0.995 per step; none of that is reproduced here.

    Noise is added at every step (no final denoising), so the result follows ``p_{t_end}``;
    the score is never evaluated at ``t_end`` itself, so ``t_end = 0`` is allowed when the
    score is finite as ``t -> 0``. Jit-able (``lax.scan``, no ``lax.cond``) when ``num_steps``,
    ``method``, ``shape`` and ``return_trajectory`` are static.

    Args:
      score_fn: ``score_fn(x, t, cond) -> grad_x log p_t(x)`` shaped like ``x``, ``t: (b,)``.
      process: the forward GBM the score belongs to.
      key: randomness for the prior draw (when ``x_init`` is not given) and the steps.
      shape: ``(b, *data_shape)`` to start from ``process.prior_sample``; or
      x_init: a starting batch at ``t_start`` (exactly one of the two).
      num_steps: number of steps (= network evaluations), >= 1.
      method: ``"exponential"`` or ``"euler_maruyama"``.
      t_start, t_end: the ends of the grid, ``t_start > t_end >= 0``.
      grid: ``"uniform"`` in ``t``; ``"quadratic"``, uniform in ``sqrt(t)``, i.e. in the noise
        scale ``sigma sqrt(t)`` of ``log x`` (the last steps shrink like ``1/N^2``); or
        ``"log"``, geometric in ``t`` (uniform in the log of the noise scale, as a log-SNR grid:
        the choice for a small ``t_end`` > 0, where the data's fine structure forms).
      denoise_final: end with Tweedie's estimate in log space instead of ``x_{t_end}``,
        ``log x0_hat = log x - (mu - sigma^2/2) t + sigma^2 t (h + 1)`` at ``t = t_end``
        (one more score evaluation; it removes the noise that ``p_{t_end}`` still holds).
      cond: passed through to ``score_fn``.
      dtype: dtype of the prior draw (ignored with ``x_init``).
      return_trajectory: also return the ``(num_steps + 1, *x.shape)`` states.

    Returns:
      ``genflow.samplers.SampleResult(x, trajectory, nfe)``, ``nfe = num_steps`` (+1 with
      ``denoise_final``).
    """
    from genflow.samplers._base import SampleResult  # lazy: samplers import processes

    if method not in _STEPS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    if grid not in _GRIDS:
        raise ValueError(f"grid must be one of {_GRIDS}, got {grid!r}.")
    if (shape is None) == (x_init is None):
        raise ValueError("Pass exactly one of shape= (start from the prior) or x_init=.")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
    if _is_number(t_start) and _is_number(t_end) and not t_start > t_end >= 0:
        raise ValueError(
            f"Sampling runs backwards in time: need t_start > t_end >= 0, got "
            f"t_start={t_start}, t_end={t_end}."
        )
    key_prior, key_steps = jax.random.split(key)
    if x_init is None:
        x_init = process.prior_sample(key_prior, tuple(shape), dtype)
    x_init = jnp.asarray(x_init)
    grid_dtype = jnp.result_type(x_init.dtype, jnp.float32)
    if grid == "log" and _is_number(t_end) and not t_end > 0:
        raise ValueError("grid='log' is geometric in t and needs t_end > 0 (e.g. 1e-6).")
    if grid == "uniform":
        ts = jnp.linspace(t_start, t_end, num_steps + 1, dtype=grid_dtype)
    elif grid == "log":
        ts = jnp.geomspace(jnp.asarray(t_start, grid_dtype), jnp.asarray(t_end, grid_dtype),
                           num_steps + 1).at[0].set(t_start).at[-1].set(t_end)
    else:
        root = jnp.linspace(jnp.sqrt(jnp.asarray(t_start, grid_dtype)),
                            jnp.sqrt(jnp.asarray(t_end, grid_dtype)), num_steps + 1)
        ts = (root**2).at[0].set(t_start).at[-1].set(t_end)
    keys = jax.random.split(key_steps, num_steps)
    step_fn = _STEPS[method]

    def body(x, inputs):
        t_cur, t_next, k = inputs
        t_b = jnp.full((x.shape[0],), t_cur, grid_dtype)
        h = x * score_fn(x, t_b, cond).astype(x.dtype)
        z = jax.random.normal(k, x.shape, x.dtype)
        x_next = step_fn(process, x, h, z, t_cur - t_next).astype(x.dtype)
        return x_next, (x_next if return_trajectory else None)

    x, traj = jax.lax.scan(body, x_init, (ts[:-1], ts[1:], keys))
    if denoise_final:  # Tweedie in log space, written multiplicatively (keeps each sign)
        t_last = ts[-1]
        h = x * score_fn(x, jnp.full((x.shape[0],), t_last, grid_dtype), cond).astype(x.dtype)
        s2t = process.sigma**2 * t_last
        x = (x * jnp.exp(s2t * (h + 1.0) - (process.mu - 0.5 * process.sigma**2) * t_last)
             ).astype(x.dtype)
    if return_trajectory:
        traj = jnp.concatenate([x_init[None], traj], axis=0)
        if denoise_final:
            traj = traj.at[-1].set(x)
    return SampleResult(x=x, trajectory=traj, nfe=num_steps + int(denoise_final))
