"""A DiT-style patch transformer with adaLN-Zero conditioning for images ``(b, H, W, C)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx
from jaxtyping import Array, Float, Int

from genflow.networks._embedding import FrozenParam, make_time_embedding, to_compute_dtype
from genflow.networks._unet import check_image_inputs

_XAVIER = nnx.initializers.xavier_uniform()
_ZEROS = nnx.initializers.zeros_init()
_SMALL = nnx.initializers.normal(0.02)


def sincos_position_embedding(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding of a ``grid_h x grid_w`` grid of tokens.

    Token ``n = i * grid_w + j`` (row ``i``, column ``j``) gets
    ``[sin(i w_k), cos(i w_k), sin(j w_k), cos(j w_k)]``, ``k = 0 .. dim/4 - 1``, with
    ``w_k = 10000^(-k / (dim / 4))``: the first half of the features encodes the row, the
    second half the column.

    Args:
      grid_h: number of token rows.
      grid_w: number of token columns.
      dim: embedding size, a multiple of 4.

    Returns:
      A float32 array ``(grid_h * grid_w, dim)``.
    """
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs a width divisible by 4; got {dim}.")
    quarter = dim // 4
    omega = 10_000.0 ** (-np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    a = rows.reshape(-1, 1) * omega[None, :]
    b = cols.reshape(-1, 1) * omega[None, :]
    return np.concatenate([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1).astype(np.float32)


def _modulate(x: Array, shift: Array, scale: Array) -> Array:
    return x * (1.0 + scale) + shift


def _layer_norm(width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # No affine parameters: adaLN supplies the scale and shift.
    return nnx.LayerNorm(width, epsilon=1e-6, use_scale=False, use_bias=False, rngs=rngs)


class _Attention(nnx.Module):
    """Multi-head self-attention whose values can be read out and replaced."""

    def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=_XAVIER, rngs=rngs)
        self.proj = nnx.Linear(width, width, kernel_init=_XAVIER, rngs=rngs)

    def __call__(self, x: Array, values: Array | None) -> tuple[Array, Array]:
        b, n, width = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        used = v if values is None else values.astype(v.dtype)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(width // self.num_heads)
        h = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), used)
        return self.proj(h.reshape(b, n, width)), v


class _Block(nnx.Module):
    """Transformer block with adaLN-Zero: ``(shift, scale, gate) x 2`` from the conditioning.

    ``x += g_1 * attn(LN(x) (1 + s_1) + m_1)``, ``x += g_2 * mlp(LN(x) (1 + s_2) + m_2)``, where
    ``(m_1, s_1, g_1, m_2, s_2, g_2) = W silu(c) + b`` with ``W, b`` initialised to zero, so every
    block starts as the identity.
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, *, rngs: nnx.Rngs):
        hidden = int(width * mlp_ratio)
        self.norm1 = _layer_norm(width, rngs)
        self.attn = _Attention(width, num_heads, rngs=rngs)
        self.norm2 = _layer_norm(width, rngs)
        self.fc1 = nnx.Linear(width, hidden, kernel_init=_XAVIER, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, kernel_init=_XAVIER, rngs=rngs)
        self.modulation = nnx.Linear(width, 6 * width, kernel_init=_ZEROS, rngs=rngs)

    def __call__(self, x: Array, c: Array, values: Array | None) -> tuple[Array, Array]:
        m1, s1, g1, m2, s2, g2 = jnp.split(self.modulation(c)[:, None, :], 6, axis=-1)
        a, v = self.attn(_modulate(self.norm1(x), m1, s1), values)
        x = x + g1 * a
        h = self.fc2(jax.nn.gelu(self.fc1(_modulate(self.norm2(x), m2, s2)), approximate=True))
        return x + g2 * h, v


class DiT(nnx.Module):
    """Diffusion transformer ``model(x, t, cond=None) -> array like x`` for ``x: (b, H, W, C)``.

    With patch size ``p``, the image is cut into ``T = (H / p)(W / p)`` patches,
    ``b (h p1) (w p2) c -> b (h w) (p1 p2 c)``; each is mapped linearly to ``width`` features
    and a fixed 2-D sin-cos position embedding (:func:`sincos_position_embedding`, stored as a
    :class:`~genflow.networks.FrozenParam`, never trained) is added. The conditioning vector is
    ``c = W_2 silu(W_1 emb(t)) (+ E[cond])``; with ``num_classes > 0`` label ``num_classes`` is
    the null class of classifier-free guidance and ``cond=None`` means the null class.
    ``depth`` blocks with adaLN-Zero follow (see ``_Block``: every block starts as the
    identity), then the final layer ``W_o (LN(x) (1 + s) + m)`` with ``(m, s) = W silu(c)``,
    ``W_o`` initialised to zero (the network outputs exactly zero at initialisation), and the
    patches are put back in place.

    Attention is multi-head, ``softmax(q_h k_h^T / sqrt(d)) v_h`` with ``d = width / num_heads``,
    and written with ``einsum`` so everything is a matmul (fast on CPU).

    **Value injection** (attention editing such as RF-Edit, which reuses the source pass's
    attention values in the first steps of the target pass): ``return_values=True`` also
    returns, per block, the value tensor ``v`` computed from this call's own input, shaped
    ``(b, T, num_heads, d)``; ``values=(v_0, ..., v_{depth-1})`` replaces block ``i``'s values
    by ``v_i`` (``None`` entries compute normally). Injecting the values a call returned into
    the same call reproduces its output exactly. Generic code can test
    ``getattr(model, "supports_value_injection", False)``.

    **Parameter count**, with ``linear(a, b) = a b + b``, ``P = p^2 C``, ``h = int(width *
    mlp_ratio)``: ``linear(P, width) + T width`` (frozen position embedding) ``+
    linear(embed_dim, width) + linear(width, width) [+ (num_classes + 1) width] [+ embed_dim / 2``
    Fourier frequencies ``] + depth (linear(width, 3 width) + linear(width, width) +
    linear(width, h) + linear(h, width) + linear(width, 6 width)) + linear(width, 2 width) +
    linear(width, P)``. Layer norms have no parameters.

    Args:
      image_shape: ``(H, W, C)``; ``H`` and ``W`` must be divisible by ``patch_size``.
      patch_size: side ``p`` of the square patches.
      width: token width (divisible by ``num_heads`` and by 4).
      depth: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: hidden width of the MLPs over ``width``.
      embedding: ``"sinusoidal"`` or ``"fourier"`` time embedding.
      embed_dim: size of the time embedding (default ``width``).
      num_classes: number of classes (0 for an unconditional model).
      rngs: parameter initialisation randomness.
    """

    supports_value_injection: bool = True

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        patch_size: int = 2,
        width: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        embedding: str = "sinusoidal",
        embed_dim: int | None = None,
        num_classes: int = 0,
        rngs: nnx.Rngs,
    ):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(
                f"image_shape must be (H, W, C) with positive sizes; got {image_shape}."
            )
        height, wide, in_ch = image_shape
        if patch_size < 1 or height % patch_size or wide % patch_size:
            raise ValueError(
                f"H and W must be divisible by patch_size={patch_size}; got image_shape="
                f"{image_shape}. Pick a patch size that divides both, or pad the images."
            )
        if width % num_heads or width % 4:
            raise ValueError(
                f"width must be divisible by num_heads and by 4 (for the 2-D position "
                f"embedding); got width={width}, num_heads={num_heads}."
            )
        if depth < 1 or int(width * mlp_ratio) < 1:
            raise ValueError(
                f"need depth >= 1 and width * mlp_ratio >= 1; got depth={depth}, "
                f"mlp_ratio={mlp_ratio}."
            )
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0; got {num_classes}.")

        self.image_shape = image_shape
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.depth = depth
        self.grid = (height // patch_size, wide // patch_size)
        embed_dim = width if embed_dim is None else embed_dim
        patch_dim = patch_size * patch_size * in_ch

        self.patch_embed = nnx.Linear(patch_dim, width, kernel_init=_XAVIER, rngs=rngs)
        self.pos_embed = FrozenParam(jnp.asarray(sincos_position_embedding(*self.grid, width)))
        self.time_embed = make_time_embedding(embedding, embed_dim, rngs=rngs)
        self.time_fc1 = nnx.Linear(embed_dim, width, kernel_init=_SMALL, rngs=rngs)
        self.time_fc2 = nnx.Linear(width, width, kernel_init=_SMALL, rngs=rngs)
        self.class_embed = (
            nnx.Embed(num_classes + 1, width, embedding_init=_SMALL, rngs=rngs)
            if num_classes > 0
            else None
        )
        self.blocks = nnx.List(
            [_Block(width, num_heads, mlp_ratio, rngs=rngs) for _ in range(depth)]
        )
        self.final_norm = _layer_norm(width, rngs)
        self.final_modulation = nnx.Linear(width, 2 * width, kernel_init=_ZEROS, rngs=rngs)
        self.final_linear = nnx.Linear(width, patch_dim, kernel_init=_ZEROS, rngs=rngs)

    def value_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape ``(b, T, num_heads, head_dim)`` of one block's attention values."""
        width = self.patch_embed.out_features
        return (batch, self.grid[0] * self.grid[1], self.num_heads, width // self.num_heads)

    def __call__(
        self,
        x: Float[Array, "b h w c"],
        t: Float[Array, "b"],
        cond: Int[Array, "b"] | None = None,
        *,
        values: Sequence[Float[Array, "b n heads d"] | None] | None = None,
        return_values: bool = False,
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "b h w c"] | tuple[Float[Array, "b h w c"], tuple[Array, ...]]:
        """Evaluate the network.

        Args:
          x: images ``(b, H, W, C)``, channels last.
          t: times ``(b,)`` in ``[0, 1]``.
          cond: integer labels ``(b,)`` in ``[0, num_classes]`` or ``None`` (the null class);
            must be ``None`` for an unconditional model.
          values: ``None``, or one entry per block: ``None`` (compute the values) or an array
            ``(b, T, num_heads, head_dim)`` used as that block's attention values instead.
          return_values: also return the values each block computed from this input.
          rngs: accepted so that every genflow network takes the same training call; the
            DiT has no dropout and ignores it.

        Returns:
          An array with the shape and dtype of ``x``; with ``return_values=True`` the pair
          ``(out, values)``, ``values`` a tuple of ``depth`` arrays ``(b, T, num_heads, head_dim)``.

        Raises:
          ValueError: if ``x`` is not ``(b, H, W, C)`` of the built image shape, ``t`` or
            ``cond`` is not ``(b,)``, an unconditional model is given ``cond``, or ``values``
            does not have one entry of the right shape per block.
        """
        del rngs
        check_image_inputs("DiT", self.image_shape, self.num_classes, x, t, cond)
        if values is None:
            values = (None,) * self.depth
        else:
            self._check_values(values, x.shape[0])

        c = self.time_fc2(jax.nn.silu(self.time_fc1(to_compute_dtype(self.time_embed(t), x))))
        if self.class_embed is not None:
            if cond is None:
                cond = jnp.full((x.shape[0],), self.num_classes, dtype=jnp.int32)
            c = c + self.class_embed(cond)
        c = jax.nn.silu(c)

        p = self.patch_size
        tokens = rearrange(x, "b (h p1) (w p2) c -> b (h w) (p1 p2 c)", p1=p, p2=p)
        h = self.patch_embed(tokens) + jax.lax.stop_gradient(self.pos_embed[...])[None]
        computed = []
        for block, v in zip(self.blocks, values):
            h, v_out = block(h, c, v)
            computed.append(v_out)
        shift, scale = jnp.split(self.final_modulation(c)[:, None, :], 2, axis=-1)
        out = self.final_linear(_modulate(self.final_norm(h), shift, scale))
        out = rearrange(
            out, "b (h w) (p1 p2 c) -> b (h p1) (w p2) c", h=self.grid[0], p1=p, p2=p
        ).astype(x.dtype)
        return (out, tuple(computed)) if return_values else out

    def _check_values(self, values: Sequence[Array | None], batch: int) -> None:
        if not isinstance(values, (tuple, list)) or len(values) != self.depth:
            raise ValueError(
                f"values must be a tuple with one entry per block ({self.depth}), each an array "
                f"{self.value_shape(batch)} or None; got {type(values).__name__} of length "
                f"{len(values) if isinstance(values, (tuple, list)) else '?'}."
            )
        expected = self.value_shape(batch)
        for i, v in enumerate(values):
            if v is not None and tuple(v.shape) != expected:
                raise ValueError(
                    f"values[{i}] must have shape (b, T, num_heads, head_dim) = {expected}; "
                    f"got {tuple(v.shape)}."
                )
