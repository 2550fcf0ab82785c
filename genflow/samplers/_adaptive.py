"""``sample_adaptive()``: the probability-flow ODE with an adaptive-step diffrax solver.

The sampler integrates

    dx/dt = v(x, t) = alpha'_t x0_hat(x, t) + sigma'_t eps_hat(x, t)

(:meth:`Denoiser.velocity`) from ``t_start`` (noise) down to ``t_end`` with
``diffrax.diffeqsolve``, an explicit Runge--Kutta pair (Tsit5 or Dopri5) and a
``PIDController(rtol, atol)``. It is the only module of ``genflow.samplers`` that imports
diffrax (docs/architecture.md, "Layers").

Exact NFE
---------
diffrax does not report vector-field evaluations, and the number of steps is data-dependent,
so the count is derived from ``sol.stats["num_steps"]`` (every *attempted* step, accepted or
rejected) and the structure of the solver:

* Tsit5 and Dopri5 have ``s = 7`` stages and are FSAL (first same as last): the last stage of
  a step is evaluated at ``(t_1, y_1)`` and is the first stage of the next step. diffrax keeps
  it in the solver state, which is rolled back when a step is rejected, so a retried step
  reuses the same ``f(t_0, y_0)``. Every attempted step therefore costs exactly ``s - 1 = 6``
  evaluations -- *provided* the solver state already holds ``f(t_start, x_init)``.
* diffrax would compute that first stage inside its first step, and again on every retry
  until the first step is accepted (its ``first_step`` flag is rolled back with the state),
  which the statistics cannot see. So this module evaluates ``f0 = v(x_init, t_start)``
  itself (1 evaluation) and hands diffrax the solver state ``(first_step=False, f0)``.
* When ``dt0`` is ``None`` the initial step is chosen by Hairer's rule (Hairer, Norsett &
  Wanner, *Solving ODEs I*, II.4), as diffrax's ``PIDController`` would, reusing ``f0``: one
  explicit Euler probe ``f1 = v(x_init - h0 f0, t_start - h0)`` (1 evaluation). Unlike
  diffrax's own selection, the probe steps in the direction of integration (diffrax's steps
  ``y`` forwards while evaluating at the earlier time when ``t1 < t0``), and it does not
  spend a second evaluation on ``f0``.
* No jumps: the controller has no ``jump_ts``, so ``made_jump`` stays ``False`` and FSAL is
  never invalidated mid-solve. The dense output of Dopri5/Tsit5 is not used (no extra
  evaluations), and only ``y(t_end)`` is saved.

Hence, per batch of ``x`` (one model call evaluates the whole batch)::

    nfe = 1 + [dt0 is None] + (s - 1) * num_steps      # s - 1 = 6 for Tsit5 and Dopri5
        = 2 + 6 * (num_accepted_steps + num_rejected_steps)   when dt0 is None

The tests check this against a host-side count of the model calls.

All samples of a batch share the step sizes (the controller's error norm is taken over the
whole batch); ``jax.vmap`` over ``x_init`` gives each sample its own steps instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from genflow.prediction import Prediction
from genflow.processes._base import AbstractGaussianPath, pytree_dataclass
from genflow.samplers._base import AbstractAdaptiveSampler, Denoiser, ModelFn, SampleResult
from genflow.samplers._sample import _check_model_output

_SOLVERS = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}


def _parse_solver(solver: Any) -> diffrax.AbstractERK:
    if isinstance(solver, str):
        try:
            return _SOLVERS[solver.lower()]()
        except KeyError:
            raise ValueError(
                f"unknown solver {solver!r}; use one of {sorted(_SOLVERS)} or a diffrax "
                "Tsit5() / Dopri5() object."
            ) from None
    if type(solver) in _SOLVERS.values():
        return solver
    raise TypeError(
        "solver must be 'tsit5', 'dopri5' or a diffrax.Tsit5() / diffrax.Dopri5() object "
        f"(FSAL explicit Runge-Kutta pairs, whose NFE is known exactly), got {solver!r}."
    )


def _concrete_float(value: Any) -> float | None:
    """``float(value)`` for Python/NumPy/concrete JAX scalars, ``None`` for tracers."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    if arr.ndim != 0:
        raise ValueError(f"expected a scalar, got an array of shape {arr.shape}.")
    return float(arr)


