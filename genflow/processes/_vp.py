"""Variance-preserving (VP) diffusion: ``alpha_t^2 + sigma_t^2 = 1``.

Forward SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW`` (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations").
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from genflow.processes._base import (
    AbstractGaussianPath,
    pytree_dataclass,
    as_float_array as _as_float,
)


def _sigma_from_log_alpha(log_alpha: Array) -> Array:
    # sigma^2 = 1 - alpha^2 = -expm1(2 log alpha): exact near t = 0, where alpha -> 1.
    return jnp.sqrt(-jnp.expm1(2.0 * log_alpha))


def _log_alpha_from_log_snr(lam: Array) -> Array:
    # alpha^2 / (1 - alpha^2) = exp(2 lambda)  =>  log alpha = -softplus(-2 lambda) / 2.
    return -0.5 * jnp.logaddexp(0.0, -2.0 * lam)


@dataclasses.dataclass(frozen=True)
class LinearBetaSchedule(AbstractGaussianPath):
    """The linear noise rate ``beta(t) = beta_min + t (beta_max - beta_min)`` and
    ``log alpha_t = -int_0^t beta / 2``, shared by :class:`VPLinear` and the sub-VP path.

    Attributes:
      beta_min, beta_max: the schedule's ends (score_sde's defaults 0.1 and 20).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        if isinstance(self.beta_min, (int, float)) and isinstance(self.beta_max, (int, float)):
            if not 0.0 <= self.beta_min < self.beta_max:
                raise ValueError(
                    f"{type(self).__name__} needs 0 <= beta_min < beta_max, got "
                    f"beta_min={self.beta_min}, beta_max={self.beta_max}."
                )

    def _log_alpha(self, t: Array) -> Array:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def beta(self, t: ArrayLike) -> Array:
        """``beta(t) = beta_min + t (beta_max - beta_min)``."""
        return self.beta_min + _as_float(t) * (self.beta_max - self.beta_min)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class VPLinear(LinearBetaSchedule):
    """VP SDE with the linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``.

    ``log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``,
    ``sigma_t = sqrt(1 - alpha_t^2)``. Defaults are score_sde's (0.1, 20).
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        log_alpha = self._log_alpha(_as_float(t))
        return jnp.exp(log_alpha), _sigma_from_log_alpha(log_alpha)

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        alpha, sigma = self.marginal(t)
        d_log_alpha = -0.5 * self.beta(t)
        d_alpha = alpha * d_log_alpha
        return d_alpha, -alpha * d_alpha / sigma

    def log_snr(self, t: ArrayLike) -> Array:
        log_alpha = self._log_alpha(_as_float(t))
        return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        # Solve a t^2 + b t = c with c = -log alpha > 0, in the cancellation-free form.
        c = -_log_alpha_from_log_snr(_as_float(lam))
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return 2.0 * c / (b + jnp.sqrt(b**2 + 4.0 * a * c))

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        beta = self.beta(t)
        return -0.5 * beta, beta


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class VPCosine(AbstractGaussianPath):
    """VP with the cosine schedule of Nichol & Dhariwal (2021), in continuous time.

    ``alpha_t = cos(pi/2 (tau + s)/(1 + s)) / cos(pi/2 s/(1 + s))`` with ``tau = t * t_max``,
    ``sigma_t = sqrt(1 - alpha_t^2)``. The schedule's own time ends where alpha reaches 0
    (infinite log-SNR), so genflow's ``t = 1`` maps to ``tau = t_max`` (0.9946 as in
    DPM-Solver, where ``lambda_1 ~ -4.78``), which keeps every quantity finite.
    """

    s: float = 0.008
    t_max: float = 0.9946

    def __post_init__(self):
        if isinstance(self.s, (int, float)) and isinstance(self.t_max, (int, float)):
            if not (self.s > 0 and 0 < self.t_max < 1):
                raise ValueError(
                    f"VPCosine needs s > 0 and 0 < t_max < 1, got s={self.s}, t_max={self.t_max}."
                )

    def _phase(self, t: Array) -> Array:
        return 0.5 * math.pi * (t * self.t_max + self.s) / (1.0 + self.s)

    def _log_alpha(self, t: Array) -> Array:
        # alpha = cos(p0 + d) / cos(p0) = 1 - u with u = 2 sin^2(d/2) + tan(p0) sin(d),
        # p0 = pi/2 s/(1+s), d = pi/2 t t_max/(1+s). Both terms of u are >= 0, so u (hence
        # sigma^2 = 1 - alpha^2) keeps full relative precision near t = 0, and u(0) = 0 exactly,
        # whatever the precision of t (log cos(p) - log cos(p0) cancels catastrophically there).
        d = 0.5 * math.pi * t * self.t_max / (1.0 + self.s)
        tan_p0 = jnp.tan(0.5 * math.pi * self.s / (1.0 + self.s)).astype(d.dtype)
        u = 2.0 * jnp.sin(0.5 * d) ** 2 + tan_p0 * jnp.sin(d)
        return jnp.log1p(-u)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        log_alpha = self._log_alpha(_as_float(t))
        return jnp.exp(log_alpha), _sigma_from_log_alpha(log_alpha)

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        alpha, sigma = self.marginal(t)
        d_phase = 0.5 * math.pi * self.t_max / (1.0 + self.s)
        d_alpha = -alpha * jnp.tan(self._phase(t)) * d_phase
        return d_alpha, -alpha * d_alpha / sigma

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        # VP: d(alpha^2 + sigma^2)/dt = 0, so g^2 = -2 f; finite at t = 0, where the generic
        # 2 sigma sigma' - 2 f sigma^2 is 0 * inf.
        t = _as_float(t)
        f = -jnp.tan(self._phase(t)) * 0.5 * math.pi * self.t_max / (1.0 + self.s)
        return f, -2.0 * f

    def log_snr(self, t: ArrayLike) -> Array:
        log_alpha = self._log_alpha(_as_float(t))
        return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        log_alpha = _log_alpha_from_log_snr(_as_float(lam))
        log_cos = log_alpha + jnp.log(jnp.cos(0.5 * math.pi * self.s / (1.0 + self.s)))
        phase = jnp.arccos(jnp.exp(log_cos))
        return (phase * 2.0 * (1.0 + self.s) / math.pi - self.s) / self.t_max
