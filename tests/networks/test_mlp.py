"""The residual MLP, its time embeddings and the ``as_model_fn`` adapter.

Truth comes from the architecture written out by hand: parameter counts from the layer sizes,
the sinusoidal embedding from its closed form, the Fourier embedding from its frozen frequencies.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genflow.networks import MLP, FourierEmbedding, ModelFn, SinusoidalEmbedding, as_model_fn

D, H, E, B = 2, 16, 8, 16  # the sizes of the training tests' tiny model


def make_mlp(*, depth=2, embedding="fourier", num_classes=0, seed=0, data_dim=D):
    return MLP(
        data_dim,
        hidden=H,
        depth=depth,
        embedding=embedding,
        embed_dim=E,
        num_classes=num_classes,
        rngs=nnx.Rngs(seed),
    )


def perturb_output_layer(model, seed=1):
    """Give the zero-initialised output layer random weights, so outputs depend on everything."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    model.out.kernel[...] = 0.3 * jax.random.normal(k1, model.out.kernel.shape, jnp.float32)
    model.out.bias[...] = 0.1 * jax.random.normal(k2, model.out.bias.shape, jnp.float32)
    return model


def inputs(dtype=jnp.float32, seed=0):
    kx, kt = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (B, D), dtype)
    t = jax.random.uniform(kt, (B,), dtype)
    return x, t


