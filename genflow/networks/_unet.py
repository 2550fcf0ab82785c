"""A DDPM++-style U-Net for images ``(b, H, W, C)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from genflow.networks._embedding import make_time_embedding, to_compute_dtype

# DDPM++ rescales every residual sum by 1/sqrt(2) so activations keep unit scale with depth.
_SKIP_SCALE = 1.0 / math.sqrt(2.0)
# DDPM's default initialiser: variance scaling 1 over (fan_in + fan_out) / 2, uniform.
_INIT = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")
_ZEROS = nnx.initializers.zeros_init()


def check_image_inputs(
    name: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    x: Array,
    t: Array,
    cond: Array | None,
) -> None:
    """Raise a ``ValueError``/``TypeError`` naming the expected shapes for bad image inputs.

    Shapes are static, so this runs at trace time, before any computation. Shared by the
    image networks (:class:`UNet`, :class:`~genflow.networks.DiT`).
    """
    h, w, c = image_shape
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name} was built for images of shape (b, {h}, {w}, {c}) (batch first, channels "
            f"last); got x of shape {tuple(x.shape)}. Build the network with "
            f"image_shape={tuple(x.shape[1:])} or reshape the input."
        )
    b = x.shape[0]
    if tuple(t.shape) != (b,):
        raise ValueError(f"t must have shape (b,) = ({b},), one time per image; got {t.shape}.")
    if cond is None:
        return
    if num_classes == 0:
        raise ValueError(
            f"this {name} is unconditional (num_classes=0) but was given cond; pass "
            "cond=None, or build it with num_classes > 0 for class conditioning."
        )
    if tuple(cond.shape) != (b,):
        raise ValueError(
            f"cond must have shape (b,) = ({b},), one label per image; got {cond.shape}."
        )
    if not jnp.issubdtype(cond.dtype, jnp.integer):
        raise TypeError(
            f"cond must hold integer class labels in [0, {num_classes}] ({num_classes} is the "
            f"null class); got dtype {cond.dtype}."
        )


def _num_groups(channels: int, max_groups: int) -> int:
    """``min(max_groups, channels // 4)`` groups, lowered until it divides ``channels``."""
    g = max(1, min(max_groups, channels // 4))
    while channels % g:
        g -= 1
    return g


def _group_norm(channels: int, max_groups: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(
        channels, num_groups=_num_groups(channels, max_groups), epsilon=1e-6, rngs=rngs
    )


class _ResBlock(nnx.Module):
    """``(skip(x) + conv2(drop(silu(gn2(conv1(silu(gn1(x))) + W e)))) / sqrt(2)``."""

    def __init__(
        self, cin: int, cout: int, emb_dim: int, *, dropout: float, max_groups: int,
        rngs: nnx.Rngs,
    ):
        self.norm1 = _group_norm(cin, max_groups, rngs)
        self.conv1 = nnx.Conv(cin, cout, (3, 3), kernel_init=_INIT, rngs=rngs)
        self.emb = nnx.Linear(emb_dim, cout, kernel_init=_INIT, rngs=rngs)
        self.norm2 = _group_norm(cout, max_groups, rngs)
        self.dropout = nnx.Dropout(dropout)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), kernel_init=_ZEROS, rngs=rngs)
        self.skip = (
            nnx.Conv(cin, cout, (1, 1), kernel_init=_INIT, rngs=rngs) if cin != cout else None
        )

    def __call__(self, x: Array, emb: Array, rngs: nnx.Rngs | None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, None, None, :]
        h = jax.nn.silu(self.norm2(h))
        h = self.dropout(h, deterministic=rngs is None, rngs=rngs)
        h = self.conv2(h)
        skip = x if self.skip is None else self.skip(x)
        return (skip + h) * _SKIP_SCALE


class _Attention(nnx.Module):
    """Single-head self-attention over the ``H W`` positions, residual and rescaled.

    ``q, k, v = W_qkv GN(x)`` (a 1x1 convolution), ``A = softmax(q k^T / sqrt(c))``,
    ``out = (x + W_o A v) / sqrt(2)`` with ``W_o`` initialised to zero.
    """

    def __init__(self, channels: int, *, max_groups: int, rngs: nnx.Rngs):
        self.norm = _group_norm(channels, max_groups, rngs)
        # 1x1 convolutions are linear maps of the channel axis: run them as matmuls.
        self.qkv = nnx.Linear(channels, 3 * channels, kernel_init=_INIT, rngs=rngs)
        self.proj = nnx.Linear(channels, channels, kernel_init=_ZEROS, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b, hh, ww, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, hh * ww, 3, c)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c)
        h = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1), v)
        return (x + self.proj(h.reshape(b, hh, ww, c))) * _SKIP_SCALE


