"""Tests for the FID Inception-v3 (genflow.networks._inception).

No real weights are available offline, so a file of random values under every expected key is
written, loaded and compared leaf by leaf. The building blocks (pools, convolution layout,
resize) are checked numerically against direct numpy computations; the full 299x299 forward
pass is compiled exactly once, for the output shape.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genflow.metrics import INCEPTION_FID_NAME, FeatureExtractor, frechet_label
from genflow.networks import (
    FIDInceptionV3,
    InceptionFeatureExtractor,
    inception_state_dict_shapes,
    load_inception_weights,
    resize_for_inception,
)
from genflow.networks._inception import (
    _PLACEHOLDER,
    _ConvBN,
    _structure,
    avg_pool_exclude_pad,
    max_pool,
)

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}


def _expected_keys():
    """PyTorch key -> (nnx path, nnx shape), from the model's own flat parameter structure
    (``nnx.to_flat_state`` of the module, values abstract)."""
    out = {}
    for path, var in _structure()[1]:
        *mods, leaf = (str(p) for p in path)
        out[".".join([*mods, _LEAF[leaf]])] = (path, tuple(var.get_value().shape))
    return out


def _torch_shape(shape):
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random values for every key, in PyTorch layout, plus entries the loader must ignore."""
    rng = np.random.default_rng(0)
    arrays = {}
    for key, (_, shape) in _expected_keys().items():
        shape = _torch_shape(shape)
        if key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif key.endswith("running_var") or key.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        arrays[key] = value.astype(np.float32)
    extra = {
        "fc.weight": np.zeros((1008, 2048), np.float32),
        "fc.bias": np.zeros((1008,), np.float32),
        "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.int64),
    }
    path = tmp_path_factory.mktemp("inception") / "fid_inception.npz"
    np.savez(path, **arrays, **extra)
    return path, arrays


def test_state_dict_names_and_sizes():
    shapes = inception_state_dict_shapes()
    assert set(shapes) == set(_expected_keys())
    # 94 conv + batch-norm layers, 5 entries each.
    assert len(shapes) == 94 * 5
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert shapes["Mixed_6e.branch7x7dbl_2.conv.weight"] == (192, 192, 7, 1)
    assert shapes["Mixed_7a.branch3x3_2.conv.weight"] == (320, 192, 3, 3)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
    # Trainable parameters (conv weights, bn weight and bias) of torchvision's Inception-v3
    # without the auxiliary head and without the final classifier: 21,785,568.
    trainable = sum(
        math.prod(s) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var"))
    )
    assert trainable == 21_785_568


def test_every_parameter_is_restored_and_forward_shape(weights):
    path, arrays = weights
    model = load_inception_weights(path)
    restored = 0
    for p, var in nnx.to_flat_state(nnx.state(model)):
        *mods, leaf = (str(x) for x in p)
        key = ".".join([*mods, _LEAF[leaf]])
        want = arrays[key]
        if want.ndim == 4:
            want = want.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        got = np.asarray(var.get_value())
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=key)
        restored += 1
    assert restored == len(arrays) == 470
    assert isinstance(model, FIDInceptionV3)

    # The one full forward pass of this file: a grey 8x8 image, resized to 299x299 inside.
    ext = InceptionFeatureExtractor(model)
    assert isinstance(ext, FeatureExtractor)
    assert ext.name == INCEPTION_FID_NAME and frechet_label(ext) == "FID"
    image = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8, 1)
    feats = np.asarray(ext(image))
    assert feats.shape == (1, 2048)
    # Means of ReLU outputs: finite, non-negative, not all zero.
    assert np.all(np.isfinite(feats)) and feats.min() >= 0 and feats.max() > 0
    with pytest.raises(TypeError, match="127.5"):
        ext(np.zeros((1, 8, 8, 1), np.uint8))


def test_missing_misshaped_and_unknown_keys_are_named(weights, tmp_path):
    path, arrays = weights
    key = "Mixed_6c.branch7x7dbl_3.bn.running_mean"
    missing = dict(arrays)
    del missing[key]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=f"no entry '{key}'"):
        load_inception_weights(tmp_path / "missing.npz")

    key = "Mixed_7b.branch3x3_2a.conv.weight"
    wrong = dict(missing)  # reuse the arrays; only the first problem is reported
    wrong["Mixed_6c.branch7x7dbl_3.bn.running_mean"] = arrays[
        "Mixed_6c.branch7x7dbl_3.bn.running_mean"
    ]
    wrong[key] = np.zeros((384, 384, 3, 1), np.float32)  # should be (384, 384, 1, 3)
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match=rf"'{key}'.*\(384, 384, 3, 1\).*\(384, 384, 1, 3\)"):
        load_inception_weights(tmp_path / "wrong.npz")

    np.savez(tmp_path / "unknown.npz", **arrays, **{"Mixed_8a.conv.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="Mixed_8a.conv.weight"):
        load_inception_weights(tmp_path / "unknown.npz")
    with pytest.raises(FileNotFoundError, match="convert_fid_inception"):
        load_inception_weights(tmp_path / "absent.npz")


def test_conv_layout_matches_cross_correlation_in_pytorch_layout():
    # out[y, x, o] = sum_{i, a, b} W[o, i, a, b] in[y + a - ph, x + b - pw, i], W in (O, I, H, W).
    rng = np.random.default_rng(1)
    token = _PLACEHOLDER.set(True)  # numpy placeholders: no random initialisation to compile
    try:
        layer = _ConvBN(2, 3, (1, 3), padding=(0, 1), stride=1, rngs=nnx.Rngs(0))
    finally:
        _PLACEHOLDER.reset(token)
    w = rng.standard_normal((3, 2, 1, 3)).astype(np.float32)
    layer.conv.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0))
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.1, -0.2, 0.3])
    mean, var = np.array([0.2, 0.0, -0.1]), np.array([1.5, 0.5, 2.0])
    layer.bn.scale[...] = jnp.asarray(gamma, jnp.float32)
    layer.bn.bias[...] = jnp.asarray(beta, jnp.float32)
    layer.bn.mean[...] = jnp.asarray(mean, jnp.float32)
    layer.bn.var[...] = jnp.asarray(var, jnp.float32)
    x = rng.standard_normal((1, 4, 5, 2)).astype(np.float32)
    xp = np.pad(x[0], ((0, 0), (1, 1), (0, 0)))
    ref = np.zeros((4, 5, 3))
    for o in range(3):
        for yy in range(4):
            for xx in range(5):
                ref[yy, xx, o] = np.sum(w[o, :, 0, :].T * xp[yy, xx : xx + 3, :])
    ref = np.maximum((ref - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0.0)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x)))[0], ref, rtol=1e-5, atol=1e-5)


