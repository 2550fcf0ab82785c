"""Sample-based distances between point clouds, in numpy (no compilation, no JAX needed)."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

# Largest number of quantile values held at once (per chunk of projections), ~32 MiB of float64.
_CHUNK_ELEMENTS = 1 << 22


def _as_cloud(x: Any, what: str) -> np.ndarray:
    try:
        cloud = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a numeric array of shape (n, d); got {err}.") from None
    if cloud.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D array of shape (n, d), got shape {cloud.shape}; reshape 1-D "
            "data with x[:, None] and flatten images to (n, h * w * c)."
        )
    if cloud.shape[0] < 1 or cloud.shape[1] < 1:
        raise ValueError(f"{what} needs at least one point of at least one dimension, got shape "
                         f"{cloud.shape}.")
    return cloud


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a positive integer, got {value!r}.")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be a positive integer, got {value!r}.") from None
    if out < 1:
        raise ValueError(f"{what} must be >= 1, got {out}.")
    return out


def _common_levels(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intervals on which both empirical quantile functions are constant.

    The quantile function of ``n`` sorted values ``x_(0) <= ... <= x_(n-1)`` is ``x_(i)`` on
    ``[i / n, (i + 1) / n)``. Merging the breakpoints ``i / n`` and ``j / m`` cuts ``[0, 1)`` into
    at most ``n + m - 1`` intervals; on each, both functions are constant.

    Returns:
        ``(index_a, index_b, weight)``: order-statistic indices and interval lengths.
    """
    edges = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid = (edges[:-1] + edges[1:]) / 2.0
    index_a = np.minimum(np.floor(mid * n).astype(np.intp), n - 1)
    index_b = np.minimum(np.floor(mid * m).astype(np.intp), m - 1)
    return index_a, index_b, np.diff(edges)


