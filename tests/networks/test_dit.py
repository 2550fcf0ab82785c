"""The DiT-style patch transformer and its attention-value hook.

Truth comes from the architecture written out by hand (parameter counts), the closed form of the
2-D sin-cos position embedding, the zero-initialised output layer (exact zeros) and comparisons
between calls (labels, injected values). One small model is built once; programs are compiled
without LLVM optimisation (compile time is all that counts on these tiny inputs); shape-only
checks run under ``nnx.eval_shape``, which compiles nothing.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _conditioning import assert_labels_condition_the_output, nudge
from flax import nnx

from genflow.networks import DiT, FrozenParam, ModelFn, as_model_fn, sincos_position_embedding

IMAGE = (8, 8, 1)
K = 3  # classes; label K is the null class
B = K + 1  # one image per label
P = 2  # patch size: 16 tokens
CONFIG = dict(
    patch_size=P, width=32, depth=2, num_heads=2, mlp_ratio=2.0, embedding="fourier", embed_dim=16
)
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def model():
    graphdefs = []

    def init():
        graphdef, state = nnx.split(DiT(IMAGE, num_classes=K, **CONFIG, rngs=nnx.Rngs(0)))
        graphdefs.append(graphdef)  # static, so it may leave the trace
        return state

    state = jax.jit(init, **FAST)()  # one compile instead of one eager compile per shape
    return nnx.merge(graphdefs[0], state)


@pytest.fixture(scope="module")
def nudged(model):
    return nudge(model)


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((B, *IMAGE)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=B), jnp.float32)
    return x, t


@functools.partial(jax.jit, **FAST)
def apply(model_fn, x, t, cond):
    return model_fn(x, t, cond)


@functools.partial(jax.jit, **FAST)
def run(graphdef, params, rest, x, t, cond, values):
    """``model(..., values=values, return_values=True)``, with the training call's ``rngs``."""
    model = nnx.merge(graphdef, params, rest)
    return model(x, t, cond, values=values, return_values=True, rngs=nnx.Rngs(dropout=0))


def abstract_dit(image_shape, **kwargs):
    return nnx.eval_shape(lambda: DiT(image_shape, rngs=nnx.Rngs(0), **kwargs))


def param_count(model):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------- shapes and init


def test_zero_initialised_output_layer_gives_exact_zeros(model):
    np.testing.assert_array_equal(np.asarray(model.final_linear.kernel[...]), 0.0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # same pytree as `nudged`
    x, t = inputs()
    y = apply(ModelFn(graphdef, (params, rest)), x, t, jnp.arange(B))
    assert y.shape == (B, *IMAGE) and y.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(y), 0.0)


@pytest.mark.parametrize(
    "image_shape, patch, dtype", [((16, 16, 3), 4, jnp.float32), ((16, 8, 2), 2, jnp.float64)]
)
def test_output_shape_and_dtype_follow_input(image_shape, patch, dtype):
    net = abstract_dit(image_shape, patch_size=patch, width=16, depth=1, num_heads=2)
    x = jax.ShapeDtypeStruct((3, *image_shape), dtype)
    t = jax.ShapeDtypeStruct((3,), dtype)
    y = nnx.eval_shape(lambda m, x, t: m(x, t), net, x, t)
    assert y.shape == (3, *image_shape)
    assert y.dtype == dtype


def test_float64_input_runs_in_float64(nudged):
    graphdef, params, rest = nudged
    fn = ModelFn(graphdef, (params, rest))
    x, t = inputs()
    y32 = apply(fn, x, t, jnp.arange(B))
    y64 = apply(fn, x.astype(jnp.float64), t, jnp.arange(B))
    assert y64.dtype == jnp.float64
    # float32 parameters promoted to float64: the two runs agree to float32 accuracy only.
    np.testing.assert_allclose(np.asarray(y64), np.asarray(y32), rtol=1e-4, atol=1e-5)
    assert np.abs(np.asarray(y64) - np.asarray(y32)).max() > 0


def _linear(a, b):
    return a * b + b


