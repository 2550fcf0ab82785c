"""Tests for the sharpness figures of toy samples (genflow.metrics._sharpness)."""

import math
import re

import numpy as np
import pytest

from genflow.data import sample_toy, toy_support_mass
from genflow.metrics import (
    coverage,
    format_sharpness,
    kde_bandwidth,
    kde_cv_bandwidth,
    kde_log_likelihood,
    sharpness_report,
    support_fraction,
)
from genflow.metrics import _sharpness

N = 4096


def _real(name, tag, num=N):
    return sample_toy(name, num, seed=[21, tag]).astype(np.float64)


def _blur(x, std, seed=0):
    return x + std * np.random.default_rng(seed).standard_normal(x.shape)


# ---------------------------------------------------------------------------------------------
# support_fraction
# ---------------------------------------------------------------------------------------------


def test_support_fraction_of_real_data():
    assert support_fraction(sample_toy("checkerboard", N, seed=1), "checkerboard") == 1.0
    # Binomial std at p ~ 0.990, n = 4096: ~0.0016; tolerance 5 std.
    frac = support_fraction(sample_toy("8gaussians", N, seed=1), "8gaussians")
    assert abs(frac - toy_support_mass("8gaussians")) < 0.008
    assert frac > 0.98
    assert support_fraction(np.full((4, 2), np.nan), "checkerboard") == 0.0


def test_blur_lowers_the_support_fraction():
    # Noise of std 0.5, half a square: ~45% of the points stay on dark squares (measured 0.44-0.48
    # over seeds) against exactly 1 for real data; binomial std at n = 4096 is < 0.008.
    x = _real("checkerboard", 1)
    assert support_fraction(_blur(x, 0.5), "checkerboard") < 0.6
    assert support_fraction(_blur(x, 0.1), "checkerboard") < 0.9  # measured 0.85 +- 0.005
    # 8 Gaussians blurred by one component std is the same mixture with std sqrt(2) sigma: its own
    # disk holds 1 - exp(-9/4) ~ 0.895 of each component, neighbours add ~0.015.
    y = _real("8gaussians", 1)
    frac = support_fraction(_blur(y, math.sqrt(2) / 4), "8gaussians")
    assert 1 - math.exp(-2.25) - 0.02 < frac < 0.935
    assert frac < support_fraction(y, "8gaussians") - 0.05


# ---------------------------------------------------------------------------------------------
# coverage
# ---------------------------------------------------------------------------------------------


def test_coverage_of_real_data_and_of_half_the_squares():
    assert coverage(_real("checkerboard", 2), "checkerboard") == 1.0
    assert coverage(_real("8gaussians", 2), "8gaussians") == 1.0
    # Only the 4 dark squares left of x = 0: they hold half the mass and get twice their share.
    x = _real("checkerboard", 3, num=3 * N)
    half = x[x[:, 0] < 0][:N]
    assert half.shape[0] == N
    assert coverage(half, "checkerboard") == pytest.approx(0.5, abs=1e-12)
    # 8 Gaussians with mode 3 dropped: 7 / 8.
    y = _real("8gaussians", 3, num=2 * N)
    angle = np.arctan2(y[:, 1], y[:, 0])
    far = np.abs(np.angle(np.exp(1j * (angle - 3 * math.pi / 4)))) > math.pi / 8
    assert coverage(y[far][:N], "8gaussians") == pytest.approx(7 / 8, abs=1e-12)


def test_coverage_subdivision_sees_collapse_inside_squares():
    # Points only in the bottom-left quarter of each dark square: every square is hit, but only
    # 8 of the 32 sub-squares.
    x = _real("checkerboard", 4)
    corner = np.floor(x + 2) - 2 + 0.5 * (x - np.floor(x + 2) + 2)
    assert coverage(corner, "checkerboard", subdivide=1) == 1.0
    assert coverage(corner, "checkerboard", subdivide=2) == pytest.approx(0.25, abs=1e-12)
    # Threshold: a uniform sample covers every cell at half its expected count, not at 3x.
    assert coverage(x, "checkerboard", threshold=3.0) == 0.0
    with pytest.raises(ValueError, match="subdivide"):
        coverage(x, "checkerboard", subdivide=0)
    with pytest.raises(ValueError, match="threshold"):
        coverage(x, "checkerboard", threshold=0.0)


