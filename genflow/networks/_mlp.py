"""A residual MLP for low-dimensional data (the 2-D toy sets)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from genflow.networks._embedding import make_time_embedding, to_compute_dtype


class _ResidualBlock(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(width, rngs=rngs)
        self.fc1 = nnx.Linear(width, width, rngs=rngs)
        self.cond = nnx.Linear(width, width, rngs=rngs)
        self.fc2 = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, h: Array, c: Array) -> Array:
        z = self.fc1(jax.nn.silu(self.norm(h))) + self.cond(c)
        return h + self.fc2(jax.nn.silu(z))


class MLP(nnx.Module):
    """Residual MLP ``model(x, t, cond=None) -> array like x`` for data of shape ``(b, d)``.

    The time embedding goes through a small MLP and is added inside every residual block;
    it also sets a per-coordinate gain on a linear skip path from ``x`` to the output, so the
    network extrapolates affinely beyond the data instead of saturating.
    With ``num_classes > 0`` a class embedding is added to it; label ``num_classes`` is the
    null class used for classifier-free guidance, and ``cond=None`` means the null class.

    Args:
      data_dim: ``d``.
      hidden: width of the residual stream.
      depth: number of residual blocks.
      embedding: ``"sinusoidal"`` or ``"fourier"`` time embedding.
      embed_dim: size of the time embedding.
      num_classes: number of classes (0 for an unconditional model).
      num_fields: number of outputs shaped like ``x``, concatenated along the last axis
        (``(b, num_fields * d)``); a stochastic interpolant learns its drift and its denoiser
        with one network this way.
      output: ``"field"`` (the above) or ``"log_density"``: a scalar head
        ``phi(x, t) = head(h) + (1/2) sum_i a_i(t) x_i^2`` (:meth:`log_density`), and the
        network's output is ``grad_x phi = grad_x head(h) + a(t) * x``, a gradient field by
        construction, to be read as a score (the quadratic term is the counterpart of the
        field's linear skip path). One field only.
      rngs: parameter initialisation randomness.
    """

    def __init__(
        self,
        data_dim: int,
        *,
        hidden: int = 256,
        depth: int = 3,
        embedding: str = "fourier",
        embed_dim: int = 64,
        num_classes: int = 0,
        num_fields: int = 1,
        output: str = "field",
        rngs: nnx.Rngs,
    ):
        if num_fields < 1:
            raise ValueError(f"num_fields must be >= 1, got {num_fields}.")
        if output not in ("field", "log_density") or (output == "log_density" and num_fields != 1):
            raise ValueError(
                f"output must be 'field' or 'log_density' (with num_fields=1), got {output!r} "
                f"with num_fields={num_fields}."
            )
        self.output = output
        self.data_dim = data_dim
        self.num_classes = num_classes
        self.num_fields = num_fields
        self.time_embed = make_time_embedding(embedding, embed_dim, rngs=rngs)
        self.time_fc1 = nnx.Linear(embed_dim, hidden, rngs=rngs)
        self.time_fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.class_embed = (
            nnx.Embed(num_classes + 1, hidden, rngs=rngs) if num_classes > 0 else None
        )
        self.inp = nnx.Linear(data_dim, hidden, rngs=rngs)
        self.blocks = nnx.List([_ResidualBlock(hidden, rngs=rngs) for _ in range(depth)])
        zeros = nnx.initializers.zeros_init()
        out_dim = 1 if output == "log_density" else num_fields * data_dim
        self.out = nnx.Linear(hidden, out_dim, kernel_init=zeros, rngs=rngs)
        self.skip_gain = nnx.Linear(hidden, num_fields * data_dim, kernel_init=zeros, rngs=rngs)

    def _features(self, x: Array, t: Array, cond: Array | None) -> tuple[Array, Array]:
        c = self.time_fc2(jax.nn.silu(self.time_fc1(to_compute_dtype(self.time_embed(t), x))))
        if self.class_embed is not None:
            if cond is None:
                cond = jnp.full((x.shape[0],), self.num_classes, dtype=jnp.int32)
            c = c + self.class_embed(cond)
        c = jax.nn.silu(c)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return h, c

    def log_density(
        self,
        x: Float[Array, "b d"],
        t: Float[Array, "b"],
        cond: Int[Array, "b"] | None = None,
    ) -> Float[Array, "b"]:
        """The scalar ``phi(x, t)`` of an ``output="log_density"`` network: an unnormalised
        log-density, determined by training only up to an additive function of ``t``."""
        if self.output != "log_density":
            raise ValueError("log_density() needs a network built with output='log_density'.")
        h, c = self._features(x, t, cond)
        quad = 0.5 * jnp.sum(self.skip_gain(c) * x**2, axis=-1)
        return self.out(jax.nn.silu(h))[:, 0] + quad

    def __call__(
        self,
        x: Float[Array, "b d"],
        t: Float[Array, "b"],
        cond: Int[Array, "b"] | None = None,
    ) -> Float[Array, "b d"]:
        if self.output == "log_density":  # examples are independent: the gradient of the sum
            grad = jax.grad(lambda y: jnp.sum(self.log_density(y, t, cond)))(x)
            return grad.astype(x.dtype)
        h, c = self._features(x, t, cond)
        # A time-dependent linear path from x to the output: far from the data every target
        # (eps, x0, v, velocity, score) is affine in x, and normalised layers alone saturate
        # there, which sends probability-flow trajectories from the prior's tails astray.
        skip = x if self.num_fields == 1 else jnp.concatenate([x] * self.num_fields, axis=-1)
        out = self.out(jax.nn.silu(h)) + self.skip_gain(c) * skip
        return out.astype(x.dtype)
