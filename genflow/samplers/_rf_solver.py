"""RF-Solver (Wang et al. 2024, "Taming Rectified Flow for Inversion and Editing").

A Taylor expansion of the probability-flow ODE ``dx/dt = v(x, t)`` in the step ``h``, whose
time derivatives of the velocity along the trajectory are estimated by finite differences of
extra velocity evaluations inside the step.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from genflow.processes._base import pytree_dataclass
from genflow.samplers._base import AbstractSolver, Denoiser

_ORDERS = (2, 3)


# ``order`` decides how many evaluations a step makes (the step's structure): static.
@pytree_dataclass(static=("order",))
@dataclasses.dataclass(frozen=True)
class RFSolver(AbstractSolver):
    r"""RF-Solver of order 2 or 3 on the probability-flow ODE, in either time direction.

    Along the exact solution, write ``u(s) = v(x(t + s), t + s)`` for the velocity seen by the
    trajectory, so that ``u' = dv/dt`` is the *total* derivative
    ``partial_t v + (grad_x v) v``. A step from ``t`` to ``t + h`` (``h < 0`` when sampling,
    ``h > 0`` when inverting) is the Taylor polynomial

    .. math::

        x(t + h) = x + h\,u(0) + \frac{h^2}{2} u'(0) + \frac{h^3}{6} u''(0) + O(h^4),

    truncated after the ``h^order`` term, with ``u(0) = v(x, t)`` and the derivatives replaced
    by finite differences of velocities ``k_i`` evaluated at probe points.

    **Order 2** (the paper's solver), 2 NFE per step:

    .. math::

        k_1 = v(x, t), \quad k_2 = v\!\left(x + \tfrac{h}{2} k_1,\; t + \tfrac{h}{2}\right),
        \quad u'(0) \approx \frac{k_2 - k_1}{h / 2},

        x_{next} = x + h k_1 + \frac{h^2}{2} \cdot \frac{k_2 - k_1}{h/2} = x + h k_2 .

    The probe ``x + (h/2) k_1`` is off the trajectory by ``O(h^2)``, so the derivative estimate
    is ``O(h)`` accurate and the local error ``O(h^3)``: the explicit midpoint rule, order 2.

    **Order 3**, 3 NFE per step: a third velocity at ``t + h`` gives the three-point stencils
    (exact for a quadratic ``u`` through ``u(0) = k_1``, ``u(h/2) = k_2``, ``u(h) = k_3``)

    .. math::

        u'(0) \approx \frac{-3 k_1 + 4 k_2 - k_3}{h}, \qquad
        u''(0) \approx \frac{4 (k_1 - 2 k_2 + k_3)}{h^2},

    and substituting them in the cubic Taylor polynomial gives

    .. math::

        x_{next} = x + h k_1 + \frac{h^2}{2} u'(0) + \frac{h^3}{6} u''(0)
                 = x + \frac{h}{6}\left(k_1 + 4 k_2 + k_3\right).

    Where to probe for ``k_3``: the midpoint probe lags the trajectory,
    ``x + (h/2) k_1 - x(t + h/2) = -(h^2/8) u'(0) + O(h^3)``, which perturbs ``k_2`` by
    ``-(h^2/8) J u'`` (``J = grad_x v``) and ``x_{next}`` by ``-(h^3/12) J u'`` through the
    weight ``2h/3``. Probing at ``x_3 = x + h k_1 + h^2 \hat u'``, ``\hat u' = (k_2 - k_1)/(h/2)``
    (the order-2 derivative estimate), overshoots by ``+(h^2/2) u'(0) + O(h^3)`` and perturbs
    ``x_{next}`` by ``+(h^3/12) J u'`` through the weight ``h/6``: the two ``h^3`` terms cancel
    and the local error is ``O(h^4)``, i.e. order 3. In Runge–Kutta form,
    ``x_3 = x - h k_1 + 2 h k_2`` and the step is Kutta's third-order method (nodes 0, 1/2, 1;
    weights 1/6, 2/3, 1/6).

    **Ends of the path.** The order-3 probe sits at ``t_next``; where the path is degenerate
    there (``sigma = 0`` at the data end, or ``alpha = 0`` at the noise end of rectified
    flow) an eps-, x0- or score-model cannot give a velocity, so that one step takes the
    order-2 update instead (its ``k_3`` is evaluated, unused, at ``t`` to stay finite). One
    step of local error ``O(h^3)`` leaves the global order 3. The order-2 step never
    evaluates at ``t_next``.

    The velocity comes from :meth:`Denoiser.velocity`, so the solver works with every Gaussian
    path and every prediction kind. The updates are written without dividing by ``h``, so a
    zero-length step is the identity.

    Attributes:
      order: 2 (2 NFE per step) or 3 (3 NFE per step).
    """

    order: int = 2

    stochastic = False
    min_steps = 1

    def __post_init__(self):
        if (isinstance(self.order, bool) or not isinstance(self.order, int)
                or self.order not in _ORDERS):
            raise ValueError(f"RFSolver supports order 2 or 3; got {self.order!r}.")

    @property
    def nfe_per_step(self) -> int:
        """Velocity evaluations per step (``order``)."""
        return self.order

    def step(
        self,
        denoise: Denoiser,
        state: None,
        x: Float[Array, "b *data"],
        t_cur: Float[Array, ""],
        t_next: Float[Array, ""],
        *,
        key: PRNGKeyArray,
    ) -> tuple[Float[Array, "b *data"], None]:
        h = t_next - t_cur
        k1 = denoise.velocity(x, t_cur)
        k2 = denoise.velocity(x + (0.5 * h) * k1, t_cur + 0.5 * h)
        # h u'(0) estimated from the midpoint: 2 (k2 - k1).
        h_du = 2.0 * (k2 - k1)
        x_order2 = x + h * (k1 + 0.5 * h_du)
        if self.order == 2:
            return x_order2, state

        alpha_next, sigma_next = denoise.process.marginal(t_next)
        regular = (alpha_next > 0) & (sigma_next > 0)
        x3 = x + h * (k1 + h_du)
        k3 = denoise.velocity(x3, jnp.where(regular, t_next, t_cur))
        # h u'(0) and h^2 u''(0) from the three-point stencils on (0, h/2, h).
        h_du = -3.0 * k1 + 4.0 * k2 - k3
        h2_ddu = 4.0 * (k1 - 2.0 * k2 + k3)
        x_order3 = x + h * (k1 + 0.5 * h_du + h2_ddu / 6.0)
        return jnp.where(regular, x_order3, x_order2), state
