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


# ---------------------------------------------------------------------------------------------
# Exact densities and supports
# ---------------------------------------------------------------------------------------------

from genflow.data import (  # noqa: E402
    EIGHT_GAUSSIANS_SUPPORT_STDS,
    TOY_DENSITIES,
    in_support,
    toy_log_density,
    toy_support_mass,
)

EIGHT_SIGMA = math.sqrt(2) / 4
EIGHT_MEANS = 2 * math.sqrt(2) * np.stack(
    [np.cos(np.arange(8) * math.pi / 4), np.sin(np.arange(8) * math.pi / 4)], axis=-1
)


def _midpoint_grid(lo, hi, step):
    centres = np.arange(lo + step / 2, hi, step)
    gx, gy = np.meshgrid(centres, centres, indexing="ij")
    return np.stack([gx.ravel(), gy.ravel()], axis=-1)


def test_density_names_and_errors():
    assert TOY_DENSITIES == ("checkerboard", "8gaussians")
    for name in ("moons", "swissroll", "pinwheel"):
        with pytest.raises(ValueError, match="closed-form"):
            toy_log_density(name, np.zeros((1, 2)))
        with pytest.raises(ValueError, match="closed-form"):
            in_support(name, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="checkerboard"):
        toy_log_density("circles", np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        toy_log_density("checkerboard", np.zeros(2))


@pytest.mark.parametrize("name", TOY_DENSITIES)
def test_log_density_integrates_to_one(name):
    # Midpoint rule on [-6, 6]^2 with step 0.02. Checkerboard: the grid is aligned with the
    # squares, so the rule is exact. 8 Gaussians: the rule's error for a Gaussian of std 0.35
    # sampled at 0.02 is ~exp(-2 pi^2 sigma^2 / step^2), far below 1e-12, and the mass outside
    # the box (>= 8.9 std from every mean) below 1e-17; the tolerance 1e-9 is for round-off.
    step = 0.02
    x = _midpoint_grid(-6.0, 6.0, step)
    log_p = toy_log_density(name, x)
    assert log_p.shape == (x.shape[0],) and log_p.dtype == np.float64
    np.testing.assert_allclose(np.exp(log_p).sum() * step**2, 1.0, atol=1e-9)


def test_log_density_values():
    x = np.array([[-1.5, -1.5], [-0.5, -1.5], [1.5, 1.5], [3.0, 0.0]])
    np.testing.assert_array_equal(
        toy_log_density("checkerboard", x), [-math.log(8), -np.inf, -math.log(8), -np.inf]
    )
    # At mu_0 = (2 sqrt 2, 0), by hand: (1/8) sum_k N(mu_0; mu_k, sigma^2 I).
    sq = ((EIGHT_MEANS - EIGHT_MEANS[0]) ** 2).sum(-1)
    mixture = np.exp(-sq / (2 * EIGHT_SIGMA**2)).sum() / (8 * 2 * math.pi * EIGHT_SIGMA**2)
    got = toy_log_density("8gaussians", EIGHT_MEANS[:1])
    np.testing.assert_allclose(got, [np.log(mixture)], rtol=1e-13)


@pytest.mark.parametrize(
    ("name", "lo", "hi"), [("checkerboard", -2.0, 2.0), ("8gaussians", -4.0, 4.0)]
)
def test_log_density_matches_the_samplers_histogram(name, lo, hi):
    # 16 x 16 bins; the exact mass of each bin by a 20 x 20 midpoint rule on exp(log p)
    # (exact for the checkerboard, relative error < 1e-3 for the Gaussians).
    num, bins, sub = 400_000, 16, 20
    width = (hi - lo) / bins
    x = sample_toy(name, num, seed=11).astype(np.float64)
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=bins, range=[[lo, hi], [lo, hi]])[0]
    grid = _midpoint_grid(0.0, width, width / sub)  # (sub^2, 2) offsets inside one bin
    index = np.meshgrid(np.arange(bins), np.arange(bins), indexing="ij")
    corners = lo + width * np.stack(index, axis=-1)
    pts = corners.reshape(-1, 1, 2) + grid[None]
    mass = np.exp(toy_log_density(name, pts.reshape(-1, 2))).reshape(bins * bins, -1).mean(1)
    expected = num * mass.reshape(bins, bins) * width**2
    used = expected > 5
    z = (counts - expected)[used] / np.sqrt(expected[used])
    dof = used.sum()
    # Pearson chi^2 within 5 standard deviations (sqrt(2 dof)) of dof; no bin beyond 5 sigma.
    assert abs((z**2).sum() - dof) < 5 * math.sqrt(2 * dof)
    assert np.abs(z).max() < 5
    # Bins of zero mass are empty.
    assert counts[expected == 0].sum() == 0


def test_in_support_checkerboard_edges_and_real_data():
    pts = np.array(
        [[-2.0, -2.0], [-1.0, -1.5], [-1.0, -1.0], [2.0, 2.0], [-1.5, -0.5], [2.01, 0.5],
         [-0.5, -2.0], [np.nan, 0.5]]
    )
    np.testing.assert_array_equal(
        in_support("checkerboard", pts), [True, True, True, True, False, False, False, False]
    )
    x = sample_toy("checkerboard", 100_000, seed=12)  # float32: rounding may touch an edge
    assert in_support("checkerboard", x).all()
    grid = _midpoint_grid(-3.0, 3.0, 0.05)
    np.testing.assert_array_equal(
        in_support("checkerboard", grid), np.isfinite(toy_log_density("checkerboard", grid))
    )
    assert toy_support_mass("checkerboard") == 1.0


def test_in_support_eight_gaussians_radius_and_mass():
    r = EIGHT_GAUSSIANS_SUPPORT_STDS * EIGHT_SIGMA
    assert EIGHT_GAUSSIANS_SUPPORT_STDS == 3.0
    direction = np.array([math.cos(0.3), math.sin(0.3)])
    pts = np.stack([EIGHT_MEANS[2] + 0.999 * r * direction, EIGHT_MEANS[5] + 1.001 * r * direction,
                    np.zeros(2)])
    np.testing.assert_array_equal(in_support("8gaussians", pts), [True, False, False])
    # Own disk: 1 - exp(-9/2); the 7 other disks add ~1.2e-3 (Rice integrals).
    mass = toy_support_mass("8gaussians")
    own = 1 - math.exp(-4.5)
    assert own + 1e-3 < mass < own + 1.5e-3
    # Monte Carlo: binomial std sqrt(0.0099 * 0.99 / 6e5) ~ 1.3e-4 (tolerance ~3.9 std); the
    # neighbours' share, 1.2e-3, is ~9 std.
    frac = in_support("8gaussians", sample_toy("8gaussians", 600_000, seed=13)).mean()
    assert abs(frac - mass) < 5e-4
