"""EDM's stochastic Heun sampler (Karras et al. 2022, Algorithm 2) for any Gaussian path."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractSolver


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class EDMHeun(AbstractSolver):
    """Heun's method with "churn" (Karras et al. 2022, Algorithm 2), in genflow's time.

    EDM works with ``x_t = x0 + s eps``. Any Gaussian path is that process after scaling:
    ``y = x / alpha_t`` has noise level ``s_t = sigma_t / alpha_t = exp(-lambda_t)``, and its
    probability-flow ODE is ``dy/ds = (y - x0_hat) / s = eps_hat``. One step from ``t_cur`` to
    ``t_next`` on a grid of ``N`` steps:

    1. churn: ``gamma = min(s_churn / N, sqrt(2) - 1)`` if ``s_min <= s_cur <= s_max`` else 0
       (selected with ``jnp.where``); ``s_hat = s_cur (1 + gamma)``, mapped back to the time
       ``t_hat = t_from_log_snr(-log s_hat)`` (clipped to ``[t_cur, 1]``; ``s_hat`` is then
       recomputed from ``t_hat``, so raising the noise beyond ``t = 1`` adds no noise);
    2. ``y_hat = y + sqrt(s_hat^2 - s_cur^2) s_noise z``;
    3. Heun in ``s`` from ``s_hat`` to ``s_next``:
       ``d = eps_hat(y_hat, t_hat)``, ``y_e = y_hat + (s_next - s_hat) d``,
       ``y_next = y_hat + (s_next - s_hat) (d + eps_hat(y_e, t_next)) / 2``,
       or the Euler step ``y_e`` where ``s_next = 0`` (``t_next = 0``);
    4. ``x_next = alpha_next y_next``.

    ``N`` is the number of steps of the grid, stored in the state by :meth:`init`. With
    ``s_churn = 0`` this is Heun on the probability-flow ODE in the variable ``s`` (EDM's
    deterministic sampler, Algorithm 1): order 2. 2 NFE per step, also on a last step to
    ``s = 0``, whose second (unused) evaluation is traced all the same (EDM counts ``2N - 1``).
    Needs ``alpha_t > 0`` on the grid (for rectified flow, start below ``t = 1``).

    Attributes:
      s_churn: total churn ``S_churn`` (0: deterministic).
      s_min, s_max: the range of noise levels ``s = sigma / alpha`` where churn is applied.
      s_noise: ``S_noise``, the scale of the added noise (slightly above 1 in EDM's tuned
        settings, 1 for the exact marginals).
    """

    s_churn: float = 0.0
    s_min: float = 0.0
    s_max: float = math.inf
    s_noise: float = 1.0

    order = 2
    min_steps = 1

    @property
    def stochastic(self) -> bool:
        return not (isinstance(self.s_churn, (int, float)) and self.s_churn == 0)

    def init(self, x, ts):
        return jnp.asarray(ts.shape[0] - 1, dtype=jnp.result_type(ts, jnp.float32))

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        process = denoise.process
        bc = lambda a: broadcast_to_data(a, x)  # noqa: E731
        n = state

        alpha_cur, sigma_cur = process.marginal(t_cur)
        s_cur = sigma_cur / alpha_cur
        in_range = (s_cur >= self.s_min) & (s_cur <= self.s_max)
        gamma = jnp.where(in_range, jnp.minimum(self.s_churn / n, math.sqrt(2.0) - 1.0), 0.0)
        churn = gamma > 0
        # Evaluate t_from_log_snr at a finite level even where churn is off (select afterwards).
        t_raised = process.t_from_log_snr(-jnp.log(s_cur * (1.0 + gamma)))
        t_hat = jnp.where(churn, jnp.clip(t_raised, t_cur, 1.0), t_cur)
        alpha_hat, sigma_hat = process.marginal(t_hat)
        s_hat = jnp.where(churn, sigma_hat / alpha_hat, s_cur)
        alpha_hat = jnp.where(churn, alpha_hat, alpha_cur)
        added_var = jnp.where(churn, s_hat**2 - s_cur**2, 1.0)  # 1: a safe sqrt when unused
        noise_std = jnp.where(churn, jnp.sqrt(jnp.maximum(added_var, 0.0)), 0.0) * self.s_noise

        z = jax.random.normal(key, x.shape, x.dtype)
        y_hat = x / bc(alpha_cur) + bc(noise_std) * z

        _, d_cur = denoise(bc(alpha_hat) * y_hat, t_hat)
        alpha_next, sigma_next = process.marginal(t_next)
        s_next = sigma_next / alpha_next
        ds = bc(s_next - s_hat)
        y_euler = y_hat + ds * d_cur
        # Where sigma_next = 0 keep the Euler step (as EDM does) and evaluate the unused
        # corrector at a finite time to keep everything NaN-free.
        has_noise = sigma_next > 0
        _, d_next = denoise(bc(alpha_next) * y_euler, jnp.where(has_noise, t_next, t_hat))
        y_next = jnp.where(has_noise, y_hat + 0.5 * ds * (d_cur + d_next), y_euler)
        return bc(alpha_next) * y_next, state
