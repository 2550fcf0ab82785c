"""Tests for the 2-D toy data sets (genflow.data._toy)."""

import math
import subprocess
import sys

import numpy as np
import pytest

from genflow.data import TOY_DATASETS, ToyBatches, sample_toy


def test_names():
    assert TOY_DATASETS == ("checkerboard", "8gaussians", "moons", "swissroll", "pinwheel")


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_shape_dtype_and_determinism(name):
    x = sample_toy(name, 257, seed=3)
    assert x.shape == (257, 2) and x.dtype == np.float32
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, sample_toy(name, 257, seed=3))
    np.testing.assert_array_equal(x, sample_toy(name, 257, seed=np.random.default_rng(3)))
    np.testing.assert_array_equal(
        sample_toy(name, 64, seed=[3, 5]), sample_toy(name, 64, seed=(3, 5))
    )
    assert not np.array_equal(x, sample_toy(name, 257, seed=4))
    assert not np.array_equal(sample_toy(name, 64, seed=[3, 5]), sample_toy(name, 64, seed=[3, 6]))
    assert sample_toy(name, 0, seed=0).shape == (0, 2)


def test_generator_seed_is_advanced():
    rng = np.random.default_rng(0)
    first = sample_toy("moons", 32, seed=rng)
    second = sample_toy("moons", 32, seed=rng)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_roughly_standardized(name):
    x = sample_toy(name, 20_000, seed=0).astype(np.float64)
    assert np.all(np.abs(x.mean(axis=0)) < 0.08)
    assert np.all((x.std(axis=0) > 0.9) & (x.std(axis=0) < 2.1))
    assert np.mean(np.abs(x) > 4.0) < 1e-3
    assert np.abs(x).max() < 6.0


def test_checkerboard_lies_on_dark_squares():
    x = sample_toy("checkerboard", 8000, seed=1).astype(np.float64)
    assert np.all((x >= -2.0) & (x <= 2.0))
    col, row = np.floor(x[:, 0] + 2.0), np.floor(x[:, 1] + 2.0)
    assert np.all((col + row) % 2 == 0)
    # Each of the 8 dark squares holds about 1/8 of the points (binomial std ~ 0.0037).
    counts = np.unique(col * 4 + row, return_counts=True)[1]
    assert counts.shape == (8,)
    np.testing.assert_allclose(counts / x.shape[0], 1 / 8, atol=0.02)
    # Each coordinate is U[-2, 2]: std 2 / sqrt(3).
    np.testing.assert_allclose(x.std(axis=0), 2 / math.sqrt(3), rtol=0.03)


def test_eight_gaussians_cluster_at_their_means():
    x = sample_toy("8gaussians", 8000, seed=2).astype(np.float64)
    angles = np.arange(8) * math.pi / 4
    means = 2 * math.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    nearest = sq.argmin(axis=1)
    sq_min = sq.min(axis=1)
    # E |x - mu|^2 = 2 sigma^2 with sigma = sqrt(2) / 4.
    np.testing.assert_allclose(sq_min.mean(), 2 * (math.sqrt(2) / 4) ** 2, rtol=0.05)
    assert np.sqrt(sq_min.max()) < 5 * math.sqrt(2) / 4
    np.testing.assert_allclose(np.bincount(nearest, minlength=8) / 8000, 1 / 8, atol=0.02)


def _distance_to_upper_half_circle(q):
    """Distance from points q to the arc {(cos th, sin th): 0 <= th <= pi}."""
    to_circle = np.abs(np.linalg.norm(q, axis=1) - 1.0)
    to_ends = np.minimum(
        np.linalg.norm(q - np.array([1.0, 0.0]), axis=1),
        np.linalg.norm(q + np.array([1.0, 0.0]), axis=1),
    )
    return np.where(q[:, 1] >= 0.0, to_circle, to_ends)


def test_moons_lie_near_two_half_circles():
    x = sample_toy("moons", 6000, seed=3).astype(np.float64)
    p = x / 2 + np.array([0.5, 0.25])  # undo the centring and scaling
    d_upper = _distance_to_upper_half_circle(p)
    # The lower moon is the upper arc reflected through (1/2, 1/4).
    d_lower = _distance_to_upper_half_circle(np.array([1.0, 0.5]) - p)
    err = np.minimum(d_upper, d_lower)
    # Noise in these units is N(0, 0.05^2 I): median distance ~0.034.
    assert np.median(err) < 0.05 and err.max() < 0.3
    assert abs(np.mean(d_upper < d_lower) - 0.5) < 0.03
    # Full circles would put points far from both arcs.
    assert np.quantile(err, 0.99) < 0.15


def test_swissroll_lies_near_its_spiral():
    x = sample_toy("swissroll", 2000, seed=4).astype(np.float64)
    t = np.linspace(1.5 * math.pi, 4.5 * math.pi, 3000)
    curve = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1)
    curve = (curve - np.array([2.0, 2.0 / (3.0 * math.pi)])) / 5.0
    dist = np.sqrt(((x[:, None, :] - curve[None]) ** 2).sum(-1)).min(axis=1)
    # Distance to the curve of N(0, 0.1^2 I) noise: median ~0.067; uniform points would give ~0.3.
    assert np.median(dist) < 0.1
    assert np.quantile(dist, 0.99) < 0.35


def test_pinwheel_points_follow_the_arms():
    x = sample_toy("pinwheel", 5000, seed=5).astype(np.float64) / 2.0
    radius = np.linalg.norm(x, axis=1)
    angle = np.arctan2(x[:, 1], x[:, 0])
    base = np.arange(5) * 2 * math.pi / 5
    offset = angle[:, None] - base[None] - 0.25 * np.exp(radius)[:, None]
    wrapped = np.abs(np.angle(np.exp(1j * offset)))
    residual = wrapped.min(axis=1)
    arm = wrapped.argmin(axis=1)
    # Tangential noise 0.1 at radius ~1: median residual ~0.07 rad; uniform angles give ~0.31.
    assert np.median(residual) < 0.1
    np.testing.assert_allclose(np.median(radius), 1.0, atol=0.05)
    np.testing.assert_allclose(np.bincount(arm, minlength=5) / 5000, 0.2, atol=0.03)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="checkerboard"):
        sample_toy("circles", 10, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        sample_toy("moons", -1, seed=0)
    with pytest.raises(TypeError, match="integer"):
        sample_toy("moons", 10.0, seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        sample_toy("moons", 10, seed=-1)
    with pytest.raises(ValueError, match="8gaussians"):
        ToyBatches("circles", 8, 0)
    with pytest.raises(ValueError, match="batch_size"):
        ToyBatches("moons", 0, 0)
    with pytest.raises(ValueError, match="step"):
        ToyBatches("moons", 4, 0).batch(-1)


def test_toy_batches_match_sample_toy_and_stack():
    stream = ToyBatches("pinwheel", batch_size=16, seed=7)
    np.testing.assert_array_equal(stream.batch(3), sample_toy("pinwheel", 16, seed=[7, 3]))
    stacked = stream.batches(5, 4)
    assert stacked.shape == (4, 16, 2) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, np.stack([stream.batch(5 + i) for i in range(4)]))
    assert not np.array_equal(stacked[0], stacked[1])
    assert stream.batches(0, 0).shape == (0, 16, 2)
    with pytest.raises(AttributeError):
        stream.seed = 8  # frozen


def test_import_needs_numpy_only():
    code = (
        "import sys, genflow.data; "
        "bad = [m for m in ('jax', 'flax', 'optax', 'tensorflow') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
