"""Fixed-step solvers of the probability-flow ODE ``dx/dt = alpha'_t x0_hat + sigma'_t eps_hat``."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from genflow.processes._base import pytree_dataclass
from genflow.samplers._base import AbstractSolver


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Euler(AbstractSolver):
    """Explicit Euler on the probability-flow ODE: 1 NFE per step, order 1."""

    order = 1
    stochastic = False
    min_steps = 1

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        return x + (t_next - t_cur) * denoise.velocity(x, t_cur), state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Heun(AbstractSolver):
    """Heun's method (explicit trapezoidal rule) on the probability-flow ODE: 2 NFE per step, order 2."""

    order = 2
    stochastic = False
    min_steps = 1

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        h = t_next - t_cur
        d_cur = denoise.velocity(x, t_cur)
        x_euler = x + h * d_cur
        # Where sigma_next = 0 (t_end = 0) the velocity is 0 * inf: keep the Euler step there,
        # as EDM does, and evaluate the (unused) corrector at a finite time to keep it NaN-free.
        has_noise = denoise.process.marginal(t_next)[1] > 0
        d_next = denoise.velocity(x_euler, jnp.where(has_noise, t_next, t_cur))
        return jnp.where(has_noise, x + 0.5 * h * (d_cur + d_next), x_euler), state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class FokkerPlanckHeun(Heun):
    """Heun's method on the probability-flow ODE of a model trained with the Fokker-Planck
    regularizer (:mod:`genflow.fokker_planck`).

    The steps are :class:`Heun`'s (2 NFE per step, order 2). It is a separate name that users
    pick to say that the model's score satisfies the score Fokker-Planck equation, so that its
    probability-flow ODE and reverse SDE share their marginals; the training method checks that
    the model qualifies (it was trained with a positive Fokker-Planck weight).
    """
