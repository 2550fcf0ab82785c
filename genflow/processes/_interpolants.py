"""Rectified flow / conditional OT, and Gaussian-base stochastic interpolants.

Stochastic interpolants (Albergo, Boffi & Vanden-Eijnden 2023, "Stochastic Interpolants: A
Unifying Framework for Flows and Diffusions") join a base ``x_b`` and a target ``x_d`` by
``x_s = a(s) x_b + b(s) x_d + gamma(s) z`` with the base at ``s = 0``. With a Gaussian base
``x_b ~ N(0, I)`` and ``z ~ N(0, I)`` independent, ``x`` given the data is Gaussian. In genflow's
time ``t = 1 - s`` (data at ``t = 0``) the path is

    x_t = alpha_t x_0 + sigma_t eps,   alpha_t = b(1 - t),
    sigma_t = sqrt(a(1 - t)^2 + gamma(1 - t)^2),

and every ``gamma`` offered here is symmetric, ``gamma(1 - t) = gamma(t)``.

**Infinite log-SNR at the ends.** These paths reach ``sigma = 0`` at ``t = 0`` and
``alpha = 0`` at ``t = 1`` (``t = 1/2`` for ``"encdec"``), so ``log_snr`` is ``+inf`` and
``-inf`` there (computed exactly, without NaN) and ``t_from_log_snr`` maps ``+-inf`` back to the
ends. The paths are *not* clipped to a smaller time range: the network is trained on the exact
path, and velocity-prediction samplers (Euler, Heun) run from ``t = 1`` exactly. What cannot
use the exact end ``t = 1`` (``alpha_1 = 0``):

* eps/x0/score-prediction models there (``x0 = (x - sigma eps) / alpha`` is ``0/0``);
* grids built from the log-SNR (``log_snr_uniform``, ``karras``): ``lambda_1 = -inf``;
* ``DPMSolverMultistep(algorithm="dpmsolver")`` and ``EDMHeun`` (they divide by ``alpha``);
* ``sde()`` at ``t = 1``: ``f = alpha'/alpha = -inf``.

For those, start at ``t_start = 1 - 1e-3`` (or lower), like ``t_end = 1e-3`` at the data end.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from genflow.processes._base import (
    AbstractGaussianPath,
    pytree_dataclass,
    as_float_array as _as_float,
)

_INTERPOLANTS = ("linear", "trig", "encdec")
_GAMMAS = ("zero", "sqrt", "quadratic", "sin2")
# The trig interpolant's alpha_t^2 = (1 - a t(1-t)) cos^2(pi t/2) decreases on (0, 1) iff
# a < min_t (pi/2) sin(pi t) / ((2t - 1) cos^2(pi t/2) + (pi/2) t(1-t) sin(pi t)) = 3.47765...
# (attained at t = 0.6238); the bound is rounded down.
_TRIG_SQRT_A_MAX = 3.4776


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class RectifiedFlow(AbstractGaussianPath):
    r"""Conditional optimal transport / rectified flow: ``x_t = (1 - t) x_0 + t eps``.

    .. math::

        \alpha_t = 1 - t, \quad \sigma_t = t, \quad \lambda_t = \log(1 - t) - \log t,
        \quad t = \frac{1}{1 + e^{\lambda}},

        f_t = -\frac{1}{1 - t}, \qquad g_t^2 = \frac{2t}{1 - t}.

    The velocity ``dx_t/dt = eps - x_0`` is the flow-matching target (in flow_matching's own
    time, 0 = noise, its negative). ``lambda_0 = +inf`` and ``lambda_1 = -inf`` exactly; see
    the module notes for the samplers that need ``t_start < 1``. The prior is ``N(0, I)``.
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        return 1.0 - t, t

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        return -jnp.ones_like(t), jnp.ones_like(t)

    def log_snr(self, t: ArrayLike) -> Array:
        t = _as_float(t)
        return jnp.log1p(-t) - jnp.log(t)

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        """``1 / (1 + e^lambda)`` (a sigmoid: exact at ``lambda = +-inf``)."""
        return jax.nn.sigmoid(-_as_float(lam))

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """``f = -1/(1 - t)``, ``g^2 = 2t/(1 - t)`` (``0`` at ``t = 0``, infinite at ``t = 1``)."""
        t = _as_float(t)
        return -1.0 / (1.0 - t), 2.0 * t / (1.0 - t)


