"""Sample-based distances between point clouds, in numpy (no compilation, no JAX needed)."""

from __future__ import annotations

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
