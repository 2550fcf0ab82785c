"""Tests for MMD, energy distance and the mixture component report (genflow.metrics._distances).

References are closed forms for Gaussians, never the code under test.
"""

import math

import numpy as np
import pytest

import genflow.metrics._distances as distances
from genflow.metrics import energy_distance, mixture_component_report, mmd


def _rbf_mean(delta2: float, var_sum: float, h: float, d: int) -> float:
    """``E exp(-|X - Y|^2 / (2 h^2))`` for ``X - Y ~ N(delta, var_sum I_d)``, ``|delta|^2 = delta2``.

    Gaussian integral: ``(h^2 / (h^2 + v))^{d/2} exp(-delta2 / (2 (h^2 + v)))``.
    """
    s = h * h + var_sum
    return (h * h / s) ** (d / 2) * math.exp(-delta2 / (2 * s))


def _mmd2_closed_form(shift2: float, s1: float, s2: float, widths, d: int) -> float:
    out = 0.0
    for h in widths:
        out += (
            _rbf_mean(0.0, 2 * s1**2, h, d)
            + _rbf_mean(0.0, 2 * s2**2, h, d)
            - 2 * _rbf_mean(shift2, s1**2 + s2**2, h, d)
        )
    return out


def _mean_and_se(values):
    values = np.asarray(values)
    return values.mean(), values.std(ddof=1) / math.sqrt(len(values))


def test_mmd_is_unbiased_for_equal_distributions():
    rng = np.random.default_rng(0)
    fixed = [mmd(rng.standard_normal((80, 3)), rng.standard_normal((60, 3)), bandwidths=[0.5, 1, 2])
             for _ in range(60)]
    mean, se = _mean_and_se(fixed)
    assert abs(mean) < 4 * se
    # The biased (V-statistic) version would sit at a clearly positive value: make sure the
    # spread is small enough for the test above to tell the two apart.
    assert se < 0.05 * _mmd2_closed_form(1.0, 1.0, 1.0, [0.5, 1, 2], 3)
    default = [mmd(rng.standard_normal((80, 3)), rng.standard_normal((60, 3))) for _ in range(40)]
    mean, se = _mean_and_se(default)
    assert abs(mean) < 4 * se


def test_mmd_expectation_matches_gaussian_closed_form():
    # X ~ N(0, I), Y ~ N(c, 1.5^2 I) in 2-D, kernel sum over widths: E MMD_u^2 is the exact value.
    rng = np.random.default_rng(1)
    widths = [0.7, 2.0]
    c = np.array([0.6, -0.3])
    est = [mmd(rng.standard_normal((150, 2)), c + 1.5 * rng.standard_normal((120, 2)),
               bandwidths=widths) for _ in range(150)]
    mean, se = _mean_and_se(est)
    exact = _mmd2_closed_form(float(c @ c), 1.0, 1.5, widths, 2)
    assert exact > 20 * se
    assert abs(mean - exact) < 4 * se


def test_mmd_properties_and_blocking(monkeypatch):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((40, 4)) + 0.3
    full = mmd(x, y, bandwidths=1.3)
    assert full == pytest.approx(mmd(y, x, bandwidths=1.3), rel=1e-12)
    monkeypatch.setattr(distances, "_PAIR_BLOCK_ELEMENTS", 7 * 40)  # blocks of a few rows
    assert mmd(x, y, bandwidths=1.3) == pytest.approx(full, rel=1e-12)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(x, y, bandwidths=[1.0, -1.0])
    with pytest.raises(ValueError, match="at least two"):
        mmd(x[:1], y)
    with pytest.raises(ValueError, match="bandwidths=..."):
        mmd(np.zeros((5, 2)), np.zeros((5, 2)))


