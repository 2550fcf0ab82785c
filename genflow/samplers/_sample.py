"""``sample()`` and ``invert()``: drive any solver over a time grid with ``lax.scan``.

The solver names its field (``solver.field_class``: :class:`Denoiser` for Gaussian paths,
:class:`GBMScore`, :class:`InterpolantField`), which is built here from the model; an adaptive
sampler (:class:`AbstractAdaptiveSampler`) chooses its own steps and is run instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from genflow.prediction import Prediction
from genflow.samplers._base import (
    AbstractAdaptiveSampler,
    AbstractField,
    AbstractSolver,
    ModelFn,
    SampleResult,
)
from genflow.samplers._grids import uniform


def sample(
    model_fn: ModelFn,
    process: Any,
    solver: AbstractSolver | AbstractAdaptiveSampler,
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str,
    x_init: Array | None = None,
    shape: tuple[int, ...] | None = None,
    num_steps: int | None = None,
    ts: ArrayLike | None = None,
    grid: Callable[..., Array] | None = None,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    cond: Any = None,
    thresholding: Callable[[Array], Array] | None = None,
    denoise_final: bool = False,
    return_trajectory: bool = False,
) -> SampleResult:
    """Draw samples by running ``solver`` from ``t_start`` (noise) down to ``t_end``.

    Args:
      model_fn: ``model_fn(x, t, cond) -> array``; ``t`` has shape ``(b,)``. It returns an
        array like ``x`` (for an :class:`InterpolantField` of two fields, the fields
        concatenated on the last axis).
      process: the process the model was trained on (a Gaussian path for the
        :class:`Denoiser` solvers; :class:`~genflow.processes.GeometricBrownianMotion` for the
        GBM solvers, :class:`~genflow.processes.StochasticInterpolant` for the interpolant
        solvers).
      solver: a solver object, e.g. ``Heun()``, ``EulerMaruyama()``, ``GBMExponential()``,
        ``InterpolantHeun()``, or an adaptive sampler such as ``DPMSolverAdaptive()`` (then
        ``num_steps``, ``ts``, ``grid`` and ``return_trajectory`` are not given).
      key: randomness for the prior draw and stochastic steps.
      prediction: what ``model_fn`` predicts, in the terms of ``solver.field_class``:
        ``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``, ``"score"`` (Gaussian paths; GBM takes
        ``"score"``), or the interpolant fields ``"b"``, ``"b+eta"``, ... .
      x_init: starting points at ``t_start``; drawn from ``process.prior_sample`` when ``None``.
      shape: ``(b, *data_shape)`` of the prior draw when ``x_init`` is ``None`` (give one of
        the two).
      num_steps: number of solver steps on ``grid`` (ignored when ``ts`` is given); for
        singlestep DPM-Solver, the number of model evaluations.
      ts: an explicit decreasing grid ``(num_steps + 1,)`` instead of ``grid``.
      grid: ``grid(process, t_start, t_end, num_steps)``, e.g. ``uniform`` (the default),
        ``quadratic`` or ``log_snr_uniform``.
      t_start, t_end: the ends of the grid.
      cond: conditioning passed to ``model_fn`` unchanged.
      thresholding: a correction of ``x0_hat`` applied before every solver update, e.g.
        ``DynamicThresholding(ratio=0.995)`` for data in ``[-1, 1]`` (Denoiser solvers).
      denoise_final: return the field's final estimate at ``t_end`` (:meth:`Denoiser.final`:
        ``x0_hat``; GBM: Tweedie's estimate in log space) instead of ``x_{t_end}`` (one more
        NFE; the trajectory keeps ``x_{t_end}``).
      return_trajectory: also return every intermediate state (memory grows with the steps).

    Returns:
      :class:`SampleResult` with ``x``, ``trajectory`` and the exact ``nfe``.
    """
    _check_solver(solver, adaptive=True)
    if x_init is None and shape is None:
        raise ValueError("give either x_init or shape (the batch shape of the prior draw).")
    if x_init is not None and shape is not None:
        raise ValueError("give exactly one of x_init or shape (the batch shape of the prior "
                         "draw), not both.")
    if isinstance(solver, AbstractAdaptiveSampler):
        return _run_adaptive(
            model_fn, process, solver, key=key, prediction=prediction, x_init=x_init,
            shape=shape, num_steps=num_steps, ts=ts, grid=grid, t_start=t_start, t_end=t_end,
            cond=cond, thresholding=thresholding, denoise_final=denoise_final,
            return_trajectory=return_trajectory,
        )
    field = solver.field_class(model_fn, process, prediction, cond, thresholding)
    ts = _make_grid(process, solver, num_steps=num_steps, ts=ts, grid=grid or uniform,
                    t_start=t_start, t_end=t_end, increasing=False)

    key_init, key_steps = jax.random.split(key)
    if x_init is None:
        x_init = process.prior_sample(key_init, tuple(shape))
    return _solve(field, solver, jnp.asarray(x_init), ts, key_steps,
                  denoise_final=denoise_final, return_trajectory=return_trajectory)


def _run_adaptive(model_fn, process, solver, *, num_steps, ts, grid, return_trajectory,
                  **options) -> SampleResult:
    """``sample()`` with an adaptive sampler: no grid, no trajectory."""
    name = type(solver).__name__
    given = [n for n, v in (("num_steps", num_steps), ("ts", ts), ("grid", grid))
             if v is not None]
    if given:
        raise ValueError(
            f"{name} chooses its own steps: do not pass {', '.join(given)} (its step control "
            "is set by its options, e.g. rtol and atol); or use a fixed-step solver."
        )
    if return_trajectory:
        raise ValueError(f"{name} returns no trajectory (its steps are data-dependent); "
                         "return_trajectory=True needs a fixed-step solver.")
    return solver.run(model_fn, process, **options)


def invert(
    model_fn: ModelFn,
    process: Any,
    solver: AbstractSolver,
    *,
    x: Array,
    prediction: Prediction | str,
    num_steps: int | None = None,
    ts: ArrayLike | None = None,
    grid: Callable[..., Array] | None = None,
    t_start: float = 1e-3,
    t_end: float = 1.0,
    cond: Any = None,
    thresholding: Callable[[Array], Array] | None = None,
    return_trajectory: bool = False,
) -> SampleResult:
    """Map data to noise: run a deterministic solver from ``t_start`` (data) up to ``t_end``.

    The probability-flow ODE is run forwards in time with the same solver and the same grid
    rules as :func:`sample` (the grid runs from ``t_start`` up to ``t_end``; e.g. uniform in
    log-SNR with ``grid=log_snr_uniform``). Sampling from the result over the reversed
    interval reconstructs ``x`` up to the discretization errors of the two runs.

    Args:
      model_fn, process, prediction, cond, thresholding: as in :func:`sample`.
      solver: a deterministic fixed-step solver (``solver.stochastic`` is ``False``), e.g.
        ``Heun()`` or, for a stochastic interpolant, ``InterpolantHeun()``.
      x: the data points at ``t_start``, ``(b, *data_shape)``.
      num_steps, ts, grid: the grid, as in :func:`sample`, but increasing.
      t_start, t_end: the ends of the grid, ``t_start < t_end``.
      return_trajectory: also return every intermediate state.

    Returns:
      :class:`SampleResult` with the latents ``x`` at ``t_end`` and the exact ``nfe``.
    """
    _check_solver(solver)
    if solver.stochastic:
        raise ValueError(
            f"invert needs a deterministic solver; {type(solver).__name__} is stochastic. "
            "Use e.g. DPMSolverMultistep(), Heun() or DDIM(eta=0.0)."
        )
    field = solver.field_class(model_fn, process, prediction, cond, thresholding)
    ts = _make_grid(process, solver, num_steps=num_steps, ts=ts, grid=grid or uniform,
                    t_start=t_start, t_end=t_end, increasing=True)
    return _solve(field, solver, jnp.asarray(x), ts, jax.random.key(0),
                  denoise_final=False, return_trajectory=return_trajectory)


def _solve(denoise: AbstractField, solver: AbstractSolver, x_init: Array, ts: Array,
           key: PRNGKeyArray, *, denoise_final: bool, return_trajectory: bool) -> SampleResult:
    """Scan ``solver.step`` over the intervals of ``ts`` and count the model evaluations."""
    denoise.check_output(x_init, ts[0])
    solver.check(denoise, ts)
    if denoise_final and not denoise.final_available:
        denoise.final(x_init, ts[-1])  # raises the field's own ValueError
        raise ValueError(f"denoise_final is not available with {type(denoise).__name__}.")
    n = ts.shape[0] - 1

    denoise.reset_calls()
    state = solver.init(x_init, ts)
    init_calls = denoise.calls

    def body(carry, inputs):
        x, state = carry
        t_cur, t_next, step_key = inputs
        denoise.reset_calls()  # the body may be traced more than once; count the last trace
        x_next, state = solver.step(denoise, state, x, t_cur, t_next, key=step_key)
        x_next = x_next.astype(x.dtype)
        return (x_next, state), (x_next if return_trajectory else None)

    step_keys = jax.random.split(key, n)
    (x, _), traj = jax.lax.scan(body, (x_init, state), (ts[:-1], ts[1:], step_keys))
    nfe = init_calls + n * denoise.calls

    if denoise_final:
        denoise.reset_calls()
        x = denoise.final(x, ts[-1]).astype(x.dtype)
        nfe += denoise.calls
    if return_trajectory:
        traj = jnp.concatenate([x_init[None], traj], axis=0)
    return SampleResult(x=x, trajectory=traj, nfe=nfe)


def _check_solver(solver: Any, adaptive: bool = False) -> None:
    kinds = (AbstractSolver, AbstractAdaptiveSampler) if adaptive else AbstractSolver
    if not isinstance(solver, kinds):
        if isinstance(solver, AbstractAdaptiveSampler):
            raise TypeError(f"{type(solver).__name__} chooses its own steps and runs only in "
                            "sample(); invert(), inpaint() and edit() need a fixed-step solver "
                            "such as Heun().")
        raise TypeError(
            f"solver must be a genflow solver object such as Heun(), got {type(solver).__name__}."
        )


def _check_num_steps(num_steps: Any, solver: AbstractSolver) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(f"num_steps must be an int, got {num_steps!r}.")
    if num_steps < solver.min_steps:
        raise ValueError(
            f"{type(solver).__name__} needs num_steps >= {solver.min_steps}, got {num_steps}; "
            "take more steps (or a lower order)."
        )


def _check_grid(ts: Any, solver: AbstractSolver, *, increasing: bool) -> None:
    try:
        concrete = np.asarray(ts)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return  # a traced grid cannot be checked here; the caller owns it
    if concrete.ndim != 1 or concrete.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {concrete.shape}.")
    steps = np.diff(concrete)
    if not np.all(steps > 0 if increasing else steps < 0):
        direction = (
            "increase strictly from the data end to the noisy end (t_start < ... < t_end)"
            if increasing else
            "decrease strictly from the noisy end to the data end (t_start > ... > t_end)"
        )
        raise ValueError(f"ts must {direction}; got {concrete[:3]} ... {concrete[-2:]}.")
    if concrete.min() < 0 or concrete.max() > 1:
        raise ValueError(
            f"times must lie in [0, 1]; got t_start={concrete[0]}, t_end={concrete[-1]}."
        )
    _check_num_steps(concrete.shape[0] - 1, solver)


def _make_grid(process, solver, *, num_steps, ts, grid, t_start, t_end, increasing) -> Array:
    """The validated grid that the solver walks (with its intermediate points, if any)."""
    if ts is None:
        if num_steps is None:
            raise ValueError("give num_steps (or an explicit grid ts).")
        _check_num_steps(num_steps, solver)
        lo, hi = (t_start, t_end) if increasing else (t_end, t_start)
        if not 0.0 <= lo < hi <= 1.0:
            need = "0 <= t_start < t_end <= 1" if increasing else "0 <= t_end < t_start <= 1"
            raise ValueError(f"need {need}, got t_start={t_start}, t_end={t_end}.")
        ts = solver.make_grid(grid, process, t_start, t_end, int(num_steps))
        _check_made_grid(ts, increasing)
    else:
        _check_grid(ts, solver, increasing=increasing)
        ts = jnp.asarray(ts, jnp.result_type(ts, jnp.float32))
    return jnp.asarray(ts, dtype=jnp.result_type(ts, jnp.float32))


def _check_made_grid(ts: Any, increasing: bool) -> None:
    """A grid function can fail on a path: e.g. a log-SNR grid from t = 1 where the log-SNR is
    infinite (rectified flow) collapses or gives NaN. Say so instead of sampling garbage."""
    try:
        concrete = np.asarray(ts, dtype=np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return
    steps = np.diff(concrete)
    if not (np.all(np.isfinite(concrete)) and np.all(steps > 0 if increasing else steps < 0)):
        raise ValueError(
            "the time grid is not finite and strictly monotone on this process "
            f"({concrete[:3]} ... {concrete[-2:]}): a log-SNR or Karras grid needs a finite "
            "log-SNR at both ends; move t_start/t_end inside (0, 1) (e.g. t_start=1 - 1e-3) "
            "or use grid=uniform."
        )


def _check_model_output(field: AbstractField, x: Array, t: Array) -> None:
    """Abstractly evaluate the model once so that a wrong output shape fails before tracing
    (:meth:`AbstractField.check_output`)."""
    field.check_output(x, t)
