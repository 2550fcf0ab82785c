"""What every solver is written against: the denoiser and the solver interface."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from genflow.prediction import Prediction, to_x0_eps
from genflow.processes._base import AbstractGaussianPath, broadcast_to_data

ModelFn = Callable[..., Array]
"""``model_fn(x, t, cond=None) -> array like x`` with ``x: (b, *data_shape)`` and ``t: (b,)``."""


class Denoiser:
    """``denoise(x, t) -> (x0_hat, eps_hat)`` built once from a model and its prediction kind.

    Solvers only see this object: they never call the network directly, so every solver
    works with every parameterization. It also offers the derived fields that solvers use
    (probability-flow velocity and score) and counts the network evaluations traced through
    it, which is how :func:`genflow.samplers.sample` reports an exact NFE.

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
    ):
        self.model_fn = model_fn
        self.process = process
        self.prediction = Prediction.parse(prediction)
        self.cond = cond
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
        # Conversion coefficients stay in the grid's precision even for low-precision x.
        return to_x0_eps(self.process, self.prediction, pred, x, t)

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
