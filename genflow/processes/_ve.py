"""Variance-exploding (VE) diffusion (Song & Ermon 2019; Song et al. 2021, ``VESDE``).

``alpha_t = 1`` and ``sigma_t = sigma_min (sigma_max / sigma_min)^t``, geometric in ``t``;
forward SDE ``dx = sqrt(d sigma_t^2 / dt) dW`` (no drift).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from genflow.processes._base import (
    AbstractGaussianPath,
    pytree_dataclass,
    as_float_array as _as_float,
)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class VE(AbstractGaussianPath):
    r"""VE path ``x_t = x_0 + sigma_t eps`` with ``sigma_t = sigma_min (sigma_max/sigma_min)^t``.

    .. math::

        \alpha_t = 1, \quad \sigma_t = \sigma_{min} r^t, \quad r = \sigma_{max}/\sigma_{min},
        \quad \lambda_t = -\log\sigma_{min} - t \log r,

        f_t = 0, \qquad g_t^2 = \frac{d\sigma_t^2}{dt} = 2 \sigma_t^2 \log r.

    **Choice of kernel.** The SDE started from clean data at ``t = 0`` has variance
    ``sigma_t^2 - sigma_min^2``; score_sde nevertheless trains with the kernel std
    ``sigma_t`` (its ``VESDE.marginal_prob``), and so does genflow. This path is therefore
    the SDE started from the data smoothed at ``sigma_min`` (``sigma_0 = sigma_min > 0``):
    the two differ by ``sigma_min^2 = 1e-4`` in variance, far below the noise of any
    sample, and the choice keeps ``lambda_t`` finite and linear in ``t`` on all of
    ``[0, 1]``, so every time grid (log-SNR uniform included) and every solver may use
    ``t = 0`` and ``t = 1``; a log-SNR-uniform grid is the uniform grid.

    **Prior.** ``N(0, sigma_max^2 I)``, as in score_sde (the marginal at ``t = 1`` is
    ``N(x_0, sigma_max^2 I)``, with ``sigma_max`` chosen much larger than the data's spread).

    Attributes:
      sigma_min, sigma_max: the noise levels at ``t = 0`` and ``t = 1`` (score_sde's CIFAR-10
        values 0.01 and 50).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self):
        if isinstance(self.sigma_min, (int, float)) and isinstance(self.sigma_max, (int, float)):
            if not 0.0 < self.sigma_min < self.sigma_max:
                raise ValueError(
                    f"VE needs 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                    f"sigma_max={self.sigma_max}."
                )

    def _log_ratio(self) -> Array:
        return jnp.log(self.sigma_max) - jnp.log(self.sigma_min)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        sigma = self.sigma_min * jnp.exp(t * self._log_ratio().astype(t.dtype))
        return jnp.ones_like(t), sigma.astype(t.dtype)

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(0, sigma_t log(sigma_max / sigma_min))``."""
        t = _as_float(t)
        _, sigma = self.marginal(t)
        return jnp.zeros_like(t), sigma * self._log_ratio().astype(t.dtype)

    def log_snr(self, t: ArrayLike) -> Array:
        t = _as_float(t)
        return (-jnp.log(self.sigma_min) - t * self._log_ratio()).astype(t.dtype)

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        """``t = (-lambda - log sigma_min) / log(sigma_max / sigma_min)`` (linear)."""
        lam = _as_float(lam)
        return ((-lam - jnp.log(self.sigma_min)) / self._log_ratio()).astype(lam.dtype)

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """``f = 0``, ``g^2 = d sigma_t^2 / dt = 2 sigma_t^2 log(sigma_max / sigma_min)``."""
        t = _as_float(t)
        _, sigma = self.marginal(t)
        return jnp.zeros_like(t), 2.0 * sigma**2 * self._log_ratio().astype(t.dtype)

    def prior_std(self) -> Array:
        """``sigma_max`` (score_sde's VE prior ``N(0, sigma_max^2 I)``)."""
        return jnp.asarray(self.sigma_max, jnp.result_type(float))
