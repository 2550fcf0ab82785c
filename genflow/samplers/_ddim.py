"""DDIM (Song, Meng, Ermon 2021) for any Gaussian path."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractSolver


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class DDIM(AbstractSolver):
    """DDIM step with stochasticity ``eta`` (0: deterministic, 1: DDPM ancestral sampling).

    With ``h = lambda_next - lambda_cur`` and ``c = eta * sigma_next * sqrt(1 - exp(-2h))``::

        x_next = alpha_next x0_hat + sqrt(sigma_next^2 - c^2) eps_hat + c z

    For ``eta = 0`` this is DPM-Solver-1, the exact solution of the probability-flow ODE
    when ``eps_hat`` is constant over the step: first order, 1 NFE per step. The
    expression in log-SNR makes it valid for every Gaussian path, not only VP.
    """

    eta: float = 0.0

    order = 1
    min_steps = 1

    @property
    def stochastic(self) -> bool:
        return not (isinstance(self.eta, (int, float)) and self.eta == 0)

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        process = denoise.process
        x0, eps = denoise(x, t_cur)
        alpha_next, sigma_next = process.marginal(t_next)
        h = process.log_snr(t_next) - process.log_snr(t_cur)
        c = self.eta * sigma_next * jnp.sqrt(-jnp.expm1(-2.0 * h))
        z = jax.random.normal(key, x.shape, x.dtype)
        bc = lambda a: broadcast_to_data(a, x)  # noqa: E731
        x_next = bc(alpha_next) * x0 + bc(jnp.sqrt(sigma_next**2 - c**2)) * eps + bc(c) * z
        return x_next, state
