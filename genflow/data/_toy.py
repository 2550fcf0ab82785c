"""Two-dimensional toy data sets, drawn with numpy only.

Every set is a fixed, documented construction scaled so that its mean is (close to) zero, each
coordinate has a standard deviation of order one and (almost) every point lies in ``[-4, 4]^2``.
Draws are deterministic per seed: :func:`sample_toy` builds ``numpy.random.default_rng(seed)``
and consumes it in a fixed order, so ``sample_toy(name, n, seed=s)`` can be reproduced anywhere.

Training draws step ``i`` of a run with seed ``s`` as ``sample_toy(name, b, seed=[s, i])``
(see :class:`ToyBatches`): each step has its own independent stream, and any step can be
recomputed without replaying the ones before it, which is what makes resuming bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np

SeedLike = int | Sequence[int] | np.random.SeedSequence | np.random.Generator


def _checkerboard(rng: np.random.Generator, num: int) -> np.ndarray:
    # Column i uniform in {0..3}; row j = 2k + (i mod 2), k uniform in {0, 1}, so that i + j is
    # even; then a uniform point inside the unit square [i - 2, i - 1] x [j - 2, j - 1].
    col = rng.integers(0, 4, size=num)
    row = 2 * rng.integers(0, 2, size=num) + col % 2
    offset = rng.random((num, 2))
    return np.stack([col - 2.0 + offset[:, 0], row - 2.0 + offset[:, 1]], axis=-1)


def _eight_gaussians(rng: np.random.Generator, num: int) -> np.ndarray:
    # Mixture of 8 equal-weight isotropic Gaussians, means 2 sqrt(2) (cos(pi k / 4), sin(pi k / 4)),
    # standard deviation sqrt(2) / 4.
    component = rng.integers(0, 8, size=num)
    angle = component * (math.pi / 4.0)
    means = 2.0 * math.sqrt(2.0) * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    return means + (math.sqrt(2.0) / 4.0) * rng.standard_normal((num, 2))


def _moons(rng: np.random.Generator, num: int) -> np.ndarray:
    # Upper moon (cos th, sin th) and lower moon (1 - cos th, 1/2 - sin th), th ~ U[0, pi], chosen
    # with probability 1/2 each; centred by the exact mean (1/2, 1/4), scaled by 2, plus
    # N(0, 0.1^2).
    lower = rng.integers(0, 2, size=num).astype(bool)
    theta = math.pi * rng.random(num)
    upper_moon = np.stack([np.cos(theta), np.sin(theta)], axis=-1)
    lower_moon = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=-1)
    points = np.where(lower[:, None], lower_moon, upper_moon) - np.array([0.5, 0.25])
    return 2.0 * points + 0.1 * rng.standard_normal((num, 2))


# Exact mean of (t cos t, t sin t) for t ~ U[3 pi / 2, 9 pi / 2]: (2, 2 / (3 pi)).
_SWISSROLL_MEAN = np.array([2.0, 2.0 / (3.0 * math.pi)])


def _swissroll(rng: np.random.Generator, num: int) -> np.ndarray:
    # t = (3 pi / 2)(1 + 2u), u ~ U[0, 1]; point (t cos t, t sin t) minus its exact mean, divided
    # by 5, plus N(0, 0.1^2).
    t = 1.5 * math.pi * (1.0 + 2.0 * rng.random(num))
    roll = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1)
    return (roll - _SWISSROLL_MEAN) / 5.0 + 0.1 * rng.standard_normal((num, 2))


def _pinwheel(rng: np.random.Generator, num: int) -> np.ndarray:
    # Arm k ~ U{0..4}; local point (r, s) with r ~ N(1, 0.3^2), s ~ N(0, 0.1^2); rotated by
    # 2 pi k / 5 + exp(r) / 4 and scaled by 2.
    arm = rng.integers(0, 5, size=num)
    noise = rng.standard_normal((num, 2))
    radial = 1.0 + 0.3 * noise[:, 0]
    tangential = 0.1 * noise[:, 1]
    angle = arm * (2.0 * math.pi / 5.0) + 0.25 * np.exp(radial)
    cos, sin = np.cos(angle), np.sin(angle)
    return 2.0 * np.stack(
        [radial * cos - tangential * sin, radial * sin + tangential * cos], axis=-1
    )


_SAMPLERS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "checkerboard": _checkerboard,
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "swissroll": _swissroll,
    "pinwheel": _pinwheel,
}

TOY_DATASETS: tuple[str, ...] = tuple(_SAMPLERS)
"""Names accepted by :func:`sample_toy` and :class:`ToyBatches`."""


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _SAMPLERS:
        raise ValueError(
            f"Unknown toy data set {name!r}; use one of {', '.join(map(repr, TOY_DATASETS))}."
        )
    return name


def _check_count(value: object, what: str, *, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got the bool {value!r}.")
    try:
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{what} must be an integer, got {type(value).__name__} {value!r}."
        ) from None
    if count < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {count}.")
    return count


def _make_rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an integer or a sequence of integers, got {seed!r}.")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as err:
        raise ValueError(
            "seed must be a non-negative integer, a sequence of non-negative integers "
            f"(e.g. [seed, step]) or a numpy Generator; got {seed!r} ({err})."
        ) from None


def sample_toy(name: str, num: int, *, seed: SeedLike) -> np.ndarray:
    """Draw ``num`` points from a named 2-D toy distribution.

    The constructions (``U`` uniform, ``N`` Gaussian, all draws independent):

    - ``"checkerboard"``: uniform on the 8 dark squares of a 4x4 board on ``[-2, 2]^2``, i.e. the
      unit squares ``[i - 2, i - 1] x [j - 2, j - 1]`` with ``i, j in {0..3}`` and ``i + j`` even
      (the bottom-left square is dark). Each coordinate is ``U[-2, 2]``: mean 0, std
      ``2 / sqrt(3) ~ 1.15``.
    - ``"8gaussians"``: equal mixture of ``N(mu_k, (sqrt(2)/4)^2 I)`` with means
      ``mu_k = 2 sqrt(2) (cos(pi k / 4), sin(pi k / 4))``, ``k = 0..7`` (radius ``2 sqrt(2)``,
      component std ``~0.354``). Mean 0, each coordinate's std ``sqrt(4 + 1/8) ~ 2.03``.
    - ``"moons"``: two interleaved half circles of radius 1,
      ``(cos th, sin th)`` and ``(1 - cos th, 1/2 - sin th)`` with ``th ~ U[0, pi]`` and each moon
      chosen with probability 1/2; centred by their exact mean ``(1/2, 1/4)``, scaled by 2, plus
      ``N(0, 0.1^2 I)``. Mean 0, stds ``~(1.74, 1.00)``.
    - ``"swissroll"``: ``(t cos t, t sin t)`` with ``t = (3 pi / 2)(1 + 2u)``, ``u ~ U[0, 1]``
      (1.5 turns), minus its exact mean ``(2, 2 / (3 pi))``, divided by 5, plus
      ``N(0, 0.1^2 I)``. Mean 0, stds ``~(1.33, 1.39)``; before centring the noiseless roll has
      radius at most ``9 pi / 10 ~ 2.83``.
    - ``"pinwheel"``: 5 arms. Arm ``k ~ U{0..4}``, local point ``(r, s)`` with
      ``r ~ N(1, 0.3^2)`` (radial) and ``s ~ N(0, 0.1^2)`` (tangential), rotated by the angle
      ``2 pi k / 5 + exp(r) / 4`` (so arms curl outwards) and scaled by 2. Mean 0 by the 5-fold
      symmetry, each coordinate's std ``~1.5``.

    Args:
        name: One of :data:`TOY_DATASETS`.
        num: Number of points, ``>= 0``.
        seed: Anything ``numpy.random.default_rng`` accepts: a non-negative integer, a sequence
            of them such as ``[seed, step]``, or a ``SeedSequence``; or a
            ``numpy.random.Generator``, which is then used (and advanced) directly. Note that
            numpy pads short seeds with zeros, so ``seed=s`` and ``seed=[s, 0]`` give the same
            points.

    Returns:
        A float32 array of shape ``(num, 2)``, the same for the same ``(name, num, seed)``.

    Raises:
        ValueError: If ``name`` is unknown, ``num`` is negative or ``seed`` is invalid.
        TypeError: If ``num`` is not an integer.

    Examples:
        >>> x = sample_toy("moons", 4, seed=0)
        >>> x.shape, x.dtype
        ((4, 2), dtype('float32'))
        >>> bool((sample_toy("moons", 4, seed=[0, 7]) == sample_toy("moons", 4, seed=[0, 7])).all())
        True
    """
    sampler = _SAMPLERS[_check_name(name)]
    num = _check_count(num, "num", minimum=0)
    rng = _make_rng(seed)
    return np.ascontiguousarray(sampler(rng, num), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class ToyBatches:
    """An endless, random-access stream of training batches from one toy data set.

    Batch ``step`` is ``sample_toy(name, batch_size, seed=[seed, step])``, so any step can be
    (re)computed on its own: resuming a run at step ``k`` sees exactly the batches it would have
    seen without the interruption. As numpy pads short seeds with zeros, step 0 equals
    ``sample_toy(name, batch_size, seed=seed)``: draw evaluation data with a seed sequence of
    its own (e.g. ``[seed, 2**31]`` or a different first entry), not with the bare training seed.

    Attributes:
        name: One of :data:`TOY_DATASETS`.
        batch_size: Points per batch, ``>= 1``.
        seed: Non-negative integer seed of the stream.
        stream: Non-negative stream id: batch ``step`` is drawn with ``seed=[seed, step, stream]``.
            Two streams of one seed are independent (a stochastic interpolant draws its two
            data sets from streams 0 and 1); stream 0 is ``[seed, step]``, as numpy pads seeds
            with zeros.

    Examples:
        >>> stream = ToyBatches("checkerboard", batch_size=128, seed=0)
        >>> stream.batch(3).shape, stream.batches(10, 4).shape
        ((128, 2), (4, 128, 2))
    """

    name: str
    batch_size: int
    seed: int
    stream: int = 0

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_count(self.batch_size, "ToyBatches.batch_size", minimum=1)
        _check_count(self.seed, "ToyBatches.seed", minimum=0)
        _check_count(self.stream, "ToyBatches.stream", minimum=0)

    def batch(self, step: int) -> np.ndarray:
        """The batch of training step ``step`` (``>= 0``), shape ``(batch_size, 2)``, float32."""
        step = _check_count(step, "step", minimum=0)
        return sample_toy(self.name, self.batch_size, seed=[self.seed, step, self.stream])

    def batches(self, start_step: int, count: int) -> np.ndarray:
        """The batches of steps ``start_step, ..., start_step + count - 1``, stacked.

        Used to feed several training steps to one jitted dispatch. The result is exactly
        ``np.stack([self.batch(start_step + i) for i in range(count)])``.

        Args:
            start_step: First step, ``>= 0``.
            count: Number of consecutive steps, ``>= 0``.

        Returns:
            A float32 array of shape ``(count, batch_size, 2)``.
        """
        start_step = _check_count(start_step, "start_step", minimum=0)
        count = _check_count(count, "count", minimum=0)
        out = np.empty((count, self.batch_size, 2), dtype=np.float32)
        for i in range(count):
            out[i] = self.batch(start_step + i)
        return out


# ---------------------------------------------------------------------------------------------
# Exact densities and supports
# ---------------------------------------------------------------------------------------------

TOY_DENSITIES: tuple[str, ...] = ("checkerboard", "8gaussians")
"""Toy sets whose density is known in closed form (:func:`toy_log_density`, :func:`in_support`).

