"""Multiplicative denoising score matching (M-DSM) for geometric Brownian motion.

Shetty, Prasath & Seelamantula, "Dale meets Langevin" (arXiv 2510.02730). For the GBM kernel
``x_t = x0 exp((mu - sigma^2/2) t + sigma sqrt(t) z)`` the conditional Hyvarinen score is
``x_t o grad log p(x_t | x0) = -1 - z / (sigma sqrt(t))``. M-DSM regresses the model's
Hyvarinen score ``h_theta = x_t o s_theta(x_t, t)`` onto it, i.e. ordinary denoising score
matching in ``y = log x`` (``grad_y log p_Y = h + 1``). Its minimiser at every ``t`` is the
exact marginal score, since ``E[-1 - z/(sigma sqrt t) | x_t] = x_t o grad log p_t(x_t)``.

The loss is written without any division by ``t``: with the residual

    r = sigma sqrt(t) (h_theta + 1) + z = sigma sqrt(t) (h_theta - h_target),

* ``weighting="paper"`` (default) averages ``sigma^2 t r^2 = (sigma^2 t)^2 |h_theta - h_target|^2``,
  the weighting of the authors' training code (``losses.new_loss``:
  ``|sigma^2 k x_t s + log(x_t/x0) - mu k + 3/2 sigma^2 k|^2``, the same expression with
  ``k = t``; their loop draws ``x_t`` at step ``i`` and weights it with ``k = (i + 1)/N``, which
  shrinks the minimiser's ``h + 1`` by ``i/(i + 1)`` at small ``i``; genflow uses ``k = t``);
* ``weighting="noise"`` averages ``r^2 = sigma^2 t |h_theta - h_target|^2`` (the analogue of
  Song et al.'s ``lambda(t) = sigma_t^2``; equivalently noise prediction with
  ``h_theta = -1 - eps_theta / (sigma sqrt t)``).

Both are finite at ``t = 0`` (there ``r = z`` and the model gets no signal), so ``t_min`` only
keeps the network away from the singular time; the default ``1e-5`` matches
:func:`genflow.losses.denoising_loss`. Squared errors are averaged over data dimensions, then
over the batch (the authors sum over dimensions: a constant factor).

For log-normal data ``log x0 ~ N(m0, v0)`` the minimum of the ``"noise"`` loss at time ``t``
is ``v0 / (v0 + sigma^2 t)`` per dimension, and ``sigma^2 t`` times that for ``"paper"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from genflow.processes._base import broadcast_to_data
from genflow.processes._gbm import GeometricBrownianMotion

_WEIGHTINGS = ("paper", "noise")
T_SAMPLINGS = ("uniform", "log_uniform")


def gbm_score_loss(
    score_fn: Callable[..., Array],
    process: GeometricBrownianMotion,
    x0: Float[Array, "b *d"],
    *,
    key: PRNGKeyArray,
    t_min: float = 1e-5,
    t_max: float = 1.0,
    weighting: str = "paper",
    t_sampling: str = "uniform",
    cond: Any = None,
) -> Float[Array, ""]:
    """Monte-Carlo M-DSM loss on one batch of positive data.

    Args:
      score_fn: ``score_fn(x_t, t, cond) -> grad_x log p_t(x_t)`` (the Stein score) shaped
        like ``x_t``, with ``t: (b,)``.
      process: the forward GBM.
      x0: a batch of positive data (see :func:`genflow.processes.to_positive`).
      key: randomness for ``t ~ U(t_min, t_max)`` and the noise ``z``.
      t_min, t_max: the range of training times, ``0 <= t_min < t_max``.
      weighting: ``"paper"`` (``lambda(t) = (sigma^2 t)^2`` on the Hyvarinen-score error) or
        ``"noise"`` (``lambda(t) = sigma^2 t``); see the module docstring.
      t_sampling: ``"uniform"`` draws ``t ~ U(t_min, t_max)``; ``"log_uniform"`` draws
        ``log t ~ U(log t_min, log t_max)`` (needs ``t_min > 0``), so every decade of ``t``, i.e.
        of the noise scale ``sigma sqrt(t)`` of ``log x``, gets the same share of the batch (as
        a VE SDE's geometric noise levels do). The minimiser is the exact score either way; what
        changes is where the network's capacity goes: with uniform ``t`` the small noise
        levels where the fine structure of the data forms get almost no samples.
      cond: optional conditioning passed through to ``score_fn``.

    Returns:
      The scalar loss.
    """
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}.")
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}.")
    if t_sampling == "log_uniform" and isinstance(t_min, (int, float)) and not t_min > 0:
        raise ValueError(f"t_sampling='log_uniform' needs t_min > 0, got t_min={t_min}.")
    if isinstance(t_min, (int, float)) and isinstance(t_max, (int, float)):
        if not 0.0 <= t_min < t_max:
            raise ValueError(
                f"gbm_score_loss needs 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}."
            )
    key_t, key_z = jax.random.split(key)
    t_dtype = jnp.result_type(x0.dtype, jnp.float32)
    if t_sampling == "uniform":
        t = jax.random.uniform(key_t, (x0.shape[0],), dtype=t_dtype, minval=t_min, maxval=t_max)
    else:
        log_t = jax.random.uniform(key_t, (x0.shape[0],), dtype=t_dtype,
                                   minval=jnp.log(t_min), maxval=jnp.log(t_max))
        t = jnp.exp(log_t)
    x_t, z = process.sample_xt(key_z, x0, t)
    h = x_t * score_fn(x_t, t, cond).astype(x_t.dtype)
    scale = process.sigma * jnp.sqrt(broadcast_to_data(t, x0))  # sigma sqrt(t)
    resid = scale * (h + 1.0) + z
    err = resid**2 if weighting == "noise" else (scale * resid) ** 2
    err = jnp.broadcast_to(err, x0.shape)
    return jnp.mean(jnp.mean(err.reshape(x0.shape[0], -1), axis=-1))
