"""Classifier-free guidance (Ho & Salimans 2022) as a ``model_fn`` transformation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array

from genflow.samplers._base import ModelFn


def guided(model_fn: ModelFn, scale: float, null_cond: Any) -> ModelFn:
    """Wrap ``model_fn`` into its classifier-free-guided version.

    Convention: ``scale`` is the *guidance scale* ``1 + w``, where ``w`` is Ho & Salimans'
    guidance strength (as ``guidance_scale`` in diffusers and Imagen)::

        guided(x, t, c) = scale * f(x, t, c) + (1 - scale) * f(x, t, null)
                        = (1 + w) f(x, t, c) - w f(x, t, null),    w = scale - 1

    ``scale = 1`` is the conditional model alone, ``scale = 0`` the unconditional model, and
    ``scale > 1`` extrapolates away from the unconditional prediction.

    The combination has weights that sum to 1, so guiding any prediction kind that is affine in
    ``(x0_hat, eps_hat)`` at fixed ``(x, t)`` (eps, x0, v, velocity, score) gives the same
    sampler: guide the network in whatever it predicts.

    The conditional and unconditional evaluations run as **one** call of ``model_fn`` on a batch
    of ``2 b`` (``x`` and ``t`` repeated, ``cond`` concatenated with ``null_cond`` broadcast to its
    shape). :func:`genflow.samplers.sample` therefore counts one NFE per guided evaluation: its
    ``nfe`` counts guided evaluations, each of which costs the network a double batch.

    Args:
      model_fn: ``model_fn(x, t, cond) -> array like x``, trained with condition dropout.
      scale: the guidance scale ``1 + w`` (a float or a scalar array; traced values are fine).
      null_cond: the "no condition" value, broadcast to each leaf of ``cond``'s shape (e.g. the
        null class id, or a zero embedding of one example's shape). A pytree like ``cond``
        is also accepted.

    Returns:
      ``guided_fn(x, t, cond) -> array like x``. ``cond`` must be given (with a leading batch
      axis of size ``b`` on each leaf).
    """

    def guided_fn(x: Array, t: Array, cond: Any = None) -> Array:
        if cond is None:
            raise ValueError(
                "a guided model needs a condition: pass cond=... to sample() (classifier-free "
                "guidance mixes the model at cond with the model at null_cond)."
            )
        b = x.shape[0]
        cond_leaves, treedef = jax.tree_util.tree_flatten(cond)
        null_leaves = _null_leaves(null_cond, treedef, len(cond_leaves))
        both = [
            jnp.concatenate([c, jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)], axis=0)
            for c, n in zip((jnp.asarray(c) for c in cond_leaves), null_leaves)
        ]
        cond_both = jax.tree_util.tree_unflatten(treedef, both)
        t_b = jnp.broadcast_to(jnp.asarray(t), (b,))
        out = model_fn(
            jnp.concatenate([x, x], axis=0), jnp.concatenate([t_b, t_b], axis=0), cond_both
        )
        out_cond, out_null = out[:b], out[b:]
        scale_ = jnp.asarray(scale, out.dtype)
        return out_null + scale_ * (out_cond - out_null)

    return guided_fn


def _null_leaves(null_cond: Any, treedef, n_leaves: int) -> list:
    """``null_cond`` as one value per leaf of ``cond``: the same value, or a matching pytree."""
    if n_leaves == 1:
        return [null_cond]
    leaves, null_def = jax.tree_util.tree_flatten(null_cond)
    if null_def == treedef:
        return leaves
    if len(leaves) == 1:
        return leaves * n_leaves
    raise ValueError(
        f"null_cond must be one value or a pytree shaped like cond ({treedef}); got {null_def}."
    )
