r"""Kinetic-optimal Gaussian paths on a data set (Shaul, Chen, Nickel, Le & Lipman 2023,
"On Kinetic Optimal Probability Paths for Generative Models", ICML).

What follows is derived from the paper's statements (the data enter the kinetic energy through
one scalar "data separation function", the optimal path solves a 1-D ODE, the function tends to
1 as ``n / sqrt(d) -> 0`` and then the cond-OT path is optimal), written in genflow's time
(``t = 0`` data, ``t = 1`` noise), and checked numerically by the tests.

**Kinetic energy.** For ``x_t = alpha_t x_0 + sigma_t eps`` with ``x_0`` uniform on the data
``{x_1..x_n}`` (``(n, d)``), the marginal velocity is ``u_t(x) = E[alpha' x_0 + sigma' eps |
x_t = x] = alpha' m + sigma' eps_hat`` with ``m = E[x_0 | x_t = x]``,
``eps_hat = (x - alpha m)/sigma``, and the posterior over points is a softmax of
``-|x - alpha x_j|^2 / (2 sigma^2)``. Subtracting the conditional variance,

.. math::

    KE = \int_0^1 E|u_t|^2 dt, \qquad
    E|u_t|^2 = \alpha'^2 E|x_0|^2 + \sigma'^2 d - \sigma^2 s'^2\, \mathrm{mmse}(s),
    \qquad s = \alpha/\sigma,

where ``mmse(s) = E|x_0 - E[x_0 | s x_0 + eps]|^2``: since ``x_t / sigma = s x_0 + eps``, the
data enter only through ``s``. For data normalised to mean 0 and ``E|x_0|^2 = d``, the **data
separation function** is

.. math::

    \Lambda(s) = E|E[x_0 | s x_0 + \epsilon]|^2 / d = 1 - \mathrm{mmse}(s)/d \in [0, 1].

With ``y = s x_i + eps`` the posterior logits are ``-s^2 |x_i - x_j|^2 / 2 + s <eps, x_j - x_i>``
and ``mmse = E (1/2) sum_jk w_j w_k |x_j - x_k|^2``: Lambda is built from the pairwise
distances alone. ``Lambda(0) = 0``, ``Lambda(inf) = 1``; Gaussian data ``N(0, I)`` give
``s^2/(1 + s^2)``. If the points are far apart relative to the noise (``n/sqrt(d) -> 0`` for
normalised data) the posterior picks the true point for every ``s > 0`` and ``Lambda -> 1``.

**The 1-D characterisation.** In polar form ``alpha = r sin(theta)``, ``sigma = r cos(theta)``,
``s = tan(theta)``, ``KE/d = int r'^2 + r^2 g(theta) theta'^2 dt`` with
``g = 1 - (1 + s^2)(1 - Lambda(s)) in [0, 1]`` (``mmse`` is at most the linear-estimator error
``d/(1 + s^2)``). The substitution ``phi = G(theta) = int_0^theta sqrt(g)`` makes the metric flat,
``dr^2 + r^2 dphi^2``, so the geodesic (the solution of the Euler-Lagrange ODE of the energy, at
constant speed) is the straight chord from the data ``(r, phi) = (1, Phi)``, ``Phi = G(pi/2)``, to
the noise ``(1, 0)``:

.. math::

    r_t^2 = 1 - 4 t (1 - t) \sin^2(\Phi/2), \quad
    \phi_t = \operatorname{atan2}((1 - t)\sin\Phi,\, t + (1 - t)\cos\Phi), \quad
    \theta_t = G^{-1}(\phi_t), \qquad KE^*/d = 2 - 2\cos\Phi.

If ``Lambda = 1`` then ``g = 1``, ``Phi = pi/2`` and the path is cond-OT (``alpha = 1 - t``,
``sigma = t``, ``KE/d = 2``): the paper's limit.

**Exact and estimated.** Given ``Lambda``, the path is exact up to the quadrature of ``G`` (trapezoid
on a fine ``theta`` grid) and its monotone cubic (PCHIP) interpolant; ``r_t`` and ``phi_t`` are
closed forms. ``Lambda`` itself is a Monte Carlo estimate: the average over data points is exact,
the average over ``eps`` uses ``num_noise`` antithetic draws per point, shared by every ``s``
(common random numbers, so the estimate is smooth in ``s``). It costs ``O(n^2 num_noise)`` per
``s`` value; subsample large data sets. :func:`kinetic_energy` is likewise a Monte Carlo estimate.
Near the noise end (small ``s``) ``mmse(s) ~ tr C - s^2 tr C^2`` with ``C`` the covariance of the
normalised data (``tr C = d``), so ``g ~ theta^2 (tr(C^2)/d - 1)``: of order ``theta^2`` for
anisotropic data, and smaller only for white data (``C = I``, e.g. the 2-D checkerboard), which
look Gaussian at low SNR. There ``theta_t`` moves fast for ``t > 0.99`` and is set by the Monte
Carlo noise of ``g``; that stretch carries almost no energy.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from genflow.processes._base import (
    AbstractGaussianPath,
    pytree_dataclass,
    as_float_array as _as_float,
)

_HALF_PI = 0.5 * math.pi


def _check_data(data, name: str = "data") -> np.ndarray:
    x = np.asarray(data, np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, d) with n >= 2 points; got shape {x.shape}. "
                         "Flatten images to (n, d) first.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf; remove or impute those points.")
    if np.ptp(x, axis=0).max() == 0:
        raise ValueError(f"all points of {name} are equal; a kinetic-optimal path needs distinct points.")
    return x


def _normalize(x: np.ndarray) -> np.ndarray:
    """Centre and scale globally so that the mean squared norm is ``d`` (geometry unchanged)."""
    x = x - x.mean(0)
    return x * math.sqrt(x.shape[1] / np.mean(np.sum(x**2, axis=1)))


def _sq_dists(x):
    xp = np if isinstance(x, np.ndarray) else jnp
    sq = xp.sum(x**2, axis=1)
    return xp.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)


def data_separation(
    data: Float[ArrayLike, "n d"], s: Float[ArrayLike, "..."], *, num_noise: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    r"""Estimate the data separation function ``Lambda(s) = 1 - mmse(s)/d`` of a data set.

    The data are first centred and scaled to ``E|x|^2 = d`` (the paper's normalisation).
    ``mmse(s) = E |x_0 - E[x_0 | s x_0 + eps]|^2`` for ``x_0`` uniform on the points; the
    average over points is exact, over ``eps`` it uses ``num_noise`` antithetic draws per point.

    Args:
      data: ``(n, d)`` points (numpy or jax).
      s: values of ``s = alpha/sigma = e^lambda >= 0`` (any shape; ``inf`` allowed).
      num_noise: noise draws per point (even); default ``max(2, 2 ceil(512/n))``.
      seed: seed of the noise (same seed, same estimate).

    Returns:
      ``Lambda(s)`` in ``[0, 1]`` as float64 numpy, shaped like ``s``.

    Raises:
      ValueError: for data not of shape ``(n, d)``, non-finite or all equal, negative ``s``,
        or an odd or non-positive ``num_noise``.
    """
    x = _normalize(_check_data(data))
    n, d = x.shape
    k = max(2, 2 * math.ceil(512 / n)) if num_noise is None else int(num_noise)
    if k < 2 or k % 2:
        raise ValueError(f"num_noise must be a positive even number (antithetic pairs), got {num_noise}.")
    s_arr = np.asarray(s, np.float64)
    if np.any(np.isnan(s_arr)) or np.any(s_arr < 0):
        raise ValueError("s = alpha/sigma must be >= 0 (use inf for sigma = 0).")
    eps = np.random.default_rng(seed).standard_normal((n, k // 2, d))
    eps = np.concatenate([eps, -eps], axis=1)  # (n, k, d)
    dist = _sq_dists(x)  # (n, n)
    proj = eps @ x.T - np.einsum("ikd,id->ik", eps, x)[..., None]  # <eps_ik, x_j - x_i>
    out = np.empty(s_arr.size)
    for idx, si in enumerate(s_arr.ravel()):
        if np.isinf(si):
            out[idx] = 1.0
            continue
        logits = -0.5 * si**2 * dist[:, None, :] + si * proj
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        if d < n:  # E_w |x_j - m|^2 = E_w |x_j - x_i|^2 - |m - x_i|^2, O(n k n d)
            delta = w @ x - x[:, None, :]
            mmse = np.einsum("ikj,ij->ik", w, dist) - np.sum(delta**2, axis=-1)
        else:  # (1/2) sum_jl w_j w_l |x_j - x_l|^2, O(n k n^2)
            mmse = 0.5 * np.sum((w @ dist) * w, axis=-1)
        out[idx] = 1.0 - np.maximum(mmse, 0.0).mean() / d
    return np.clip(out, 0.0, 1.0).reshape(s_arr.shape)


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson monotone slopes (harmonic means; one-sided three-point ends)."""
    h, delta = np.diff(x), np.diff(y) / np.diff(x)
    m = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = delta[:-1] * delta[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        m[1:-1] = np.where(same, (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:]), 0.0)
    for end, (h0, h1, d0, d1) in ((0, (h[0], h[1], delta[0], delta[1])),
                                  (-1, (h[-1], h[-2], delta[-1], delta[-2]))):
        me = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(me) != np.sign(d0):
            me = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(me) > 3 * abs(d0):
            me = 3 * d0
        m[end] = me
    return m


@pytree_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class KineticOptimalPath(AbstractGaussianPath):
    r"""The kinetic-optimal Gaussian path of a data set (see the module notes).

    ``alpha_t = r_t sin(theta_t)``, ``sigma_t = r_t cos(theta_t)``, ``lambda_t = log tan(theta_t)``
    with the closed forms ``r_t``, ``phi_t`` of the chord and ``theta_t = G^{-1}(phi_t)`` a monotone
    piecewise-cubic Hermite (PCHIP) interpolant of the table ``(phi_k, theta_k)``. ``t = 0`` gives
    ``(1, 0)`` and ``t = 1`` gives ``(0, 1)`` exactly (``lambda = +-inf``; sample from
    ``t_start < 1`` with eps/x0 models, as for :class:`RectifiedFlow`). The prior is ``N(0, I)``;
    the path is optimal for data centred and scaled to ``E|x|^2 = d`` as in :func:`data_separation`.
    The tables are pytree leaves (``eq=False``: instances compare by identity).

    Attributes:
      phi: ``(k,)`` knots ``phi_k = G(theta_k)``, increasing from 0 to ``Phi``.
      theta: ``(k,)`` angles ``theta_k``, increasing from 0 to ``pi/2``.
      slope: ``(k,)`` PCHIP slopes ``d theta/d phi`` at the knots.
    """

    phi: Float[Array, "k"]
    theta: Float[Array, "k"]
    slope: Float[Array, "k"]

    def __post_init__(self):
        leaves = (self.phi, self.theta, self.slope)
        if any(isinstance(v, jax.core.Tracer) for v in leaves):
            return
        phi, theta, slope = (np.asarray(v, np.float64) for v in leaves)
        if not (phi.ndim == 1 and phi.shape == theta.shape == slope.shape and phi.size >= 3):
            raise ValueError("phi, theta and slope must be 1-D of one length >= 3; build the path "
                             "with KineticOptimalPath.from_data or from_angle_table.")
        if not (np.all(np.diff(phi) > 0) and np.all(np.diff(theta) > 0) and np.all(slope >= 0)):
            raise ValueError("phi and theta must increase strictly (and slopes be >= 0).")
        # pi/2 to float32 precision: a table written in float32 may be read in float64.
        at_half_pi = abs(theta[-1] - math.pi / 2) <= 4 * float(np.finfo(np.float32).eps)
        if phi[0] != 0 or theta[0] != 0 or not at_half_pi or not 0 < phi[-1] <= math.pi:
            raise ValueError("the table must run from (phi, theta) = (0, 0) to (Phi, pi/2) with "
                             f"0 < Phi <= pi; got phi in [{phi[0]}, {phi[-1]}], theta in "
                             f"[{theta[0]}, {theta[-1]}].")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_angle_table(cls, theta: ArrayLike, phi: ArrayLike) -> KineticOptimalPath:
        """The path of a tabulated ``phi = G(theta)``, ``theta`` from 0 to ``pi/2``, both increasing.

        The table is stored in the default float dtype (float32 unless x64 is enabled); knots
        that rounding makes equal are dropped.
        """
        theta, phi = np.asarray(theta, np.float64), np.asarray(phi, np.float64)
        if theta.shape != phi.shape or theta.ndim != 1 or theta.size < 3:
            raise ValueError("theta and phi must be 1-D arrays of one length >= 3.")
        dtype = jnp.result_type(float)
        th, ph = theta.astype(dtype), phi.astype(dtype)
        keep = np.r_[(np.diff(th) != 0) & (np.diff(ph) != 0), True]
        slope = _pchip_slopes(phi[keep], theta[keep])
        return cls(jnp.asarray(ph[keep]), jnp.asarray(th[keep]), jnp.asarray(slope, dtype))

    @classmethod
    def from_data(cls, data: Float[ArrayLike, "n d"], *, num_points: int = 512,
                  num_noise: int | None = None, seed: int = 0) -> KineticOptimalPath:
        """Estimate ``Lambda`` (:func:`data_separation`) on about ``1.5 num_points`` angles, denser
        where ``s = tan(theta)`` is large, integrate ``G = int sqrt(g) dtheta`` by the trapezoid
        rule and build the path."""
        if num_points < 16:
            raise ValueError(f"num_points must be >= 16, got {num_points}.")
        theta = np.unique(np.concatenate([np.linspace(0.0, _HALF_PI, num_points),
                                          np.arctan(np.geomspace(1e-2, 1e4, num_points // 2))]))
        s = np.where(theta < _HALF_PI, np.tan(theta), np.inf)
        lam = data_separation(data, s, num_noise=num_noise, seed=seed)
        with np.errstate(invalid="ignore"):
            g = np.where(np.isinf(s), 1.0, 1.0 - (1.0 + s**2) * (1.0 - lam))
        root = np.sqrt(np.clip(g, 1e-12, 1.0))  # the floor keeps G strictly increasing
        phi = np.concatenate([[0.0], np.cumsum(0.5 * (root[1:] + root[:-1]) * np.diff(theta))])
        return cls.from_angle_table(theta, phi)

    @property
    def total_angle(self) -> Array:
        """``Phi = G(pi/2)``; the optimal energy is ``(2 - 2 cos Phi) d``."""
        return self.phi[-1]

    # ------------------------------------------------------------------ evaluation
    def _table(self, dtype):
        return self.phi.astype(dtype), self.theta.astype(dtype), self.slope.astype(dtype)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        r, th, co = _angle(*self._table(t.dtype), t)
        return r * jnp.sin(th), r * jnp.sin(co)

    def log_snr(self, t: ArrayLike) -> Array:
        t = _as_float(t)
        _, th, co = _angle(*self._table(t.dtype), t)
        return jnp.log(jnp.sin(th)) - jnp.log(jnp.sin(co))

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        """``theta = atan(e^lambda)``, then ``phi`` by 60 bisections of the monotone cubic on its
        segment, then ``t = sin(Phi - phi) / (sin(Phi - phi) + sin(phi))`` (the chord)."""
        lam = _as_float(lam)
        return _t_from_log_snr(*self._table(lam.dtype), lam)


# Pure functions of the table, jitted once (eagerly, op-by-op dispatch compiles dozens of ops).
def _hermite(u, h, y0, y1, m0, m1):
    """The cubic Hermite interpolant in basis form (exact at ``u = 0`` and ``u = 1``)."""
    return ((1 + 2 * u) * (1 - u) ** 2 * y0 + u**2 * (3 - 2 * u) * y1
            + h * (u * (1 - u) ** 2 * m0 + u**2 * (u - 1) * m1))


@jax.jit
def _angle(phi, theta, slope, t):
    """``(r_t, theta_t, pi/2 - theta_t)``. ``phi_t`` is measured from the nearer end of the chord,
    so ``t = 0`` and ``t = 1`` land exactly on the first and last knots."""
    big = phi[-1]
    r = jnp.sqrt(1.0 - 4.0 * t * (1.0 - t) * jnp.sin(0.5 * big) ** 2)
    from_data = big - jnp.arctan2(t * jnp.sin(big), 1.0 - t + t * jnp.cos(big))
    from_noise = jnp.arctan2((1.0 - t) * jnp.sin(big), t + (1.0 - t) * jnp.cos(big))
    p = jnp.clip(jnp.where(t <= 0.5, from_data, from_noise), 0.0, big)
    k = jnp.clip(jnp.searchsorted(phi, p, side="right") - 1, 0, phi.shape[0] - 2)
    h = phi[k + 1] - phi[k]
    th = _hermite((p - phi[k]) / h, h, theta[k], theta[k + 1], slope[k], slope[k + 1])
    th = jnp.clip(th, 0.0, theta[-1])
    return r, th, theta[-1] - th


@jax.jit
def _t_from_log_snr(phi, theta, slope, lam):
    th = jnp.where(lam > 0, theta[-1] - jnp.arctan(jnp.exp(-lam)), jnp.arctan(jnp.exp(lam)))
    k = jnp.clip(jnp.searchsorted(theta, th, side="right") - 1, 0, theta.shape[0] - 2)
    h = phi[k + 1] - phi[k]

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        below = _hermite(mid, h, theta[k], theta[k + 1], slope[k], slope[k + 1]) < th
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, body, (jnp.zeros_like(th), jnp.ones_like(th)))
    p = phi[k] + 0.5 * (lo + hi) * h
    p = jnp.where(th >= theta[-1], phi[-1], jnp.where(th <= 0, 0.0, p))
    a, b = jnp.sin(phi[-1] - p), jnp.sin(p)
    return a / (a + b)


@jax.jit
def _energy(path, x, eps, ts, weights):
    dist, proj = _sq_dists(x), jnp.einsum("ikd,jd->ikj", eps, x) - jnp.einsum("ikd,id->ik", eps, x)[..., None]

    def density(t):
        alpha, sigma = path.marginal(t)
        d_alpha, d_sigma = path.marginal_derivative(t)
        s = alpha / sigma
        w = jax.nn.softmax(-0.5 * s**2 * dist[:, None, :] + s * proj, axis=-1)
        delta = jnp.einsum("ikj,jd->ikd", w, x) - x[:, None, :]  # m - x_i
        u = d_alpha * (x[:, None, :] + delta) + d_sigma * (eps - s * delta)  # alpha' m + sigma' eps_hat
        return jnp.mean(jnp.sum(u**2, axis=-1))

    return jnp.sum(weights * jax.lax.map(density, ts))


def kinetic_energy(
    path: AbstractGaussianPath, data: Float[ArrayLike, "n d"], *, key: PRNGKeyArray,
    t_min: float = 1e-3, t_max: float = 1.0 - 1e-3, num_times: int = 64, num_noise: int = 16,
    normalize: bool = False,
) -> Array:
    r"""Monte Carlo kinetic energy ``int_{t_min}^{t_max} E|u_t(x_t)|^2 dt`` of ``path`` on ``data``.

    ``x_0`` is uniform on the points (as given, or with ``normalize=True`` centred and scaled to
    ``E|x|^2 = d`` as for :class:`KineticOptimalPath`, whose optimality refers to that scale;
    on other scales it is not optimal), ``x_t = alpha x_i +
    sigma eps`` with ``num_noise`` antithetic draws of ``eps`` per point (the same draws at every
    time), and the marginal velocity ``u_t = alpha' m + sigma' eps_hat`` is exact: ``m`` is the
    softmax posterior mean over the points and ``eps_hat = eps - s (m - x_i)``. The time integral
    is Gauss-Legendre with ``num_times`` nodes in ``v = logit(t)`` (``dt = t(1 - t) dv``), which
    absorbs the ``1/t`` growth of ``sigma'^2`` of diffusion paths near the data. The ends are
    excluded because ``s = alpha/sigma`` is infinite or zero there and diffusion paths diverge.

    Returns:
      The energy (a scalar in the data's float dtype, at least float32).

    Raises:
      ValueError: for bad data, ``num_noise`` not even and positive, or not
        ``0 < t_min < t_max < 1``.
    """
    x_np = _normalize(_check_data(data)) if normalize else _check_data(data)
    if not 0.0 < t_min < t_max < 1.0:
        raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min}, t_max={t_max}.")
    if num_noise < 2 or num_noise % 2:
        raise ValueError(f"num_noise must be a positive even number, got {num_noise}.")
    dtype = jnp.result_type(jnp.asarray(data).dtype, jnp.float32)
    x = jnp.asarray(x_np, dtype)
    eps = jax.random.normal(key, (x.shape[0], num_noise // 2, x.shape[1]), dtype)
    eps = jnp.concatenate([eps, -eps], axis=1)
    nodes, w = np.polynomial.legendre.leggauss(num_times)
    v0, v1 = math.log(t_min / (1 - t_min)), math.log(t_max / (1 - t_max))
    v = 0.5 * (v1 - v0) * nodes + 0.5 * (v1 + v0)
    t = 1.0 / (1.0 + np.exp(-v))
    weights = 0.5 * (v1 - v0) * w * t * (1.0 - t)
    return _energy(path, x, eps, jnp.asarray(t, dtype), jnp.asarray(weights, dtype))