def _abs_normal_mean(mu: float, s: float) -> float:
    """``E|Z|`` for ``Z ~ N(mu, s^2)`` (folded normal mean)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * s * s)) + mu * math.erf(
        mu / (s * math.sqrt(2))
    )


def test_energy_distance_matches_one_dimensional_closed_form():
    m1, s1, m2, s2 = 0.0, 1.0, 0.8, 1.7
    exact = (
        2 * _abs_normal_mean(m1 - m2, math.hypot(s1, s2))
        - _abs_normal_mean(0.0, math.sqrt(2) * s1)
        - _abs_normal_mean(0.0, math.sqrt(2) * s2)
    )
    rng = np.random.default_rng(3)
    est = [energy_distance(m1 + s1 * rng.standard_normal((300, 1)),
                           m2 + s2 * rng.standard_normal((250, 1))) for _ in range(30)]
    mean, se = _mean_and_se(est)
    assert exact > 10 * se
    assert abs(mean - exact) < 4 * se
    # Unbiased at P = Q; symmetric; for two point masses a, b it is exactly 2 |a - b|.
    same = [energy_distance(rng.standard_normal((60, 2)), rng.standard_normal((70, 2)))
            for _ in range(60)]
    mean, se = _mean_and_se(same)
    assert abs(mean) < 4 * se
    x, y = rng.standard_normal((30, 3)), rng.standard_normal((20, 3))
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    a = np.array([[0.0], [0.0]])
    np.testing.assert_allclose(energy_distance(a, a + 3.0), 6.0, rtol=1e-12)


def _draw_mixture(rng, n, means, chols, weights):
    comp = rng.choice(len(weights), size=n, p=weights)
    z = rng.standard_normal((n, means.shape[1]))
    return means[comp] + np.einsum("nij,nj->ni", chols[comp], z), comp


def test_component_report_on_exact_mixture_draws():
    rng = np.random.default_rng(4)
    means = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])
    covs = np.array([[[1.0, 0.5], [0.5, 2.0]], np.eye(2) * 0.5, [[1.5, -0.4], [-0.4, 0.8]]])
    weights = np.array([0.5, 0.3, 0.2])
    n = 20_000
    x, comp = _draw_mixture(rng, n, means, np.linalg.cholesky(covs), weights)
    rep = mixture_component_report(x, means, covs=covs, weights=weights)
    # Separation is > 8 standard deviations: assignment recovers the true labels.
    np.testing.assert_array_equal(rep.count, np.bincount(comp, minlength=3))
    binom_sd = np.sqrt(weights * (1 - weights) / n)
    assert np.all(rep.fraction_error < 4 * binom_sd)
    # Mean error: |mean - mu|^2 has expectation tr(Sigma) / n_k.
    counts = rep.count
    assert np.all(rep.mean_error < 4 * np.sqrt(np.trace(covs, axis1=1, axis2=2) / counts))
    assert np.all(rep.cov_error < 0.08)
    np.testing.assert_allclose(rep.weight, weights)
    assert rep.num_missing == 0

    # A model that dropped component 2 and widened component 1.
    bad = np.concatenate([x[comp == 0], 12.0 * np.array([1.0, 0.0]) + 1.5 * x[comp == 0]])
    rep = mixture_component_report(bad, means, covs=covs, weights=weights)
    assert rep.num_missing == 1 and rep.count[2] == 0
    assert np.isnan(rep.mean[2]).all()
    assert rep.cov_error[1] > 1.0
    assert rep.max_fraction_error == pytest.approx(0.2)


def test_component_report_stds_forms_and_errors():
    rng = np.random.default_rng(5)
    means = np.array([[-5.0], [5.0]])
    x = np.concatenate([-5 + 0.5 * rng.standard_normal((3000, 1)),
                        5 + 2.0 * rng.standard_normal((1000, 1))])
    for stds in ([0.5, 2.0], [[0.5], [2.0]]):
        rep = mixture_component_report(x, means, stds=stds, weights=[0.75, 0.25])
        np.testing.assert_allclose(rep.fraction, [0.75, 0.25], atol=0.01)
        np.testing.assert_allclose(rep.cov[:, 0, 0], [0.25, 4.0], rtol=0.1)
    with pytest.raises(ValueError, match="exactly one"):
        mixture_component_report(x, means)
    with pytest.raises(ValueError, match="weights"):
        mixture_component_report(x, means, stds=1.0, weights=[0.5, 0.6])
    with pytest.raises(ValueError, match="means"):
        mixture_component_report(x, np.zeros((2, 3)), stds=1.0)