The others are not: ``moons`` and ``swissroll`` convolve a curve with Gaussian noise (an
integral over the curve parameter with no closed form) and ``pinwheel`` bends a Gaussian by a
non-linear rotation whose inverse has several branches."""

EIGHT_GAUSSIANS_SUPPORT_STDS = 3.0
"""Radius, in component standard deviations, of the disks that make up the ``"8gaussians"``
support (:func:`in_support`). Neighbouring means are ``4 sqrt(2) sin(pi / 8) / sigma ~ 6.12``
standard deviations apart, so the 8 disks of radius 3 are disjoint."""

_EIGHT_SIGMA = math.sqrt(2.0) / 4.0
_EIGHT_MEANS = 2.0 * math.sqrt(2.0) * np.stack(
    [np.cos(np.arange(8) * math.pi / 4.0), np.sin(np.arange(8) * math.pi / 4.0)], axis=-1
)


def _check_density_name(name: object) -> str:
    _check_name(name)
    if name not in TOY_DENSITIES:
        raise ValueError(
            f"The toy set {name!r} has no closed-form density; only "
            f"{', '.join(map(repr, TOY_DENSITIES))} have one."
        )
    return name  # type: ignore[return-value]


def _as_points(x: object) -> np.ndarray:
    points = np.asarray(x, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"x must have shape (n, 2), got {points.shape}.")
    return points


def _nearest_eight_mean(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest ``"8gaussians"`` mean and the squared distance to it, per point."""
    sq = ((x[:, None, :] - _EIGHT_MEANS[None]) ** 2).sum(-1)
    return sq.argmin(axis=1), sq.min(axis=1)


