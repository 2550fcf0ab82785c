"""Singlestep DPM-Solver and DPM-Solver++ (Lu et al. 2022, 2022b): orders 1 to 3, NFE = steps."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._dpm_solver import DPMSolverBase, exponential_coefficients
from genflow.samplers._grids import log_snr_uniform

def singlestep_orders(num_evals: int, order: int) -> list[int]:
    """The order of each step so that the orders add up to ``num_evals`` (the reference's rule).

    Mostly ``order``, with the remainder taken by lower-order steps at the end:
    order 3 gives ``[3, ..., 3, 2, 1]``, ``[3, ..., 3, 1]`` or ``[3, ..., 3, 2]`` for
    ``num_evals % 3 == 0, 1, 2``; order 2 gives ``[2, ..., 2]`` or ``[2, ..., 2, 1]``.
    """
    if order == 3:
        k = num_evals // 3 + 1
        rest = {0: [2, 1], 1: [1], 2: [2]}[num_evals % 3]
        return [3] * (k - len(rest)) + rest
    if order == 2:
        return [2] * (num_evals // 2) + [1] * (num_evals % 2)
    return [1] * num_evals


class SinglestepState(NamedTuple):
    """What :class:`DPMSolverSinglestep` carries between the evaluations of a step.

    Attributes:
      index: evaluations done so far (int32 scalar).
      orders, stages: ``(n,)`` the order of the step that evaluation ``i`` belongs to, and
        its stage (0, 1, 2) in that step.
      x_s, t_s, lam_s, out_s: the start of the current step and the model output there.
      lam_1, out_1: half log-SNR and model output at the step's first intermediate point.
    """

    index: Array
    orders: Array
    stages: Array
    x_s: Array
    t_s: Array
    lam_s: Array
    out_s: Array
    lam_1: Array
    out_1: Array


@pytree_dataclass(static=("order", "algorithm", "variant"))
@dataclasses.dataclass(frozen=True)
class DPMSolverSinglestep(DPMSolverBase):
    r"""Singlestep DPM-Solver (noise form) and DPM-Solver++ (data form), orders 1 to 3.

    A ``k``-th order step from ``s`` to ``t`` (``h = lambda_t - lambda_s``) evaluates the
    model at ``s`` and at ``k - 1`` intermediate points ``lambda_s + r_j h``, each reached by a
    lower-order update from ``x_s``, and then takes the exponential-integrator update of
    :class:`ExpCoefficients` with the derivatives estimated from those outputs. With
    ``D'_j = (D_j - D_s) / (r_j h)``::

        order 2:  x_1 = lin_1 x_s + a0_1 D_s
                  x_t = lin x_s + a0 D_s + a_mid D'_1           (variant "midpoint")
                  x_t = lin x_s + a0 D_s + a1 D'_1              (variant "taylor")
        order 3:  x_1 = lin_1 x_s + a0_1 D_s
                  x_2 = lin_2 x_s + a0_2 D_s + a1_2 D'_1
                  x_t = lin x_s + a0 D_s + a1 D'_2              (variant "midpoint")
                  x_t = lin x_s + a0 D_s + a1 b + a2 c          (variant "taylor")

    where ``b, c`` are the linear and quadratic coefficients of the quadratic through
    ``D_s, D_1, D_2`` in ``tau = lambda - lambda_s``, and subscripts 1, 2 mean the
    coefficients of an update from ``s`` to that intermediate point. These are the formulas
    of the reference implementation (``singlestep_dpm_solver_{second,third}_update``), whose
    singlestep third-order coefficient is exact.

    Steps are mixed so that the number of model evaluations equals the requested
    ``num_steps`` (:func:`singlestep_orders`), and the grid holds every evaluation time
    (the reference's rules):

    * on the log-SNR grid, the steps end on a log-SNR-uniform grid with one interval per
      step, and each step is split into ``k`` equal parts in log-SNR (``r = 1/2``, or
      ``r = 1/3, 2/3``); :meth:`make_grid` inserts those points;
    * on any other grid (uniform, quadratic, Karras, or an explicit ``ts`` of
      ``num_steps + 1`` points), every grid point is an evaluation: the steps end at the
      points whose index is a running sum of the orders and their intermediate points are
      the grid points in between, with ``r_j`` from their actual log-SNR.

    :func:`genflow.samplers.sample` then runs one evaluation per scan iteration: each
    iteration moves ``x`` to the next grid point (a stage point or a step's end), and the
    step's start, output and first intermediate output are kept in the state. The kind of
    each iteration is selected arithmetically (no ``lax.cond``). NFE = ``num_steps``.

    On the log-SNR grid the log-SNR at the data end must be finite (``t_end > 0`` on a VP
    path).

    Attributes:
      order: 1, 2 or 3; at least ``order`` steps (evaluations) are needed.
      algorithm: ``"dpmsolver++"`` (data prediction) or ``"dpmsolver"`` (noise prediction).
      variant: ``"midpoint"`` (the reference's default) or ``"taylor"``.
    """

    order: int = 3
    algorithm: str = "dpmsolver++"
    variant: str = "midpoint"

    # --- the grid: the evaluation times, one per model evaluation ------------------------

    def make_grid(self, grid, process, t_start, t_end, num_steps):
        if grid is log_snr_uniform:
            # K steps uniform in log-SNR, each split into `order` equal parts in log-SNR.
            orders = singlestep_orders(num_steps, self.order)
            outer = grid(process, t_start, t_end, len(orders))
            return self._insert_stages(process, outer, orders)
        # Every grid point is an evaluation: the steps end at the running sums of the orders
        # and their intermediate points are the grid points in between.
        return grid(process, t_start, t_end, num_steps)

    def _insert_stages(self, process, outer: Array, orders: list[int]) -> Array:
        lam_end = process.log_snr(outer[-1])
        try:
            finite = bool(jnp.isfinite(lam_end))
        except jax.errors.ConcretizationTypeError:
            finite = True  # a traced grid: the caller owns it
        if not finite:
            raise ValueError(
                "DPMSolverSinglestep on the log-SNR grid places its intermediate points in "
                f"log-SNR, which is infinite at t = {outer[-1]}; end the grid at t_end > 0 "
                "(e.g. 1e-3) and pass denoise_final=True for the model's clean estimate."
            )
        step = np.concatenate([[j] * o for j, o in enumerate(orders)]).astype(np.int32)
        frac = np.concatenate([np.arange(o) / o for o in orders])
        lam = process.log_snr(outer)
        lam_stage = lam[step] + frac * (lam[step + 1] - lam[step])
        inner = process.t_from_log_snr(lam_stage).astype(outer.dtype)
        ts = jnp.where(frac == 0.0, outer[step], inner)
        return jnp.concatenate([ts, outer[-1:]])

    # --- the steps ---------------------------------------------------------------------

    def init(self, x, ts) -> SinglestepState:
        n = ts.shape[0] - 1
        orders = singlestep_orders(n, self.order)
        stages = np.concatenate([np.arange(o) for o in orders])
        lam_dtype = jnp.result_type(ts, jnp.float32)
        zero_lam = jnp.zeros((), lam_dtype)
        return SinglestepState(
            index=jnp.zeros((), jnp.int32),
            orders=jnp.asarray(np.repeat(orders, orders), jnp.int32),
            stages=jnp.asarray(stages, jnp.int32),
            x_s=jnp.zeros_like(x),
            t_s=jnp.zeros((), ts.dtype),
            lam_s=zero_lam,
            out_s=jnp.zeros_like(x),
            lam_1=zero_lam,
            out_1=jnp.zeros_like(x),
        )

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        x0, eps = denoise(x, t_cur)
        out = x0 if self._data else eps
        i = state.index
        order, stage = state.orders[i], state.stages[i]
        first = stage == 0
        lam_cur = jnp.asarray(denoise.process.log_snr(t_cur), state.lam_s.dtype)

        x_s = jnp.where(first, x, state.x_s)
        out_s = jnp.where(first, out, state.out_s)
        t_s = jnp.where(first, jnp.asarray(t_cur, state.t_s.dtype), state.t_s)
        lam_s = jnp.where(first, lam_cur, state.lam_s)
        out_1 = jnp.where(stage == 1, out, state.out_1)
        lam_1 = jnp.where(stage == 1, lam_cur, state.lam_1)

        co = exponential_coefficients(denoise.process, self._data, t_s, t_next)
        # Divided differences from the step's start; guarded where they are unused.
        dl_cur = lam_cur - lam_s
        dl_1 = lam_1 - lam_s
        d_cur = (out - out_s) / broadcast_to_data(jnp.where(first, 1.0, dl_cur), x)
        d_1 = (out_1 - out_s) / broadcast_to_data(jnp.where(stage == 2, dl_1, 1.0), x)

        final2 = (order == 2) & (stage == 1)
        to_second = (order == 3) & (stage == 1)
        final3 = (order == 3) & (stage == 2)
        if self.variant == "midpoint":
            c_cur = jnp.where(final2, co.a_mid, 0.0) + jnp.where(to_second | final3, co.a1, 0.0)
            c_1 = jnp.zeros_like(c_cur)
        else:
            # Quadratic through D_s, D_1, D_2: b = (dl_cur D'_1 - dl_1 D'_cur) / gap,
            # c = (D'_cur - D'_1) / gap with gap = dl_cur - dl_1.
            gap = jnp.where(final3, dl_cur - dl_1, 1.0)
            c_cur = (jnp.where(final2 | to_second, co.a1, 0.0)
                     + jnp.where(final3, (co.a2 - co.a1 * dl_1) / gap, 0.0))
            c_1 = jnp.where(final3, (co.a1 * dl_cur - co.a2) / gap, 0.0)

        bc = lambda a: broadcast_to_data(a, x)  # noqa: E731
        x_next = bc(co.lin) * x_s + bc(co.a0) * out_s + bc(c_cur) * d_cur + bc(c_1) * d_1
        return x_next, SinglestepState(
            i + 1, state.orders, state.stages, x_s, t_s, lam_s, out_s, lam_1, out_1
        )
