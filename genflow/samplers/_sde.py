"""Solvers of the reverse-time SDE ``dx = [f_t x - g_t^2 grad log p_t(x)] dt + g_t dW``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractSolver


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class EulerMaruyama(AbstractSolver):
    """Euler–Maruyama on the reverse SDE (score_sde's ``EulerMaruyamaPredictor``).

    With ``h = t_cur - t_next > 0`` and ``z ~ N(0, I)``::

        x_next = x - h (f x - g^2 score(x, t_cur)) + sqrt(g^2 h) z

    1 NFE per step; strong order 1/2, weak order 1.
    """

    order = 0.5
    stochastic = True
    min_steps = 1

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        h = t_cur - t_next
        f, g2 = denoise.process.sde(t_cur)
        score = denoise.score(x, t_cur)
        drift = broadcast_to_data(f, x) * x - broadcast_to_data(g2, x) * score
        z = jax.random.normal(key, x.shape, x.dtype)
        return x - h * drift + jnp.sqrt(g2 * h) * z, state