# ---------------------------------------------------------------------------------------------
# KDE likelihood
# ---------------------------------------------------------------------------------------------


def test_kde_log_likelihood_closed_forms():
    # One kernel of width h = 2 at 0, evaluated at 1: log N(1; 0, 4).
    got = kde_log_likelihood([[0.0]], [[1.0]], 2.0)
    assert got == pytest.approx(-0.5 * math.log(8 * math.pi) - 1 / 8, rel=1e-14)
    # A non-finite sample keeps its weight 1/n but puts it nowhere: log(N(1; 0, 1) / 2).
    got = kde_log_likelihood([[0.0], [np.nan]], [[1.0]], 1.0)
    assert got == pytest.approx(-0.5 * math.log(2 * math.pi) - 0.5 - math.log(2), rel=1e-14)
    assert kde_log_likelihood([[np.inf]], [[1.0]], 1.0) == -math.inf
    # A full kernel covariance H equals whitening by hand.
    cov = np.array([[0.5, 0.2], [0.2, 0.3]])
    d = np.array([1.0, -0.5])
    expected = (
        -math.log(2 * math.pi) - 0.5 * math.log(np.linalg.det(cov))
        - 0.5 * d @ np.linalg.solve(cov, d)
    )
    assert kde_log_likelihood([[0.0, 0.0]], [d], cov) == pytest.approx(expected, rel=1e-13)


def test_kde_matches_scipy_and_chunking(monkeypatch):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    y = rng.standard_normal((300, 2))
    for rule in ("scott", "silverman"):
        kde = stats.gaussian_kde(x.T, bw_method=rule)
        np.testing.assert_allclose(kde_bandwidth(x, rule), kde.covariance, rtol=1e-12)
        want = kde.logpdf(y.T).mean()
        assert kde_log_likelihood(x, y, rule) == pytest.approx(want, rel=1e-12)
    z = rng.standard_normal((400, 10))  # the matmul path for d > 8
    want = stats.gaussian_kde(z[:200].T).logpdf(z[200:].T).mean()
    assert kde_log_likelihood(z[:200], z[200:]) == pytest.approx(want, rel=1e-12)
    # Blocks of a few rows give the same result as one block.
    whole = kde_log_likelihood(x, y, 0.3)
    monkeypatch.setattr(_sharpness, "_PAIR_BLOCK_ELEMENTS", 1700)
    assert kde_log_likelihood(x, y, 0.3) == pytest.approx(whole, rel=1e-13)


def test_kde_log_likelihood_of_gaussians_approaches_the_entropy():
    rng = np.random.default_rng(1)
    # 1-D N(0, 1), Scott's rule. Biases: smoothing, -log(1 + f^2)/2 + 1/2 - 1/(2(1 + f^2)) ~ -3e-4
    # with f^2 = n^{-2/5}; Jensen, -Var(p_hat)/(2 p^2) ~ -2e-3 (measured -0.6e-3 .. -3e-3).
    x, y = rng.standard_normal((N, 1)), rng.standard_normal((2 * N, 1))
    exact = np.mean(-0.5 * math.log(2 * math.pi) - 0.5 * y[:, 0] ** 2)
    got = kde_log_likelihood(x, y)
    assert abs(got - exact) < 0.01
    # E log p = -log(2 pi e) / 2; the mean over 8192 points has std 0.71 / 90 ~ 0.008.
    assert abs(got + 0.5 * math.log(2 * math.pi * math.e)) < 0.035
    # 2-D N(0, A A^T): smoothing bias ~ -2e-3 and Jensen bias ~ -1e-2 (measured -0.008 .. -0.015).
    a = np.array([[1.0, 0.0], [0.8, 1.5]])
    cov = a @ a.T
    x, y = rng.standard_normal((N, 2)) @ a.T, rng.standard_normal((2 * N, 2)) @ a.T
    quad = np.einsum("ij,ij->i", y, np.linalg.solve(cov, y.T).T)
    log_det = math.log(np.linalg.det(cov))
    exact = np.mean(-math.log(2 * math.pi) - 0.5 * log_det - 0.5 * quad)
    got = kde_log_likelihood(x, y)
    assert -0.03 < got - exact < 0.0
    assert abs(got - (-math.log(2 * math.pi) - 0.5 * log_det - 1.0)) < 0.05


