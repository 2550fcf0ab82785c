"""The DDPM++-style U-Net.

Truth comes from the architecture written out by hand (parameter counts), from the zero-initialised
head (exact zeros), and from comparisons between calls (labels, dropout keys). Initialising and
compiling a U-Net dominates the cost on CPU, so one small model is built once (inside ``jit``),
every program is compiled without LLVM optimisation (each runs a handful of times on tiny inputs,
so compile time is all that counts), and every shape-only check runs under ``nnx.eval_shape``,
which compiles nothing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _conditioning import assert_labels_condition_the_output, nudge
from flax import nnx

from genflow.networks import MLP, FrozenParam, ModelFn, UNet, as_model_fn

IMAGE = (8, 8, 1)
K = 3  # classes; label K is the null class
B = K + 1  # one image per label, so a single call covers every label
CONFIG = dict(
    channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    dropout=0.3,
    embedding="fourier",
    embed_dim=16,
    num_groups=4,
)


FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


def _build():
    return UNet(IMAGE, num_classes=K, **CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def model():
    # One compile of the whole initialiser instead of one eager compile per parameter shape.
    graphdefs = []

    def init():
        graphdef, state = nnx.split(_build())
        graphdefs.append(graphdef)  # static, so it may leave the trace
        return state

    state = jax.jit(init, **FAST)()
    return nnx.merge(graphdefs[0], state)


@pytest.fixture(scope="module")
def nudged(model):
    return nudge(model)


def inputs(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((B, *IMAGE)), dtype)
    t = jnp.asarray(rng.uniform(size=B), jnp.float32)
    return x, t


@functools.partial(jax.jit, **FAST)
def apply(model_fn, x, t, cond):
    return model_fn(x, t, cond)


@functools.partial(jax.jit, **FAST)
def call_with_dropout(graphdef, params, rest, x, t, cond, key):
    """The training call: dropout randomness from ``key``."""
    model = nnx.merge(graphdef, params, rest)
    return model(x, t, cond, rngs=nnx.Rngs(dropout=key))


def abstract_unet(image_shape, **kwargs):
    """A U-Net of ShapeDtypeStructs: its parameters' shapes, without initialising them."""
    return nnx.eval_shape(lambda: UNet(image_shape, rngs=nnx.Rngs(0), **kwargs))


def param_count(model):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------- shapes and init


def test_zero_initialised_head_gives_exact_zeros(model):
    x, t = inputs()
    np.testing.assert_array_equal(np.asarray(model.conv_out.kernel[...]), 0.0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # the pytree of `nudged`
    y = apply(ModelFn(graphdef, (params, rest)), x, t, jnp.arange(B))
    assert y.shape == (B, *IMAGE) and y.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y), 0.0)


@pytest.mark.parametrize(
    "image_shape, dtype, with_conv",
    [((16, 16, 3), jnp.float32, True), ((16, 8, 2), jnp.float64, False)],
)
def test_output_shape_and_dtype_follow_input(image_shape, dtype, with_conv):
    net = abstract_unet(image_shape, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), resample_with_conv=with_conv)
    x = jax.ShapeDtypeStruct((3, *image_shape), dtype)
    t = jax.ShapeDtypeStruct((3,), dtype)
    y = nnx.eval_shape(lambda m, x, t: m(x, t), net, x, t)
    assert y.shape == (3, *image_shape)
    assert y.dtype == dtype


def _conv(k, a, b):  # kernel k x k x a x b + bias
    return k * k * a * b + b


def _linear(a, b):
    return a * b + b


def _gn(c):  # scale + bias
    return 2 * c


def _block(a, b, emb):  # GN, conv3x3, embedding projection, GN, conv3x3, 1x1 skip if a != b
    return _gn(a) + _conv(3, a, b) + _linear(emb, b) + _gn(b) + _conv(3, b, b) + (
        _conv(1, a, b) if a != b else 0
    )


def _attn(c):  # GN, qkv, output projection
    return _gn(c) + _linear(c, 3 * c) + _linear(c, c)


