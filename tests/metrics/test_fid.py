"""Tests for the Fréchet distance, feature statistics and KID (genflow.metrics._fid).

Closed forms for Gaussians are the reference; the general Fréchet case is checked against
``scipy.linalg.sqrtm``, an independent matrix square root.
"""

import math

import numpy as np
import pytest
import scipy.linalg

from genflow.metrics import (
    INCEPTION_FID_NAME,
    FeatureExtractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    frechet_label,
    kid,
)


def _spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _reference_fd(mu1, c1, mu2, c2):
    root = scipy.linalg.sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root).real)


def test_diagonal_case_matches_closed_form():
    # Commuting (diagonal) covariances: d^2 = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2.
    s1 = np.array([1.0, 2.0, 0.5, 3.0])
    s2 = np.array([2.0, 2.0, 1.5, 0.1])
    mu1 = np.array([0.0, 1.0, -1.0, 2.0])
    mu2 = np.array([1.0, 1.0, 1.0, 0.0])
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    got = frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert got == pytest.approx(exact, rel=1e-12)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([0.5], [[4.0]], [-1.0], [[9.0]]) == pytest.approx(2.25 + 1.0)


def test_general_case_matches_scipy_sqrtm_and_is_symmetric():
    rng = np.random.default_rng(0)
    for d in (3, 16, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        c1, c2 = _spd(rng, d), _spd(rng, d, scale=2.0)
        got = frechet_distance(mu1, c1, mu2, c2)
        np.testing.assert_allclose(got, _reference_fd(mu1, c1, mu2, c2), rtol=1e-9)
        np.testing.assert_allclose(got, frechet_distance(mu2, c2, mu1, c1), rtol=1e-9)
        assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-9 * np.trace(c1))


def test_singular_covariances_stay_real_and_accurate():
    # Rank-deficient covariances (fewer samples than dimensions): still matches the reference.
    rng = np.random.default_rng(1)
    d = 40
    f1, f2 = rng.standard_normal((10, d)), rng.standard_normal((12, d)) + 0.2
    mu1, c1 = feature_statistics(f1)
    mu2, c2 = feature_statistics(f2)
    assert np.linalg.matrix_rank(c1) < d
    got = frechet_distance(mu1, c1, mu2, c2)
    assert np.isfinite(got) and got > 0
    np.testing.assert_allclose(got, _reference_fd(mu1, c1, mu2, c2), rtol=1e-6)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0.0, abs=1e-8)


def test_feature_statistics_and_distance_from_features():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((500, 5)) @ rng.standard_normal((5, 5)) + 3.0
    mu, cov = feature_statistics(f)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False), rtol=1e-10)
    g = f + np.array([1.0, 0, 0, 0, 2.0])  # pure translation: d^2 = |shift|^2
    assert frechet_distance_from_features(f, g) == pytest.approx(5.0, rel=1e-8)
    with pytest.raises(ValueError, match="n >= 2"):
        feature_statistics(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="feature_statistics"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_kid_is_unbiased_for_equal_distributions_and_positive_for_shifted():
    rng = np.random.default_rng(3)
    d = 8
    means = []
    for _ in range(40):
        x, y = rng.standard_normal((200, d)), rng.standard_normal((200, d))
        means.append(kid(x, y, num_subsets=4, subset_size=100, seed=1)[0])
    means = np.asarray(means)
    se = means.std(ddof=1) / math.sqrt(len(means))
    assert abs(means.mean()) < 4 * se

    # Mean shift in 8-D: clearly positive.
    shift = np.full(d, 0.5)
    x, y = rng.standard_normal((600, d)), rng.standard_normal((600, d)) + shift
    mean, std = kid(x, y, num_subsets=20, subset_size=300)
    assert mean > 10 * std / math.sqrt(20) and mean > 10 * se


def test_kid_expectation_matches_one_dimensional_closed_form():
    # In 1-D, k(u, v) = (u v + 1)^3 = <phi(u), phi(v)> with phi(u) = (u^3, 3^.5 u^2, 3^.5 u, 1),
    # so MMD^2 = (E X^3 - E Y^3)^2 + 3 (E X^2 - E Y^2)^2 + 3 (E X - E Y)^2. For X ~ N(0, 1) and
    # Y ~ N(c, s^2): E Y = c, E Y^2 = c^2 + s^2, E Y^3 = c^3 + 3 c s^2.
    c, s = 0.4, 1.2
    exact = (c**3 + 3 * c * s**2) ** 2 + 3 * (c**2 + s**2 - 1) ** 2 + 3 * c**2
    rng = np.random.default_rng(6)
    est = [kid(rng.standard_normal((150, 1)), c + s * rng.standard_normal((150, 1)),
               num_subsets=1, subset_size=150, seed=i)[0] for i in range(200)]
    mean = np.mean(est)
    se = np.std(est, ddof=1) / math.sqrt(len(est))
    assert exact > 5 * se
    assert abs(mean - exact) < 4 * se


def test_kid_errors_and_determinism():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((50, 3)), rng.standard_normal((40, 3))
    assert kid(x, y, num_subsets=3, subset_size=20, seed=5) == kid(
        x, y, num_subsets=3, subset_size=20, seed=5
    )
    with pytest.raises(ValueError, match="subset_size"):
        kid(x, y, subset_size=41)
    with pytest.raises(ValueError, match="same d"):
        kid(x, np.zeros((40, 2)), subset_size=10)


class _MeanPixels:
    name = "mean-pixels"

    def __call__(self, images):
        return np.asarray(images).mean(axis=(1, 2))


def test_labels_and_batched_extraction():
    ext = _MeanPixels()
    assert isinstance(ext, FeatureExtractor)
    assert frechet_label(ext) == "FD_mean-pixels"
    assert frechet_label(INCEPTION_FID_NAME) == "FID"
    images = np.random.default_rng(5).uniform(-1, 1, (10, 4, 4, 2))
    feats = extract_features(ext, images, batch_size=3)
    np.testing.assert_allclose(feats, images.mean(axis=(1, 2)))
    np.testing.assert_allclose(extract_features(ext, [images[:4], images[4:]]), feats)
    with pytest.raises(ValueError, match="b, h, w, c|n, h, w, c"):
        extract_features(ext, images[0])


def test_metrics_import_neither_flax_nor_optax():
    # The metrics layer may use jax, numpy and diffrax only (and never loads data sets eagerly).
    import subprocess
    import sys

    code = (
        "import sys, genflow.metrics; "
        "print(sorted(m for m in ('flax', 'optax', 'orbax', 'tensorflow', 'sklearn') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