@pytree_dataclass(static=("interpolant", "gamma"))
@dataclasses.dataclass(frozen=True)
class GaussianInterpolant(AbstractGaussianPath):
    r"""Stochastic interpolant with a Gaussian base, as a Gaussian path (genflow's time).

    ``x_t = alpha_t x_0 + b_t x_1 + gamma_t z`` with ``x_1, z ~ N(0, I)``, so
    ``sigma_t = sqrt(b_t^2 + gamma_t^2)``. Interpolants (Albergo et al. 2023, with their
    ``s = 1 - t``; ``c = cos(pi t/2)``, ``d = sin(pi t/2)``):

    ============ ==================================== ====================================
    interpolant  alpha_t (data)                       b_t (base)
    ============ ==================================== ====================================
    ``linear``   ``1 - t``                            ``t``
    ``trig``     ``sqrt(1 - gamma_t^2) c``            ``sqrt(1 - gamma_t^2) d``
    ``encdec``   ``cos^2(pi t)`` for ``t < 1/2``,     ``cos^2(pi t)`` for ``t > 1/2``, else 0
                 else 0
    ============ ==================================== ====================================

    ``trig`` is variance preserving (``alpha^2 + sigma^2 = 1``). Latent noise ``gamma_t``:
    ``"zero"``; ``"sqrt"``: ``sqrt(a t(1-t))``; ``"quadratic"``: ``t(1-t)``; ``"sin2"``:
    ``sin^2(pi t)``. Forward SDE (base-class formulas, closed form here):
    ``f = alpha'/alpha``, ``g^2 = d sigma^2/dt - 2 f sigma^2`` with
    ``d sigma^2/dt = 2 b b' + (gamma^2)'``. ``linear`` with ``"zero"`` is :class:`RectifiedFlow`.

    ``lambda_t`` decreases strictly on ``(0, t_noise)``, ``t_noise = 1`` except for
    ``encdec``, where ``t_noise = 1/2``: there ``alpha = 0`` on ``[1/2, 1]``, so ``x_t`` no
    longer depends on the data, ``lambda = -inf`` and ``f = -inf``, ``g^2 = +inf``; sample
    from ``t_start < 1/2``. The prior is the law at ``t_noise``: ``N(0, sigma_{t_noise}^2 I)``
    (``N(0, I)`` for ``linear`` and ``trig``; ``N(0, gamma_{1/2}^2 I)`` for ``encdec``).
    ``t_from_log_snr`` is closed-form for ``linear``/``"sqrt"``, ``trig``/``"zero"`` and
    ``encdec``/``"sin2"``, else the base class's bisection. See the module notes on the ends.

    Attributes:
      interpolant: ``"linear"``, ``"trig"`` or ``"encdec"`` (static).
      gamma: ``"zero"``, ``"sqrt"``, ``"quadratic"`` or ``"sin2"`` (static).
      a: the scale of ``"sqrt"`` (ignored otherwise); ``a < 3.4776`` for ``trig``.

    Raises:
      ValueError: for unknown names, ``encdec`` with ``"zero"`` (``x_{1/2} = 0``), ``trig``
        with ``"sin2"`` (``alpha_{1/2} = 0``: not monotone), or ``a`` out of range.
    """

    interpolant: str = "linear"
    gamma: str = "sqrt"
    a: float = 1.0

    def __post_init__(self):
        if self.interpolant not in _INTERPOLANTS:
            raise ValueError(f"interpolant must be one of {_INTERPOLANTS}, got {self.interpolant!r}.")
        if self.gamma not in _GAMMAS:
            raise ValueError(f"gamma must be one of {_GAMMAS}, got {self.gamma!r}.")
        if self.interpolant == "encdec" and self.gamma == "zero":
            raise ValueError(
                "interpolant='encdec' needs latent noise (x_t = 0 at t = 1/2 otherwise); use "
                "gamma='sin2' (the paper's choice), 'sqrt' or 'quadratic'."
            )
        if self.interpolant == "trig" and self.gamma == "sin2":
            raise ValueError(
                "interpolant='trig' with gamma='sin2' has alpha = 0 at t = 1/2 (gamma = 1), so its "
                "log-SNR is not monotone; use gamma='sqrt', 'quadratic' or 'zero'."
            )
        if self.gamma == "sqrt" and isinstance(self.a, (int, float)):
            a_max = _TRIG_SQRT_A_MAX if self.interpolant == "trig" else math.inf
            if not 0.0 < self.a < a_max:
                raise ValueError(
                    f"gamma='sqrt' needs 0 < a < {a_max} for interpolant={self.interpolant!r} "
                    f"(beyond, the log-SNR is not monotone), got a={self.a}; for no latent noise "
                    "use gamma='zero'."
                )

    @property
    def t_noise(self) -> float:
        """The first time at which ``alpha_t = 0`` (1, or 1/2 for ``encdec``)."""
        return 0.5 if self.interpolant == "encdec" else 1.0

    # ------------------------------------------------------------------ building blocks
    def _gamma2(self, t: Array) -> tuple[Array, Array]:
        """``(gamma_t^2, d gamma_t^2 / dt)``."""
        if self.gamma == "zero":
            return jnp.zeros_like(t), jnp.zeros_like(t)
        if self.gamma == "sqrt":
            return self.a * t * (1.0 - t), self.a * (1.0 - 2.0 * t)
        if self.gamma == "quadratic":
            q = t * (1.0 - t)
            return q**2, 2.0 * q * (1.0 - 2.0 * t)
        # sin2: sin(pi t) from the nearer end, so gamma is 0 at t = 0 and t = 1 exactly.
        sin = jnp.sin(math.pi * jnp.minimum(t, 1.0 - t))
        return sin**4, 4.0 * math.pi * sin**3 * jnp.cos(math.pi * t)

    def _gamma_rate0(self) -> float:
        """``gamma'(0)``: where ``sigma = 0`` (t = 0), ``sigma' = sqrt(b'^2 + gamma'^2)``."""
        return {"zero": 0.0, "sqrt": math.inf, "quadratic": 1.0, "sin2": 0.0}[self.gamma]

    def _coefs(self, t: Array):
        """``alpha, alpha', b, b', gamma^2, (gamma^2)'`` and ``log alpha``."""
        g2, dg2 = self._gamma2(t)
        if self.interpolant == "linear":
            one = jnp.ones_like(t)
            return 1.0 - t, -one, t, one, g2, dg2, jnp.log1p(-t)
        if self.interpolant == "trig":
            h = 0.5 * math.pi
            cos, sin = jnp.sin(h * (1.0 - t)), jnp.sin(h * t)  # exact zeros at t = 1 and t = 0
            r = jnp.sqrt(1.0 - g2)
            dr = -0.5 * dg2 / r
            log_alpha = 0.5 * jnp.log1p(-g2) + jnp.log(cos)
            return r * cos, dr * cos - h * r * sin, r * sin, dr * sin + h * r * cos, g2, dg2, log_alpha
        # encdec: cos^2(pi t) = sin^2(pi (1/2 - t)), exactly 0 at t = 1/2.
        lo, hi = t < 0.5, t > 0.5
        u = jnp.sin(math.pi * (0.5 - t))
        c = jnp.cos(math.pi * (0.5 - t))
        alpha = jnp.where(lo, u**2, 0.0)
        d_alpha = jnp.where(lo, -2.0 * math.pi * u * c, 0.0)
        b = jnp.where(hi, u**2, 0.0)
        d_b = jnp.where(hi, -2.0 * math.pi * u * c, 0.0)
        log_alpha = jnp.where(lo, 2.0 * jnp.log(jnp.abs(u)), -jnp.inf)
        return alpha, d_alpha, b, d_b, g2, dg2, log_alpha

    # ------------------------------------------------------------------ the path
    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        alpha, _, b, _, g2, _, _ = self._coefs(_as_float(t))
        return alpha, jnp.sqrt(b**2 + g2)

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        """``alpha'`` and ``sigma' = (b b' + (gamma^2)'/2) / sigma``, its limit where ``sigma = 0``."""
        t = _as_float(t)
        alpha, d_alpha, b, d_b, g2, dg2, _ = self._coefs(t)
        sigma = jnp.sqrt(b**2 + g2)
        zero = sigma == 0
        d_sigma = (b * d_b + 0.5 * dg2) / jnp.where(zero, 1.0, sigma)
        limit = jnp.sqrt(d_b**2 + self._gamma_rate0() ** 2)
        return d_alpha, jnp.where(zero, limit, d_sigma)

    def log_snr(self, t: ArrayLike) -> Array:
        _, _, b, _, g2, _, log_alpha = self._coefs(_as_float(t))
        return log_alpha - 0.5 * jnp.log(b**2 + g2)

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        lam = _as_float(lam)
        if self.interpolant == "linear" and self.gamma in ("zero", "sqrt"):
            # SNR^-1 = e^{-2 lambda} = v^2 + a v with v = t/(1-t) (a = 0 for "zero"), so
            # 1/v = a x/2 + sqrt(a^2 x^2/4 + x) with x = e^{2 lambda}, and t = 1/(1 + 1/v);
            # for lambda > 0 as x (a/2 + sqrt(a^2/4 + 1/x)), which does not overflow x^2.
            a = self.a if self.gamma == "sqrt" else 0.0
            pos = lam > 0
            x = jnp.exp(2.0 * jnp.where(pos, 0.0, lam))
            inv_v_neg = 0.5 * a * x + jnp.sqrt(0.25 * a**2 * x**2 + x)
            x_pos = jnp.exp(2.0 * jnp.where(pos, lam, 0.0))
            inv_v_pos = x_pos * (0.5 * a + jnp.sqrt(0.25 * a**2 + 1.0 / x_pos))
            return 1.0 / (1.0 + jnp.where(pos, inv_v_pos, inv_v_neg))
        if self.interpolant == "trig" and self.gamma == "zero":
            return (2.0 / math.pi) * jnp.arctan(jnp.exp(-lam))  # e^lambda = cot(pi t/2)
        if self.interpolant == "encdec" and self.gamma == "sin2":
            return jnp.arctan(jnp.exp(-0.5 * lam)) / math.pi  # e^lambda = cot^2(pi t), t < 1/2
        return super().t_from_log_snr(lam)

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """``f = alpha'/alpha``, ``g^2 = 2 b b' + (gamma^2)' - 2 f (b^2 + gamma^2)``.

        Finite on ``[0, t_noise)``; ``(-inf, +inf)`` where ``alpha = 0``.
        """
        t = _as_float(t)
        alpha, d_alpha, b, d_b, g2, dg2, _ = self._coefs(t)
        vanished = alpha == 0
        f = d_alpha / jnp.where(vanished, 1.0, alpha)
        g2_t = 2.0 * b * d_b + dg2 - 2.0 * f * (b**2 + g2)
        return jnp.where(vanished, -jnp.inf, f), jnp.where(vanished, jnp.inf, g2_t)

    def prior_std(self) -> Array:
        """``sigma_{t_noise}``: the standard deviation of ``x_t`` once the data are forgotten."""
        _, sigma = self.marginal(jnp.asarray(self.t_noise, jnp.result_type(float)))
        return sigma