def in_support(name: str, x: object) -> np.ndarray:
    """Whether points lie in the (bounded) support of a toy density.

    - ``"checkerboard"``: the union of the 8 closed dark unit squares
      ``[i - 2, i - 1] x [j - 2, j - 1]``, ``i + j`` even; it holds all of the mass. Squares are
      closed, so a point on an edge or corner of a dark square is inside (a float32 rounding of a
      real point can land there, never beyond).
    - ``"8gaussians"``: the union of the 8 closed disks ``|x - mu_k| <= 3 sigma``
      (``sigma = sqrt(2) / 4``, :data:`EIGHT_GAUSSIANS_SUPPORT_STDS`). The distribution has
      unbounded support; these disks hold the mass :func:`toy_support_mass` ``~0.99009`` (at
      least ``1 - exp(-9/2) ~ 0.9889``, the mass of each component's own disk).

    Non-finite points are outside.

    Args:
        name: One of :data:`TOY_DENSITIES`.
        x: Points of shape ``(n, 2)``.

    Returns:
        A bool array of shape ``(n,)``.

    Raises:
        ValueError: If ``name`` has no closed-form density or ``x`` is not ``(n, 2)``.
    """
    name = _check_density_name(name)
    x = _as_points(x)
    if name == "8gaussians":
        return _nearest_eight_mean(x)[1] <= (EIGHT_GAUSSIANS_SUPPORT_STDS * _EIGHT_SIGMA) ** 2
    u = x + 2.0
    inside = np.all((u >= 0.0) & (u <= 4.0), axis=1)
    # On an integer coordinate a point touches two columns (rows): try both.
    lo = np.clip(np.floor(u), 0, 3)
    hi = np.clip(np.ceil(u) - 1.0, 0, 3)
    dark = np.zeros(x.shape[0], dtype=bool)
    for col in (lo[:, 0], hi[:, 0]):
        for row in (lo[:, 1], hi[:, 1]):
            dark |= (col + row) % 2 == 0
    return inside & dark


