"""EDM (Karras et al. 2022): the rho-schedule as a Gaussian path, and EDM's preconditioning.

EDM writes ``x = x_0 + s n`` with noise level ``s`` and samples on the grid
``s_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``. genflow's :class:`EDM`
path is that process with ``s`` placed on ``t`` in ``[0, 1]`` so that a *uniform* grid in ``t``
is exactly EDM's grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from genflow.processes._base import (
    AbstractGaussianPath,
    broadcast_to_data,
    pytree_dataclass,
    as_float_array as _as_float,
)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class EDM(AbstractGaussianPath):
    r"""EDM's noise schedule: ``alpha_t = 1``, ``sigma_t`` uniform in ``sigma^(1/rho)``.

    .. math::

        \sigma_t = \left(\sigma_{min}^{1/\rho}
                   + t\,(\sigma_{max}^{1/\rho} - \sigma_{min}^{1/\rho})\right)^{\rho},
        \qquad \lambda_t = -\log\sigma_t,

        \sigma'_t = \rho\,\sigma_t^{1 - 1/\rho}\,(\sigma_{max}^{1/\rho} - \sigma_{min}^{1/\rho}),
        \qquad f_t = 0, \quad g_t^2 = 2\sigma_t\sigma'_t.

    ``sigma`` increases monotonically from ``sigma_min`` at ``t = 0`` to ``sigma_max`` at
    ``t = 1``. The uniform grid ``t_i = 1 - i/(N-1)``, ``i = 0..N-1`` gives EDM's ``s_i``
    exactly (``genflow.samplers.uniform`` with ``num_steps = N - 1``, ``t_start = 1``,
    ``t_end = 0``); ``genflow.samplers.karras`` with the same ``rho`` gives the same grid.
    EDM's last step, from ``sigma_min`` to ``0``, is a plain Euler step that returns the
    denoiser output ``D(x; sigma_min)``: that is ``sample(..., t_end=0.0, denoise_final=True)``
    (NFE ``2 (N - 1) + 1 = 2N - 1`` with Heun, as in EDM).

    As for :class:`~genflow.processes.VE`, ``t = 0`` is the data smoothed at ``sigma_min``
    (``lambda_0 = -log sigma_min``, finite), so every quantity is finite on ``[0, 1]``.
    The inverse of the log-SNR is closed-form:
    ``t = (e^{-lambda/rho} - sigma_min^(1/rho)) / (sigma_max^(1/rho) - sigma_min^(1/rho))``.

    **Prior.** ``N(0, sigma_max^2 I)``, as EDM draws its initial ``x = sigma_max n``.

    Attributes:
      sigma_min, sigma_max: the noise range (EDM's 0.002 and 80).
      rho: the schedule's exponent (EDM's 7; ``rho = 1`` is linear in ``sigma``).
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        values = (self.sigma_min, self.sigma_max, self.rho)
        if all(isinstance(v, (int, float)) for v in values):
            if not (0.0 < self.sigma_min < self.sigma_max and self.rho > 0):
                raise ValueError(
                    f"EDM needs 0 < sigma_min < sigma_max and rho > 0, got "
                    f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho}."
                )

    def _ends(self, dtype) -> tuple[Array, Array]:
        # sigma_min^(1/rho) and sigma_max^(1/rho) - sigma_min^(1/rho), in the precision of t.
        lo = jnp.asarray(self.sigma_min, dtype) ** (1.0 / jnp.asarray(self.rho, dtype))
        hi = jnp.asarray(self.sigma_max, dtype) ** (1.0 / jnp.asarray(self.rho, dtype))
        return lo, hi - lo

    def _root(self, t: Array) -> Array:  # sigma_t^(1/rho), affine in t
        lo, span = self._ends(t.dtype)
        return lo + t * span

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = _as_float(t)
        return jnp.ones_like(t), self._root(t) ** jnp.asarray(self.rho, t.dtype)

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(0, rho sigma_t^(1 - 1/rho) (sigma_max^(1/rho) - sigma_min^(1/rho)))``."""
        t = _as_float(t)
        rho = jnp.asarray(self.rho, t.dtype)
        _, span = self._ends(t.dtype)
        return jnp.zeros_like(t), rho * self._root(t) ** (rho - 1.0) * span

    def log_snr(self, t: ArrayLike) -> Array:
        t = _as_float(t)
        return -jnp.asarray(self.rho, t.dtype) * jnp.log(self._root(t))

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        lam = _as_float(lam)
        lo, span = self._ends(lam.dtype)
        return (jnp.exp(-lam / jnp.asarray(self.rho, lam.dtype)) - lo) / span

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """``f = 0``, ``g^2 = d sigma_t^2 / dt = 2 sigma_t sigma'_t``."""
        t = _as_float(t)
        _, sigma = self.marginal(t)
        _, d_sigma = self.marginal_derivative(t)
        return jnp.zeros_like(t), 2.0 * sigma * d_sigma

    def prior_std(self) -> Array:
        """``sigma_max`` (EDM's initial draw ``x = sigma_max n``)."""
        return jnp.asarray(self.sigma_max, jnp.result_type(float))