def _check_tolerance(name: str, value: Any) -> None:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive float, got {value!r}.")
    try:
        v = _concrete_float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a positive float scalar, got {value!r}.") from err
    if v is not None and not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}.")


def _check_options(solver: Any, rtol: Any, atol: Any, max_steps: Any) -> diffrax.AbstractERK:
    """Clear errors for the step-control options; returns the diffrax solver."""
    diffrax_solver = _parse_solver(solver)
    _check_tolerance("rtol", rtol)
    _check_tolerance("atol", atol)
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)):
        raise TypeError(f"max_steps must be an int, got {max_steps!r}.")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}.")
    return diffrax_solver


def _rms(leaves) -> Array:
    flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
    return jnp.sqrt(jnp.mean(jnp.square(flat)))


def initial_step_size(field, t0, t1, y0, f0, error_order, rtol, atol) -> Array:
    """Hairer's first step size (the rule of diffrax's ``PIDController``), as a magnitude.

    For the step from ``t0`` towards ``t1`` (either direction) of ``dy/dt = field(t, y)`` with
    ``f0 = field(t0, y0)``; ``y0`` and ``f0`` may be pytrees. ``d0 = ||y0||, d1 = ||f0||``
    (RMS norms over every leaf, scaled by ``atol + rtol |y0|``), ``h0 = 0.01 d0 / d1`` (at most
    ``|t1 - t0|``: models may be undefined beyond the interval), one Euler probe ``f1 =
    field(t0 + h0 dir, y0 + h0 dir f0)``, ``d2 = ||f1 - f0|| / h0`` and
    ``h = min(100 h0, (0.01 / max(d1, d2)) ** (1 / error_order))``. One evaluation of ``field``;
    no gradient flows through the result.
    """
    direction = jnp.sign(t1 - t0)
    y_leaves, f_leaves = jax.tree_util.tree_leaves(y0), jax.tree_util.tree_leaves(f0)
    scales = [atol + rtol * jnp.abs(y) for y in y_leaves]
    d0 = _rms([y / s for y, s in zip(y_leaves, scales)])
    d1 = _rms([f / s for f, s in zip(f_leaves, scales)])
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
    h0 = jnp.minimum(h0, jnp.abs(t1 - t0))
    y1 = jax.tree_util.tree_map(lambda y, f: (y + direction * h0 * f).astype(y.dtype), y0, f0)
    f1 = field(t0 + direction * h0, y1)
    d2 = _rms([(a - b) / s for a, b, s in
               zip(jax.tree_util.tree_leaves(f1), f_leaves, scales)]) / h0
    max_d = jnp.maximum(d1, d2)
    tiny = max_d <= 1e-15
    h1 = jnp.where(tiny, jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.where(tiny, 1.0, max_d)) ** (1.0 / error_order))
    return jax.lax.stop_gradient(jnp.minimum(100 * h0, h1))


def solve_counting_nfe(field, y0, t0, t1, *, solver, rtol, atol, dt0, max_steps, args=None):
    """Solve ``dy/dt = field(t, y, args)`` from ``t0`` to ``t1`` (either direction) with diffrax
    and PID step control, counting every evaluation of ``field``.

    diffrax reports no evaluation count, so the first stage ``f0 = field(t0, y0)`` is evaluated
    here and handed to the solver as its FSAL state (every attempt of the first step reuses it),
    and the first step size comes from :func:`initial_step_size` (one more evaluation) unless
    ``dt0`` (a positive magnitude) is given. Then ``nfe = 1 + [dt0 is None] + (stages - 1) *
    num_steps``, ``num_steps`` counting accepted and rejected steps. Gradients flow through the
    solve by diffrax's default ``RecursiveCheckpointAdjoint``.

    Returns:
      ``(y(t1), nfe, num_steps)``; ``y0`` may be a pytree.
    """
    term = diffrax.ODETerm(field)
    f0 = field(t0, y0, args)  # FSAL first stage, shared by every attempt of the first step
    nfe = 1
    if dt0 is None:
        h = initial_step_size(lambda t, y: field(t, y, args), t0, t1, y0, f0,
                              solver.error_order(term), rtol, atol)
        nfe += 1
    else:
        h = jnp.asarray(dt0, jnp.result_type(t0))
    h = jnp.minimum(h, jnp.abs(t1 - t0))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=t0,
        t1=t1,
        dt0=jnp.sign(t1 - t0) * h,
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=int(max_steps),
        solver_state=(jnp.array(False), f0),
        made_jump=False,
    )
    num_steps = jnp.asarray(sol.stats["num_steps"])
    y1 = jax.tree_util.tree_map(lambda y: y[-1], sol.ys)
    return y1, nfe + (solver.tableau.num_stages - 1) * num_steps, num_steps


