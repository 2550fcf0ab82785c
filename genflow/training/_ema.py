r"""EMA profiles: warm-up decay, power-function EMA and EDM2 post-hoc reconstruction.

Everything here is pure: the decays are ``jax.numpy`` functions of a (possibly traced) step,
and the post-hoc reconstruction is host-side float64 NumPy that never touches a network.

**Conventions.** Step ``t`` counts optimizer updates from 1: ``p_t`` are the parameters after
the ``t``-th optimizer step and the EMA after it is

.. math::  \bar p_t = \beta_t \, \bar p_{t-1} + (1 - \beta_t)\, p_t ,

with ``beta_t`` the *decay* returned by :func:`ema_decay` or :func:`power_decay` at ``step=t``
and :math:`\bar p_0 = p_0` (the EMA starts as a copy of the initial parameters).

**Power-function EMA** (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", EDM2). With :math:`\beta_t = (1 - 1/t)^{\gamma+1}` the first update has
:math:`\beta_1 = 0`, so :math:`\bar p_0` is forgotten, and the product telescopes:
:math:`\prod_{s=t+1}^{T} \beta_s = (t/T)^{\gamma+1}`, hence exactly (discrete time, no
continuum approximation)

.. math::  \bar p_T = \sum_{t=1}^{T} w_{T,\gamma}(t)\, p_t, \qquad
           w_{T,\gamma}(t) = \frac{t^{\gamma+1} - (t-1)^{\gamma+1}}{T^{\gamma+1}},

whose weights sum to 1 (the numerators telescope to :math:`T^{\gamma+1}`). In the continuum
limit the kernel is :math:`(\gamma+1) t^\gamma / T^{\gamma+1}` on :math:`[0, T]`, whose standard
deviation relative to ``T`` is EDM2's ``sigma_rel`` (:func:`gamma_to_sigma_rel`).

**Post-hoc EMA.** Snapshots :math:`\bar p^{(i)}` of a few power EMAs ``(T_i, gamma_i)`` saved
during training are combined, after training, into :math:`\sum_i c_i \bar p^{(i)}`, whose
kernel :math:`\sum_i c_i w_{T_i,\gamma_i}` is the least-squares fit (over ``t = 1..max T_i``)
to the kernel of a target profile ``(T*, gamma*)`` (:func:`posthoc_coefficients`,
:func:`reconstruct`). Whatever the trajectory, Cauchy–Schwarz bounds the error per coordinate:
:math:`|\sum_i c_i \bar p^{(i)} - \bar p^*| \le \|r\|_2 \, \|p\|_2`, with ``r`` the kernel
difference (its relative norm is returned with the coefficients).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "SIGMA_REL_MAX",
    "ema_decay",
    "gamma_to_sigma_rel",
    "posthoc_coefficients",
    "power_decay",
    "power_kernel",
    "reconstruct",
    "sigma_rel_to_gamma",
]

_GAMMA_AT_MAX = (np.sqrt(5.0) - 3.0) / 2.0  # root of g^2 + 3g + 1, where sigma_rel(g) peaks
SIGMA_REL_MAX: float = float(
    np.sqrt((_GAMMA_AT_MAX + 1) / ((_GAMMA_AT_MAX + 2) ** 2 * (_GAMMA_AT_MAX + 3)))
)
"""The largest relative width a power-function EMA can have (about 0.3003, at
``gamma = (sqrt(5) - 3) / 2``); every ``sigma_rel`` in ``(0, SIGMA_REL_MAX]`` has one
``gamma >= (sqrt(5) - 3) / 2``."""


def _float_dtype():
    """The default floating dtype: float64 with ``jax_enable_x64``, float32 otherwise."""
    return jnp.result_type(float)


# --------------------------------------------------------------------------- decays


def ema_decay(step: ArrayLike, *, decay: float, warmup_power: float = 0.0) -> jax.Array:
    r"""The decay :math:`\beta` of the update that produces the EMA after optimizer step ``step``.

    .. math::
        \beta(s) = \begin{cases}
            \beta_{\max} & \text{warmup\_power} = 0, \\
            \min\!\big(\beta_{\max},\ \max(0,\ 1 - (1 + s)^{-\text{warmup\_power}})\big)
                & \text{warmup\_power} > 0,
        \end{cases}

    with :math:`\beta_{\max}` = ``decay``. The second case is k-diffusion's ``EMAWarmup`` with
    ``inv_gamma = 1``, ``min_value = 0``, ``max_value = decay``, whose ``get_value()`` is
    :math:`1 - (1 + e)^{-\text{power}}` at its counter ``e = last_epoch``. k-diffusion's loop
    reads ``get_value()`` *before* ``step()``, so its ``n``-th update (``n`` from 1) uses
    ``e = n - 1`` and its first update has decay 0 (a copy). Here the ``s``-th update uses
    ``e = s``: our value at ``step = s`` is k-diffusion's at its update ``s + 1``, one update
    ahead; the first update keeps weight :math:`1 - 2^{-p}` on the initial parameters.
    For ``power = 2/3`` the decay reaches 0.999 at step :math:`10^{4.5} - 1 \approx 31.6`\ K and
    0.9999 at :math:`10^6 - 1`.

    The power is evaluated as :math:`-\mathrm{expm1}(-p \log(1 + s))`, accurate also where the
    decay is close to 1.

    Args:
      step: optimizer step, from 1 for the first update; an integer array, traced under
        ``jit`` (no Python branching on it). Steps below 0 are treated as 0.
      decay: the constant decay, or the cap of the warm-up, in ``[0, 1]``.
      warmup_power: the warm-up exponent ``p`` (a static Python float); 0 turns warm-up off.

    Returns:
      The decay, shaped like ``step``, in the default float dtype (float64 under
      ``jax_enable_x64``); cast it to the parameters' dtype before mixing, so that an x64 run
      does not promote float32 parameters.

    Raises:
      ValueError: if ``warmup_power`` is negative or a Python ``decay`` is outside ``[0, 1]``.
    """
    warmup_power = float(warmup_power)
    if warmup_power < 0.0:
        raise ValueError(f"warmup_power must be >= 0 (0 disables warm-up), got {warmup_power}.")
    if isinstance(decay, (int, float)) and not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}.")
    dtype = _float_dtype()
    s = jnp.asarray(step).astype(dtype)
    cap = jnp.asarray(decay, dtype)
    if warmup_power == 0.0:
        return jnp.broadcast_to(cap, s.shape)
    warm = -jnp.expm1(-warmup_power * jnp.log1p(jnp.maximum(s, 0.0)))
    return jnp.clip(warm, 0.0, cap)


def power_decay(step: ArrayLike, gamma: ArrayLike) -> jax.Array:
    r"""The decay of the power-function EMA with exponent ``gamma`` at optimizer step ``step``.

    .. math::  \beta_t = (1 - 1/t)^{\gamma + 1}, \qquad t \ge 1,

    so :math:`\beta_1 = 0` (the first update copies the parameters) and the EMA after step
    ``T`` is exactly :math:`\sum_{t \le T} w_{T,\gamma}(t)\, p_t` with
    :math:`w_{T,\gamma}(t) = (t^{\gamma+1} - (t-1)^{\gamma+1}) / T^{\gamma+1}`
    (:func:`power_kernel`). Evaluated as :math:`\exp((\gamma+1)\,\mathrm{log1p}(-1/t))`, which
    stays accurate in float32 at :math:`t \sim 10^6` where :math:`1 - 1/t` would not.

    Args:
      step: optimizer step, from 1; integer array, may be traced. Steps below 1 are treated
        as 1 (decay 0).
      gamma: the exponent, ``> -1`` (see :func:`sigma_rel_to_gamma`); scalar or array,
        may be traced.

    Returns:
      The decay in the default float dtype, broadcast over ``step`` and ``gamma``.

    Raises:
      ValueError: if a Python or NumPy ``gamma`` is not ``> -1`` (a ``jax.Array``, possibly
        traced, is not checked).
    """
    if isinstance(gamma, (int, float, np.ndarray, np.generic)) and np.any(
            ~(np.asarray(gamma) > -1.0)):
        raise ValueError(f"gamma must be > -1 for a power-function EMA, got {gamma}.")
    dtype = _float_dtype()
    t = jnp.maximum(jnp.asarray(step).astype(dtype), 1.0)
    g = jnp.asarray(gamma, dtype)
    return jnp.exp((g + 1.0) * jnp.log1p(-1.0 / t))


# --------------------------------------------------------------------------- sigma_rel <-> gamma


def gamma_to_sigma_rel(gamma: ArrayLike) -> np.ndarray | float:
    r"""Relative standard deviation of the power-function EMA kernel (EDM2, Eq. 123).

    .. math::  \sigma_{\text{rel}}(\gamma) = \sqrt{\frac{\gamma+1}{(\gamma+2)^2(\gamma+3)}},

    the standard deviation of the continuous kernel :math:`(\gamma+1) t^\gamma` on ``[0, 1]``.

    Args:
      gamma: exponent(s), ``> -1``.

    Returns:
      float64 array like ``gamma`` (a Python float for a scalar).

    Raises:
      ValueError: if any ``gamma <= -1``.
    """
    g = np.asarray(gamma, dtype=np.float64)
    if np.any(~(g > -1.0)):
        raise ValueError(f"gamma must be > -1, got {gamma}.")
    s = np.sqrt((g + 1.0) / ((g + 2.0) ** 2 * (g + 3.0)))
    return float(s) if s.ndim == 0 else s


def sigma_rel_to_gamma(sigma_rel: ArrayLike) -> np.ndarray | float:
    r"""The exponent :math:`\gamma` whose power-function EMA has relative width ``sigma_rel``.

    Squaring :math:`\sigma^2 = (\gamma+1)/((\gamma+2)^2(\gamma+3))` and writing
    :math:`\tau = \sigma^{-2}` gives EDM2's cubic (Eq. 126, Algorithm 2)

    .. math::  \gamma^3 + 7\gamma^2 + (16 - \tau)\gamma + (12 - \tau) = 0 .

    Substituting :math:`\gamma = y - 7/3` depresses it to :math:`y^3 + P y + Q = 0` with
    :math:`P = -(\tau + 1/3)`, :math:`Q = 4\tau/3 + 2/27`. For
    :math:`0 < \sigma \le \sigma_{\max}` (:data:`SIGMA_REL_MAX`) its three roots are real and
    the wanted one, on the branch where :math:`\sigma` decreases with :math:`\gamma`, is the
    largest (Viète's trigonometric form):

    .. math::  \gamma = 2 r \cos\!\Big(\tfrac13 \arccos\!\big(-\tfrac{Q}{2 r^3}\big)\Big)
               - \tfrac73, \qquad r = \sqrt{(\tau + 1/3)/3}.

    For small :math:`\sigma`, :math:`\gamma \approx 1/\sigma - 3`. Examples: 0.05 -> 16.972,
    0.10 -> 6.937.

    Args:
      sigma_rel: relative width(s) in ``(0, SIGMA_REL_MAX]``.

    Returns:
      float64 array like ``sigma_rel`` (a Python float for a scalar).

    Raises:
      ValueError: if any ``sigma_rel`` is outside ``(0, SIGMA_REL_MAX]``.
    """
    s = np.asarray(sigma_rel, dtype=np.float64)
    if np.any(~(s > 0.0)) or np.any(s > SIGMA_REL_MAX * (1 + 1e-12)):
        raise ValueError(
            f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.6f}] (the widest power-function EMA), "
            f"got {sigma_rel}."
        )
    tau = s ** -2.0
    r = np.sqrt((tau + 1.0 / 3.0) / 3.0)
    cos_arg = np.clip(-(4.0 * tau / 3.0 + 2.0 / 27.0) / (2.0 * r**3), -1.0, 1.0)
    g = 2.0 * r * np.cos(np.arccos(cos_arg) / 3.0) - 7.0 / 3.0
    return float(g) if g.ndim == 0 else g


# --------------------------------------------------------------------------- discrete kernels


def _one_minus_power_decay(t: np.ndarray, gamma: float) -> np.ndarray:
    r""":math:`e_\gamma(t) = 1 - (1 - 1/t)^{\gamma+1} = d_\gamma(t) / t^{\gamma+1}`, stably.

    Computed as :math:`-\mathrm{expm1}((\gamma+1)\,\mathrm{log1p}(-1/t))`: no cancellation at
    large ``t`` (where :math:`t^{\gamma+1} - (t-1)^{\gamma+1}` would lose all its digits),
    exactly 1 at ``t = 1``.
    """
    with np.errstate(divide="ignore"):
        return -np.expm1((gamma + 1.0) * np.log1p(-1.0 / t))


def power_kernel(step: int, gamma: float) -> np.ndarray:
    r"""The exact weights of the power-function EMA after ``step`` updates, on ``t = 1..step``.

    .. math::  w_{T,\gamma}(t) = \frac{t^{\gamma+1} - (t-1)^{\gamma+1}}{T^{\gamma+1}}
               = e_\gamma(t)\,(t/T)^{\gamma+1}, \qquad
               e_\gamma(t) = 1 - (1 - 1/t)^{\gamma+1},

    evaluated in the second form, which neither overflows (:math:`T^{\gamma+1}` does for
    :math:`T = 10^6, \gamma \gtrsim 50`) nor cancels. ``power_kernel(T, g) @ p[:T]`` is the
    EMA of the trajectory ``p`` (``p[0]`` being :math:`p_1`) tracked with :func:`power_decay`.

    Args:
      step: ``T >= 1``.
      gamma: exponent ``> -1``.

    Returns:
      float64 array of shape ``(T,)``, summing to 1.
    """
    step = _check_step(step, "step")
    gamma = _check_gamma(gamma, "gamma")
    t = np.arange(1, step + 1, dtype=np.float64)
    return _one_minus_power_decay(t, gamma) * np.exp((gamma + 1.0) * np.log(t / step))


def _check_step(step: Any, name: str) -> int:
    value = int(step)
    if value != step or value < 1:
        raise ValueError(f"{name} must be a positive integer (optimizer steps count from 1), "
                         f"got {step}.")
    return value


def _check_gamma(gamma: Any, name: str) -> float:
    value = float(gamma)
    if not value > -1.0:
        raise ValueError(f"{name} must be > -1 (see sigma_rel_to_gamma), got {gamma}.")
    return value


# --------------------------------------------------------------------------- post-hoc EMA


def posthoc_coefficients(
    snapshot_steps: Sequence[int] | ArrayLike,
    snapshot_gammas: Sequence[float] | ArrayLike,
    target_step: int,
    target_gamma: float,
    *,
    rcond: float = 1e-14,
) -> tuple[np.ndarray, float]:
    r"""Coefficients that combine power-EMA snapshots into another profile (EDM2 post-hoc EMA).

    Given snapshots of power EMAs :math:`(T_i, \gamma_i)`, ``i = 1..n``, and a target
    :math:`(T^*, \gamma^*)`, returns the least-squares solution of

    .. math::  \min_c \sum_{t=1}^{\max_i T_i}
               \Big(\sum_i c_i\, w_{T_i,\gamma_i}(t) - w_{T^*,\gamma^*}(t)\Big)^2,

    with the *discrete* kernels :math:`w` of :func:`power_kernel` (EDM2 uses their continuous
    limit), through the Gram system :math:`G c = b`, :math:`G_{ij} = \langle w_i, w_j\rangle`,
    :math:`b_i = \langle w_i, w^*\rangle`.

    The inner products are exact sums, computed without an ``n x T`` matrix. With
    :math:`d_\gamma(t) = t^{\gamma+1} - (t-1)^{\gamma+1}`, :math:`M = \min(T_i, T_j)` and
    :math:`S_{ab}(M) = \sum_{t \le M} d_a(t)\, d_b(t)`,

    .. math::  \langle w_i, w_j \rangle = \frac{S_{\gamma_i\gamma_j}(M)}
               {T_i^{\gamma_i+1} T_j^{\gamma_j+1}}
               = R_{\gamma_i\gamma_j}(M)\,\Big(\frac{M}{\max(T_i,T_j)}\Big)^{\gamma_\ell+1},
               \qquad R_{ab}(M) = \frac{S_{ab}(M)}{M^{a+b+2}},

    where :math:`\gamma_\ell` is the exponent of the longer of the two snapshots. ``S`` itself
    overflows float64 (:math:`10^{6(a+b+1)}`), so the normalised cumulative sum ``R`` is
    built instead, once per distinct pair of exponents over ``t = 1..max T``, and read only at
    the distinct steps :math:`u_1 < \dots < u_K` of the snapshots and the target:

    .. math::  R_{ab}(u_k) = \Big(\frac{u_{k-1}}{u_k}\Big)^{a+b+2} R_{ab}(u_{k-1})
               + \sum_{u_{k-1} < t \le u_k} e_a(t)\, e_b(t)\,(t/u_k)^{a+b+2},

    with :math:`e_\gamma(t) = d_\gamma(t)/t^{\gamma+1} = -\mathrm{expm1}((\gamma+1)
    \mathrm{log1p}(-1/t)) \in (0, 1]`: all terms are positive and at most 1, so there is no
    overflow, no cancellation, and only float64 round-off. The system is solved by
    ``np.linalg.lstsq`` after scaling every kernel to unit norm (``G`` is ill-conditioned when
    snapshots are dense); the singular values below ``rcond`` times the largest are dropped.

    The coefficients are the unconstrained optimum; they sum to 1 up to the kernel residual
    (EDM2 renormalises them to sum exactly to 1, which moves them off the optimum; we do not).
    All snapshots take part, also those after ``T*`` (their kernels can cancel one another's
    mass after ``T*``), and duplicates are harmless.

    Args:
      snapshot_steps: ``(n,)`` optimizer steps ``T_i >= 1`` at which the snapshots were taken.
      snapshot_gammas: ``(n,)`` exponents ``gamma_i > -1`` of the snapshots (a scalar is
        broadcast).
      target_step: ``T* >= 1``, at most the latest snapshot step.
      target_gamma: ``gamma* > -1`` of the wanted profile (:func:`sigma_rel_to_gamma`).
      rcond: relative cut-off of small singular values, passed to ``np.linalg.lstsq``.

    Returns:
      ``(coeffs, relative_residual)``: ``coeffs`` a float64 ``(n,)`` array, and
      :math:`\|\sum_i c_i w_i - w^*\|_2 / \|w^*\|_2`, the kernel misfit, evaluated directly
      (not from the Gram form, which cancels). Multiplied by :math:`\|w^*\|_2`
      (``np.linalg.norm(power_kernel(T*, gamma*))``) and by :math:`\|p\|_2` over the
      trajectory it bounds the reconstruction error of each coordinate.

    Raises:
      ValueError: if there is no snapshot, the lengths differ, a step is not a positive
        integer, an exponent is not ``> -1``, or ``target_step`` exceeds the latest snapshot.
    """
    steps_in = np.asarray(snapshot_steps)
    if steps_in.ndim != 1 or steps_in.size == 0:
        raise ValueError("posthoc_coefficients needs at least one snapshot: pass a 1-D sequence "
                         f"of snapshot steps, got shape {steps_in.shape}.")
    gammas_in = np.asarray(snapshot_gammas, dtype=np.float64)
    if gammas_in.ndim == 0:
        gammas_in = np.full(steps_in.shape, float(gammas_in))
    if gammas_in.shape != steps_in.shape:
        raise ValueError(f"snapshot_steps and snapshot_gammas must have the same length, got "
                         f"{steps_in.shape[0]} and {gammas_in.shape[0] if gammas_in.ndim else 1}.")
    steps = np.array([_check_step(s, "every snapshot step") for s in steps_in], dtype=np.int64)
    gammas = np.array([_check_gamma(g, "every snapshot gamma") for g in gammas_in])
    target_step = _check_step(target_step, "target_step")
    target_gamma = _check_gamma(target_gamma, "target_gamma")
    if target_step > steps.max():
        raise ValueError(
            f"target_step={target_step} is after the latest snapshot (step {steps.max()}): the "
            "snapshots hold nothing about the parameters after it. Pick a target step at most "
            "the latest snapshot step."
        )

    # Distinct steps u_1 < ... < u_K (snapshots and target), distinct exponents.
    u = np.unique(np.append(steps, target_step))
    t_max = int(u[-1])
    exps = np.unique(np.append(gammas, target_gamma))
    ex_of = np.searchsorted(exps, gammas)
    ex_target = int(np.searchsorted(exps, target_gamma))

    t = np.arange(1, t_max + 1, dtype=np.float64)
    k_of_t = np.searchsorted(u, np.arange(1, t_max + 1), side="left")  # u[k-1] < t <= u[k]
    u_of_t = u[k_of_t].astype(np.float64)
    log_ratio = np.log1p((t - u_of_t) / u_of_t)  # log(t / u_k) <= 0, accurate near t = u_k
    e = [_one_minus_power_decay(t, g) for g in exps]
    starts = np.concatenate([[0], u[:-1]])  # 0-based index of the first t of each interval

    # R[a, b, k] = R_ab(u_k).
    n_ex, n_u = len(exps), len(u)
    R = np.empty((n_ex, n_ex, n_u))
    step_ratio = np.concatenate([[0.0], u[:-1] / u[1:]])  # u_{k-1} / u_k
    for a in range(n_ex):
        for b in range(a, n_ex):
            c = exps[a] + exps[b] + 2.0
            local = np.add.reduceat(e[a] * e[b] * np.exp(c * log_ratio), starts)
            carry = step_ratio**c
            acc = np.empty(n_u)
            acc[0] = local[0]
            for k in range(1, n_u):
                acc[k] = acc[k - 1] * carry[k] + local[k]
            R[a, b] = R[b, a] = acc

    k_of_step = np.searchsorted(u, steps)
    k_target = int(np.searchsorted(u, target_step))

    def inner(k1, ex1, k2, ex2):
        """<w_1, w_2> for broadcastable index arrays of step (into u) and exponent."""
        short = np.minimum(k1, k2)
        longer_ex = np.where(k1 >= k2, ex1, ex2)
        ratio = u[short] / u[np.maximum(k1, k2)]
        return R[ex1, ex2, short] * ratio ** (exps[longer_ex] + 1.0)

    gram = inner(k_of_step[:, None], ex_of[:, None], k_of_step[None, :], ex_of[None, :])
    rhs = inner(k_of_step, ex_of, k_target, ex_target)

    scale = 1.0 / np.sqrt(np.diag(gram))  # unit-norm kernels: a meaningful rcond
    y, *_ = np.linalg.lstsq(gram * scale[:, None] * scale[None, :], rhs * scale, rcond=rcond)
    coeffs = y * scale

    # Kernel difference r(t), evaluated directly. For t in (u_{k-1}, u_k] a kernel (T_i, g) with
    # T_i >= u_k is e_g(t) (t/u_k)^(g+1) (u_k/T_i)^(g+1), so
    # r(t) = sum_g e_g(t) (t/u_k)^(g+1) D[g, k], D[g, k] = sum_{i: g_i=g, T_i>=u_k} c_i (u_k/T_i)^(g+1)
    # (the target enters as one more kernel with coefficient -1).
    all_k = np.append(k_of_step, k_target)
    all_ex = np.append(ex_of, ex_target)
    all_c = np.append(coeffs, -1.0)
    covers = u[None, :] <= u[all_k][:, None]  # (n + 1, K)
    ratio = np.minimum(u[None, :] / u[all_k][:, None], 1.0)
    shrink = np.where(covers, ratio ** (exps[all_ex][:, None] + 1.0), 0.0)
    residual = np.zeros(t_max)
    target_kernel = np.zeros(t_max)
    for a in range(n_ex):
        D = all_c[all_ex == a] @ shrink[all_ex == a]  # (K,)
        base = e[a] * np.exp((exps[a] + 1.0) * log_ratio)
        residual += base * D[k_of_t]
        if a == ex_target:
            target_kernel = base * shrink[-1][k_of_t]
    relative = float(np.linalg.norm(residual) / np.linalg.norm(target_kernel))
    return coeffs, relative


def reconstruct(snapshots: Sequence[Any], coeffs: ArrayLike) -> Any:
    r"""The pytree :math:`\sum_i c_i\, \text{snapshot}_i`, accumulated in float64 on the host.

    Each leaf is summed in float64 NumPy and cast back to that leaf's dtype (float32,
    bfloat16, ...). A leaf that is a ``jax.Array`` comes back as a ``jax.Array`` on the first
    snapshot's sharding; any other leaf comes back as a NumPy array.

    Args:
      snapshots: ``n`` pytrees of the same structure with floating-point leaves, e.g. the
        stored EMA parameters of each snapshot.
      coeffs: ``(n,)`` coefficients, from :func:`posthoc_coefficients`.

    Returns:
      A pytree of the snapshots' structure.

    Raises:
      ValueError: if there is no snapshot, the counts differ or the structures differ.
      TypeError: if a leaf is not floating point.
    """
    snapshots = list(snapshots)
    c = np.asarray(coeffs, dtype=np.float64)
    if not snapshots:
        raise ValueError("reconstruct needs at least one snapshot.")
    if c.shape != (len(snapshots),):
        raise ValueError(f"need one coefficient per snapshot: {len(snapshots)} snapshots, "
                         f"coefficients of shape {c.shape}.")
    leaves0, treedef = jax.tree.flatten(snapshots[0])
    columns = [leaves0]
    for i, snap in enumerate(snapshots[1:], start=1):
        leaves, tdef = jax.tree.flatten(snap)
        if tdef != treedef:
            raise ValueError(f"snapshot {i} has tree structure {tdef}, snapshot 0 has {treedef}.")
        columns.append(leaves)

    out = []
    for j, leaf in enumerate(leaves0):
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"reconstruct averages floating-point leaves only; leaf {j} has "
                            f"dtype {dtype}.")
        acc = np.zeros(np.shape(leaf), dtype=np.float64)
        for ci, leaves in zip(c, columns):
            acc += ci * np.asarray(leaves[j], dtype=np.float64)
        value = acc.astype(dtype)
        if isinstance(leaf, jax.Array):
            value = jax.device_put(value, leaf.sharding)
        out.append(value)
    return jax.tree.unflatten(treedef, out)