def toy_log_density(name: str, x: object) -> np.ndarray:
    """Exact log-density of a toy distribution (see :func:`sample_toy` for the constructions).

    - ``"checkerboard"``: ``log p(x) = log(1/8)`` on the closed dark squares (total area 8) and
      ``-inf`` elsewhere.
    - ``"8gaussians"``: ``log p(x) = logsumexp_k [log(1/8) - log(2 pi sigma^2)
      - |x - mu_k|^2 / (2 sigma^2)]`` with ``sigma = sqrt(2) / 4`` and
      ``mu_k = 2 sqrt(2) (cos(pi k / 4), sin(pi k / 4))``.

    Args:
        name: One of :data:`TOY_DENSITIES`.
        x: Points of shape ``(n, 2)``.

    Returns:
        A float64 array of shape ``(n,)``; ``nan`` for non-finite points of ``"8gaussians"``.

    Raises:
        ValueError: If ``name`` has no closed-form density or ``x`` is not ``(n, 2)``.
    """
    name = _check_density_name(name)
    x = _as_points(x)
    if name == "checkerboard":
        return np.where(in_support(name, x), -math.log(8.0), -np.inf)
    logits = -((x[:, None, :] - _EIGHT_MEANS[None]) ** 2).sum(-1) / (2.0 * _EIGHT_SIGMA**2)
    top = logits.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return lse - math.log(8.0) - math.log(2.0 * math.pi * _EIGHT_SIGMA**2)


def toy_support_mass(name: str) -> float:
    """Probability that a data point lies in :func:`in_support`'s set.

    ``1`` for ``"checkerboard"``. For ``"8gaussians"`` the disks are disjoint, so by symmetry
    the mass is ``sum_c P(|sigma Z + mu_0 - mu_c| <= r)`` with ``r = 3 sigma`` and ``Z`` a
    standard 2-D normal: the own disk gives ``1 - exp(-r^2 / (2 sigma^2))`` and a disk at
    distance ``a`` gives the Rice integral
    ``int_0^r rho / sigma^2 exp(-(rho^2 + a^2) / (2 sigma^2)) I_0(a rho / sigma^2) d rho``,
    computed here by Simpson's rule on 2001 nodes (error far below ``1e-10``).

    Args:
        name: One of :data:`TOY_DENSITIES`.

    Returns:
        The mass, a Python float (``~0.99009`` for ``"8gaussians"``).
    """
    if _check_density_name(name) == "checkerboard":
        return 1.0
    r = EIGHT_GAUSSIANS_SUPPORT_STDS  # in units of sigma from here on
    rho = np.linspace(0.0, r, 2001)
    simpson = np.ones_like(rho)
    simpson[1:-1:2], simpson[2:-1:2] = 4.0, 2.0
    total = 1.0 - math.exp(-0.5 * r**2)
    for a in np.linalg.norm(_EIGHT_MEANS[1:] - _EIGHT_MEANS[0], axis=1) / _EIGHT_SIGMA:
        f = rho * np.exp(-0.5 * (rho**2 + a**2)) * np.i0(a * rho)
        total += float(simpson @ f) * (rho[1] - rho[0]) / 3.0
    return total
