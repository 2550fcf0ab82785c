"""What every solver is written against: the fields (the denoiser and others) and the
solver interface."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from genflow.prediction import Prediction, to_x0_eps
from genflow.processes._base import AbstractGaussianPath, broadcast_to_data, pytree_dataclass

ModelFn = Callable[..., Array]
"""``model_fn(x, t, cond=None) -> array like x`` with ``x: (b, *data_shape)`` and ``t: (b,)``."""


class AbstractField(abc.ABC):
    """What a solver evaluates: a model together with its process and prediction kind.

    :func:`genflow.samplers.sample` builds ``solver.field_class(model_fn, process, prediction,
    cond, thresholding)`` once; solvers only see this object, never the network. Every field
    counts the network evaluations traced through it (``calls``), which is how ``sample()``
    reports an exact NFE, checks the network's output shape before tracing
    (:meth:`check_output`) and gives the final estimate of ``denoise_final=True``
    (:meth:`final`).

    Subclasses say which processes they fit (:meth:`fits`, a capability check) and refuse the
    others in their constructor with a ``TypeError`` that names the solvers that do fit.

    Attributes:
      model_fn, process, prediction, cond, thresholding: as given to the constructor.
      calls: network evaluations traced since the last :meth:`reset_calls`.
      final_available: whether :meth:`final` exists (class attribute; ``sample()`` refuses
        ``denoise_final=True`` before tracing otherwise).
    """

    final_available: ClassVar[bool] = True

    def __init__(
        self,
        model_fn: ModelFn,
        process: Any,
        prediction: Any,
        cond: Any = None,
        thresholding: Callable[[Array], Array] | None = None,
    ):
        self.model_fn = model_fn
        self.process = process
        self.prediction = prediction
        self.cond = cond
        self.thresholding = thresholding
        self.calls = 0

    # ------------------------------------------------------------------ processes
    @classmethod
    @abc.abstractmethod
    def fits(cls, process: Any) -> bool:
        """Whether this field can be built on ``process``."""

    @classmethod
    def _refuse(cls, process: Any, needs: str) -> None:
        """Raise the ``TypeError`` for a process this field does not fit."""
        name = type(process).__name__
        fitting = solvers_for(process)
        hint = (f"solvers for {name}: {', '.join(fitting)}" if fitting
                else f"no genflow solver fits {name}")
        raise TypeError(f"{cls.__name__} needs {needs}; {name} is not one ({hint}).")

    # ------------------------------------------------------------------ network calls
    def reset_calls(self) -> None:
        self.calls = 0

    def raw(self, x: Array, t: ArrayLike) -> Array:
        """The network output at ``(x, t)``, with ``t`` broadcast to ``(b,)``, in x's dtype."""
        self.calls += 1
        t_b = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        return self.model_fn(x, t_b, self.cond).astype(x.dtype)

    def output_shape(self, x: Array) -> tuple[int, ...]:
        """The shape the network must return at ``x`` (``x.shape`` unless overridden)."""
        return tuple(x.shape)

    def output_description(self, x: Array) -> str:
        return f"shaped like x {tuple(x.shape)}"

    def check_output(self, x: Array, t: ArrayLike) -> None:
        """Abstractly evaluate the network once so that a wrong output shape fails before tracing.

        Raises:
          ValueError: the output is not an array of :meth:`output_shape`.
        """
        t = jnp.asarray(t)
        t_b = jax.ShapeDtypeStruct((x.shape[0],), t.dtype)
        out = jax.eval_shape(lambda x_, t_: self.model_fn(x_, t_, self.cond), x, t_b)
        if not hasattr(out, "shape") or tuple(out.shape) != self.output_shape(x):
            got = getattr(out, "shape", type(out).__name__)
            raise ValueError(
                f"model_fn must return an array {self.output_description(x)}, got {got}."
            )

    @abc.abstractmethod
    def final(self, x: Array, t: ArrayLike) -> Array:
        """The estimate returned by ``denoise_final=True`` at the last time ``t``."""