def _upsample(x: Array) -> Array:
    """Nearest-neighbour upsampling by 2 in both spatial axes."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool(x: Array) -> Array:
    """2x2 average pooling with stride 2."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class _Level(nnx.Module):
    """The residual blocks (and attention) of one resolution of the down or up path."""

    def __init__(self, blocks: list[_ResBlock], attns: list[_Attention] | None,
                 resample: nnx.Conv | None):
        self.blocks = nnx.List(blocks)
        self.attns = nnx.List(attns) if attns is not None else None
        self.resample = resample


class UNet(nnx.Module):
    """DDPM++-style U-Net ``model(x, t, cond=None) -> array like x`` for ``x: (b, H, W, C)``.

    With ``L = len(channel_mult)`` levels and ``c_i = channels * channel_mult[i]``:

    * **Embedding.** ``e = W_2 silu(W_1 emb(t)) (+ E[cond])``, width ``4 * channels``, where
      ``emb`` is the ``"fourier"`` or ``"sinusoidal"`` time embedding of size ``embed_dim``.
      With ``num_classes > 0``, ``E`` has ``num_classes + 1`` rows; label ``num_classes`` is the
      null class of classifier-free guidance and ``cond=None`` means the null class. Every
      residual block sees ``silu(e)``.
    * **Residual block** ``(c_in -> c_out)``:
      ``h = conv3x3(silu(GN(x))) + W silu(e)``, ``h = conv3x3_0(drop(silu(GN(h))))``,
      ``out = (skip(x) + h) / sqrt(2)``, where ``conv3x3_0`` starts at zero and ``skip`` is the
      identity or a 1x1 convolution when ``c_in != c_out``.
    * **Attention** (at feature maps whose height is in ``attention_resolutions``):
      ``(x + W_o softmax(q k^T / sqrt(c)) v) / sqrt(2)``, single head, ``W_o`` starts at zero.
    * **Path.** ``conv3x3(C -> channels)``; level ``i`` holds ``num_res_blocks`` blocks to
      ``c_i`` (each followed by attention at an attention resolution), then, except at the last
      level, a 2x downsampling (stride-2 3x3 convolution, or 2x2 average pooling with
      ``resample_with_conv=False``). Every block output, every downsampling output and the
      first convolution's output is kept as a skip. Middle: block, attention, block. Up path,
      from the last level: ``num_res_blocks + 1`` blocks, each on the concatenation of the
      current features with the latest skip, then (except at level 0) nearest-neighbour 2x
      upsampling followed by a 3x3 convolution (just the upsampling when
      ``resample_with_conv=False``). Head: ``conv3x3_0(silu(GN(h)))``, starting at zero, so
      the network outputs exactly zero at initialisation.

    **Parameter count** (``P`` = number of scalars; every layer has a bias):
    ``conv_kxk(a, b) = k^2 a b + b``, ``linear(a, b) = a b + b``, ``GN(c) = 2c``;
    ``block(a, b) = GN(a) + conv_3x3(a, b) + linear(4 ch, b) + GN(b) + conv_3x3(b, b)
    + [a != b] conv_1x1(a, b)``; ``attention(c) = GN(c) + linear(c, 3c) + linear(c, c)``;
    embedding: ``linear(embed_dim, 4 ch) + linear(4 ch, 4 ch) + (num_classes + 1) 4 ch``
    (class table only if ``num_classes > 0``) ``+ embed_dim / 2`` (frozen frequencies, Fourier
    only); resampling convolutions ``conv_3x3(c_i, c_i)``; head ``GN(ch) + conv_3x3(ch, C)``.
    ``tests/networks/test_unet.py`` spells the sum out for a small configuration.

    Dropout is active only when the call is given ``rngs``: ``model(x, t, cond)`` is
    deterministic (what samplers get); a training step calls
    ``model(x, t, cond, rngs=nnx.Rngs(dropout=key))``.

    Args:
      image_shape: ``(H, W, C)``; ``H`` and ``W`` must be divisible by ``2^(L - 1)``.
      channels: base width ``ch``.
      channel_mult: width multiplier of each level (its length ``L`` is the number of levels).
      num_res_blocks: residual blocks per level on the down path (one more on the up path).
      attention_resolutions: feature-map heights at which self-attention follows each block;
        each must be the height of some level, ``H / 2^i``.
      dropout: dropout rate inside the residual blocks.
      resample_with_conv: strided-convolution downsampling and upsampling followed by a
        convolution (``True``), or plain average pooling / nearest upsampling (``False``).
      embedding: ``"fourier"`` or ``"sinusoidal"`` time embedding.
      embed_dim: size of the time embedding (default ``channels``).
      num_classes: number of classes (0 for an unconditional model).
      num_groups: maximum number of GroupNorm groups; a layer with ``c`` channels uses
        ``min(num_groups, c // 4)`` groups, lowered until it divides ``c``.
      rngs: parameter initialisation randomness.
    """

    supports_value_injection: bool = False

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        *,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resample_with_conv: bool = True,
        embedding: str = "fourier",
        embed_dim: int | None = None,
        num_classes: int = 0,
        num_groups: int = 32,
        rngs: nnx.Rngs,
    ):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(
                f"image_shape must be (H, W, C) with positive sizes; got {image_shape}."
            )
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult or min(channel_mult) < 1 or channels < 1:
            raise ValueError(
                f"channels and every channel_mult entry must be positive and channel_mult "
                f"non-empty; got channels={channels}, channel_mult={channel_mult}."
            )
        height, width, in_ch = image_shape
        factor = 2 ** (len(channel_mult) - 1)
        if height % factor or width % factor:
            raise ValueError(
                f"a U-Net with {len(channel_mult)} levels halves the image {len(channel_mult) - 1} "
                f"times, so H and W must be divisible by {factor}; got image_shape={image_shape}. "
                "Use fewer levels (a shorter channel_mult) or pad the images."
            )
        heights = [height // 2**i for i in range(len(channel_mult))]
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        unknown = sorted(set(attention_resolutions) - set(heights))
        if unknown:
            raise ValueError(
                f"attention_resolutions {unknown} match no feature map; the levels' heights are "
                f"{tuple(heights)}. Pick among those, or pass () for no attention."
            )
        if num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0; got {num_res_blocks}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}.")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0; got {num_classes}.")

        self.image_shape = image_shape
        self.num_classes = num_classes
        embed_dim = channels if embed_dim is None else embed_dim
        emb_dim = 4 * channels
        self.time_embed = make_time_embedding(embedding, embed_dim, rngs=rngs)
        self.time_fc1 = nnx.Linear(embed_dim, emb_dim, kernel_init=_INIT, rngs=rngs)
        self.time_fc2 = nnx.Linear(emb_dim, emb_dim, kernel_init=_INIT, rngs=rngs)
        self.class_embed = (
            nnx.Embed(num_classes + 1, emb_dim, rngs=rngs) if num_classes > 0 else None
        )

        def block(cin: int, cout: int) -> _ResBlock:
            return _ResBlock(cin, cout, emb_dim, dropout=dropout, max_groups=num_groups, rngs=rngs)

        def attention(c: int) -> _Attention:
            return _Attention(c, max_groups=num_groups, rngs=rngs)

        def resample(c: int, stride: int) -> nnx.Conv | None:
            if not resample_with_conv:
                return None
            return nnx.Conv(c, c, (3, 3), strides=stride, kernel_init=_INIT, rngs=rngs)

        self.conv_in = nnx.Conv(in_ch, channels, (3, 3), kernel_init=_INIT, rngs=rngs)
        last = len(channel_mult) - 1
        skip_channels = [channels]
        down, ch = [], channels
        for i, mult in enumerate(channel_mult):
            use_attn = heights[i] in attention_resolutions
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, channels * mult))
                ch = channels * mult
                if use_attn:
                    attns.append(attention(ch))
                skip_channels.append(ch)
            if i != last:
                skip_channels.append(ch)
            down.append(
                _Level(blocks, attns if use_attn else None, resample(ch, 2) if i != last else None)
            )
        self.down = nnx.List(down)
        self.mid1 = block(ch, ch)
        self.mid_attn = attention(ch)
        self.mid2 = block(ch, ch)
        up = []
        for i in reversed(range(len(channel_mult))):
            use_attn = heights[i] in attention_resolutions
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skip_channels.pop(), channels * channel_mult[i]))
                ch = channels * channel_mult[i]
                if use_attn:
                    attns.append(attention(ch))
            up.append(
                _Level(blocks, attns if use_attn else None, resample(ch, 1) if i != 0 else None)
            )
        self.up = nnx.List(up)
        self.norm_out = _group_norm(ch, num_groups, rngs)
        self.conv_out = nnx.Conv(ch, in_ch, (3, 3), kernel_init=_ZEROS, rngs=rngs)

    def __call__(
        self,
        x: Float[Array, "b h w c"],
        t: Float[Array, "b"],
        cond: Int[Array, "b"] | None = None,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> Float[Array, "b h w c"]:
        """Evaluate the network.

        Args:
          x: images ``(b, H, W, C)``, channels last.
          t: times ``(b,)`` in ``[0, 1]``.
          cond: integer labels ``(b,)`` in ``[0, num_classes]`` or ``None`` (the null class);
            must be ``None`` for an unconditional model.
          rngs: randomness for dropout, e.g. ``nnx.Rngs(dropout=key)``; ``None`` (the default)
            turns dropout off and makes the call deterministic.

        Returns:
          An array with the shape and dtype of ``x``.

        Raises:
          ValueError: if ``x`` is not ``(b, H, W, C)`` of the built image shape, ``t`` or
            ``cond`` is not ``(b,)``, or an unconditional model is given ``cond``.
        """
        check_image_inputs("UNet", self.image_shape, self.num_classes, x, t, cond)
        e = self.time_fc2(jax.nn.silu(self.time_fc1(to_compute_dtype(self.time_embed(t), x))))
        if self.class_embed is not None:
            if cond is None:
                cond = jnp.full((x.shape[0],), self.num_classes, dtype=jnp.int32)
            e = e + self.class_embed(cond)
        e = jax.nn.silu(e)

        h = self.conv_in(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for j, blk in enumerate(level.blocks):
                h = blk(h, e, rngs)
                if level.attns is not None:
                    h = level.attns[j](h)
                skips.append(h)
            if i != len(self.down) - 1:
                h = _avg_pool(h) if level.resample is None else level.resample(h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e, rngs)), e, rngs)
        for i, level in enumerate(self.up):
            for j, blk in enumerate(level.blocks):
                h = blk(jnp.concatenate([h, skips.pop()], axis=-1), e, rngs)
                if level.attns is not None:
                    h = level.attns[j](h)
            if i != len(self.up) - 1:
                h = _upsample(h)
                if level.resample is not None:
                    h = level.resample(h)
        out = self.conv_out(jax.nn.silu(self.norm_out(h)))
        return out.astype(x.dtype)