def test_parameter_count_matches_architecture_fourier_conditional_attention():
    # CONFIG: ch 16, mult (1, 2), 1 block per level, attention at height 4, Fourier(16), 3 classes.
    e = 4 * 16
    expected = sum([
        16 // 2,  # frozen Fourier frequencies
        _linear(16, e) + _linear(e, e) + (K + 1) * e,  # time MLP and class table (null row)
        _conv(3, 1, 16),  # conv_in                                  skips: 16
        _block(16, 16, e),  # level 0 (height 8)                      skips: 16 16
        _conv(3, 16, 16),  # strided-conv downsampling                skips: 16 16 16
        _block(16, 32, e) + _attn(32),  # level 1 (height 4)          skips: 16 16 16 32
        _block(32, 32, e) + _attn(32) + _block(32, 32, e),  # middle
        _block(32 + 32, 32, e) + _attn(32),  # up level 1, two blocks
        _block(32 + 16, 32, e) + _attn(32),
        _conv(3, 32, 32),  # upsampling convolution
        _block(32 + 16, 16, e),  # up level 0, two blocks
        _block(16 + 16, 16, e),
        _gn(16) + _conv(3, 16, 1),  # head
    ])
    assert param_count(abstract_unet(IMAGE, num_classes=K, **CONFIG)) == expected


def test_parameter_count_matches_architecture_sinusoidal_unconditional_pooling():
    # ch 8 (embed_dim defaults to it), mult (1, 2), 2 blocks per level, no attention outside
    # the middle, average pooling and plain nearest upsampling (no resampling parameters).
    e = 4 * 8
    expected = sum([
        _linear(8, e) + _linear(e, e),  # sinusoidal embedding has no parameters
        _conv(3, 1, 8),  # skips: 8
        _block(8, 8, e) + _block(8, 8, e),  # skips: 8 8 8 (+ 8 after pooling)
        _block(8, 16, e) + _block(16, 16, e),  # skips: 8 8 8 8 16 16
        _block(16, 16, e) + _attn(16) + _block(16, 16, e),
        _block(16 + 16, 16, e) + _block(16 + 16, 16, e) + _block(16 + 8, 16, e),
        _block(16 + 8, 8, e) + _block(8 + 8, 8, e) + _block(8 + 8, 8, e),
        _gn(8) + _conv(3, 8, 1),
    ])
    net = abstract_unet(IMAGE, channels=8, channel_mult=(1, 2), num_res_blocks=2,
                        attention_resolutions=(), resample_with_conv=False,
                        embedding="sinusoidal", dropout=0.0)
    assert param_count(net) == expected


# --------------------------------------------------------------------------- conditioning


def test_every_label_gives_a_different_output_and_none_is_the_null_class(nudged):
    graphdef, params, rest = nudged
    fn = ModelFn(graphdef, (params, rest))
    assert_labels_condition_the_output(apply, fn, *inputs(), num_labels=B, null=K)  # K: null


def test_unconditional_model_rejects_cond():
    net = abstract_unet((16, 16, 3), channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,))
    x, t = jnp.zeros((2, 16, 16, 3), jnp.float32), jnp.zeros((2,), jnp.float32)
    assert net.class_embed is None
    with pytest.raises(ValueError, match="unconditional"):
        nnx.eval_shape(lambda m: m(x, t, jnp.zeros((2,), jnp.int32)), net)
    assert nnx.eval_shape(lambda m: m(x, t), net).shape == x.shape  # cond=None is fine


