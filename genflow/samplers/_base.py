"""What every solver is written against: the denoiser and the solver interface."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from genflow.prediction import Prediction, to_x0_eps
from genflow.processes._base import AbstractGaussianPath, broadcast_to_data, pytree_dataclass

ModelFn = Callable[..., Array]
"""``model_fn(x, t, cond=None) -> array like x`` with ``x: (b, *data_shape)`` and ``t: (b,)``."""


class Denoiser:
    """``denoise(x, t) -> (x0_hat, eps_hat)`` built once from a model and its prediction kind.

    Solvers only see this object: they never call the network directly, so every solver
    works with every parameterization. It also offers the derived fields that solvers use
    (probability-flow velocity and score) and counts the network evaluations traced through
    it, which is how :func:`genflow.samplers.sample` reports an exact NFE.

    With ``thresholding`` (e.g. :class:`DynamicThresholding`), ``x0_hat`` is corrected
    and ``eps_hat`` recomputed from it, so every solver sees the corrected pair.

    Attributes:
      process: the Gaussian path of the model.
      calls: network evaluations traced since the last :meth:`reset_calls`.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        process: AbstractGaussianPath,
        prediction: Prediction | str,
        cond: Any = None,
        thresholding: Callable[[Array], Array] | None = None,
    ):
        self.model_fn = model_fn
        self.process = process
        self.prediction = Prediction.parse(prediction)
        self.cond = cond
        self.thresholding = thresholding
        self.calls = 0

    def reset_calls(self) -> None:
        self.calls = 0

    def raw(self, x: Array, t: ArrayLike) -> Array:
        """The network output at ``(x, t)``, with ``t`` broadcast to ``(b,)``."""
        self.calls += 1
        t_b = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        return self.model_fn(x, t_b, self.cond).astype(x.dtype)

    def __call__(self, x: Array, t: ArrayLike) -> tuple[Array, Array]:
        pred = self.raw(x, t)
        # Conversion coefficients stay in the grid's precision even for low-precision x; the
        # results are returned in x's dtype (solvers keep them in their scan state).
        x0, eps = to_x0_eps(self.process, self.prediction, pred, x, t)
        x0, eps = x0.astype(x.dtype), eps.astype(x.dtype)
        if self.thresholding is not None:
            # Correct x0_hat and keep the pair consistent: x = alpha x0 + sigma eps.
            x0 = self.thresholding(x0).astype(x0.dtype)
            alpha, sigma = self.process.marginal(t)
            eps = ((x - broadcast_to_data(alpha, x) * x0) / broadcast_to_data(sigma, x)).astype(
                x.dtype
            )
        return x0, eps

    def velocity(self, x: Array, t: ArrayLike) -> Array:
        """Probability-flow ODE drift ``dx/dt = alpha'_t x0_hat + sigma'_t eps_hat``.

        For a Gaussian path this equals ``f_t x - g_t^2 / 2 * score``.
        """
        x0, eps = self(x, t)
        d_alpha, d_sigma = self.process.marginal_derivative(t)
        return broadcast_to_data(d_alpha, x) * x0 + broadcast_to_data(d_sigma, x) * eps

    def score(self, x: Array, t: ArrayLike) -> Array:
        """``grad log p_t(x) = -eps_hat / sigma_t``."""
        _, eps = self(x, t)
        _, sigma = self.process.marginal(t)
        return -eps / broadcast_to_data(sigma, x)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class DynamicThresholding:
    """Dynamic thresholding of ``x0_hat`` (Saharia et al. 2022, "Imagen").

    Per sample, ``s`` is the ``ratio``-quantile of ``|x0_hat|`` over all its entries,
    raised to at least ``max_value``; ``x0_hat`` is clipped to ``[-s, s]`` and rescaled by
    ``max_value / s``. Values already within ``[-max_value, max_value]`` are unchanged.

    Attributes:
      ratio: the quantile on a 0..1 scale (0.995 means the 99.5th percentile).
      max_value: the data range's bound (1 for data scaled to ``[-1, 1]``).
    """

    ratio: float = 0.995
    max_value: float = 1.0

    def __post_init__(self):
        if isinstance(self.ratio, (int, float)) and not 0.0 < self.ratio <= 1.0:
            hint = f" (did you mean {self.ratio / 100}?)" if 1.0 < self.ratio <= 100.0 else ""
            raise ValueError(
                f"ratio is a quantile on a 0..1 scale, got {self.ratio}{hint}."
            )
        if isinstance(self.max_value, (int, float)) and not self.max_value > 0:
            raise ValueError(f"max_value must be positive, got {self.max_value}.")

    def __call__(self, x0: Array) -> Array:
        flat = jnp.abs(x0.reshape(x0.shape[0], -1)).astype(jnp.result_type(x0, jnp.float32))
        s = jnp.maximum(jnp.quantile(flat, self.ratio, axis=1), self.max_value)
        s = broadcast_to_data(s, x0)
        return (jnp.clip(x0, -s, s) * (self.max_value / s)).astype(x0.dtype)


class AbstractSolver(abc.ABC):
    """One step of a sampler from ``t_cur`` to ``t_next < t_cur``.

    Attributes:
      order: the theoretical order (ODE solvers) or strong order (SDE solvers).
      stochastic: whether :meth:`step` uses its key.
      min_steps: the fewest steps the solver accepts.
    """

    order: float
    stochastic: bool
    min_steps: int = 1

    def make_grid(
        self, grid: Callable[..., Array], process: AbstractGaussianPath,
        t_start: float, t_end: float, num_steps: int,
    ) -> Array:
        """The grid :func:`genflow.samplers.sample` scans over, one :meth:`step` per interval.

        ``grid(process, t_start, t_end, num_steps)`` for most solvers; a solver whose steps
        take several model evaluations at intermediate times (singlestep DPM-Solver) returns
        the grid of its evaluation times instead, so that one scan iteration is one
        evaluation.
        """
        return grid(process, t_start, t_end, num_steps)

    def init(self, x: Array, ts: Array) -> Any:
        """Solver state before the first step (``None`` for one-step methods)."""
        return None

    @abc.abstractmethod
    def step(
        self,
        denoise: Denoiser,
        state: Any,
        x: Array,
        t_cur: Array,
        t_next: Array,
        *,
        key: PRNGKeyArray,
    ) -> tuple[Array, Any]:
        """Advance ``x`` from ``t_cur`` to ``t_next``; returns ``(x_next, state)``."""


class SampleResult(NamedTuple):
    """What :func:`genflow.samplers.sample` returns.

    Attributes:
      x: the samples at ``t_end`` (or the final denoised estimate), like ``x_init``.
      trajectory: ``(num_steps + 1, *x.shape)`` states along the grid, or ``None``.
      nfe: the number of network evaluations (per batch of ``x``).
    """

    x: Array
    trajectory: Array | None
    nfe: int