def edm_coefficients(
    s: Float[ArrayLike, "*b"], sigma_data: float = 0.5
) -> tuple[Array, Array, Array, Array]:
    r"""EDM's preconditioning at noise level ``s`` (Karras et al. 2022, Table 1).

    .. math::

        c_{skip} = \frac{\sigma_d^2}{s^2 + \sigma_d^2}, \quad
        c_{out} = \frac{s\,\sigma_d}{\sqrt{s^2 + \sigma_d^2}}, \quad
        c_{in} = \frac{1}{\sqrt{s^2 + \sigma_d^2}}, \quad
        c_{noise} = \tfrac14 \log s.

    ``c_in`` gives the network an input of unit variance when the data have standard
    deviation ``sigma_d``; ``c_skip``, ``c_out`` make the training target
    ``(x_0 - c_skip y) / c_out`` of unit variance as well.

    Returns:
      ``(c_skip, c_out, c_in, c_noise)``, each shaped like ``s``.
    """
    s = _as_float(s)
    var = s**2 + sigma_data**2
    return sigma_data**2 / var, s * sigma_data / jnp.sqrt(var), 1.0 / jnp.sqrt(var), 0.25 * jnp.log(s)


def edm_loss_weight(s: Float[ArrayLike, "*b"], sigma_data: float = 0.5) -> Array:
    """EDM's loss weight ``(s^2 + sigma_d^2) / (s sigma_d)^2 = 1 / c_out^2`` on the x0 error."""
    s = _as_float(s)
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


def edm_precondition(
    raw_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    sigma_data: float = 0.5,
) -> "EDMPreconditioned":
    r"""Wrap a raw network ``F`` into a ``model_fn`` that predicts ``x_0`` (use ``prediction="x0"``).

    For a path ``x_t = alpha_t x_0 + sigma_t eps``, ``y = x_t / alpha_t = x_0 + s eps`` is EDM's
    input at noise level ``s = sigma_t / alpha_t = exp(-lambda_t)`` (``y = x_t``, ``s = sigma_t``
    for :class:`EDM` and :class:`~genflow.processes.VE`), and

    .. math::

        D(x_t, t) = c_{skip}(s)\,y + c_{out}(s)\,F\big(c_{in}(s)\,y,\; c_{noise}(s),\; cond\big).

    Pure JAX: ``raw_fn`` is any function ``raw_fn(x_in, c_noise, cond) -> array like x_in`` with
    ``c_noise`` of shape ``(b,)`` (a genflow network adapted by ``as_model_fn`` fits, with
    ``c_noise`` in place of ``t``). Needs ``alpha_t > 0`` (for rectified flow, ``t < 1``).

    Args:
      raw_fn: the unpreconditioned network.
      process: the Gaussian path ``t`` refers to.
      sigma_data: the standard deviation of the data (EDM's 0.5).

    Returns:
      ``model_fn(x, t, cond=None) -> x0_hat`` with ``x: (b, *data_shape)``, ``t: (b,)``: an
      :class:`EDMPreconditioned`, a pytree (when ``raw_fn`` is one, e.g. a ``ModelFn``), so
      it can be passed into ``jax.jit``.
    """
    return EDMPreconditioned(raw_fn, process, sigma_data)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class EDMPreconditioned:
    """A raw network with EDM's preconditioning: see :func:`edm_precondition`.

    Attributes:
      raw_fn: ``raw_fn(x_in, c_noise, cond)``.
      process: the Gaussian path ``t`` refers to.
      sigma_data: the standard deviation of the data.
    """

    raw_fn: Callable[..., Array]
    process: AbstractGaussianPath
    sigma_data: float = 0.5

    def __call__(self, x: Float[Array, "b *d"], t: Float[ArrayLike, "b"], cond: Any = None) -> Array:
        t = jnp.broadcast_to(_as_float(t), (x.shape[0],))
        alpha, sigma = self.process.marginal(t)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma / alpha, self.sigma_data)
        bc = lambda a: broadcast_to_data(a, x)  # noqa: E731
        y = x / bc(alpha)
        out = self.raw_fn((bc(c_in) * y).astype(x.dtype), c_noise, cond)
        return (bc(c_skip) * y + bc(c_out) * out).astype(x.dtype)

