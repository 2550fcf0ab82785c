"""Time embeddings: map ``t in [0, 1]`` to a feature vector."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float


def to_compute_dtype(features: Array, x: Array) -> Array:
    """``features`` (time embeddings, computed in float32 from float32 times) in the dtype
    of the network's input ``x`` when that is narrower (bfloat16 under mixed precision), so
    the layers after them run in ``x``'s dtype; unchanged otherwise."""
    if jnp.finfo(x.dtype).bits < jnp.finfo(features.dtype).bits:
        return features.astype(x.dtype)
    return features


class FrozenParam(nnx.Param):
    """A parameter saved with the model but never trained (no gradient, no weight decay)."""


class SinusoidalEmbedding(nnx.Module):
    """Transformer-style sinusoids of ``scale * t`` at geometrically spaced frequencies.

    ``emb = [sin(scale t w_k), cos(scale t w_k)]`` with ``w_k = max_period^(-k / half)``; with
    ``scale = 1000`` this is the DDPM embedding of the discrete step index.
    """

    def __init__(self, dim: int, *, scale: float = 1000.0, max_period: float = 10_000.0):
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}.")
        self.dim = dim
        self.scale = scale
        self.max_period = max_period

    def __call__(self, t: Float[Array, "b"]) -> Float[Array, "b dim"]:
        half = self.dim // 2
        freqs = jnp.exp(-math.log(self.max_period) * jnp.arange(half, dtype=jnp.float32) / half)
        args = (self.scale * t.astype(jnp.float32))[:, None] * freqs[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class FourierEmbedding(nnx.Module):
    """Gaussian random Fourier features ``[sin(2 pi W t), cos(2 pi W t)]``, ``W ~ N(0, scale^2)``.

    The frequencies are drawn once at construction and kept fixed (no gradient flows into
    them), as in score_sde's ``GaussianFourierProjection``. They are a :class:`FrozenParam`:
    stored with the parameters, so a checkpoint restores them, and masked out of weight decay.
    """

    def __init__(self, dim: int, *, scale: float = 16.0, rngs: nnx.Rngs):
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}.")
        self.freqs = FrozenParam(scale * jax.random.normal(rngs.params(), (dim // 2,), jnp.float32))

    def __call__(self, t: Float[Array, "b"]) -> Float[Array, "b dim"]:
        w = jax.lax.stop_gradient(self.freqs[...])
        args = 2.0 * math.pi * t.astype(jnp.float32)[:, None] * w[None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def make_time_embedding(kind: str, dim: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """``"sinusoidal"`` or ``"fourier"``."""
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim)
    if kind == "fourier":
        return FourierEmbedding(dim, rngs=rngs)
    raise ValueError(f"unknown time embedding {kind!r}; choose 'sinusoidal' or 'fourier'.")