class Denoiser(AbstractField):
    """``denoise(x, t) -> (x0_hat, eps_hat)`` built once from a model and its prediction kind.

    The field of every Gaussian-path solver: they never call the network directly, so every
    solver works with every parameterization. It also offers the derived fields that solvers use
    (probability-flow velocity and score) and counts the network evaluations traced through
    it, which is how :func:`genflow.samplers.sample` reports an exact NFE.

    With ``thresholding`` (e.g. :class:`DynamicThresholding`), ``x0_hat`` is corrected
    and ``eps_hat`` recomputed from it, so every solver sees the corrected pair.

    Attributes:
      process: the Gaussian path of the model.
      calls: network evaluations traced since the last :meth:`reset_calls`.

    Raises:
      TypeError: ``process`` is not an :class:`~genflow.processes.AbstractGaussianPath` (the
        message names the solvers that fit it).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        process: AbstractGaussianPath,
        prediction: Prediction | str,
        cond: Any = None,
        thresholding: Callable[[Array], Array] | None = None,
    ):
        if not self.fits(process):
            self._refuse(process, "a Gaussian path (an AbstractGaussianPath: x_t = alpha_t x0 "
                                  "+ sigma_t eps)")
        super().__init__(model_fn, process, Prediction.parse(prediction), cond, thresholding)

    @classmethod
    def fits(cls, process: Any) -> bool:
        return isinstance(process, AbstractGaussianPath)

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

    def final(self, x: Array, t: ArrayLike) -> Array:
        """``x0_hat(x, t)``: the model's estimate of the data."""
        return self(x, t)[0].astype(x.dtype)


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
    """One step of a sampler from ``t_cur`` to ``t_next`` (``t_next < t_cur`` in ``sample()``).

    Class attributes:
      order: the theoretical order (ODE solvers) or strong order (SDE solvers).
      stochastic: whether :meth:`step` uses its key.
      min_steps: the fewest steps the solver accepts.
      field_class: the field that :func:`genflow.samplers.sample` builds from the model, as
        ``field_class(model_fn, process, prediction, cond, thresholding)``, and hands to
        :meth:`step` (:class:`Denoiser` for the Gaussian-path solvers).
    """

    order: float
    stochastic: bool
    min_steps: int = 1
    field_class: ClassVar[type[AbstractField]] = Denoiser

    def make_grid(
        self, grid: Callable[..., Array], process: Any,
        t_start: float, t_end: float, num_steps: int,
    ) -> Array:
        """The grid :func:`genflow.samplers.sample` scans over, one :meth:`step` per interval.

        ``grid(process, t_start, t_end, num_steps)`` for most solvers; a solver whose steps
        take several model evaluations at intermediate times (singlestep DPM-Solver) returns
        the grid of its evaluation times instead, so that one scan iteration is one
        evaluation.
        """
        return grid(process, t_start, t_end, num_steps)

    def check(self, field: AbstractField, ts: Array) -> None:
        """Raise ``ValueError`` where this solver cannot run ``field`` on the grid ``ts``.

        Called by ``sample()`` and ``invert()`` before anything is traced (``ts`` may be a
        tracer: check only what is concrete). Nothing to check by default.
        """

    def init(self, x: Array, ts: Array) -> Any:
        """Solver state before the first step (``None`` for one-step methods)."""
        return None

    @abc.abstractmethod
    def step(
        self,
        denoise: AbstractField,
        state: Any,
        x: Array,
        t_cur: Array,
        t_next: Array,
        *,
        key: PRNGKeyArray,
    ) -> tuple[Array, Any]:
        """Advance ``x`` from ``t_cur`` to ``t_next``; returns ``(x_next, state)``."""


class AbstractAdaptiveSampler(abc.ABC):
    """A sampler that chooses its own steps (no grid): ``sample(..., solver=this)`` calls
    :meth:`run` instead of scanning a grid.

    Subclasses are frozen dataclasses of their options, validated in ``__post_init__``.

    Class attributes:
      field_class: the field the sampler evaluates (:class:`Denoiser`).
      stochastic: ``False``: the adaptive samplers integrate the probability-flow ODE.
    """

    field_class: ClassVar[type[AbstractField]] = Denoiser
    stochastic: ClassVar[bool] = False

    @abc.abstractmethod
    def run(
        self,
        model_fn: ModelFn,
        process: Any,
        *,
        key: PRNGKeyArray,
        prediction: Any,
        x_init: Array | None,
        shape: tuple[int, ...] | None,
        t_start: float,
        t_end: float,
        cond: Any,
        thresholding: Callable[[Array], Array] | None,
        denoise_final: bool,
    ) -> SampleResult:
        """Sample from ``t_start`` down to ``t_end`` (the arguments of ``sample()``)."""


def solvers_for(process: Any) -> list[str]:
    """The names of genflow's solvers whose field fits ``process`` (for error messages)."""
    import genflow.samplers as package  # the public names; imported when an error is raised

    public = set(package.__all__)
    names, stack = set(), [AbstractSolver, AbstractAdaptiveSampler]
    while stack:
        for cls in stack.pop().__subclasses__():
            stack.append(cls)
            if cls.__name__ not in public or getattr(cls, "__abstractmethods__", None):
                continue
            try:
                fits = cls.field_class.fits(process)
            except Exception:  # a capability check must not break the error message
                fits = False
            if fits:
                names.add(cls.__name__)
    return sorted(names)


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
