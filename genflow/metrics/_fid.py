"""Fréchet distance and kernel inception distance on features of a feature network.

The statistics are small (``d <= 2048``) and the matrix square root needs float64 whatever
``jax_enable_x64`` says, so the distances below run in numpy float64 on the host; only the
feature networks (see :class:`FeatureExtractor`) run in JAX.

Naming: the Fréchet distance is called FID only when the features come from the standard FID
Inception-v3 network (:data:`INCEPTION_FID_NAME`) with its original weights; on any other
feature network it is ``FD_<name>`` (:func:`frechet_label`), because its values are not
comparable with published FIDs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np
from jaxtyping import Array, Float

INCEPTION_FID_NAME = "inception-v3-fid"
"""``name`` of the standard FID feature network (Inception-v3 pool features, 2048-d)."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """A feature network for sample-quality metrics.

    A callable ``images (b, h, w, c) in [-1, 1] -> features (b, d)`` with a ``name`` that
    reports use to label the distances computed on its features (:func:`frechet_label`).
    Implementations: :class:`~genflow.metrics.DigitsMLPFeatures` (no weights needed) and
    :class:`~genflow.networks.InceptionFeatureExtractor` (the FID network).
    """

    name: str

    def __call__(self, images: Float[Array, "b h w c"]) -> Float[Array, "b d"]: ...


def frechet_label(extractor: FeatureExtractor | str) -> str:
    """How to call the Fréchet distance on a feature network's features in a report.

    Args:
        extractor: A :class:`FeatureExtractor` or its ``name``.

    Returns:
        ``"FID"`` for the standard Inception network, ``"FD_<name>"`` for any other one.
    """
    name = extractor if isinstance(extractor, str) else extractor.name
    return "FID" if name == INCEPTION_FID_NAME else f"FD_{name}"


def extract_features(
    extractor: FeatureExtractor, images: Any, *, batch_size: int = 256
) -> np.ndarray:
    """Features of many images, computed in batches.

    Args:
        extractor: The feature network.
        images: ``(n, h, w, c)`` in ``[-1, 1]`` (an array), or an iterable of such batches.
        batch_size: Images per call of ``extractor`` when ``images`` is an array. Keep it fixed
            across runs: a jit-compiled extractor compiles once per batch shape.

    Returns:
        ``(n, d)`` float64 numpy features.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if hasattr(images, "shape"):
        if len(images.shape) != 4:
            raise ValueError(
                f"images must have shape (n, h, w, c) in [-1, 1], got {tuple(images.shape)}."
            )
        batches: Iterable[Any] = (
            images[i : i + batch_size] for i in range(0, images.shape[0], batch_size)
        )
    else:
        batches = images
    out = [np.asarray(extractor(b), dtype=np.float64) for b in batches]
    if not out:
        raise ValueError("No images given.")
    return np.concatenate(out, axis=0)


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, the Gaussian summary used by the Fréchet distance.

    ``mu = (1/n) sum_i f_i`` and ``Sigma = 1/(n - 1) sum_i (f_i - mu)(f_i - mu)^T`` (the
    unbiased covariance, as in the reference FID implementations), in float64.

    Args:
        features: ``(n, d)``, ``n >= 2``.

    Returns:
        ``(mu, sigma)`` of shapes ``(d,)`` and ``(d, d)``.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(
            f"features must have shape (n, d) with n >= 2, got {f.shape}; flatten images or "
            "pass more samples."
        )
    mu = f.mean(axis=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    vals, vecs = np.linalg.eigh((a + a.T) / 2.0)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
    """Squared Fréchet (Wasserstein-2) distance between two Gaussians.

    ``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})``

    (FID reports this squared value). ``S1 S2`` is not symmetric, but it is similar to the
    symmetric positive semi-definite ``M = S1^{1/2} S2 S1^{1/2}``
    (``S1 S2 = S1^{1/2} M S1^{-1/2}``), so both have the same non-negative eigenvalues and
    ``tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M))``. Both square roots come from the symmetric
    eigendecomposition (``numpy.linalg.eigh``) in float64, with eigenvalues that are negative
    only by round-off clipped to 0. Unlike a general (Schur-based) matrix square root this never
    returns complex values and stays accurate for singular covariances (fewer samples than
    feature dimensions).

    Args:
        mu1: Mean ``(d,)``.
        cov1: Covariance ``(d, d)``, symmetric positive semi-definite.
        mu2: Mean ``(d,)``.
        cov2: Covariance ``(d, d)``.

    Returns:
        ``d^2 >= 0`` as a Python float (clipped at 0 against round-off).

    Raises:
        ValueError: If the shapes do not fit together.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    cov1 = np.atleast_2d(np.asarray(cov1, dtype=np.float64))
    cov2 = np.atleast_2d(np.asarray(cov2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(
            "frechet_distance expects mu1, mu2 of shape (d,) and cov1, cov2 of shape (d, d); "
            f"got {mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}. Use "
            "feature_statistics(features) to get them."
        )
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(cov1)) + float(np.trace(cov2)) - 2.0 * trace_sqrt
    return max(value, 0.0)


def frechet_distance_from_features(features_x: Any, features_y: Any) -> float:
    """:func:`frechet_distance` between the Gaussian summaries of two feature sets."""
    return frechet_distance(*feature_statistics(features_x), *feature_statistics(features_y))


def kid(
    features_x: Any,
    features_y: Any,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel inception distance: unbiased polynomial-kernel MMD^2, averaged over subsets.

    The kernel is ``k(u, v) = (u . v / d + 1)^3``. For each of ``num_subsets`` subsets, ``m =
    subset_size`` rows are drawn without replacement from each feature set and the unbiased
    estimate

    ``MMD_u^2 = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i, j}
    k(x_i, y_j)``

    is computed; its expectation is the population ``MMD^2`` (0 for equal distributions), so,
    unlike FID, KID has no bias that depends on the sample size. It can be slightly negative.

    Args:
        features_x: ``(n, d)`` features of one set.
        features_y: ``(n', d)`` features of the other.
        num_subsets: Number of subsets ``S``.
        subset_size: ``m``; at most ``min(n, n')`` and at least 2.
        seed: Seed of the subset draws (``numpy.random.default_rng``).

    Returns:
        ``(mean, std)`` of the ``S`` subset estimates (``std`` with ``ddof = 1``, 0 for one
        subset). ``std / sqrt(S)`` underestimates the error of ``mean`` because subsets overlap.

    Raises:
        ValueError: On bad shapes or a ``subset_size`` that does not fit.
    """
    fx = np.asarray(features_x, dtype=np.float64)
    fy = np.asarray(features_y, dtype=np.float64)
    if fx.ndim != 2 or fy.ndim != 2 or fx.shape[1] != fy.shape[1]:
        raise ValueError(
            f"kid expects two feature arrays (n, d) with the same d, got {fx.shape} and "
            f"{fy.shape}."
        )
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}.")
    n = min(fx.shape[0], fy.shape[0])
    if not 2 <= subset_size <= n:
        raise ValueError(
            f"subset_size must be between 2 and the smaller set size {n}, got {subset_size}; "
            "pass subset_size=... (e.g. min(1000, n))."
        )
    d = fx.shape[1]
    m = subset_size
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        x = fx[rng.choice(fx.shape[0], m, replace=False)]
        y = fy[rng.choice(fy.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1.0) ** 3
        kyy = (y @ y.T / d + 1.0) ** 3
        kxy = (x @ y.T / d + 1.0) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[s] = within - 2.0 * kxy.sum() / (m * m)
    std = float(values.std(ddof=1)) if num_subsets > 1 else 0.0
    return float(values.mean()), std
