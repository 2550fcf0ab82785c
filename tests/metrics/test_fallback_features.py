"""Tests for the digits MLP feature network (genflow.metrics._fallback_features)."""

import os

import numpy as np
import pytest

import genflow.metrics._fallback_features as fallback
from genflow.data import digits_arrays
from genflow.metrics import (
    DigitsMLPFeatures,
    FeatureExtractor,
    digits_feature_extractor,
    frechet_distance_from_features,
    frechet_label,
)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    cache = tmp_path_factory.mktemp("features")
    return cache, digits_feature_extractor(cache, dataset="digits", seed=0)


def _unit(images):
    return images.astype(np.float32) / 127.5 - 1.0


def test_trained_classifier_generalises_and_has_documented_features(cached):
    _, ext = cached
    assert isinstance(ext, FeatureExtractor)
    assert ext.name == "digits-mlp-d64" and ext.feature_dim == 64
    assert frechet_label(ext) == "FD_digits-mlp-d64"
    images, labels = digits_arrays("digits", "test")
    assert ext.accuracy(images, labels) > 0.9
    feats = np.asarray(ext(_unit(images)))
    assert feats.shape == (len(images), 64) and feats.dtype == np.float32
    # Features are the tanh hidden layer: bounded, and not collapsed to a constant.
    assert np.all(np.abs(feats) <= 1.0) and feats.std(axis=0).mean() > 0.1
    with pytest.raises(ValueError, match=r"\(b, 8, 8, 1\)"):
        ext(np.zeros((2, 16, 16, 1), np.float32))


def test_frechet_distance_separates_real_digits_from_noise(cached):
    _, ext = cached
    images, _ = digits_arrays("digits", "train")
    half = len(images) // 2
    a = np.asarray(ext(_unit(images[:half])))
    b = np.asarray(ext(_unit(images[half:])))
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, images[:half].shape).astype(np.float32)
    c = np.asarray(ext(noise))
    real_real = frechet_distance_from_features(a, b)
    real_noise = frechet_distance_from_features(a, c)
    assert real_noise > 8 * real_real


def test_cache_is_reused_and_training_is_deterministic(cached, monkeypatch, tmp_path):
    cache, ext = cached
    files = [f for f in os.listdir(cache) if f.endswith(".npz")]
    assert files == ["digits-mlp-seed0-v1.npz"]
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]  # atomic write left nothing

    def no_training(*args, **kwargs):
        raise AssertionError("the cached weights should have been used")

    monkeypatch.setattr(fallback, "train_digits_mlp", no_training)
    again = digits_feature_extractor(cache, dataset="digits", seed=0)
    x = _unit(digits_arrays("digits", "test")[0][:32])
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(ext(x)))
    monkeypatch.undo()

    # Same seed, fresh training (same shapes and steps: no new compilation): bit-identical
    # to the cached weights.
    images, labels = digits_arrays("digits", "train")
    fresh = fallback.train_digits_mlp(images, labels, seed=0)
    assert len(fresh.params) == len(ext.params) == 3
    for (w1, b1), (w2, b2) in zip(fresh.params, ext.params):
        np.testing.assert_array_equal(np.asarray(w1), np.asarray(w2))
        np.testing.assert_array_equal(np.asarray(b1), np.asarray(b2))
    assert not np.array_equal(fallback._init(0, [64, 8])[0][0], fallback._init(1, [64, 8])[0][0])

    # Save / load round trip and a corrupt cache file.
    path = fresh.save(tmp_path / "w.npz")
    loaded = DigitsMLPFeatures.load(path)
    assert loaded.name == fresh.name and loaded.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(fresh(x)))
    bad = tmp_path / "bad.npz"
    np.savez(bad, nothing=np.zeros(1))
    with pytest.raises(ValueError, match="delete it"):
        DigitsMLPFeatures.load(bad)
