"""``sample()``: drive any solver over a time grid with ``lax.scan``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PRNGKeyArray

from genflow.prediction import Prediction
from genflow.processes._base import AbstractGaussianPath
from genflow.samplers._base import AbstractSolver, Denoiser, ModelFn, SampleResult
from genflow.samplers._grids import uniform


def _check_grid(ts: Any, solver: AbstractSolver) -> None:
    try:
        concrete = np.asarray(ts)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return  # a traced grid cannot be checked here; the caller owns it
    if concrete.ndim != 1 or concrete.shape[0] < 2:
        raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {concrete.shape}.")
    if not np.all(np.diff(concrete) < 0):
        raise ValueError(
            "ts must decrease strictly from the noisy end to the data end "
            f"(t_start > ... > t_end); got {concrete[:3]} ... {concrete[-2:]}."
        )
    if concrete[-1] < 0 or concrete[0] > 1:
        raise ValueError(f"times must lie in [0, 1]; got t_start={concrete[0]}, t_end={concrete[-1]}.")


def sample(
    model_fn: ModelFn,
    process: AbstractGaussianPath,
    solver: AbstractSolver,
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str,
    x_init: Array | None = None,
    shape: tuple[int, ...] | None = None,
    num_steps: int | None = None,
    ts: ArrayLike | None = None,
    grid: Callable[..., Array] = uniform,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    cond: Any = None,
    denoise_final: bool = False,
    return_trajectory: bool = False,
) -> SampleResult:
    """Draw samples by running ``solver`` from ``t_start`` (noise) down to ``t_end``.

    Args:
      model_fn: ``model_fn(x, t, cond) -> array like x``; ``t`` has shape ``(b,)``.
      process: the Gaussian path the model was trained on.
      solver: a solver object, e.g. ``Heun()`` or ``EulerMaruyama()``.
      key: randomness for the prior draw and stochastic steps.
      prediction: what ``model_fn`` predicts (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``,
        ``"score"``).
      x_init: starting points at ``t_start``; drawn from the prior when ``None``.
      shape: ``(b, *data_shape)`` of the prior draw when ``x_init`` is ``None``.
      num_steps: number of solver steps on ``grid`` (ignored when ``ts`` is given).
      ts: an explicit decreasing grid ``(num_steps + 1,)`` instead of ``grid``.
      grid: ``grid(process, t_start, t_end, num_steps)``, e.g. ``uniform`` or ``log_snr_uniform``.
      t_start, t_end: the ends of the grid.
      cond: conditioning passed to ``model_fn`` unchanged.
      denoise_final: return the model's ``x0_hat`` at ``t_end`` instead of ``x_{t_end}``
        (one more NFE).
      return_trajectory: also return every intermediate state (memory grows with the steps).

    Returns:
      :class:`SampleResult` with ``x``, ``trajectory`` and the exact ``nfe``.
    """
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"solver must be a genflow solver object such as Heun(), got {type(solver).__name__}."
        )
    if x_init is None and shape is None:
        raise ValueError("give either x_init or shape (the batch shape of the prior draw).")
    if ts is None:
        if num_steps is None:
            raise ValueError("give num_steps (or an explicit grid ts).")
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise TypeError(f"num_steps must be an int, got {num_steps!r}.")
        if num_steps < solver.min_steps:
            raise ValueError(
                f"{type(solver).__name__} needs num_steps >= {solver.min_steps}, got {num_steps}."
            )
        if not 0.0 <= t_end < t_start <= 1.0:
            raise ValueError(
                f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}."
            )
        ts = grid(process, t_start, t_end, int(num_steps))
    else:
        _check_grid(ts, solver)
    ts = jnp.asarray(ts, dtype=jnp.result_type(ts, jnp.float32))
    n = ts.shape[0] - 1

    key_init, key_steps = jax.random.split(key)
    if x_init is None:
        x_init = process.prior_sample(key_init, tuple(shape))
    x_init = jnp.asarray(x_init)

    denoise = Denoiser(model_fn, process, prediction, cond)
    _check_model_output(denoise, x_init, ts[0])

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

    step_keys = jax.random.split(key_steps, n)
    (x, _), traj = jax.lax.scan(body, (x_init, state), (ts[:-1], ts[1:], step_keys))
    nfe = init_calls + n * denoise.calls

    if denoise_final:
        denoise.reset_calls()
        x = denoise(x, ts[-1])[0].astype(x.dtype)
        nfe += denoise.calls
    if return_trajectory:
        traj = jnp.concatenate([x_init[None], traj], axis=0)
    return SampleResult(x=x, trajectory=traj, nfe=nfe)


def _check_model_output(denoise: Denoiser, x: Array, t: Array) -> None:
    """Abstractly evaluate the model once so that a wrong output shape fails before tracing."""
    t_b = jax.ShapeDtypeStruct((x.shape[0],), t.dtype)
    out = jax.eval_shape(lambda x_, t_: denoise.model_fn(x_, t_, denoise.cond), x, t_b)
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"model_fn must return an array shaped like x {tuple(x.shape)}, got {got}."
        )