@pytest.mark.parametrize(
    "x_shape, t_shape, cond_shape, match",
    [
        ((B, 8, 8, 3), (B,), (B,), r"\(b, 8, 8, 1\)"),  # wrong channel count
        ((B, 16, 16, 1), (B,), (B,), r"\(b, 8, 8, 1\)"),  # wrong spatial size
        ((B, 8, 8), (B,), (B,), r"\(b, 8, 8, 1\)"),  # missing channel axis
        ((B, 8, 8, 1), (), (B,), r"t must have shape \(b,\)"),
        ((B, 8, 8, 1), (B,), (B, 1), r"cond must have shape \(b,\)"),
    ],
)
def test_bad_input_shapes_raise_at_trace_time(model, x_shape, t_shape, cond_shape, match):
    x = jnp.zeros(x_shape, jnp.float32)
    t = jnp.zeros(t_shape, jnp.float32)
    cond = jnp.zeros(cond_shape, jnp.int32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(apply, as_model_fn(model), x, t, cond)


def test_float_labels_raise_type_error(model):
    x, t = inputs()
    with pytest.raises(TypeError, match="integer class labels"):
        jax.eval_shape(apply, as_model_fn(model), x, t, jnp.zeros((B,), jnp.float32))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_shape=(6, 6, 1), channel_mult=(1, 2, 2)), "divisible by 4"),
        (dict(image_shape=(8, 8, 1), attention_resolutions=(16,)), r"heights are \(8, 4\)"),
        (dict(image_shape=(8, 8), attention_resolutions=()), r"\(H, W, C\)"),
        (dict(image_shape=(8, 8, 1), dropout=1.0, attention_resolutions=()), "dropout"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs, match):
    image_shape = kwargs.pop("image_shape")
    kwargs.setdefault("channel_mult", (1, 2))
    with pytest.raises(ValueError, match=match):
        abstract_unet(image_shape, **kwargs)


# --------------------------------------------------------------------------- dropout, gradients


def test_dropout_only_with_rngs_and_different_per_key(nudged):
    graphdef, params, rest = nudged
    x, t = inputs(seed=2)
    cond = jnp.arange(B)
    fn = ModelFn(graphdef, (params, rest))  # what samplers get: rngs=None, no dropout
    det1, det2 = np.asarray(apply(fn, x, t, cond)), np.asarray(apply(fn, x, t, cond))
    np.testing.assert_array_equal(det1, det2)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    drop1 = np.asarray(call_with_dropout(graphdef, params, rest, x, t, cond, k1))
    drop1_again = np.asarray(call_with_dropout(graphdef, params, rest, x, t, cond, k1))
    drop2 = np.asarray(call_with_dropout(graphdef, params, rest, x, t, cond, k2))
    np.testing.assert_array_equal(drop1, drop1_again)  # same key, same masks
    assert np.abs(drop1 - drop2).max() > 1e-3
    assert np.abs(drop1 - det1).max() > 1e-3


@functools.partial(jax.jit, **FAST)
def _grads(graphdef, params, rest, x, t, cond, target):
    def loss(p):
        y = ModelFn(graphdef, (p, rest))(x, t, cond)
        return jnp.mean((y - target) ** 2)

    return jax.grad(loss)(params)


def test_gradients_reach_every_trained_parameter(model, nudged):
    graphdef, params, rest = nudged
    x, t = inputs(seed=3)
    target = jnp.asarray(np.random.default_rng(4).standard_normal(x.shape), jnp.float32)
    grads = _grads(graphdef, params, rest, x, t, jnp.arange(B), target)
    flat = jax.tree.leaves_with_path(grads, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert len(flat) > 40
    for path, g in flat:
        size = float(np.abs(np.asarray(g[...])).max())
        if isinstance(g, FrozenParam):
            assert size == 0.0, path  # the Fourier frequencies are fixed
        else:
            assert size > 0.0, path

    # At initialisation the zero head blocks every gradient but its own.
    _, params0, rest0 = nnx.split(model, nnx.Param, ...)
    grads0 = _grads(graphdef, params0, rest0, x, t, jnp.arange(B), target)
    assert np.abs(np.asarray(grads0["conv_out"]["kernel"][...])).max() > 0
    np.testing.assert_array_equal(np.asarray(grads0["conv_in"]["kernel"][...]), 0.0)


def test_value_injection_is_not_claimed():
    assert UNet.supports_value_injection is False
    assert getattr(MLP, "supports_value_injection", False) is False