def param_count(model):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------- MLP


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_output_shape_and_dtype_follow_input(dtype):
    model = perturb_output_layer(make_mlp())
    x, t = inputs(dtype)
    y = model(x, t)
    assert y.shape == (B, D)
    assert y.dtype == dtype


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
@pytest.mark.parametrize("num_classes", [0, 5])
@pytest.mark.parametrize("depth", [1, 2])
def test_parameter_count_matches_architecture(embedding, num_classes, depth):
    def linear(i, o):  # kernel + bias
        return i * o + o

    layer_norm = 2 * H  # scale + bias
    expected = (
        (E // 2 if embedding == "fourier" else 0)  # frozen Fourier frequencies (a Param)
        + linear(E, H)  # time_fc1
        + linear(H, H)  # time_fc2
        + ((num_classes + 1) * H if num_classes > 0 else 0)  # class table incl. null class
        + linear(D, H)  # inp
        + depth * (layer_norm + 3 * linear(H, H))  # norm, fc1, cond, fc2 per block
        + linear(H, D)  # out
        + linear(H, D)  # skip_gain: per-coordinate gain of the x -> output skip path
    )
    model = make_mlp(depth=depth, embedding=embedding, num_classes=num_classes)
    assert param_count(model) == expected


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_zero_initialised_output_layer_gives_exact_zeros(embedding):
    model = make_mlp(embedding=embedding, num_classes=4)
    x, t = inputs()
    np.testing.assert_array_equal(np.asarray(model.out.kernel[...]), 0.0)
    np.testing.assert_array_equal(np.asarray(model.skip_gain.kernel[...]), 0.0)
    np.testing.assert_array_equal(np.asarray(model(x, t)), np.zeros((B, D), np.float32))
    np.testing.assert_array_equal(
        np.asarray(model(x, t, jnp.arange(B) % 4)), np.zeros((B, D), np.float32)
    )


def test_class_conditioning_changes_output_and_none_is_the_null_class():
    k = 3
    model = perturb_output_layer(make_mlp(num_classes=k))
    x, t = inputs()
    outs = [np.asarray(model(x, t, jnp.full((B,), label, jnp.int32))) for label in range(k + 1)]
    for a in range(k + 1):
        for b in range(a + 1, k + 1):
            assert np.min(np.abs(outs[a] - outs[b]).max(axis=-1)) > 1e-4, (a, b)
    # Exact: eager calls run the same primitives on the same inputs (the null label's row of
    # the class table is looked up either way), so the bits agree.
    np.testing.assert_array_equal(np.asarray(model(x, t)), outs[k])
    np.testing.assert_array_equal(np.asarray(model(x, t, None)), outs[k])


def test_unconditional_model_ignores_missing_cond():
    model = perturb_output_layer(make_mlp(num_classes=0))
    assert model.class_embed is None
    x, t = inputs()
    y = np.asarray(model(x, t))
    assert np.abs(y).max() > 1e-3


def test_skip_path_is_gain_times_x():
    # With the output layer at zero and the skip gain's kernel at zero, the network is x * bias.
    model = make_mlp(num_classes=2)
    gain = jnp.asarray([0.5, -2.0], jnp.float32)
    model.skip_gain.bias[...] = gain
    x, t = inputs()
    np.testing.assert_array_equal(np.asarray(model(x, t)), np.asarray(x) * np.asarray(gain))


def test_time_changes_output():
    model = perturb_output_layer(make_mlp())
    x, _ = inputs()
    y0 = np.asarray(model(x, jnp.full((B,), 0.2)))
    y1 = np.asarray(model(x, jnp.full((B,), 0.7)))
    assert np.abs(y0 - y1).max() > 1e-4


# --------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_closed_form():
    dim, half = 12, 6
    t = np.concatenate([[0.0, 1.0, 0.5], np.random.default_rng(0).uniform(size=13)])
    emb = np.asarray(SinusoidalEmbedding(dim)(jnp.asarray(t)))
    w = 10_000.0 ** (-np.arange(half) / half)
    args = 1000.0 * t[:, None] * w[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    assert emb.shape == (t.size, dim)
    assert emb.dtype == np.float32
    # The embedding runs in float32: arguments up to 1000 carry an absolute error of a few
    # float32 ulps of 1000 (~6e-5 each), which bounds the error of sin and cos.
    np.testing.assert_allclose(emb, expected, rtol=0, atol=3e-4)
    np.testing.assert_array_equal(emb[0], np.r_[np.zeros(half), np.ones(half)])


def test_sinusoidal_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="even"):
        SinusoidalEmbedding(7)


def test_fourier_embedding_closed_form():
    emb_mod = FourierEmbedding(10, rngs=nnx.Rngs(3))
    w = np.asarray(emb_mod.freqs[...], np.float64)
    assert w.shape == (5,)
    t = np.random.default_rng(1).uniform(size=9)
    args = 2.0 * math.pi * t[:, None] * w[None, :]
    expected = np.concatenate([np.sin(args), np.cos(args)], axis=-1)
    # float32 arguments of size up to 2 pi * |w| (|w| ~ 16 * 3): absolute error ~1e-5.
    np.testing.assert_allclose(np.asarray(emb_mod(jnp.asarray(t))), expected, rtol=0, atol=1e-4)


def test_fourier_frequencies_get_exactly_zero_gradient():
    model = perturb_output_layer(make_mlp(embedding="fourier"))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x, t = inputs()

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x, t) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    g_freqs = np.asarray(grads["time_embed"]["freqs"][...])
    assert g_freqs.shape == (E // 2,)
    np.testing.assert_array_equal(g_freqs, 0.0)
    # ... while the layer right after the embedding does receive a gradient.
    assert np.abs(np.asarray(grads["time_fc1"]["kernel"][...])).max() > 0


# --------------------------------------------------------------------------- adapter


@pytest.mark.parametrize("num_classes", [0, 3])
def test_as_model_fn_equals_module_call(num_classes):
    model = perturb_output_layer(make_mlp(num_classes=num_classes))
    fn = as_model_fn(model)
    assert isinstance(fn, ModelFn)
    x, t = inputs()
    # Exact: both calls are eager and run the module's primitives one by one on the same arrays.
    np.testing.assert_array_equal(np.asarray(fn(x, t)), np.asarray(model(x, t)))
    if num_classes:
        c = jnp.arange(B) % (num_classes + 1)
        np.testing.assert_array_equal(np.asarray(fn(x, t, c)), np.asarray(model(x, t, c)))


def test_as_model_fn_is_a_snapshot():
    model = perturb_output_layer(make_mlp())
    x, t = inputs()
    fn = as_model_fn(model)
    before = np.asarray(fn(x, t))
    model.out.kernel[...] = jnp.zeros_like(model.out.kernel[...])  # change the module afterwards
    model.out.bias[...] = jnp.zeros_like(model.out.bias[...])
    np.testing.assert_array_equal(np.asarray(model(x, t)), np.zeros((B, D), np.float32))
    np.testing.assert_array_equal(np.asarray(fn(x, t)), before)


def test_jit_over_model_fn_does_not_retrace_for_new_weights():
    traces = []

    @jax.jit
    def apply(model_fn, x, t):
        traces.append(1)
        return model_fn(x, t)

    x, t = inputs()
    fn_a = as_model_fn(perturb_output_layer(make_mlp(seed=0), seed=1))
    fn_b = as_model_fn(perturb_output_layer(make_mlp(seed=5), seed=6))
    fn_c = jax.tree.map(lambda a: 2 * a, fn_a)
    ya, yb, yc = (np.asarray(apply(f, x, t)) for f in (fn_a, fn_b, fn_c))
    assert len(traces) == 1
    # The weights are arguments, not constants baked into the program. jit vs eager float32
    # through a 2-block MLP with a Fourier time embedding: the two programs fuse and reduce
    # differently, and an entry's round-off is set by the output's scale, not by the entry
    # (2.9e-6 seen on an entry of 0.17 where max|y| = 22). Each run is within 4e-7 * max|y| of
    # float64, 2.4e-6 * max|y| for fn_c (doubled frequencies: sin arguments up to ~480, whose
    # float32 ulp is 3e-5), so the runs differ by at most ~5e-6 * max|y|.
    for y, fn in ((ya, fn_a), (yb, fn_b), (yc, fn_c)):
        eager = np.asarray(fn(x, t))
        np.testing.assert_allclose(y, eager, rtol=1e-5, atol=2e-5 * np.abs(eager).max())
    assert np.abs(ya - yb).max() > 1e-3 and np.abs(ya - yc).max() > 1e-3