def sample_adaptive(
    model_fn: ModelFn,
    process: AbstractGaussianPath,
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str,
    x_init: Array | None = None,
    shape: tuple[int, ...] | None = None,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    cond: Any = None,
    solver: str | diffrax.AbstractERK = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
    dt0: float | None = None,
) -> SampleResult:
    """Solve the probability-flow ODE from ``t_start`` to ``t_end`` with adaptive steps.

    ``dx/dt = alpha'_t x0_hat + sigma'_t eps_hat`` is integrated backwards in time by a
    diffrax explicit Runge--Kutta pair under ``PIDController(rtol=rtol, atol=atol)``; a step
    is accepted when the RMS over the batch of ``err / (atol + rtol * max(|x_0|, |x_1|))`` is
    at most 1. Jit-able, and differentiable with respect to ``x_init`` (and anything the model
    closes over) through diffrax's ``RecursiveCheckpointAdjoint``; step sizes are treated as
    constants by the gradient, as diffrax does.

    Args:
      model_fn: ``model_fn(x, t, cond) -> array like x``; ``t`` has shape ``(b,)``.
      process: the Gaussian path the model was trained on.
      key: randomness for the prior draw (split as :func:`genflow.samplers.sample` does, so
        the same key gives the same starting noise as the fixed-step sampler).
      prediction: what ``model_fn`` predicts (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``,
        ``"score"``).
      x_init: starting points at ``t_start``; drawn from ``process.prior_sample`` when ``None``.
      shape: ``(b, *data_shape)`` of the prior draw when ``x_init`` is ``None``.
      t_start, t_end: the ends of the solve, ``0 <= t_end < t_start <= 1``.
      cond: conditioning passed to ``model_fn`` unchanged.
      solver: ``"tsit5"`` (default), ``"dopri5"``, or a ``diffrax.Tsit5()`` /
        ``diffrax.Dopri5()`` object.
      rtol, atol: relative and absolute tolerances of the step-size controller.
      max_steps: the most steps (accepted or rejected) before the solve fails with an error.
      dt0: the size (a positive magnitude) of the first step attempted; ``None`` chooses it
        with Hairer's rule at the cost of one evaluation.

    Returns:
      :class:`SampleResult` with ``x`` at ``t_end``, ``trajectory=None`` and ``nfe``, the
      exact number of model evaluations as an integer JAX array (it depends on the data):
      ``1 + [dt0 is None] + 6 * num_steps`` (see the module docstring).

    Raises:
      ValueError: for bad times, tolerances, ``max_steps``, ``dt0``, an unknown solver name,
        missing ``x_init``/``shape`` or a model whose output is not shaped like ``x``.
      TypeError: for a solver that is not Tsit5 or Dopri5.
    """
    diffrax_solver = _check_options(solver, rtol, atol, max_steps)
    ts_concrete = (_concrete_float(t_start), _concrete_float(t_end))
    if None not in ts_concrete:
        if not 0.0 <= ts_concrete[1] < ts_concrete[0] <= 1.0:
            raise ValueError(
                f"need 0 <= t_end < t_start <= 1 (the solve runs from noise down to data), "
                f"got t_start={t_start}, t_end={t_end}."
            )
    if dt0 is not None:
        dt0_value = _concrete_float(dt0)
        if dt0_value is not None and not (np.isfinite(dt0_value) and dt0_value > 0):
            raise ValueError(
                f"dt0 must be a positive step size (its direction is taken from t_start > t_end), "
                f"got {dt0!r}; or pass dt0=None to choose it automatically."
            )
    if x_init is None and shape is None:
        raise ValueError("give either x_init or shape (the batch shape of the prior draw).")
    prediction = Prediction.parse(prediction)

    key_init, _ = jax.random.split(key)  # the same split as sample(): same key, same noise
    if x_init is None:
        x_init = process.prior_sample(key_init, tuple(shape))
    x_init = jnp.asarray(x_init)
    if not jnp.issubdtype(x_init.dtype, jnp.floating):
        raise TypeError(f"x_init must be a floating-point array, got dtype {x_init.dtype}.")
    # Times in float32 or better, even for low-precision x (docs/architecture.md, "Conventions").
    t_dtype = jnp.result_type(x_init.dtype, jnp.float32)
    t0 = jnp.asarray(t_start, t_dtype)
    t1 = jnp.asarray(t_end, t_dtype)
    # Arrays, not Python floats: diffrax would treat floats as static and recompile per value.
    rtol = jnp.asarray(rtol, t_dtype)
    atol = jnp.asarray(atol, t_dtype)

    _check_model_output(Denoiser(model_fn, process, prediction, cond), x_init, t0)

    def velocity_with(proc, cond_, t, x):
        return Denoiser(model_fn, proc, prediction, cond_).velocity(x, t).astype(x.dtype)

    def vector_field(t, x, args):
        proc, cond_ = args
        return velocity_with(proc, cond_, t, x)

    x, nfe, _ = solve_counting_nfe(
        vector_field, x_init, t0, t1, solver=diffrax_solver, rtol=rtol, atol=atol, dt0=dt0,
        max_steps=max_steps, args=(process, cond),
    )
    return SampleResult(x=x, trajectory=None, nfe=nfe)