def test_pools_against_direct_computation():
    x = np.random.default_rng(2).standard_normal((1, 5, 4, 2))
    avg = np.asarray(avg_pool_exclude_pad(jnp.asarray(x)))
    mx = np.asarray(max_pool(jnp.asarray(x), stride=1, padding=1))
    for i in range(5):
        for j in range(4):
            win = x[0, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]  # in-image part only
            np.testing.assert_allclose(avg[0, i, j], win.mean(axis=(0, 1)), rtol=1e-12)
            np.testing.assert_allclose(mx[0, i, j], win.max(axis=(0, 1)), rtol=1e-12)
    strided = np.asarray(max_pool(jnp.asarray(x), stride=2))  # 3x3, stride 2, no padding
    assert strided.shape == (1, 2, 1, 2)
    np.testing.assert_allclose(strided[0, 1, 0], x[0, 2:5, 0:3].max(axis=(0, 1)))


def _bilinear_half_pixel(img, size):
    """Bilinear resize on pixel centres, 2 taps, coordinates clamped at the border (the rule of
    ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``)."""

    def taps(n_in):
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    lo, hi, f = taps(img.shape[0])
    rows = img[lo] * (1 - f)[:, None] + img[hi] * f[:, None]
    lo, hi, f = taps(img.shape[1])
    return rows[:, lo] * (1 - f)[None, :] + rows[:, hi] * f[None, :]


@pytest.mark.parametrize("side", [8, 600])
def test_resize_is_half_pixel_bilinear_without_antialiasing(side):
    img = np.random.default_rng(3).uniform(-1, 1, (side, side))
    got = np.asarray(resize_for_inception(jnp.asarray(img[None, :, :, None])))
    assert got.shape == (1, 299, 299, 3)
    np.testing.assert_array_equal(got[..., 0], got[..., 2])  # grey repeated over channels
    np.testing.assert_allclose(got[0, :, :, 1], _bilinear_half_pixel(img, 299), atol=1e-6)
    with pytest.raises(ValueError, match="c = 1 or 3"):
        resize_for_inception(jnp.zeros((1, 8, 8, 2)))


def test_feature_network_name_is_shared_with_metrics():
    assert InceptionFeatureExtractor.name == INCEPTION_FID_NAME
    assert jax.eval_shape(resize_for_inception, jnp.zeros((2, 32, 32, 3))).shape == (
        2, 299, 299, 3,
    )


def test_convert_script_with_a_stand_in_for_torch(weights, tmp_path, monkeypatch):
    # The script needs PyTorch only for torch.load; a stand-in returning tensors-like objects
    # exercises the rest (filtering, validation against the model's names, atomic write).
    import importlib.util
    import pathlib
    import sys
    import types

    _, arrays = weights

    class _Tensor:
        def __init__(self, value):
            self.value = value

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.value

    state = {k: _Tensor(v) for k, v in arrays.items()}
    state["fc.weight"] = _Tensor(np.zeros((3, 2048), np.float32))
    state["Mixed_5b.branch1x1.bn.num_batches_tracked"] = _Tensor(np.zeros((), np.int64))
    fake = types.ModuleType("torch")
    fake.load = lambda *args, **kwargs: state
    monkeypatch.setitem(sys.modules, "torch", fake)

    script = pathlib.Path(__file__).parents[2] / "scripts" / "convert_fid_inception.py"
    spec = importlib.util.spec_from_file_location("convert_fid_inception", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    out = tmp_path / "converted.npz"
    assert module.main(["weights.pth", str(out)]) == 0
    with np.load(out) as data:
        assert set(data.files) == set(arrays)
        key = "Mixed_6e.branch7x7dbl_4.conv.weight"
        np.testing.assert_array_equal(data[key], arrays[key])
    assert [p.name for p in tmp_path.iterdir()] == ["converted.npz"]  # no temporary left

    del state["Mixed_5d.branch_pool.bn.bias"]
    with pytest.raises(ValueError, match="Mixed_5d.branch_pool.bn.bias"):
        module.convert(pathlib.Path("weights.pth"), tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