def _expected(*, patch_dim, tokens, width, depth, hidden, embed_dim, classes, fourier):
    block = (
        _linear(width, 3 * width)  # qkv
        + _linear(width, width)  # attention output
        + _linear(width, hidden) + _linear(hidden, width)  # MLP
        + _linear(width, 6 * width)  # adaLN-Zero modulation (layer norms have no parameters)
    )
    return (
        _linear(patch_dim, width)  # patch embedding
        + tokens * width  # frozen position embedding
        + (embed_dim // 2 if fourier else 0)  # frozen Fourier frequencies
        + _linear(embed_dim, width) + _linear(width, width)  # time MLP
        + ((classes + 1) * width if classes else 0)  # class table with the null row
        + depth * block
        + _linear(width, 2 * width)  # final adaLN
        + _linear(width, patch_dim)  # output layer
    )


def test_parameter_count_matches_architecture():
    expected = _expected(patch_dim=P * P * 1, tokens=16, width=32, depth=2, hidden=64,
                         embed_dim=16, classes=K, fourier=True)
    assert param_count(abstract_dit(IMAGE, num_classes=K, **CONFIG)) == expected
    # 16x16x3 with 4x4 patches, default sinusoidal embedding of size width, unconditional.
    net = abstract_dit((16, 16, 3), patch_size=4, width=24, depth=3, num_heads=3)
    expected = _expected(patch_dim=4 * 4 * 3, tokens=16, width=24, depth=3, hidden=96,
                         embed_dim=24, classes=0, fourier=False)
    assert param_count(net) == expected


def test_position_embedding_is_frozen_2d_sincos(model):
    assert isinstance(model.pos_embed, FrozenParam)
    pos = np.asarray(model.pos_embed[...])
    assert pos.shape == (16, 32)
    # Token (row 1, column 2) of the 4 x 4 grid, written out: 8 frequencies per quarter.
    w = 1.0 / 10_000.0 ** (np.arange(8) / 8)
    expected = np.concatenate([np.sin(1 * w), np.cos(1 * w), np.sin(2 * w), np.cos(2 * w)])
    np.testing.assert_allclose(pos[1 * 4 + 2], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pos[0], np.r_[np.zeros(8), np.ones(8), np.zeros(8), np.ones(8)])
    assert len({row.tobytes() for row in pos}) == 16  # every token has its own code
    np.testing.assert_array_equal(pos, sincos_position_embedding(4, 4, 32))


# --------------------------------------------------------------------------- conditioning, inputs


def test_every_label_gives_a_different_output_and_none_is_the_null_class(nudged):
    graphdef, params, rest = nudged
    fn = ModelFn(graphdef, (params, rest))
    assert_labels_condition_the_output(apply, fn, *inputs(), num_labels=B, null=K)  # K: null


def test_unconditional_model_rejects_cond():
    net = abstract_dit((16, 16, 3), patch_size=4, width=16, depth=1, num_heads=2)
    x, t = jnp.zeros((2, 16, 16, 3), jnp.float32), jnp.zeros((2,), jnp.float32)
    with pytest.raises(ValueError, match="unconditional"):
        nnx.eval_shape(lambda m: m(x, t, jnp.zeros((2,), jnp.int32)), net)
    assert nnx.eval_shape(lambda m: m(x, t), net).shape == x.shape


@pytest.mark.parametrize(
    "x_shape, t_shape, match",
    [
        ((B, 8, 8, 3), (B,), r"\(b, 8, 8, 1\)"),  # wrong channel count
        ((B, 6, 6, 1), (B,), r"\(b, 8, 8, 1\)"),  # wrong size (not even divisible by the patch)
        ((B, 64), (B,), r"\(b, 8, 8, 1\)"),  # flat data
        ((B, 8, 8, 1), (B, 1), r"t must have shape \(b,\)"),
    ],
)
def test_bad_input_shapes_raise_at_trace_time(model, x_shape, t_shape, match):
    x, t = jnp.zeros(x_shape, jnp.float32), jnp.zeros(t_shape, jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(apply, as_model_fn(model), x, t, jnp.zeros((B,), jnp.int32))


@pytest.mark.parametrize(
    "image_shape, kwargs, match",
    [
        ((9, 8, 1), dict(patch_size=2), "divisible by patch_size=2"),
        ((8, 8, 1), dict(width=30, num_heads=3), "divisible by num_heads and by 4"),
        ((8, 8, 1), dict(width=32, num_heads=3), "divisible by num_heads"),
        ((8, 8, 1), dict(embedding="cosine"), "unknown time embedding"),
    ],
)
def test_bad_constructor_arguments_raise(image_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        abstract_dit(image_shape, **kwargs)


# --------------------------------------------------------------------------- value injection


def test_value_hook_shapes_and_exact_reproduction(model, nudged):
    graphdef, params, rest = nudged
    x, t = inputs(seed=5)
    cond = jnp.arange(B)
    out, values = run(graphdef, params, rest, x, t, cond, None)
    assert isinstance(values, tuple) and len(values) == CONFIG["depth"]
    for v in values:
        assert v.shape == (B, 16, 2, 16) == model.value_shape(B)
        assert v.dtype == jnp.float32
    # The plain 3-argument call returns just the array, equal to the hooked call's output
    # (rngs is accepted and ignored: the DiT has no dropout).
    plain = apply(ModelFn(graphdef, (params, rest)), x, t, cond)
    assert isinstance(plain, jax.Array)
    # Two float32 programs (plain and hooked call) through a 2-block DiT: each is within
    # 1.2e-6 * max|y| of float64 here, so they may differ by a few 1e-6 of the output's scale.
    tol = dict(rtol=1e-5, atol=2e-5 * np.abs(np.asarray(out)).max())
    np.testing.assert_allclose(np.asarray(plain), np.asarray(out), **tol)
    # Injecting the values this input produces changes nothing; the returned values are still
    # the ones computed from the input. Not bit for bit: feeding the values in is another
    # program than computing them, which XLA may fuse (and round) differently.
    out_again, values_again = run(graphdef, params, rest, x, t, cond, values)
    np.testing.assert_allclose(np.asarray(out_again), np.asarray(out), **tol)
    for v, w in zip(values, values_again):
        np.testing.assert_allclose(np.asarray(w), np.asarray(v), rtol=1e-5,
                                   atol=2e-5 * np.abs(np.asarray(v)).max())


def test_injecting_another_inputs_values_changes_the_output(nudged):
    graphdef, params, rest = nudged
    x, t = inputs(seed=5)
    src, _ = inputs(seed=6)  # the "source" image, at the same times
    cond = jnp.arange(B)
    out, _ = run(graphdef, params, rest, x, t, cond, None)
    out_src, v_src = run(graphdef, params, rest, src, t, cond, None)
    all_blocks, _ = run(graphdef, params, rest, x, t, cond, v_src)
    first_only, _ = run(graphdef, params, rest, x, t, cond, (v_src[0], None))
    out, out_src, all_blocks, first_only = map(np.asarray, (out, out_src, all_blocks, first_only))

    def far(a, b):
        return np.abs(a - b).max() > 1e-3

    assert far(all_blocks, out) and far(all_blocks, out_src)
    assert far(first_only, out) and far(first_only, all_blocks)


@pytest.mark.parametrize(
    "values, match",
    [
        ((None,), "one entry per block"),
        ([None, None, None], "one entry per block"),
        ((jnp.zeros((B, 16, 2, 8)), None), r"values\[0\] must have shape"),
    ],
)
def test_bad_values_raise(model, values, match):
    x, t = inputs()
    with pytest.raises(ValueError, match=match):
        nnx.eval_shape(lambda m: m(x, t, values=values), model)


def test_supports_value_injection_flag():
    assert DiT.supports_value_injection is True


# --------------------------------------------------------------------------- gradients


@functools.partial(jax.jit, **FAST)
def _grads(graphdef, params, rest, x, t, cond, target):
    def loss(p):
        return jnp.mean((ModelFn(graphdef, (p, rest))(x, t, cond) - target) ** 2)

    return jax.grad(loss)(params)


def test_gradients_reach_every_trained_parameter(model, nudged):
    graphdef, params, rest = nudged
    x, t = inputs(seed=3)
    target = jnp.asarray(np.random.default_rng(4).standard_normal(x.shape), jnp.float32)
    grads = _grads(graphdef, params, rest, x, t, jnp.arange(B), target)
    flat = jax.tree.leaves_with_path(grads, is_leaf=lambda v: isinstance(v, nnx.Variable))
    frozen = [path for path, g in flat if isinstance(g, FrozenParam)]
    assert len(frozen) == 2  # position embedding and Fourier frequencies
    for path, g in flat:
        size = float(np.abs(np.asarray(g[...])).max())
        if isinstance(g, FrozenParam):
            assert size == 0.0, path
        else:
            assert size > 0.0, path

    # At initialisation only the output layer learns: its input is the only nonzero signal.
    _, params0, rest0 = nnx.split(model, nnx.Param, ...)
    grads0 = _grads(graphdef, params0, rest0, x, t, jnp.arange(B), target)
    assert np.abs(np.asarray(grads0["final_linear"]["kernel"][...])).max() > 0
    np.testing.assert_array_equal(np.asarray(grads0["patch_embed"]["kernel"][...]), 0.0)