@pytree_dataclass(static=("solver", "max_steps"))
@dataclasses.dataclass(frozen=True)
class AdaptiveODE(AbstractAdaptiveSampler):
    """The probability-flow ODE with an adaptive-step diffrax solver, as an object.

    ``sample(model_fn, process, AdaptiveODE(rtol=1e-6), key=..., prediction=..., shape=...)``
    is :func:`sample_adaptive` with these options (same numbers, same exact NFE, a traced
    integer; see the module docstring). Give no ``num_steps``, ``ts`` or ``grid``; there is no
    trajectory, no thresholding and no ``denoise_final``. The first step size is chosen by
    Hairer's rule (``sample_adaptive(dt0=None)``).

    Attributes:
      solver: ``"tsit5"`` (default), ``"dopri5"``, or a ``diffrax.Tsit5()`` /
        ``diffrax.Dopri5()`` object (static).
      rtol, atol: relative and absolute tolerances of the PID step-size controller (data: a
        new value does not recompile).
      max_steps: the most steps (accepted or rejected) before the solve fails (static).
    """

    solver: Any = "tsit5"
    rtol: float = 1e-5
    atol: float = 1e-5
    max_steps: int = 4096

    def __post_init__(self):
        _check_options(self.solver, self.rtol, self.atol, self.max_steps)

    def run(self, model_fn, process, *, key, prediction, x_init, shape, t_start, t_end, cond,
            thresholding, denoise_final) -> SampleResult:
        if thresholding is not None:
            raise ValueError("AdaptiveODE does not threshold x0_hat (the ODE's velocity would no "
                             "longer be smooth); use DPMSolverAdaptive or a fixed-step solver.")
        if denoise_final:
            raise ValueError("AdaptiveODE has no denoise_final; use DPMSolverAdaptive or a "
                             "fixed-step solver.")
        return sample_adaptive(
            model_fn, process, key=key, prediction=prediction, x_init=x_init, shape=shape,
            t_start=t_start, t_end=t_end, cond=cond, solver=self.solver, rtol=self.rtol,
            atol=self.atol, max_steps=self.max_steps,
        )


__all__ = ["AdaptiveODE", "sample_adaptive"]
