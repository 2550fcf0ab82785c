"""Inception-v3 as the feature network of the Fréchet Inception Distance (FID).

The standard FID (Heusel et al. 2017) compares 2048-d features: the global average of the last
Inception-v3 block (Szegedy et al. 2016, "Rethinking the Inception Architecture") with the
weights of the 2015-12-05 TensorFlow release. The PyTorch port of that network used by
``pytorch-fid`` differs from the ImageNet Inception-v3 of torchvision in ways that change the
features, and this module follows that port:

- the average pools inside the blocks exclude the zero padding from the mean
  (``count_include_pad=False``), in the A and C blocks and in the first E block (``Mixed_7b``);
- the last E block (``Mixed_7c``) pools its fourth branch with a 3x3 *max* pool (stride 1,
  padding 1) instead of an average pool;
- every convolution is followed by batch normalisation (``eps = 1e-3``, running statistics)
  and a ReLU, and has no bias.

Input handling as in the reference: images in ``[-1, 1]`` are resized to 299x299 by bilinear
interpolation on pixel centres without anti-aliasing (like ``torch.nn.functional.interpolate``
with ``align_corners=False``) and go in as they are (the network expects ``[-1, 1]``); grey
images are repeated over three channels.

Layer names follow the PyTorch state dict (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1``, ...), so
``<module path>.conv.weight`` and ``<module path>.bn.{weight,bias,running_mean,running_var}``
name every parameter. :func:`load_inception_weights` reads them from an ``.npz`` (see
``scripts/convert_fid_inception.py``); nothing is ever downloaded.

Spatial sizes for a 299x299 input: 149, 147, 147, pool 73, 73, 71, pool 35 (``Mixed_5*``, 288
channels), 17 (``Mixed_6*``, 768), 8 (``Mixed_7*``, 1280 then 2048), global mean -> 2048.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

INCEPTION_FID_NAME = "inception-v3-fid"
"""Name of the FID feature network; equal to ``genflow.metrics.INCEPTION_FID_NAME``."""

INCEPTION_FEATURE_DIM = 2048
INCEPTION_INPUT_SIZE = 299
_BN_EPS = 1e-3

# State-dict entries of the PyTorch file that the pool features do not use.
_UNUSED_PREFIXES = ("fc.", "AuxLogits.")
_UNUSED_SUFFIXES = (".num_batches_tracked",)

# nnx leaf name -> PyTorch parameter name.
_LEAF_TO_TORCH = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


# While set, layers are built with numpy placeholders instead of random initial values: much
# faster than drawing ~22M random numbers (or tracing the initialisers) when every value is
# about to be replaced by loaded weights.
_PLACEHOLDER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "inception_placeholder", default=False
)


def _numpy_zeros(key, shape, dtype=np.float32):  # noqa: ARG001 - initialiser signature
    return np.zeros(shape, np.float32)


def _numpy_ones(key, shape, dtype=np.float32):  # noqa: ARG001 - initialiser signature
    return np.ones(shape, np.float32)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _ConvBN(nnx.Module):
    """``relu(BN(conv(x)))``: bias-free convolution, batch norm with running statistics."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | Sequence[int],
        *,
        stride: int = 1,
        padding: int | Sequence[int] = 0,
        rngs: nnx.Rngs,
    ):
        ph, pw = _pair(padding)
        placeholder = _PLACEHOLDER.get()
        extra = {"kernel_init": _numpy_zeros} if placeholder else {}
        self.conv = nnx.Conv(
            cin, cout, _pair(kernel), strides=stride, padding=((ph, ph), (pw, pw)),
            use_bias=False, rngs=rngs, **extra,
        )
        extra = {"scale_init": _numpy_ones, "bias_init": _numpy_zeros} if placeholder else {}
        self.bn = nnx.BatchNorm(
            cout, use_running_average=True, epsilon=_BN_EPS, rngs=rngs, **extra
        )

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x: Array, *, stride: int, padding: int = 0) -> Array:
    """3x3 max pool, NHWC; padded positions never win (they hold ``-inf``)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad
    )


def avg_pool_exclude_pad(x: Array) -> Array:
    """3x3 average pool, stride 1, padding 1, NHWC, dividing by the in-image count only.

    At an interior pixel this is the mean of 9 values; at an edge of 6, at a corner of 4.
    """
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
    ones = jnp.ones((1, x.shape[1], x.shape[2], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
    return total / count


class _BlockA(nnx.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; ``224 + pool_features`` out."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = _ConvBN(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = _ConvBN(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = _ConvBN(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(avg_pool_exclude_pad(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class _BlockB(nnx.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; ``480 + cin`` out."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = _ConvBN(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = _ConvBN(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([a, b, max_pool(x, stride=2)], axis=-1)


class _BlockC(nnx.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 and 7x1); 768 channels out."""

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = _ConvBN(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = _ConvBN(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = _ConvBN(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = _ConvBN(cin, 192, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            c = layer(c)
        d = self.branch_pool(avg_pool_exclude_pad(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class _BlockD(nnx.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; ``512 + cin`` out."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = _ConvBN(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = _ConvBN(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b = layer(b)
        return jnp.concatenate([a, b, max_pool(x, stride=2)], axis=-1)


class _BlockE(nnx.Module):
    """8x8 block with split 1x3 / 3x1 outputs; 2048 channels out.

    ``pool="avg"`` (``Mixed_7b``) averages without the padding, ``pool="max"`` (``Mixed_7c``)
    takes a 3x3 max, as in the FID network.
    """

    def __init__(self, cin: int, *, pool: str, rngs: nnx.Rngs):
        self.pool = pool
        self.branch1x1 = _ConvBN(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = _ConvBN(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = _ConvBN(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = _ConvBN(cin, 192, 1, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = jnp.concatenate([self.branch3x3_2a(b), self.branch3x3_2b(b)], axis=-1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = jnp.concatenate([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], axis=-1)
        pooled = max_pool(x, stride=1, padding=1) if self.pool == "max" else (
            avg_pool_exclude_pad(x)
        )
        d = self.branch_pool(pooled)
        return jnp.concatenate([a, b, c, d], axis=-1)


def resize_for_inception(images: Float[Array, "b h w c"]) -> Float[Array, "b 299 299 3"]:
    """Bring images in ``[-1, 1]`` to the network's input: 3 channels, 299x299, bilinear.

    Grey images (``c = 1``) are repeated over the three channels. The resize interpolates on
    pixel centres (output pixel ``i`` samples input coordinate ``(i + 1/2) h / 299 - 1/2``,
    borders clamped) without anti-aliasing, like the reference FID code.
    """
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must have shape (b, h, w, c) with c = 1 or 3 and values in [-1, 1]; got "
            f"{tuple(x.shape)}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"images must be floating point in [-1, 1], got dtype {x.dtype}; convert uint8 "
            "images with x / 127.5 - 1."
        )
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    size = INCEPTION_INPUT_SIZE
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(
            x, (x.shape[0], size, size, 3), method="bilinear", antialias=False
        )
    return x


class FIDInceptionV3(nnx.Module):
    """Inception-v3 up to the 2048-d pool features, in the FID variant (see module docstring).

    ``model(images)`` takes ``(b, h, w, c)`` images in ``[-1, 1]`` (any size, ``c`` = 1 or 3),
    resizes them with :func:`resize_for_inception` and returns ``(b, 2048)`` float32 features.
    A freshly built model has random weights: use :func:`load_inception_weights`.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3, rngs=rngs)
        self.Mixed_5b = _BlockA(192, 32, rngs=rngs)
        self.Mixed_5c = _BlockA(256, 64, rngs=rngs)
        self.Mixed_5d = _BlockA(288, 64, rngs=rngs)
        self.Mixed_6a = _BlockB(288, rngs=rngs)
        self.Mixed_6b = _BlockC(768, 128, rngs=rngs)
        self.Mixed_6c = _BlockC(768, 160, rngs=rngs)
        self.Mixed_6d = _BlockC(768, 160, rngs=rngs)
        self.Mixed_6e = _BlockC(768, 192, rngs=rngs)
        self.Mixed_7a = _BlockD(768, rngs=rngs)
        self.Mixed_7b = _BlockE(1280, pool="avg", rngs=rngs)
        self.Mixed_7c = _BlockE(2048, pool="max", rngs=rngs)

    def __call__(self, images: Float[Array, "b h w c"]) -> Float[Array, "b 2048"]:
        x = resize_for_inception(images).astype(jnp.float32)
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = max_pool(x, stride=2)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = max_pool(x, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        return jnp.mean(x, axis=(1, 2))


def _torch_name(path: Sequence[object]) -> str:
    """nnx state path, e.g. ``('Mixed_5b', 'branch1x1', 'conv', 'kernel')``, to its state-dict
    key ``'Mixed_5b.branch1x1.conv.weight'``."""
    *modules, leaf = (str(p) for p in path)
    return ".".join([*modules, _LEAF_TO_TORCH[leaf]])


def _to_torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """HWIO kernel shape -> OIHW; vectors unchanged."""
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


@functools.cache
def _structure() -> tuple[nnx.GraphDef, tuple[tuple[tuple, nnx.Variable], ...]]:
    """Graph definition and flat ``(path, variable)`` list of the model, values abstract.

    Built once with placeholder values (``nnx.eval_shape`` would trace every initialiser,
    which takes seconds); the values are then replaced by shape-dtype structs so the cache holds
    no arrays.
    """
    token = _PLACEHOLDER.set(True)
    try:
        model = FIDInceptionV3(rngs=nnx.Rngs(0))
    finally:
        _PLACEHOLDER.reset(token)
    graphdef, state = nnx.split(model)
    flat = tuple(
        (path, var.replace(jax.ShapeDtypeStruct(np.shape(var.get_value()), jnp.float32)))
        for path, var in nnx.to_flat_state(state)
    )
    return graphdef, flat


def inception_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Every key that :func:`load_inception_weights` needs, with its shape in PyTorch layout.

    Convolution weights are ``(out, in, kh, kw)``; batch-norm entries are ``(channels,)``.
    Built from the model's own parameter structure (no weights are allocated).
    """
    return {
        _torch_name(path): _to_torch_layout(tuple(var.get_value().shape))
        for path, var in _structure()[1]
    }


def load_inception_weights(path: str | Path) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` with the weights of a local ``.npz`` file.

    The file maps PyTorch state-dict names (``Conv2d_1a_3x3.conv.weight``,
    ``Mixed_7c.branch_pool.bn.running_var``, ...; see :func:`inception_state_dict_shapes`) to
    arrays in PyTorch layout; convolution weights are converted from ``(out, in, kh, kw)`` to
    ``(kh, kw, in, out)``. Entries the pool features do not use (``fc.*``, ``AuxLogits.*``,
    ``*.num_batches_tracked``) are ignored. Make the file from the ``pytorch-fid`` weights with
    ``scripts/convert_fid_inception.py``.

    Args:
        path: The ``.npz`` file.

    Returns:
        The model with every parameter and running statistic restored, in float32.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a key is missing, has the wrong shape, or the file holds unknown keys
            (the message names them).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No Inception weights at {path}. Convert the pytorch-fid weights with "
            "`python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth "
            f"{path}` or use a feature network that needs none (genflow.metrics."
            "digits_feature_extractor)."
        )
    graphdef, flat = _structure()
    restored = []
    with np.load(path) as data:
        available = set(data.files)
        used = set()
        for p, var in flat:
            key = _torch_name(p)
            expected = _to_torch_layout(tuple(var.get_value().shape))
            if key not in available:
                raise ValueError(
                    f"Inception weights file {path} has no entry {key!r} (expected shape "
                    f"{expected}); convert it again with scripts/convert_fid_inception.py."
                )
            value = np.asarray(data[key])
            if value.shape != expected:
                raise ValueError(
                    f"Inception weights entry {key!r} in {path} has shape {value.shape}, "
                    f"expected {expected}; the file is not the FID Inception-v3."
                )
            if value.ndim == 4:
                value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            restored.append((p, var.replace(jnp.asarray(value, dtype=jnp.float32))))
            used.add(key)
    unknown = sorted(
        k for k in available - used
        if not k.startswith(_UNUSED_PREFIXES) and not k.endswith(_UNUSED_SUFFIXES)
    )
    if unknown:
        raise ValueError(
            f"Inception weights file {path} holds {len(unknown)} unknown entries, e.g. "
            f"{unknown[:3]}; it is not the FID Inception-v3 (pytorch-fid state-dict names)."
        )
    return nnx.merge(graphdef, nnx.from_flat_state(restored))


class InceptionFeatureExtractor:
    """The FID feature network as a :class:`~genflow.metrics.FeatureExtractor`.

    ``extractor(images)`` maps ``(b, h, w, c)`` images in ``[-1, 1]`` to ``(b, 2048)`` features
    with one jit-compiled function (one compilation per input shape; keep the batch size fixed).

    Args:
        model: A :class:`FIDInceptionV3`, normally from :func:`load_inception_weights`.

    Attributes:
        name: ``"inception-v3-fid"``; the Fréchet distance on these features is the FID.
    """

    name = INCEPTION_FID_NAME

    def __init__(self, model: FIDInceptionV3):
        graphdef, state = nnx.split(model)
        self._state = state

        @jax.jit
        def features(state, images):
            return nnx.merge(graphdef, state)(images)

        self._features = features

    @classmethod
    def from_file(cls, path: str | Path) -> InceptionFeatureExtractor:
        """Load the weights from ``path`` (see :func:`load_inception_weights`)."""
        return cls(load_inception_weights(path))

    def __call__(self, images: Float[Array, "b h w c"]) -> Float[Array, "b 2048"]:
        x = jnp.asarray(images)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"images must be floating point in [-1, 1], got dtype {x.dtype}; convert uint8 "
                "images with x / 127.5 - 1."
            )
        return self._features(self._state, x.astype(jnp.float32))
