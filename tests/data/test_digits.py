"""Tests for genflow.data._digits: scikit-learn's digits as an offline TFDS data set."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from genflow.data import _digits
from genflow.data._digits import DIGITS_DATASETS, build_digits, digits_arrays


@pytest.fixture(scope="module")
def sklearn_digits():
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def _round_half_up(values):
    return np.floor(np.asarray(values, dtype=np.float64) * 255.0 / 16.0 + 0.5)


def test_split_sizes_labels_and_shapes():
    for name, shape in (("digits", (8, 8, 1)), ("digits16", (16, 16, 1))):
        for split, n in (("train", 1500), ("test", 297)):
            images, labels = digits_arrays(name, split)
            assert images.shape == (n, *shape) and images.dtype == np.uint8
            assert labels.shape == (n,) and set(labels.tolist()) == set(range(10))


def test_splits_partition_sklearn_digits_with_documented_scaling(sklearn_digits):
    values, targets = sklearn_digits
    expected = collections.Counter(
        (img.astype(np.uint8).tobytes(), int(t)) for img, t in zip(_round_half_up(values), targets)
    )
    got = collections.Counter()
    for split in ("train", "test"):
        images, labels = digits_arrays("digits", split)
        got.update((img[..., 0].tobytes(), int(t)) for img, t in zip(images, labels))
    assert got == expected
    # The documented table: 0 -> 0, 8 -> 128 (half rounds up), 16 -> 255.
    np.testing.assert_array_equal(_round_half_up([0, 8, 16]), [0, 128, 255])
    train, _ = digits_arrays("digits", "train")
    assert {0, 128, 255} <= set(np.unique(train).tolist())


def test_split_is_stratified(sklearn_digits):
    _, targets = sklearn_digits
    per_class = np.bincount(targets, minlength=10)
    _, test_labels = digits_arrays("digits", "test")
    test_counts = np.bincount(test_labels, minlength=10)
    assert test_counts.sum() == 297
    assert np.all(np.abs(test_counts - per_class * 297 / len(targets)) < 1)


def test_split_is_fixed():
    # The split must never change silently: classifiers trained on "train" are scored on "test".
    _, test_labels = digits_arrays("digits", "test")
    images, _ = digits_arrays("digits", "test")
    assert test_labels[:12].tolist() == _FIRST_TEST_LABELS
    assert int(images.astype(np.int64).sum()) == _TEST_PIXEL_SUM
    again, _ = digits_arrays("digits", "test")
    np.testing.assert_array_equal(images, again)


def test_digits16_is_bilinear_upsampling(sklearn_digits):
    images8, _ = digits_arrays("digits", "test")
    images16, _ = digits_arrays("digits16", "test")
    values, _ = sklearn_digits
    # Recover the 0..16 values of the test images by inverting the (injective) 8x8 scaling.
    table = _round_half_up(np.arange(17))
    v = np.searchsorted(table, images8[..., 0]).astype(np.float32)
    reference = jax.image.resize(jnp.asarray(v), (v.shape[0], 16, 16), method="bilinear")
    reference = _round_half_up(np.asarray(reference))[..., None]
    diff = np.abs(images16.astype(np.int64) - reference)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float32 ties may round apart


def test_upsampling_matches_jax_exactly_in_float():
    x = np.random.default_rng(0).random((3, 8, 8)) * 16
    ours = _digits._upsample2_bilinear(x)
    ref = np.asarray(jax.image.resize(jnp.asarray(x, jnp.float32), (3, 16, 16), "bilinear"))
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    constant = _digits._upsample2_bilinear(np.full((1, 8, 8), 5.0))
    np.testing.assert_array_equal(constant, np.full((1, 16, 16), 5.0))


@pytest.mark.parametrize("name", DIGITS_DATASETS)
def test_built_data_set_reads_back_through_tfds(tmp_path, name):
    path = build_digits(name, tmp_path)
    assert path == tmp_path / name / "1.0.0"
    for split in ("train", "test"):
        source = tfds.data_source(name, split=split, data_dir=tmp_path)
        images, labels = digits_arrays(name, split)
        assert len(source) == len(labels)
        # Every test image; a spread of train images (reading all 1500 is slow).
        rows = range(len(source)) if split == "test" else range(0, len(source), 7)
        got = np.stack([source[i]["image"] for i in rows])
        np.testing.assert_array_equal(got, images[list(rows)])
        np.testing.assert_array_equal([source[i]["label"] for i in rows], labels[list(rows)])
    builder = tfds.builder_from_directory(str(path))
    assert builder.info.features["image"].shape == images.shape[1:]
    assert builder.info.features["label"].num_classes == 10
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
        "train": 1500,
        "test": 297,
    }


def test_build_is_idempotent(tmp_path):
    path = build_digits("digits", tmp_path)
    stamp = (path / "dataset_info.json").stat().st_mtime_ns
    assert build_digits("digits", tmp_path) == path
    assert (path / "dataset_info.json").stat().st_mtime_ns == stamp


def test_interrupted_build_leaves_nothing_that_looks_prepared(tmp_path, monkeypatch):
    calls = []

    def failing_png(image):
        calls.append(1)
        if len(calls) > 100:
            raise RuntimeError("simulated crash")
        return real_png(image)

    real_png = _digits._png
    monkeypatch.setattr(_digits, "_png", failing_png)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_digits("digits", tmp_path)
    assert not (tmp_path / "digits" / "1.0.0").exists()
    with pytest.raises(ValueError):  # tfds finds no data set there
        tfds.data_source("digits", split="train", data_dir=tmp_path, download=False)
    monkeypatch.setattr(_digits, "_png", real_png)
    build_digits("digits", tmp_path)  # a later build starts over and completes
    assert len(tfds.data_source("digits", split="test", data_dir=tmp_path)) == 297


def test_unknown_names_and_splits_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="digits16"):
        digits_arrays("digits32", "train")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        digits_arrays("digits", "validation")
    with pytest.raises(ValueError):
        build_digits("mnist", tmp_path)


_FIRST_TEST_LABELS = [4, 8, 0, 7, 5, 0, 8, 4, 0, 7, 6, 0]
_TEST_PIXEL_SUM = 1486691
