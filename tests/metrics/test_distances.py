"""Tests for sample-based distances (genflow.metrics._distances)."""

import math

import numpy as np
import pytest

from genflow.data import sample_toy
from genflow.metrics import sliced_wasserstein2, sliced_wasserstein2_floor


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def test_identical_clouds_are_at_zero_and_distance_is_symmetric():
    a, b = _normal(0, (300, 3)), _normal(1, (200, 3)) + 0.5
    assert sliced_wasserstein2(a, a) == 0.0
    d_ab = sliced_wasserstein2(a, b, seed=3)
    assert d_ab > 0.0
    assert d_ab == sliced_wasserstein2(b, a, seed=3)
    assert d_ab == sliced_wasserstein2(a, b, seed=3)  # deterministic per seed
    assert d_ab != sliced_wasserstein2(a, b, seed=4)


def test_one_dimensional_translation_is_exact():
    x = _normal(0, (500, 1))
    np.testing.assert_allclose(sliced_wasserstein2(x, x - 2.5), 2.5, rtol=1e-12)
    # Same empirical measure at a different size (each point repeated 3 times): distance 0.
    np.testing.assert_allclose(sliced_wasserstein2(x, np.repeat(x, 3, axis=0)), 0.0, atol=1e-12)
    np.testing.assert_allclose(
        sliced_wasserstein2(x, np.repeat(x, 3, axis=0) + 1.5), 1.5, rtol=1e-12
    )


def test_unequal_sizes_match_hand_computed_w2():
    # Quantile functions: a = 0 on [0, 1/2), 1 on [1/2, 1); b = 0, 1, 2 on thirds.
    # They differ by 1 on [1/3, 1/2) and [2/3, 1): W2^2 = 1/6 + 1/3 = 1/2.
    a = np.array([[1.0], [0.0]])
    b = np.array([[2.0], [0.0], [1.0]])
    np.testing.assert_allclose(sliced_wasserstein2(a, b), math.sqrt(0.5), rtol=1e-12)
    np.testing.assert_allclose(sliced_wasserstein2(b, a), math.sqrt(0.5), rtol=1e-12)


def test_two_dimensional_translation_matches_expectation_over_directions():
    # SW2^2(x, x + c) = mean_u (u . c)^2, whose expectation over uniform directions in 2-D is
    # |c|^2 / 2. With L directions, std of the mean of cos^2 is sqrt(1/8 / L): 0.55% at L = 4096.
    x = _normal(0, (400, 2))
    c = np.array([3.0, -4.0])
    got = sliced_wasserstein2(x, x + c, num_projections=4096, seed=1)
    np.testing.assert_allclose(got, 5.0 / math.sqrt(2.0), rtol=0.02)


def test_translation_in_higher_dimension():
    x = _normal(0, (100, 5))
    c = np.full(5, 2.0)  # |c| = 2 sqrt(5), |c| / sqrt(d) = 2.
    got = sliced_wasserstein2(x, x + c, num_projections=4096, seed=2)
    np.testing.assert_allclose(got, 2.0, rtol=0.03)


def test_gaussians_closed_form():
    # W2(N(m1, s1^2), N(m2, s2^2)) = sqrt((m1 - m2)^2 + (s1 - s2)^2) = sqrt(2) here. Estimating
    # it from 20000 + 15000 samples has std ~0.015, so 0.06 is a 4-sigma tolerance.
    a = 0.0 + 1.0 * _normal(0, (20_000, 1))
    b = 1.0 + 2.0 * _normal(1, (15_000, 1))
    np.testing.assert_allclose(sliced_wasserstein2(a, b), math.sqrt(2.0), atol=0.06)


def test_scaling_is_linear():
    a, b = _normal(0, (150, 2)), _normal(1, (120, 2)) * 1.5
    np.testing.assert_allclose(
        sliced_wasserstein2(3.0 * a, 3.0 * b), 3.0 * sliced_wasserstein2(a, b), rtol=1e-12
    )


def test_chunked_projections_agree(monkeypatch):
    import genflow.metrics._distances as distances

    a, b = _normal(0, (64, 2)), _normal(1, (40, 2)) + 1.0
    full = sliced_wasserstein2(a, b, num_projections=37)
    monkeypatch.setattr(distances, "_CHUNK_ELEMENTS", 300)  # chunks of 2-3 directions
    np.testing.assert_allclose(sliced_wasserstein2(a, b, num_projections=37), full, rtol=1e-12)


def test_floor_uses_two_independent_draws():
    seen = []

    def sample_fn(num, seed):
        seen.append(seed)
        return sample_toy("moons", num, seed=seed)

    floor = sliced_wasserstein2_floor(sample_fn, 500, seed=0)
    assert len(seen) == 2 and seen[0] != seen[1]
    expected = sliced_wasserstein2(sample_fn(500, seen[0]), sample_fn(500, seen[1]), seed=0)
    assert floor == expected > 0.0
    # A sampler that ignores its seed returns identical draws: floor 0.
    assert sliced_wasserstein2_floor(lambda n, s: sample_toy("moons", n, seed=0), 500) == 0.0


def test_floor_shrinks_with_sample_size_and_separates_distributions():
    def gaussian(num, seed):
        return np.random.default_rng(seed).standard_normal((num, 2))

    small = sliced_wasserstein2_floor(gaussian, 250, seed=0)
    large = sliced_wasserstein2_floor(gaussian, 16_000, seed=0)
    assert large < small / 2  # ~n^(-1/2): expected ratio ~8

    floor = sliced_wasserstein2_floor(lambda n, s: sample_toy("moons", n, seed=s), 2000)
    other = sliced_wasserstein2(
        sample_toy("moons", 2000, seed=1), sample_toy("swissroll", 2000, seed=2)
    )
    assert other > 5 * floor


def test_invalid_inputs():
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        sliced_wasserstein2(np.zeros(5), np.zeros((5, 1)))
    with pytest.raises(ValueError, match="same number of coordinates"):
        sliced_wasserstein2(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="at least one point"):
        sliced_wasserstein2(np.zeros((0, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein2(np.zeros((5, 2)), np.zeros((5, 2)), num_projections=0)
    with pytest.raises(TypeError, match="num_projections"):
        sliced_wasserstein2(np.zeros((5, 2)), np.zeros((5, 2)), num_projections=2.5)
    with pytest.raises(ValueError, match="num"):
        sliced_wasserstein2_floor(lambda n, s: np.zeros((n, 2)), 0)


def test_nan_propagates():
    a = _normal(0, (10, 2))
    b = a.copy()
    b[3, 0] = np.nan
    assert math.isnan(sliced_wasserstein2(a, b))
