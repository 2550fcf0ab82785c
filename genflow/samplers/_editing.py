"""Inversion round trips and editing by inversion (RF-Edit style, Wang et al. 2024).

Editing maps a data point ``x`` to its latent by running the probability-flow ODE forwards
(data to noise) under the *source* condition, then runs it backwards (noise to data) under
the *target* condition over the same time grid. Optionally, the first regeneration steps
reuse the self-attention values that the network computed during the inversion, which keeps
the layout of the source in the edited result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from genflow.prediction import Prediction
from genflow.processes._base import AbstractGaussianPath
from genflow.samplers._base import AbstractSolver, Denoiser, ModelFn
from genflow.samplers._grids import uniform
from genflow.samplers._sample import _check_model_output, _check_solver, _make_grid


class ValueModelFn(Protocol):
    """A model function whose self-attention values can be read out and replaced.

    ``fn(x, t, cond)`` is an ordinary ``model_fn``. With ``return_values=True`` it returns
    ``(out, values)``, ``values`` a tuple with one array per attention block (the value
    tensors computed from this call's input); ``values=(v_0, ..., v_{L-1})`` replaces block
    ``i``'s values by ``v_i`` (``None`` entries compute normally). The attribute
    ``supports_value_injection`` is ``True``.
    :func:`genflow.networks.as_value_model_fn` builds one from a network that has the hook
    (e.g. :class:`genflow.networks.DiT`).
    """

    supports_value_injection: bool

    def __call__(
        self,
        x: Array,
        t: Array,
        cond: Any = None,
        *,
        values: Sequence[Array | None] | None = None,
        return_values: bool = False,
    ) -> Array | tuple[Array, tuple[Array, ...]]: ...


class EditResult(NamedTuple):
    """What :func:`edit` and :func:`round_trip` return.

    Attributes:
      x: the regenerated (edited) points at the data end of the grid, like ``x_source``.
      latent: the inverted points at the noise end of the grid.
      nfe: network evaluations per batch, inversion and regeneration together.
    """

    x: Array
    latent: Array
    nfe: int


def supports_value_injection(model_fn: Any) -> bool:
    """Whether ``model_fn`` follows :class:`ValueModelFn` (its flag is set and true)."""
    return getattr(model_fn, "supports_value_injection", False) is True


def reconstruction_error(
    x: Float[Array, "b *data"], x_rec: Float[Array, "b *data"], *, per_sample: bool = False
) -> Float[Array, ""] | Float[Array, " b"]:
    """Relative reconstruction error ``||x_rec - x|| / ||x||`` (Euclidean norms).

    Args:
      x: the original points.
      x_rec: their reconstruction, e.g. ``round_trip(...).x``.
      per_sample: one ratio per sample (norms over each sample's entries) instead of one over
        the whole batch.
    """
    x, x_rec = jnp.asarray(x), jnp.asarray(x_rec)
    if x.shape != x_rec.shape:
        raise ValueError(f"x and x_rec must have the same shape; got {x.shape} and {x_rec.shape}.")
    diff = x_rec - x
    if per_sample:
        flat = lambda a: a.reshape(a.shape[0], -1)  # noqa: E731
        return jnp.linalg.norm(flat(diff), axis=1) / jnp.linalg.norm(flat(x), axis=1)
    return jnp.linalg.norm(diff.ravel()) / jnp.linalg.norm(x.ravel())


def round_trip(
    model_fn: ModelFn,
    process: AbstractGaussianPath,
    solver: AbstractSolver,
    x: Float[Array, "b *data"],
    *,
    prediction: Prediction | str,
    num_steps: int | None = None,
    ts: ArrayLike | None = None,
    grid: Callable[..., Array] = uniform,
    t_data: float = 1e-3,
    t_noise: float = 1.0,
    cond: Any = None,
    thresholding: Callable[[Array], Array] | None = None,
) -> EditResult:
    """Invert ``x`` to noise and sample it back with the same condition and grid.

    With an exact ODE solution the round trip is the identity; its error comes from the
    discretization errors of the two runs and falls at least at the solver's order as the
    steps grow. For a one-step method of even order ``p`` (e.g. ``RFSolver(order=2)``)
    it falls one order faster: the leading local errors of a step and of the same step taken
    backwards, ``C h^{p+1}`` and ``C (-h)^{p+1}``, cancel. Measure it with
    :func:`reconstruction_error`.

    Args:
      model_fn, process, solver, prediction, thresholding: as in
        :func:`genflow.samplers.sample`; the solver must be deterministic.
      x: data points at ``t_data``.
      num_steps, ts, grid, t_data, t_noise: the grid, as in :func:`edit`.
      cond: conditioning for both directions.

    Returns:
      :class:`EditResult`: the reconstruction ``x``, the ``latent`` and the total ``nfe``.
    """
    return edit(model_fn, process, solver, x, source_cond=cond, target_cond=cond,
                prediction=prediction, num_steps=num_steps, ts=ts, grid=grid, t_data=t_data,
                t_noise=t_noise, thresholding=thresholding)


def edit(
    model_fn: ModelFn | ValueModelFn,
    process: AbstractGaussianPath,
    solver: AbstractSolver,
    x_source: Float[Array, "b *data"],
    *,
    source_cond: Any,
    target_cond: Any,
    prediction: Prediction | str,
    num_steps: int | None = None,
    ts: ArrayLike | None = None,
    grid: Callable[..., Array] = uniform,
    t_data: float = 1e-3,
    t_noise: float = 1.0,
    share_values_steps: int = 0,
    share_blocks: Sequence[int] | None = None,
    thresholding: Callable[[Array], Array] | None = None,
) -> EditResult:
    """Edit by inversion: invert under ``source_cond``, regenerate under ``target_cond``.

    On the increasing grid ``s_0 = t_data < ... < s_n = t_noise`` the probability-flow ODE of
    the source condition carries ``x_source`` to the latent ``z = x(s_n)``; the ODE of the
    target condition is then solved from ``z`` over the reversed grid ``s_n > ... > s_0``.
    With equal conditions this is :func:`round_trip`. For Gaussian class-conditional data
    ``N(m_c, S_c)`` the exact edit is the affine map ``m_b + S_b^{1/2} S_a^{-1/2} (x - m_a)``
    (the probability flow of a Gaussian is affine), which the tests check.

    **Value sharing** (``share_values_steps = k > 0``, as RF-Edit does for transformers): the
    last ``k`` inversion steps record the self-attention values of every network evaluation,
    with its time, plus one extra evaluation at ``(z, s_n)`` (1 NFE). During the first ``k``
    regeneration steps, every evaluation at time ``tau`` replaces the network's values by the
    recorded ones with the nearest time; ties go to the later record, i.e. to a point on the
    inverted trajectory rather than to a solver's trial point. For solvers whose evaluation
    times within a step are symmetric (``RFSolver``, ``Euler``, ``Heun``, multistep
    DPM-Solver), every regeneration time is exactly a recorded time: inversion at ``s_i`` is
    reused at ``s_i``, and a midpoint evaluation at the same midpoint. The model must follow
    :class:`ValueModelFn` (see :func:`genflow.networks.as_value_model_fn`).

    Args:
      model_fn: ``model_fn(x, t, cond)``; a :class:`ValueModelFn` when ``share_values_steps > 0``.
      process: the Gaussian path the model was trained on.
      solver: a deterministic solver object, e.g. ``RFSolver()``.
      x_source: the points to edit, at ``t_data``, ``(b, *data_shape)``.
      source_cond: the condition that describes ``x_source`` (used for the inversion).
      target_cond: the condition to regenerate under.
      prediction: what ``model_fn`` predicts (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``,
        ``"score"``).
      num_steps: solver steps per direction on ``grid`` (ignored when ``ts`` is given).
      ts: an explicit *increasing* grid ``(num_steps + 1,)`` from ``t_data`` to ``t_noise``.
      grid: ``grid(process, t_start, t_end, num_steps)``, as in :func:`genflow.samplers.sample`
        (the inversion uses it increasing, the regeneration its reverse).
      t_data, t_noise: the ends of the grid, ``0 <= t_data < t_noise <= 1``.
      share_values_steps: number of initial regeneration steps that reuse the inversion's
        attention values (0: plain editing; at most the number of steps).
      share_blocks: indices of the attention blocks whose values are shared (all when
        ``None``); the other blocks compute their own values.
      thresholding: as in :func:`genflow.samplers.sample`.

    Returns:
      :class:`EditResult` with the edited ``x``, the ``latent`` and the total ``nfe``.

    Raises:
      TypeError: if ``solver`` is not a solver object or ``share_values_steps`` not an int.
      ValueError: for a stochastic solver, a bad grid, ``share_values_steps`` out of range, or
        value sharing with a model that cannot expose its attention values.
    """
    _check_solver(solver)
    if solver.stochastic:
        raise ValueError(
            f"edit needs a deterministic solver; {type(solver).__name__} is stochastic. "
            "Use e.g. RFSolver(), Heun() or DPMSolverMultistep()."
        )
    k = share_values_steps
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"share_values_steps must be an int, got {k!r}.")
    if k < 0:
        raise ValueError(f"share_values_steps must be >= 0, got {k}.")
    if k > 0 and not supports_value_injection(model_fn):
        raise ValueError(
            f"share_values_steps={k} reuses attention values, but the model function "
            f"({type(model_fn).__name__}) does not expose them. Pass a function "
            "fn(x, t, cond, *, values=None, return_values=False) with "
            "supports_value_injection = True, e.g. genflow.networks.as_value_model_fn(DiT(...)), "
            "or use share_values_steps=0."
        )
    ts = _make_grid(process, solver, num_steps=num_steps, ts=ts, grid=grid,
                    t_start=t_data, t_end=t_noise, increasing=True)
    n = ts.shape[0] - 1
    if k > n:
        raise ValueError(
            f"share_values_steps={k} exceeds the number of steps ({n}); use at most {n}."
        )
    blocks = None if share_blocks is None else tuple(int(i) for i in share_blocks)

    x = jnp.asarray(x_source)
    source = Denoiser(model_fn, process, prediction, source_cond, thresholding)
    target = Denoiser(model_fn, process, prediction, target_cond, thresholding)
    _check_model_output(source, x, ts[0])
    _check_model_output(target, x, ts[-1])
    if k > 0:
        _check_values_output(model_fn, x, ts[0], source_cond, blocks)

    # Inversion: the first n - k steps plain, the last k steps recording their values.
    state = solver.init(x, ts)
    x, state, nfe = _run_steps(source, solver, x, state, ts[: n - k + 1])
    records = None
    if k > 0:
        recorder = _Recorder(model_fn)
        recording = Denoiser(recorder, process, prediction, source_cond, thresholding)
        x, state, nfe_rec, (rec_times, rec_values) = _run_steps(
            recording, solver, x, state, ts[n - k:], recorder=recorder
        )
        # One more evaluation at the latent, for the first regeneration step's first call.
        t_last = jnp.broadcast_to(ts[-1], (x.shape[0],))
        _, last_values = _call_with_values(model_fn, x, t_last, source_cond)
        merge = lambda seq, last: jnp.concatenate(  # noqa: E731
            [seq.reshape(-1, *seq.shape[2:]), last[None].astype(seq.dtype)]
        )
        records = (merge(rec_times, ts[-1]), jax.tree.map(merge, rec_values, last_values))
        nfe += nfe_rec + 1
    latent = x

    # Regeneration over the reversed grid: the first k steps with the recorded values.
    ts_down = ts[::-1]
    state = solver.init(x, ts_down)
    if k > 0:
        injecting = Denoiser(_Injector(model_fn, *records, blocks), process, prediction,
                             target_cond, thresholding)
        x, state, nfe_inj = _run_steps(injecting, solver, x, state, ts_down[: k + 1])
        nfe += nfe_inj
    x, state, nfe_regen = _run_steps(target, solver, x, state, ts_down[k:])
    return EditResult(x=x, latent=latent, nfe=nfe + nfe_regen)


# --------------------------------------------------------------------------- internals
def _run_steps(denoise: Denoiser, solver: AbstractSolver, x: Array, state: Any, ts: Array,
               recorder: _Recorder | None = None):
    """``lax.scan`` of ``solver.step`` over consecutive pairs of ``ts``.

    Returns ``(x, state, nfe)``, plus the records ``(times (m, e), values (m, e, ...))`` of the
    ``e`` evaluations of each of the ``m`` steps when ``recorder`` is given.
    """
    m = ts.shape[0] - 1
    if m == 0:
        return (x, state, 0) if recorder is None else (x, state, 0, None)
    key = jax.random.key(0)  # deterministic solvers ignore it

    def body(carry, times):
        x_cur, state_cur = carry
        denoise.reset_calls()  # the body may be traced more than once; count the last trace
        if recorder is not None:
            recorder.clear()
        x_next, state_next = solver.step(denoise, state_cur, x_cur, times[0], times[1], key=key)
        out = recorder.stacked() if recorder is not None else None
        return (x_next.astype(x_cur.dtype), state_next), out

    (x, state), out = jax.lax.scan(body, (x, state), (ts[:-1], ts[1:]))
    nfe = m * denoise.calls
    return (x, state, nfe) if recorder is None else (x, state, nfe, out)


def _call_with_values(model_fn: ValueModelFn, x: Array, t: Array, cond: Any):
    result = model_fn(x, t, cond, return_values=True)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise TypeError(
            "a value-capable model function must return (out, values) when called with "
            f"return_values=True; {type(model_fn).__name__} returned {type(result).__name__}."
        )
    return result


def _check_values_output(model_fn: ValueModelFn, x: Array, t: Array, cond: Any,
                         blocks: tuple[int, ...] | None) -> None:
    """Abstractly call the model with ``return_values=True`` (nothing is compiled) and check
    that it returns ``(out, values)`` and that ``blocks`` index its values tuple."""
    t_b = jax.ShapeDtypeStruct((x.shape[0],), t.dtype)
    _, values = jax.eval_shape(lambda x_, t_: _call_with_values(model_fn, x_, t_, cond), x, t_b)
    if blocks is None:
        return
    if not isinstance(values, (tuple, list)):
        raise TypeError(
            "share_blocks selects entries of the values tuple, but the model returned "
            f"{type(values).__name__}; pass share_blocks=None."
        )
    bad = [i for i in blocks if not 0 <= i < len(values)]
    if bad:
        raise ValueError(
            f"share_blocks {bad} out of range: the model has {len(values)} attention "
            f"blocks (indices 0 .. {len(values) - 1})."
        )


class _Recorder:
    """A ``model_fn`` that also keeps the time and values of every call of one scan step."""

    def __init__(self, model_fn: ValueModelFn):
        self.model_fn = model_fn
        self.times: list[Array] = []
        self.values: list[Any] = []

    def clear(self) -> None:
        self.times, self.values = [], []

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        out, values = _call_with_values(self.model_fn, x, t, cond)
        self.times.append(t[0])
        self.values.append(values)
        return out

    def stacked(self) -> tuple[Array, Any]:
        """``(times (e,), values with a leading axis e)`` of this step's ``e`` calls."""
        return jnp.stack(self.times), jax.tree.map(lambda *v: jnp.stack(v), *self.values)


class _Injector:
    """A ``model_fn`` that replaces the values by the records nearest in time (ties: latest)."""

    def __init__(self, model_fn: ValueModelFn, times: Array, values: Any,
                 blocks: tuple[int, ...] | None):
        self.model_fn = model_fn
        self.times = times
        self.values = values
        self.blocks = blocks

    def __call__(self, x: Array, t: Array, cond: Any = None) -> Array:
        dist = jnp.abs(self.times - t[0].astype(self.times.dtype))
        index = self.times.shape[0] - 1 - jnp.argmin(dist[::-1])
        values = jax.tree.map(lambda v: v[index], self.values)
        if self.blocks is not None:
            values = tuple(v if i in self.blocks else None for i, v in enumerate(values))
        return self.model_fn(x, t, cond, values=values)