def sliced_wasserstein2(
    a: Any, b: Any, *, num_projections: int = 256, seed: int = 0
) -> float:
    """Sliced Wasserstein-2 distance between two point clouds.

    With unit directions ``u_1..u_L`` drawn uniformly on the sphere ``S^{d-1}``,

    ``SW2(a, b) = sqrt( (1/L) sum_l W2^2(u_l . a, u_l . b) )``,

    where ``W2^2(p, q) = int_0^1 (F_p^{-1}(s) - F_q^{-1}(s))^2 ds`` is the squared 1-D
    Wasserstein-2 distance between the projected empirical distributions (each point weighing
    ``1/n``, resp. ``1/m``). The integral is computed exactly: both quantile functions are step
    functions (``F_p^{-1}(s)`` is the ``floor(s n)``-th smallest projection), constant between
    the merged breakpoints ``{i / n} U {j / m}``. For ``n == m`` this is the mean squared
    difference of the sorted projections; for 1-D data (``d = 1``, where ``u = +-1``) the result
    is the exact W2 between the two empirical distributions.

    Properties used by the tests: ``SW2(a, a) = 0``; symmetric in ``a, b``; for a translation,
    ``SW2(x, x + c)^2 = mean_l (u_l . c)^2``, whose expectation is ``|c|^2 / d``.

    Non-finite values propagate (the result is ``nan`` or ``inf``), so a diverged model shows up
    as such instead of raising.

    Args:
        a: Points of shape ``(n, d)``.
        b: Points of shape ``(m, d)``; same ``d``.
        num_projections: Number of random directions ``L``.
        seed: Seed of the directions (``numpy.random.default_rng(seed)``); the same seed gives
            the same directions, so distances computed with one seed are comparable.

    Returns:
        The distance, a Python float ``>= 0``.

    Raises:
        ValueError: If the arrays are not 2-D, are empty or have different ``d``.
        TypeError: If an input is not numeric or ``num_projections`` is not an integer.

    Examples:
        >>> x = np.array([[0.0], [1.0], [2.0]])
        >>> sliced_wasserstein2(x, x + 3.0)
        3.0
    """
    a = _as_cloud(a, "a")
    b = _as_cloud(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same number of coordinates, got a: {a.shape} and "
            f"b: {b.shape}."
        )
    num_projections = _positive_int(num_projections, "num_projections")
    dim = a.shape[1]
    directions = np.random.default_rng(seed).standard_normal((num_projections, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)

    index_a, index_b, weight = _common_levels(a.shape[0], b.shape[0])
    chunk = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    sq_dist = np.empty(num_projections)
    for start in range(0, num_projections, chunk):
        u = directions[start : start + chunk].T  # (d, chunk)
        qa = np.sort(a @ u, axis=0)[index_a]
        qb = np.sort(b @ u, axis=0)[index_b]
        sq_dist[start : start + chunk] = weight @ (qa - qb) ** 2
    return float(np.sqrt(np.mean(sq_dist)))


def sliced_wasserstein2_floor(
    sample_fn: Callable[[int, int], Any],
    num: int,
    *,
    seed: int = 0,
    num_projections: int = 256,
) -> float:
    """SW2 between two independent draws of ``num`` points from the same distribution.

    Even a perfect model has a non-zero SW2 against ``num`` reference points, because both are
    finite samples. This is that noise floor: compare a model's
    ``sliced_wasserstein2(model_samples, data)`` (both of size ``num``) with it, not with 0.

    The two draws are ``sample_fn(num, s_a)`` and ``sample_fn(num, s_b)`` with
    ``s_a, s_b = numpy.random.SeedSequence(seed).generate_state(2)`` (two 32-bit integers,
    unlikely to coincide with seeds used for training data); the directions use ``seed``.

    Args:
        sample_fn: ``sample_fn(num, seed) -> array (num, d)``, e.g.
            ``lambda n, s: sample_toy("moons", n, seed=s)``.
        num: Points per draw.
        seed: Seed of both the draws and the projections.
        num_projections: Number of random directions, as in :func:`sliced_wasserstein2`.

    Returns:
        The floor, a Python float.

    Raises:
        ValueError, TypeError: As :func:`sliced_wasserstein2`, or if ``num`` is not a positive
            integer.
    """
    num = _positive_int(num, "num")
    seed_a, seed_b = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    return sliced_wasserstein2(
        sample_fn(num, seed_a),
        sample_fn(num, seed_b),
        num_projections=num_projections,
        seed=seed,
    )


# ---------------------------------------------------------------------------------------------
# Kernel and energy distances
# ---------------------------------------------------------------------------------------------

# Rows of a pairwise block computed at once: a (rows, m) block of float64 stays near 32 MiB.
_PAIR_BLOCK_ELEMENTS = 1 << 22

DEFAULT_MMD_SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
"""Bandwidths of :func:`mmd` when none are given, as multiples of the median pairwise distance."""

# Pooled points used to estimate the median pairwise distance (a deterministic subsample).
_MEDIAN_POINTS = 1000


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"x and y must have the same number of coordinates, got x: {a.shape} and "
            f"y: {b.shape}."
        )


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a_i - b_j|^2`` for all pairs, clipped at 0 against round-off."""
    sq = (
        np.einsum("ij,ij->i", a, a)[:, None]
        + np.einsum("ij,ij->i", b, b)[None, :]
        - 2.0 * (a @ b.T)
    )
    return np.maximum(sq, 0.0)


def _pair_sum(
    a: np.ndarray, b: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], *, same: bool
) -> float:
    """``sum_{i, j} fn(|a_i - b_j|^2)``, over ``i != j`` when ``same`` (then ``a is b``).

    Computed in row blocks so that memory stays bounded for large clouds.
    """
    rows = max(1, _PAIR_BLOCK_ELEMENTS // b.shape[0])
    total = 0.0
    for start in range(0, a.shape[0], rows):
        block = fn(_sq_dists(a[start : start + rows], b))
        if same:
            idx = np.arange(block.shape[0])
            block[idx, start + idx] = 0.0
        total += float(block.sum())
    return total


def _median_distance(x: np.ndarray, y: np.ndarray) -> float:
    pooled = np.concatenate([x, y], axis=0)
    if pooled.shape[0] > _MEDIAN_POINTS:
        keep = np.random.default_rng(0).choice(pooled.shape[0], _MEDIAN_POINTS, replace=False)
        pooled = pooled[keep]
    sq = _sq_dists(pooled, pooled)
    upper = sq[np.triu_indices(pooled.shape[0], k=1)]
    return float(np.sqrt(np.median(upper))) if upper.size else 0.0


def mmd(x: Any, y: Any, *, bandwidths: Any = None) -> float:
    """Unbiased estimate of the squared maximum mean discrepancy with a multi-bandwidth RBF kernel.

    The kernel is a sum of Gaussian (RBF) kernels, one per bandwidth ``h_1..h_B``:

    ``k(u, v) = sum_b exp(-|u - v|^2 / (2 h_b^2))``.

    A sum of characteristic kernels is characteristic, so ``MMD^2 = 0`` only for equal
    distributions, and several widths keep the test sensitive both to coarse and to fine
    differences. With ``x_1..x_n ~ P`` and ``y_1..y_m ~ Q`` the returned value is the unbiased
    U-statistic

    ``MMD_u^2 = 1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
    - 2/(n m) sum_{i, j} k(x_i, y_j)``,

    whose expectation is exactly ``MMD^2(P, Q) = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)``. It
    can therefore be slightly negative when ``P = Q``; do not take its square root.

    Args:
        x: Points of shape ``(n, d)``, ``n >= 2``.
        y: Points of shape ``(m, d)``, ``m >= 2``; same ``d``.
        bandwidths: Positive widths ``h_b`` (a float or a sequence). ``None`` (default) uses
            ``DEFAULT_MMD_SCALES = (0.25, 0.5, 1, 2, 4)`` times the median distance between
            pairs of distinct points of the pooled sample (estimated on a fixed subsample of at
            most 1000 pooled points). That choice depends on the data, so the estimator is then
            unbiased only up to the small effect of the estimated median; pass fixed widths
            when exact unbiasedness matters, or to compare numbers across runs.

    Returns:
        The estimate of ``MMD^2``, a Python float.

    Raises:
        ValueError: If the arrays are not 2-D, have fewer than two points or different ``d``, or
            a bandwidth is not positive and finite.
        TypeError: If an input is not numeric.
    """
    x = _as_cloud(x, "x")
    y = _as_cloud(y, "y")
    _same_dim(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"mmd needs at least two points in each sample for the unbiased estimate, got "
            f"{x.shape[0]} and {y.shape[0]}."
        )
    if bandwidths is None:
        median = _median_distance(x, y)
        if not median > 0.0:
            raise ValueError(
                "The median pairwise distance is 0 (most points coincide), so no default "
                "bandwidth exists; pass bandwidths=... explicitly."
            )
        widths = median * np.asarray(DEFAULT_MMD_SCALES)
    else:
        widths = np.atleast_1d(np.asarray(bandwidths, dtype=np.float64))
        if widths.ndim != 1 or widths.size == 0 or not np.all(np.isfinite(widths) & (widths > 0)):
            raise ValueError(
                f"bandwidths must be positive finite numbers, got {bandwidths!r}."
            )
    inv = -0.5 / widths**2

    def kernel(sq: np.ndarray) -> np.ndarray:
        out = np.zeros_like(sq)
        for c in inv:
            out += np.exp(c * sq)
        return out

    n, m = x.shape[0], y.shape[0]
    kxx = _pair_sum(x, x, kernel, same=True) / (n * (n - 1))
    kyy = _pair_sum(y, y, kernel, same=True) / (m * (m - 1))
    kxy = _pair_sum(x, y, kernel, same=False) / (n * m)
    return kxx + kyy - 2.0 * kxy


def energy_distance(x: Any, y: Any) -> float:
    """Unbiased estimate of the (squared) energy distance between two distributions.

    ``E^2(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with ``X, X' ~ P`` and ``Y, Y' ~ Q``
    independent and ``|.|`` the Euclidean norm. It is ``>= 0`` with equality only for
    ``P = Q`` (for distributions with finite first moments), and in 1-D it equals
    ``2 int (F_P(t) - F_Q(t))^2 dt``. The estimate averages the cross term over all ``n m``
    pairs and each within-sample term over the ``n (n - 1)`` (resp. ``m (m - 1)``) pairs of
    distinct points, so its expectation is exactly ``E^2(P, Q)``; it may be slightly negative
    when ``P = Q``.

    Args:
        x: Points of shape ``(n, d)``, ``n >= 2``.
        y: Points of shape ``(m, d)``, ``m >= 2``; same ``d``.

    Returns:
        The estimate, a Python float.

    Raises:
        ValueError: If the arrays are not 2-D, have fewer than two points or different ``d``.
        TypeError: If an input is not numeric.
    """
    x = _as_cloud(x, "x")
    y = _as_cloud(y, "y")
    _same_dim(x, y)
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"energy_distance needs at least two points in each sample, got {x.shape[0]} and "
            f"{y.shape[0]}."
        )
    n, m = x.shape[0], y.shape[0]
    exy = _pair_sum(x, y, np.sqrt, same=False) / (n * m)
    exx = _pair_sum(x, x, np.sqrt, same=True) / (n * (n - 1))
    eyy = _pair_sum(y, y, np.sqrt, same=True) / (m * (m - 1))
    return 2.0 * exy - exx - eyy


# ---------------------------------------------------------------------------------------------
# Component-wise check of samples against a known Gaussian mixture
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MixtureComponentReport:
    """Per-component comparison of samples with a Gaussian mixture (see
    :func:`mixture_component_report`). Arrays are indexed by component ``k = 0..K-1``.

    Attributes:
        count: ``(K,)`` samples assigned to each component.
        fraction: ``(K,)`` mass fraction ``count_k / n``.
        weight: ``(K,)`` true mixture weights ``w_k``.
        mean: ``(K, d)`` sample mean of the points assigned to each component (``nan`` if none).
        cov: ``(K, d, d)`` sample covariance (``ddof = 1``) of those points (``nan`` if fewer
            than two).
        fraction_error: ``(K,)`` ``|fraction_k - w_k|``.
        mean_error: ``(K,)`` Euclidean error ``|mean_k - mu_k|``.
        cov_error: ``(K,)`` relative Frobenius error ``||cov_k - Sigma_k||_F / ||Sigma_k||_F``.
    """

    count: np.ndarray
    fraction: np.ndarray
    weight: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    fraction_error: np.ndarray
    mean_error: np.ndarray
    cov_error: np.ndarray

    @property
    def max_fraction_error(self) -> float:
        """Largest ``|fraction_k - w_k|`` over the components."""
        return float(np.max(self.fraction_error))

    @property
    def num_missing(self) -> int:
        """Components that received no sample at all (dropped modes)."""
        return int(np.sum(self.count == 0))


def _mixture_covs(covs: Any, stds: Any, k: int, d: int) -> np.ndarray:
    if (covs is None) == (stds is None):
        raise ValueError(
            "Pass exactly one of covs= (full covariances (K, d, d)) and stds= (standard "
            "deviations: a scalar, (K,) isotropic per component, or (K, d) diagonal)."
        )
    if covs is not None:
        out = np.asarray(covs, dtype=np.float64)
        if out.shape != (k, d, d):
            raise ValueError(
                f"covs must have shape (K, d, d) = ({k}, {d}, {d}), got {out.shape}."
            )
        if not np.allclose(out, np.swapaxes(out, 1, 2)):
            raise ValueError("covs must be symmetric matrices.")
        return out
    s = np.asarray(stds, dtype=np.float64)
    if s.ndim == 0:
        s = np.full((k, d), float(s))
    elif s.shape == (k,):
        s = np.repeat(s[:, None], d, axis=1)
    elif s.shape != (k, d):
        raise ValueError(
            f"stds must be a scalar, of shape (K,) = ({k},) or (K, d) = ({k}, {d}); got "
            f"{s.shape}."
        )
    if not np.all(s > 0):
        raise ValueError("stds must be positive.")
    return np.einsum("kd,de->kde", s**2, np.eye(d))


def mixture_component_report(
    samples: Any,
    means: Any,
    *,
    covs: Any = None,
    stds: Any = None,
    weights: Any = None,
) -> MixtureComponentReport:
    """Compare samples with a known Gaussian mixture component by component.

    Each sample is assigned to the component of highest responsibility,
    ``argmax_k [log w_k + log N(x; mu_k, Sigma_k)]`` (for equal weights and equal isotropic
    covariances this is the nearest mean). Per component the report gives the assigned mass
    fraction next to the true weight, and the error of the sample mean and covariance of the
    assigned points against ``mu_k`` and ``Sigma_k``. It detects what a single distance hides:
    dropped or under-weighted modes, and modes that are shifted or too wide or too narrow.

    Assignment truncates each component where another one takes over, so even exact draws show
    small covariance errors when components overlap; for well separated components (means many
    standard deviations apart) the truncation is negligible and the errors of exact draws are
    of sampling size: ``fraction_k`` has standard deviation ``sqrt(w_k (1 - w_k) / n)``.

    Args:
        samples: Points of shape ``(n, d)``.
        means: Component means ``(K, d)``.
        covs: Full covariances ``(K, d, d)``. Give this or ``stds``.
        stds: Standard deviations: a scalar (all components isotropic with one width), ``(K,)``
            (isotropic per component) or ``(K, d)`` (diagonal).
        weights: Mixture weights ``(K,)``, non-negative, summing to 1; uniform if ``None``.

    Returns:
        A :class:`MixtureComponentReport`.

    Raises:
        ValueError: On inconsistent shapes, both or neither of ``covs``/``stds``, covariances
            that are not symmetric positive definite, or invalid weights.
    """
    x = _as_cloud(samples, "samples")
    mu = np.asarray(means, dtype=np.float64)
    if mu.ndim != 2 or mu.shape[1] != x.shape[1] or mu.shape[0] < 1:
        raise ValueError(
            f"means must have shape (K, d) with d = {x.shape[1]} (the samples' dimension), "
            f"got {mu.shape}."
        )
    k, d = mu.shape
    sigma = _mixture_covs(covs, stds, k, d)
    if weights is None:
        w = np.full(k, 1.0 / k)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (k,) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(
                f"weights must be {k} non-negative numbers summing to 1, got {weights!r}."
            )
    try:
        chol = np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        raise ValueError("covariances must be positive definite.") from None

    # log w_k + log N(x; mu_k, Sigma_k), dropping the constant -d/2 log(2 pi).
    scores = np.empty((x.shape[0], k))
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    for j in range(k):
        z = np.linalg.solve(chol[j], (x - mu[j]).T)  # L^{-1} (x - mu): (d, n)
        log_det = 2.0 * np.sum(np.log(np.diag(chol[j])))
        scores[:, j] = log_w[j] - 0.5 * (np.sum(z**2, axis=0) + log_det)
    assign = np.argmax(scores, axis=1)

    count = np.bincount(assign, minlength=k)
    fraction = count / x.shape[0]
    mean = np.full((k, d), np.nan)
    cov = np.full((k, d, d), np.nan)
    for j in range(k):
        pts = x[assign == j]
        if pts.shape[0] >= 1:
            mean[j] = pts.mean(axis=0)
        if pts.shape[0] >= 2:
            cov[j] = np.cov(pts, rowvar=False, ddof=1).reshape(d, d)
    return MixtureComponentReport(
        count=count,
        fraction=fraction,
        weight=w,
        mean=mean,
        cov=cov,
        fraction_error=np.abs(fraction - w),
        mean_error=np.linalg.norm(mean - mu, axis=1),
        cov_error=np.linalg.norm(cov - sigma, axis=(1, 2)) / np.linalg.norm(sigma, axis=(1, 2)),
    )
