"""DPM-Solver and DPM-Solver++ (Lu et al. 2022, 2022b) for any Gaussian path: the shared
exponential-integrator coefficients and the multistep solver.

The singlestep solver is in ``_dpm_singlestep.py`` and the adaptive-step one in
``_dpm_adaptive.py``; both use :func:`exponential_coefficients`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from genflow.processes._base import AbstractGaussianPath, broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractSolver

ALGORITHMS = ("dpmsolver", "dpmsolver++")
VARIANTS = ("midpoint", "taylor")

# The reference applies ``lower_order_final`` only to grids shorter than this many steps.
_LOWER_ORDER_FINAL_BELOW = 10


class ExpCoefficients(NamedTuple):
    r"""Coefficients of one exponential-integrator update from ``t_s`` to ``t``.

    With ``h = lambda_t - lambda_s`` and the model output written as a polynomial in
    ``tau = lambda - lambda_s``, ``D(tau) = D_0 + b tau + c tau^2``, the exact integral of the
    polynomial gives ``x_t = lin x_s + a0 D_0 + a1 b + a2 c``, and DPM-Solver's
    "midpoint" second-order variant uses ``a_mid`` in place of ``a1``:

    * data form (``dpmsolver++``, ``D = x0_hat``): ``lin = sigma_t / sigma_s``,
      ``psi_1 = expm1(-h)``, ``psi_2 = psi_1 + h``, ``psi_3 = psi_2 - h^2/2``,
      ``a0 = -alpha_t psi_1``, ``a1 = alpha_t psi_2``, ``a2 = -2 alpha_t psi_3``;
    * noise form (``dpmsolver``, ``D = eps_hat``): ``lin = alpha_t / alpha_s``,
      ``psi_1 = expm1(h)``, ``psi_2 = psi_1 - h``, ``psi_3 = psi_2 - h^2/2``,
      ``a0 = -sigma_t psi_1``, ``a1 = -sigma_t psi_2``, ``a2 = -2 sigma_t psi_3``;
    * ``a_mid = a0 h / 2`` (both forms).

    (``psi_j = h^j phi_j`` with the paper's ``phi`` functions; no coefficient divides by
    ``h``.) A target with ``sigma_t = 0`` (``t = 0`` on a VP path, ``h = inf``) is taken as
    its limit ``x_t = alpha_t x0_hat``: ``h`` is set to 0, which zeroes every correction.
    """

    lin: Array
    a0: Array
    a1: Array
    a2: Array
    a_mid: Array
    h: Array


def exponential_coefficients(
    process: AbstractGaussianPath, data: bool, t_s: ArrayLike, t: ArrayLike
) -> ExpCoefficients:
    """The coefficients of :class:`ExpCoefficients` for a step from ``t_s`` to ``t``."""
    alpha_s, sigma_s = process.marginal(t_s)
    alpha_t, sigma_t = process.marginal(t)
    has_noise = sigma_t > 0
    h = jnp.where(has_noise, process.log_snr(t) - process.log_snr(t_s), 0.0)
    if data:
        lin, c = sigma_t / sigma_s, alpha_t
        psi1 = jnp.expm1(-h)
        psi2 = psi1 + h
        a0, a1 = -c * psi1, c * psi2
        a0 = jnp.where(has_noise, a0, alpha_t)
    else:
        lin, c = alpha_t / alpha_s, sigma_t
        psi1 = jnp.expm1(h)
        psi2 = psi1 - h
        a0, a1 = -c * psi1, -c * psi2
        a0 = jnp.where(has_noise, a0, -alpha_t * sigma_s / alpha_s)
    a2 = -2.0 * c * (psi2 - 0.5 * h**2)
    return ExpCoefficients(lin=lin, a0=a0, a1=a1, a2=a2, a_mid=0.5 * a0 * h, h=h)


def check_options(name: str, order, algorithm, variant, orders=(1, 2, 3)) -> None:
    """Clear errors for the options shared by the DPM-Solver classes (before any tracing)."""
    if isinstance(order, bool) or not isinstance(order, int) or order not in orders:
        raise ValueError(f"{name} supports order {', '.join(map(str, orders))}; got {order!r}.")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"algorithm must be 'dpmsolver++' (data prediction) or 'dpmsolver' (noise "
            f"prediction), got {algorithm!r}."
        )
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'midpoint' or 'taylor', got {variant!r}.")


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


class DPMSolverBase(AbstractSolver):
    """What the DPM-Solver classes share: fields ``order``, ``algorithm`` and ``variant``
    (checked on construction), deterministic, at least ``order`` steps."""

    order: int
    algorithm: str
    variant: str
    stochastic = False

    def __post_init__(self):
        check_options(type(self).__name__, self.order, self.algorithm, self.variant)

    @property
    def min_steps(self) -> int:
        return self.order

    @property
    def _data(self) -> bool:
        """The data form (DPM-Solver++, model output ``x0_hat``), else the noise form."""
        return self.algorithm == "dpmsolver++"


# Every field shapes the state or the step's structure (or is a string): all are static.
@pytree_dataclass(
    static=("order", "algorithm", "variant", "lower_order_final", "reference_coefficients")
)
@dataclasses.dataclass(frozen=True)
class DPMSolverMultistep(DPMSolverBase):
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
    ``D_0 + (d1_0 + h_0 d2) tau + d2 tau^2``, and with the coefficients of
    :class:`ExpCoefficients`::

        k = 1:  x_next = lin x + a0 D_0                         (DDIM with eta = 0)
        k = 2:  x_next = lin x + a0 D_0 + a_mid d1_0            (variant "midpoint")
                x_next = lin x + a0 D_0 + a1 d1_0               (variant "taylor")
        k = 3:  x_next = lin x + a0 D_0 + a1 (d1_0 + h_0 d2) + a2 d2

    Order 2 "midpoint" is the reference's default and the paper's DPM-Solver++(2M) in the
    data form; "taylor" integrates the linear interpolant exactly. Order 3 has one form.

    Third order: the reference (``dpm_solver_pytorch.py``, also diffusers) multiplies the
    second divided difference by ``phi_3 = phi_2 / h - 1/2``, i.e. uses ``a2 / 2``, where the
    exact integral of the quadratic term of the interpolant needs ``a2``; with the
    reference's coefficient the method converges with order 2 only (measured in
    ``tests/samplers/test_dpm_solver.py``). genflow uses the exact ``a2`` (order 3);
    ``reference_coefficients=True`` selects the reference's to reproduce its numbers.

    No coefficient divides by ``h`` (only by the previous steps, guarded), so a zero-length
    step (``t_next = t_cur``) is the identity. A step to ``sigma_next = 0`` (``t_end = 0``,
    ``h = inf``) is taken as its limit, ``x_next = alpha_next x0_hat``, in both forms. Steps
    may also run towards noise (``t_next > t_cur``, :func:`genflow.samplers.invert`).

    Step ``i`` (0-based) of ``n`` uses order ``min(order, i + 1)`` (warm-up from the outputs
    available), and, when ``lower_order_final`` is set *and* ``n < 10`` (the reference's rule:
    ``step_order = min(order, steps + 1 - step)`` only for ``steps < 10``), at most
    ``n - i``, so the last step is first order and the one before at most second order.
    The order of each step is selected arithmetically (masks on the correction terms, no
    ``lax.cond``), and each step evaluates the model exactly once, at ``(x, t_cur)``; the
    output is kept in the state for the next steps. NFE = number of steps.

    Attributes:
      order: 1, 2 or 3; at least ``order`` steps are needed.
      algorithm: ``"dpmsolver++"`` (data prediction, the recommended default, robust with
        guidance) or ``"dpmsolver"`` (noise prediction).
      variant: ``"midpoint"`` (the reference's default) or ``"taylor"``, for order-2 steps.
      lower_order_final: lower the order of the last steps on short grids (``< 10`` steps).
      reference_coefficients: use the reference implementation's third-order coefficient
        (order 2 in practice) instead of the exact one.
    """

    order: int = 2
    algorithm: str = "dpmsolver++"
    variant: str = "midpoint"
    lower_order_final: bool = True
    reference_coefficients: bool = False

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
        x0, eps = denoise(x, t_cur)
        d0 = x0 if self._data else eps
        lam_cur = denoise.process.log_snr(t_cur)
        co = exponential_coefficients(denoise.process, self._data, t_cur, t_next)
        i = state.index
        k = jnp.minimum(jnp.minimum(self.order, i + 1), state.stop - i)  # this step's order

        bc = lambda a: broadcast_to_data(a, x)  # noqa: E731
        x_next = bc(co.lin) * x + bc(co.a0) * d0

        if self.order >= 2:
            h0 = lam_cur - state.lams[0]
            # Guard the divisions: unused slots hold zeros, and a zero-length step (t_next =
            # t_cur, e.g. a padded grid) leaves h0 = 0 behind; its coefficients are all 0.
            h0 = jnp.where((k >= 2) & (h0 != 0), h0, jnp.ones_like(h0))
            d1_0 = (d0 - state.outputs[0]) / bc(h0)
            c_order2 = co.a_mid if self.variant == "midpoint" else co.a1
            x_next = x_next + bc(jnp.where(k == 2, c_order2, 0.0)) * d1_0
            if self.order >= 3:
                use3 = k >= 3
                h1 = state.lams[0] - state.lams[1]
                h1 = jnp.where(use3 & (h1 != 0), h1, jnp.ones_like(h1))
                d1_1 = (state.outputs[0] - state.outputs[1]) / bc(h1)
                d2 = (d1_0 - d1_1) / bc(h0 + h1)
                # The reference's coefficient of d2 is half the exact one (class docstring).
                a2 = 0.5 * co.a2 if self.reference_coefficients else co.a2
                # Interpolant D(lam_cur + tau) = D0 + (d1_0 + h0 d2) tau + d2 tau^2.
                x_next = (x_next + bc(jnp.where(use3, co.a1, 0.0)) * d1_0
                          + bc(jnp.where(use3, co.a1 * h0 + a2, 0.0)) * d2)
            outputs = jnp.concatenate([d0[None], state.outputs[:-1]], axis=0)
            lams = jnp.concatenate(
                [jnp.asarray(lam_cur, state.lams.dtype)[None], state.lams[:-1]]
            )
        else:
            outputs, lams = state.outputs, state.lams
        return x_next, MultistepState(i + 1, state.stop, outputs, lams)
