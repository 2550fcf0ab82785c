r"""Where training times are drawn: densities over ``t`` (equivalently, over the noise level).

A denoising loss averages over a time ``t`` drawn from some density. Under genflow's convention
(``t = 0`` data, ``t = 1`` noise, ``x_t = alpha_t x_0 + sigma_t eps``, half log-SNR
``lambda_t = log alpha_t - log sigma_t``) the *noise level* is ``s = sigma_t / alpha_t =
exp(-lambda_t)``, so a density over ``s`` is mapped to one over ``t`` by
``t = process.t_from_log_snr(-log s)``. Which times are drawn decides, together with the loss
weighting (:mod:`genflow.losses`), what the training objective averages over:

* :class:`UniformTime` -- ``t ~ U[t_min, t_max)``, the classic choice (DDPM, score_sde) and the
  default of :func:`genflow.losses.denoising_loss`.
* :class:`LogNormalNoise` -- EDM's ``log s ~ N(P_mean, P_std^2)`` (Karras et al. 2022).
* :class:`LogitNormalTime` -- SD3's ``t = sigmoid(u)``, ``u ~ N(m, s^2)`` (Esser et al. 2024).
* :class:`LogUniformNoise` -- ``log s`` uniform between the noise levels at ``t_min`` and
  ``t_max`` (``lambda`` uniform), i.e. the same number of draws per octave of noise.

Every density is a frozen dataclass registered as a pytree (its parameters are leaves, so
sweeping them does not recompile) with one method,
``sample(key, process, shape, *, t_min, t_max, dtype) -> t``. Draws other than
:class:`UniformTime`'s are clipped to ``[t_min, t_max]``. Schedule quantities (``lambda``, its
inverse) are computed in float32 or better and ``t`` is returned in ``dtype``.

Only ``jax``, ``jaxtyping`` and :mod:`genflow.processes` are imported.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from genflow.processes._base import AbstractGaussianPath, pytree_dataclass


class AbstractTimeDensity(abc.ABC):
    """A density over the training time ``t`` of a Gaussian path."""

    @abc.abstractmethod
    def sample(
        self,
        key: PRNGKeyArray,
        process: AbstractGaussianPath,
        shape: tuple[int, ...],
        *,
        t_min: float,
        t_max: float,
        dtype: Any,
    ) -> Float[Array, "..."]:
        """Draw times of shape ``shape`` in ``[t_min, t_max]``, of dtype ``dtype``.

        Args:
          key: the randomness.
          process: the Gaussian path (densities over the noise level map through its
            :meth:`~genflow.processes.AbstractGaussianPath.t_from_log_snr`).
          shape: the shape of ``t`` (``(b,)`` in a loss).
          t_min, t_max: the range of training times.
          dtype: the dtype of the returned times.
        """

    def check(self, process: AbstractGaussianPath, t_min: float, t_max: float) -> None:
        """Raise ``ValueError`` if this density cannot draw times for ``process`` on
        ``[t_min, t_max]`` (called on concrete numbers, before training). Default: it can."""


def _compute_dtype(dtype: Any) -> Any:
    """float32 or better: schedule quantities are never computed in bfloat16 or float16."""
    return jnp.result_type(dtype, jnp.float32)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class UniformTime(AbstractTimeDensity):
    """``t ~ U[t_min, t_max)``: ``jax.random.uniform(key, shape, dtype, t_min, t_max)``.

    Exactly the draw :func:`genflow.losses.denoising_loss` made before time densities existed,
    bit for bit, so runs with the default density reproduce their losses.
    """

    def sample(self, key, process, shape, *, t_min, t_max, dtype):
        return jax.random.uniform(key, shape, dtype=dtype, minval=t_min, maxval=t_max)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class LogNormalNoise(AbstractTimeDensity):
    r"""EDM's log-normal density of the noise level (Karras et al. 2022, "Elucidating the Design
    Space of Diffusion-Based Generative Models", Sec. 5 and Table 1: ``P_mean = -1.2``,
    ``P_std = 1.2``).

    .. math::

        \ln s \sim \mathcal N(P_{mean}, P_{std}^2), \qquad
        t = \mathrm{clip}\big(\texttt{process.t\_from\_log\_snr}(-\ln s),\ t_{min},\ t_{max}\big),

    with the noise level ``s = sigma_t / alpha_t = exp(-lambda_t)`` (EDM's ``sigma``). On
    :class:`~genflow.processes.EDM` (``alpha = 1``) ``s`` is EDM's ``sigma`` itself; on other paths
    it is the noise-to-signal ratio, the ``sigma`` of the equivalent VE process. Noise levels
    outside the path's range ``[s(t_min), s(t_max)]`` are clipped to its ends.

    Attributes:
      p_mean: mean of ``ln s``.
      p_std: standard deviation of ``ln s`` (positive).
    """

    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self):
        if _is_number(self.p_std) and not self.p_std > 0:
            raise ValueError(f"LogNormalNoise needs p_std > 0, got {self.p_std}.")

    def sample(self, key, process, shape, *, t_min, t_max, dtype):
        ct = _compute_dtype(dtype)
        z = jax.random.normal(key, shape, ct)
        log_s = jnp.asarray(self.p_mean, ct) + jnp.asarray(self.p_std, ct) * z
        t = process.t_from_log_snr(-log_s)
        return jnp.clip(t, t_min, t_max).astype(dtype)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class LogitNormalTime(AbstractTimeDensity):
    r"""SD3's logit-normal density of the time (Esser et al. 2024, "Scaling Rectified Flow
    Transformers for High-Resolution Image Synthesis", Sec. 3.1; ``m = 0``, ``s = 1`` did best).

    .. math::

        u \sim \mathcal N(m, s^2), \qquad
        t = \mathrm{clip}\big(\mathrm{sigmoid}(u),\ t_{min},\ t_{max}\big),

    i.e. the density ``pi(t) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t))``.
    SD3 uses the same convention as genflow (``t = 0`` data, ``t = 1`` noise, rectified flow
    ``x_t = (1 - t) x_0 + t eps``), so ``t`` is used as drawn, on any path; ``m > 0`` puts
    more draws at high noise.

    Attributes:
      mean: ``m``, the location of ``logit t``.
      std: ``s``, the scale of ``logit t`` (positive).
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if _is_number(self.std) and not self.std > 0:
            raise ValueError(f"LogitNormalTime needs std > 0, got {self.std}.")

    def sample(self, key, process, shape, *, t_min, t_max, dtype):
        ct = _compute_dtype(dtype)
        u = jnp.asarray(self.mean, ct) + jnp.asarray(self.std, ct) * jax.random.normal(key, shape,
                                                                                      ct)
        return jnp.clip(jax.nn.sigmoid(u), t_min, t_max).astype(dtype)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class LogUniformNoise(AbstractTimeDensity):
    r"""The noise level log-uniform between its values at ``t_max`` and ``t_min``.

    .. math::

        \lambda \sim U[\lambda_{t_{max}}, \lambda_{t_{min}}], \qquad
        t = \mathrm{clip}\big(\texttt{process.t\_from\_log\_snr}(\lambda),\ t_{min},\ t_{max}\big),

    so ``ln s = -lambda`` is uniform on ``[ln s(t_min), ln s(t_max)]``: every octave of noise
    gets the same share of the draws, whatever the schedule.

    Both ends of the log-SNR must be finite: on rectified flow or a Gaussian interpolant
    ``lambda_1 = -inf``, so ``t_max < 1`` is needed there (:meth:`check` says so; the
    denoising method trains up to ``t = 1`` and refuses the pair).
    """

    def sample(self, key, process, shape, *, t_min, t_max, dtype):
        ct = _compute_dtype(dtype)
        lam_hi = process.log_snr(jnp.asarray(t_min, ct))  # lambda decreases with t
        lam_lo = process.log_snr(jnp.asarray(t_max, ct))
        u = jax.random.uniform(key, shape, ct)
        t = process.t_from_log_snr(lam_lo + u * (lam_hi - lam_lo))
        return jnp.clip(t, t_min, t_max).astype(dtype)

    def check(self, process, t_min, t_max):
        ends = [float(process.log_snr(jnp.asarray(t, jnp.result_type(float))))
                for t in (t_min, t_max)]
        if not all(math.isfinite(v) for v in ends):
            raise ValueError(
                f"the log-uniform noise density needs a finite log-SNR at both ends of the "
                f"training times; {type(process).__name__} has lambda = {ends[0]:g} at "
                f"t = {t_min:g} and {ends[1]:g} at t = {t_max:g}: use another time density "
                "(log_normal, logit_normal, uniform) or a path whose log-SNR is finite there "
                "(vp_linear, vp_cosine, sub_vp, ve, edm)."
            )


__all__ = ["AbstractTimeDensity", "LogNormalNoise", "LogUniformNoise", "LogitNormalTime",
           "UniformTime"]
