"""Multistep DPM-Solver and DPM-Solver++ (Lu et al. 2022, 2022b) for any Gaussian path."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractSolver

_ALGORITHMS = ("dpmsolver", "dpmsolver++")

# The reference applies ``lower_order_final`` only to grids shorter than this many steps.
_LOWER_ORDER_FINAL_BELOW = 10


class MultistepState(NamedTuple):
    """What :class:`DPMSolverMultistep` carries from one step to the next.

    Attributes:
      index: the number of steps taken so far (int32 scalar).
      stop: steps with index ``i`` use at most order ``stop - i``: the number of steps when
        ``lower_order_final`` applies, a number large enough to never bind otherwise.
      outputs: ``(order - 1, *x.shape)`` model outputs (``x0_hat`` or ``eps_hat``) at the
        previous grid points, the most recent first.
      lams: ``(order - 1,)`` the half log-SNR of those points.
    """

    index: Array
    stop: Array
    outputs: Array
    lams: Array


# The order, the algorithm name and lower_order_final decide the state's shape and the step's
# structure (and the algorithm is a string): all three are static.
@pytree_dataclass(static=("order", "algorithm", "lower_order_final"))
@dataclasses.dataclass(frozen=True)
class DPMSolverMultistep(AbstractSolver):
    r"""Multistep DPM-Solver (noise form) and DPM-Solver++ (data form), orders 1 to 3.

    Exponential integrators of the probability-flow ODE written in the half log-SNR
    ``lambda_t = log alpha_t - log sigma_t``. With ``h = lambda_next - lambda_cur``, the
    data form (``"dpmsolver++"``, model output ``D = x0_hat``) integrates exactly

    .. math::

        x_{next} = \frac{\sigma_{next}}{\sigma_{cur}} x
                   + \sigma_{next} \int_{\lambda_{cur}}^{\lambda_{next}} e^{\lambda} D(\lambda)\,d\lambda,

    and the noise form (``"dpmsolver"``, ``D = eps_hat``)

    .. math::

        x_{next} = \frac{\alpha_{next}}{\alpha_{cur}} x
                   - \alpha_{next} \int_{\lambda_{cur}}^{\lambda_{next}} e^{-\lambda} D(\lambda)\,d\lambda,

    with ``D`` replaced by its polynomial interpolant in ``lambda`` through the current output
    ``D_0`` and the ``k - 1`` previous ones ``D_1, D_2`` (previous steps ``h_0, h_1`` in
    ``lambda``). In Newton form, with ``tau = lambda - lambda_cur``,
    ``d1_0 = (D_0 - D_1) / h_0``, ``d1_1 = (D_1 - D_2) / h_1``,
    ``d2 = (d1_0 - d1_1) / (h_0 + h_1)``, the interpolant is
    ``D_0 + (d1_0 + h_0 d2) tau + d2 tau^2``, and the integrals of ``1, tau, tau^2`` against
    the exponential weight are ``psi_1, psi_2, 2 psi_3`` (``psi_j = h^j phi_j``)::

        data form:  psi_1 = expm1(-h), psi_2 = psi_1 + h, psi_3 = psi_2 - h^2 / 2
          x_next = (sigma_next / sigma_cur) x - alpha_next psi_1 D_0
                   [k = 2]  - alpha_next psi_1 h d1_0 / 2
                   [k = 3]  + alpha_next psi_2 (d1_0 + h_0 d2) - 2 alpha_next psi_3 d2
        noise form: psi_1 = expm1(h), psi_2 = psi_1 - h, psi_3 = psi_2 - h^2 / 2
          x_next = (alpha_next / alpha_cur) x - sigma_next psi_1 D_0
                   [k = 2]  - sigma_next psi_1 h d1_0 / 2
                   [k = 3]  - sigma_next psi_2 (d1_0 + h_0 d2) - 2 sigma_next psi_3 d2

    Order 1 is DDIM with ``eta = 0`` in both forms; order 2 is the reference's default
    ("midpoint") variant, DPM-Solver++(2M) of the paper in the data form; order 3 is the
    Taylor form (see below for its coefficient).

    No coefficient divides by ``h`` (only by the previous steps, guarded), so a zero-length
    step (``t_next = t_cur``) is the identity. A step to ``sigma_next = 0`` (``t_end = 0``,
    ``h = inf``) is taken as its limit, ``x_next = alpha_next x0_hat``, in both forms.

    Step ``i`` (0-based) of ``n`` uses order ``min(order, i + 1)`` (warm-up from the outputs
    available), and, when ``lower_order_final`` is set *and* ``n < 10`` (the reference's rule:
    ``step_order = min(order, steps + 1 - step)`` only for ``steps < 10``), at most
    ``n - i``, so the last step is first order and the one before at most second order.
    The order of each step is selected arithmetically (masks on the correction terms, no
    ``lax.cond``), and each step evaluates the model exactly once, at ``(x, t_cur)``; the
    output is kept in the state for the next steps. NFE = number of steps.

    Third order: the reference (``dpm_solver_pytorch.py``, also diffusers) multiplies the
    second divided difference by ``phi_3 = phi_2 / h - 1/2`` where the exact integral of the
    quadratic term of the interpolant needs twice that; with its coefficient the method
    converges with order 2 only (checked in ``tests/samplers/test_dpm_solver.py``). Here the
    exact coefficient ``2 psi_3`` is used, which gives order 3.

    Attributes:
      order: 1, 2 or 3.
      algorithm: ``"dpmsolver++"`` (data prediction, the recommended default, robust with
        guidance) or ``"dpmsolver"`` (noise prediction).
      lower_order_final: lower the order of the last steps on short grids (``< 10`` steps).
    """

    order: int = 2
    algorithm: str = "dpmsolver++"
    lower_order_final: bool = True

    stochastic = False
    min_steps = 1

    def __post_init__(self):
        if isinstance(self.order, (int,)) and not isinstance(self.order, bool):
            if self.order not in (1, 2, 3):
                raise ValueError(
                    f"DPMSolverMultistep supports order 1, 2 or 3, got order={self.order}."
                )
        elif isinstance(self.order, (bool, float, str)):
            raise ValueError(f"order must be the int 1, 2 or 3, got {self.order!r}.")
        if isinstance(self.algorithm, str) and self.algorithm not in _ALGORITHMS:
            raise ValueError(
                f"algorithm must be 'dpmsolver++' (data prediction) or 'dpmsolver' (noise "
                f"prediction), got {self.algorithm!r}."
            )

    @property
    def _data(self) -> bool:
        return self.algorithm == "dpmsolver++"

    def init(self, x, ts) -> MultistepState:
        n = ts.shape[0] - 1
        use_lower_final = bool(self.lower_order_final) and n < _LOWER_ORDER_FINAL_BELOW
        stop = n if use_lower_final else n + self.order
        slots = self.order - 1
        lam_dtype = jnp.result_type(ts, jnp.float32)
        return MultistepState(
            index=jnp.zeros((), jnp.int32),
            stop=jnp.asarray(stop, jnp.int32),
            outputs=jnp.zeros((slots, *x.shape), x.dtype),
            lams=jnp.zeros((slots,), lam_dtype),
        )

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        process = denoise.process
        x0, eps = denoise(x, t_cur)
        d0 = x0 if self._data else eps

        alpha_cur, sigma_cur = process.marginal(t_cur)
        alpha_next, sigma_next = process.marginal(t_next)
        lam_cur = process.log_snr(t_cur)
        # A step to sigma_next = 0 (t_end = 0) has h = inf: it is taken as its limit, the
        # first-order step x_next = alpha_next x0_hat (h = 0 below zeroes every correction).
        has_noise = sigma_next > 0
        h = jnp.where(has_noise, process.log_snr(t_next) - lam_cur, 0.0)
        i = state.index
        k = jnp.minimum(jnp.minimum(self.order, i + 1), state.stop - i)  # this step's order

        bc = lambda a: broadcast_to_data(a, x)  # noqa: E731
        # psi_j = h^j phi_j: the integrals of tau^(j-1) / (j-1)! against the exponential weight.
        if self._data:
            lin, c = sigma_next / sigma_cur, alpha_next
            psi1 = jnp.expm1(-h)
            psi2 = psi1 + h
            a0, a1 = -c * psi1, c * psi2
            a0 = jnp.where(has_noise, a0, alpha_next)
        else:
            lin, c = alpha_next / alpha_cur, sigma_next
            psi1 = jnp.expm1(h)
            psi2 = psi1 - h
            a0, a1 = -c * psi1, -c * psi2
            a0 = jnp.where(has_noise, a0, -alpha_next * sigma_cur / alpha_cur)
        psi3 = psi2 - 0.5 * h**2
        a2 = -2.0 * c * psi3  # both forms (the reference has -c psi3: see the class docstring)
        a_mid = 0.5 * a0 * h  # the order-2 midpoint variant, both forms
        x_next = bc(lin) * x + bc(a0) * d0

        if self.order >= 2:
            use2 = k >= 2
            h0 = lam_cur - state.lams[0]
            # Guard the divisions: unused slots hold zeros, and a zero-length step (t_next =
            # t_cur, e.g. a padded grid) leaves h0 = 0 behind; its coefficients are all 0.
            h0 = jnp.where(use2 & (h0 != 0), h0, jnp.ones_like(h0))
            d1_0 = (d0 - state.outputs[0]) / bc(h0)
            x_next = x_next + bc(jnp.where(k == 2, a_mid, 0.0)) * d1_0
            if self.order >= 3:
                use3 = k >= 3
                h1 = state.lams[0] - state.lams[1]
                h1 = jnp.where(use3 & (h1 != 0), h1, jnp.ones_like(h1))
                d1_1 = (state.outputs[0] - state.outputs[1]) / bc(h1)
                d2 = (d1_0 - d1_1) / bc(h0 + h1)
                # Interpolant D(lam_cur + tau) = D0 + (d1_0 + h0 d2) tau + d2 tau^2.
                x_next = (x_next + bc(jnp.where(use3, a1, 0.0)) * d1_0
                          + bc(jnp.where(use3, a1 * h0 + a2, 0.0)) * d2)
            outputs = jnp.concatenate([d0[None], state.outputs[:-1]], axis=0)
            lams = jnp.concatenate(
                [jnp.asarray(lam_cur, state.lams.dtype)[None], state.lams[:-1]]
            )
        else:
            outputs, lams = state.outputs, state.lams
        return x_next, MultistepState(i + 1, state.stop, outputs, lams)