def test_cv_bandwidth():
    rng = np.random.default_rng(2)
    # For a 1-D Gaussian the likelihood-optimal width is near Silverman's 1.06 n^{-1/5} ~ 0.20.
    h = kde_cv_bandwidth(rng.standard_normal((N, 1)), rng.standard_normal((N, 1)))
    assert 0.12 < h < 0.3
    # The grid follows the data's scale, so h* is equivariant under scaling.
    x, y = _real("checkerboard", 5), _real("checkerboard", 6)
    h = kde_cv_bandwidth(x, y)
    assert kde_cv_bandwidth(3 * x, 3 * y) == pytest.approx(3 * h, rel=1e-9)
    # Sharp edges want a far narrower kernel than Scott's rule (~0.29 here); measured ~0.047.
    assert 0.03 < h < 0.08 < 0.25 < math.sqrt(kde_bandwidth(x)[0, 0])


def test_blur_worsens_the_kde_likelihood():
    x, ref, floor = _real("checkerboard", 7), _real("checkerboard", 8), _real("checkerboard", 9)
    h = kde_cv_bandwidth(floor, ref)
    real = kde_log_likelihood(x, ref, h)
    # Two real sets differ by sampling noise only (std of the difference ~0.007 over seeds).
    assert abs(real - kde_log_likelihood(floor, ref, h)) < 0.035
    # Measured gaps at n = 4096: 0.04 (std 0.05), 0.12 (0.1), 0.29 (0.2), ~0.75 (0.5).
    assert kde_log_likelihood(_blur(x, 0.1), ref, h) < real - 0.07
    assert kde_log_likelihood(_blur(x, 0.5), ref, h) < real - 0.5


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def test_sharpness_report_and_format():
    x, ref, floor = _real("checkerboard", 10), _real("checkerboard", 11), _real("checkerboard", 12)
    blurry = _blur(x, 0.2)
    report = sharpness_report(blurry, "checkerboard", reference=ref, floor_reference=floor)
    assert set(report) == {"support_fraction", "coverage", "kde_nll"}
    h = kde_cv_bandwidth(floor, ref)
    assert report["support_fraction"] == (support_fraction(blurry, "checkerboard"), 1.0)
    assert report["coverage"][1] == coverage(floor, "checkerboard") == 1.0
    nll = (-kde_log_likelihood(blurry, ref, h), -kde_log_likelihood(floor, ref, h))
    assert report["kde_nll"] == nll
    assert report["support_fraction"][0] < 0.8  # measured 0.72
    assert report["kde_nll"][0] > report["kde_nll"][1] + 0.15  # measured gap 0.29
    line = format_sharpness(report)
    pattern = (r"in support \d\.\d{3} \(floor 1\.000\)   coverage \d\.\d{3} \(floor 1\.000\)   "
               r"KDE NLL \d\.\d{3} \(floor \d\.\d{3}\)")
    assert re.fullmatch(pattern, line), line
    with pytest.raises(ValueError, match="as many points"):
        sharpness_report(x[:100], "checkerboard", reference=ref, floor_reference=floor)
    with pytest.raises(ValueError, match="closed-form"):
        sharpness_report(x, "moons", reference=ref, floor_reference=floor)
