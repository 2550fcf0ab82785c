"""Sub-VP diffusion (Song et al. 2021): the VP drift with less noise, ``sigma_t = 1 - alpha_t^2``.

Forward SDE (score_sde's ``subVPSDE``), with ``B(t) = int_0^t beta(s) ds``::

    dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dW.

Its marginals are ``alpha_t = exp(-B(t)/2)`` (as for VP) and ``sigma_t = 1 - exp(-B(t)) =
1 - alpha_t^2``, so ``sigma_t^2 <= 1 - alpha_t^2``: the variance of ``x_t`` stays below that of
the VP path ("sub-VP"), and ``alpha_t^2 + sigma_t^2 < 1``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from genflow.processes._base import pytree_dataclass, as_float_array as _as_float
from genflow.processes._vp import LinearBetaSchedule


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class SubVP(LinearBetaSchedule):
    r"""Sub-VP SDE with the linear schedule ``beta(t) = beta_min + t (beta_max - beta_min)``.

    With ``B(t) = t beta_min + t^2 (beta_max - beta_min) / 2``:

    .. math::

        \log\alpha_t = -B(t)/2, \qquad \sigma_t = 1 - \alpha_t^2 = -\mathrm{expm1}(-B(t)),

        \lambda_t = \log\alpha_t - \log\sigma_t, \qquad
        f_t = -\beta(t)/2, \qquad g_t^2 = \beta(t)\,(1 - \alpha_t^4).

    ``sigma_0 = 0`` (``lambda_0 = +inf``, exact data) and every quantity is finite on ``(0, 1]``.
    The inverse of the log-SNR is closed-form: ``u = sigma`` solves
    ``e^{2 lambda} u^2 + u - 1 = 0``, then ``B = -log(1 - u)`` and ``t`` solves the quadratic.

    The prior is the base class's ``N(0, (alpha_1^2 + sigma_1^2) I)``: the marginal at ``t = 1``
    for data of unit variance. With the defaults its standard deviation is ``1 - 4.3e-5``;
    score_sde draws from ``N(0, I)``, which differs by less than any sampling error.

    Attributes:
      beta_min, beta_max: the linear schedule's ends (score_sde's defaults 0.1 and 20).
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        log_alpha = self._log_alpha(_as_float(t))
        # sigma = 1 - alpha^2 = -expm1(2 log alpha): full relative precision near t = 0.
        return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        """``alpha' = -beta alpha / 2`` and ``sigma' = -2 alpha alpha' = beta alpha^2``."""
        t = _as_float(t)
        alpha = jnp.exp(self._log_alpha(t))
        beta = self.beta(t)
        return -0.5 * beta * alpha, beta * alpha**2

    def log_snr(self, t: ArrayLike) -> Array:
        log_alpha = self._log_alpha(_as_float(t))
        return log_alpha - jnp.log(-jnp.expm1(2.0 * log_alpha))

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        r"""Closed-form inverse of :meth:`log_snr`.

        With ``x = e^{2 lambda}``, ``u = sigma = 2 / (1 + sqrt(1 + 4x))`` and
        ``c = -log alpha = -log(1 - u) / 2``. For ``lambda > 0`` (``u < 1/2``) ``c`` is computed as
        ``-log1p(-u) / 2``; for ``lambda <= 0`` as ``log(1 + sqrt(1 + 4x)) - lambda - log 2``
        (``1 - u = 4x / (1 + sqrt(1 + 4x))^2``), each branch free of cancellation. Then
        ``a t^2 + b t = c`` with ``a = (beta_max - beta_min)/4``, ``b = beta_min/2``.
        """
        lam = _as_float(lam)
        pos = lam > 0
        lam_pos = jnp.where(pos, lam, 0.0)  # keep the unselected branch finite
        lam_neg = jnp.where(pos, 0.0, lam)
        u = 2.0 / (1.0 + jnp.sqrt(1.0 + 4.0 * jnp.exp(2.0 * lam_pos)))
        c_pos = -0.5 * jnp.log1p(-u)
        c_neg = jnp.log1p(jnp.sqrt(1.0 + 4.0 * jnp.exp(2.0 * lam_neg))) - lam_neg - math.log(2.0)
        c = jnp.where(pos, c_pos, c_neg)
        a = 0.25 * (self.beta_max - self.beta_min)
        b = 0.5 * self.beta_min
        return 2.0 * c / (b + jnp.sqrt(b**2 + 4.0 * a * c))

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """``f = -beta/2``, ``g^2 = beta (1 - exp(-2 B)) = beta (1 - alpha^4)`` (0 at ``t = 0``)."""
        t = _as_float(t)
        beta = self.beta(t)
        return -0.5 * beta, -beta * jnp.expm1(4.0 * self._log_alpha(t))
