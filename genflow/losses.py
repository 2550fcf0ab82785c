"""Denoising losses for Gaussian paths, for every prediction kind.

With ``t`` drawn from a time density (:mod:`genflow.time_densities`; by default
``t ~ U(t_min, t_max)``), ``eps ~ N(0, I)`` and ``x_t = alpha_t x_0 + sigma_t eps``, the network
output ``F(x_t, t)`` is regressed onto the target of its kind (see :mod:`genflow.prediction`).
The weighting decides what is averaged:

* :class:`Uniform` -- ``E ||F - target||^2`` in the prediction's own space (the usual
  epsilon-, x0-, v- or flow-matching loss).
* :class:`EDMWeighting` -- ``E lambda(s) ||x0_hat - x0||^2`` with EDM's ``lambda(s)``.
* :class:`LikelihoodWeighting` -- ``E g_t^2 / sigma_t^2 ||eps_hat - eps||^2``, which equals
  ``E g_t^2 ||s_theta - grad log p(x_t | x_0)||^2``: score matching weighted by ``g^2``
  (Song et al. 2021, "Maximum Likelihood Training of Score-Based Diffusion Models"), an
  upper bound on the negative log-likelihood up to a constant. ``eps_hat`` is obtained from
  any prediction kind through the conversion hub, so the bound holds for all of them.
* :class:`MinSNRWeighting` -- ``E min(SNR_t, gamma) ||x0_hat - x0||^2`` with
  ``SNR_t = alpha_t^2 / sigma_t^2`` (Hang et al. 2023, Min-SNR).
* :class:`SigmoidWeighting` -- ``E sigmoid(b - logSNR_t) g_t^2 / sigma_t^2
  ||eps_hat - eps||^2``: Kingma & Gao's (2023) weighted ELBO with ``w = sigmoid(b - logSNR)``.

The weightings that name ``x0_hat`` or ``eps_hat`` convert any prediction kind through
:func:`genflow.prediction.to_x0_eps`, so they are one objective for every kind. Squared errors
are averaged over data dimensions, then over the batch.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from genflow.prediction import Prediction, from_x0_eps, to_x0_eps
from genflow.processes._base import AbstractGaussianPath, broadcast_to_data, pytree_dataclass
from genflow.time_densities import AbstractTimeDensity, UniformTime


class AbstractWeighting(abc.ABC):
    """How per-example squared errors are weighted over time."""

    @abc.abstractmethod
    def per_example(
        self,
        process: AbstractGaussianPath,
        kind: Prediction,
        pred: Array,
        x0: Array,
        eps: Array,
        x_t: Array,
        t: Array,
    ) -> Float[Array, "b"]:
        """Weighted squared error for each example."""


def _mean_per_example(err: Array) -> Array:
    return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class Uniform(AbstractWeighting):
    """Plain mean squared error between the prediction and its target."""

    def per_example(self, process, kind, pred, x0, eps, x_t, t):
        target = from_x0_eps(process, kind, x0, eps, x_t, t)
        return _mean_per_example((pred - target) ** 2)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class LikelihoodWeighting(AbstractWeighting):
    """Weight ``g_t^2 / sigma_t^2`` on the noise error (maximum-likelihood weighting)."""

    def per_example(self, process, kind, pred, x0, eps, x_t, t):
        _, eps_hat = to_x0_eps(process, kind, pred, x_t, t)
        _, sigma = process.marginal(t)
        _, g2 = process.sde(t)
        return g2 / sigma**2 * _mean_per_example((eps_hat - eps) ** 2)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class EDMWeighting(AbstractWeighting):
    """EDM's weight ``(s^2 + sigma_d^2) / (s sigma_d)^2`` on the ``x0`` error, with the noise
    level ``s = sigma_t / alpha_t`` (Karras et al. 2022). With EDM's preconditioning
    (``genflow.processes.edm_precondition``) it makes the raw network's target unit-variance
    at every noise level.

    Attributes:
      sigma_data: the standard deviation of the data.
    """

    sigma_data: float = 0.5

    def per_example(self, process, kind, pred, x0, eps, x_t, t):
        x0_hat, _ = to_x0_eps(process, kind, pred, x_t, t)
        alpha, sigma = process.marginal(t)
        s = sigma / alpha
        weight = (s**2 + self.sigma_data**2) / (s * self.sigma_data) ** 2
        return weight * _mean_per_example((x0_hat - x0) ** 2)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class MinSNRWeighting(AbstractWeighting):
    r"""Min-SNR-gamma: the weight ``min(SNR_t, gamma)`` on the ``x0`` error (Hang et al. 2023,
    "Efficient Diffusion Training via Min-SNR Weighting Strategy"; ``gamma = 5`` there).

    .. math::

        \min(\mathrm{SNR}_t, \gamma)\, \|\hat x_0 - x_0\|^2, \qquad
        \mathrm{SNR}_t = \alpha_t^2 / \sigma_t^2 = e^{2 \lambda_t}.

    ``x0_hat`` comes from any prediction kind through :func:`genflow.prediction.to_x0_eps`, so
    this is one objective for all of them; in the paper's per-kind form it is
    ``min(SNR, gamma) / SNR`` on the eps error (``||x0_hat - x0|| = ||eps_hat - eps|| / sqrt(SNR)``)
    and, on a variance-preserving path, ``min(SNR, gamma) / (SNR + 1)`` on the v error.

    Attributes:
      gamma: the cap on the signal-to-noise ratio (positive).
    """

    gamma: float = 5.0

    def __post_init__(self):
        if isinstance(self.gamma, (int, float)) and not self.gamma > 0:
            raise ValueError(f"MinSNRWeighting needs gamma > 0, got {self.gamma}.")

    def per_example(self, process, kind, pred, x0, eps, x_t, t):
        x0_hat, _ = to_x0_eps(process, kind, pred, x_t, t)
        log_snr = 2.0 * process.log_snr(t)
        # min(e^{2 lambda}, gamma) without overflowing e^{2 lambda} near the data.
        weight = jnp.exp(jnp.minimum(log_snr, jnp.log(jnp.asarray(self.gamma, log_snr.dtype))))
        return weight * _mean_per_example((x0_hat - x0) ** 2)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class SigmoidWeighting(AbstractWeighting):
    r"""Kingma & Gao's sigmoid weighting (2023, "Understanding Diffusion Objectives as the ELBO
    with Simple Data Augmentation"): ``w = sigmoid(b - logSNR)`` in their weighted loss.

    Kingma & Gao write the weighted loss as an integral over the log-SNR,
    ``L_w = 1/2 E_{t ~ U(0, 1)} [w(logSNR_t) (-d logSNR_t / dt) ||eps_hat - eps||^2]``, so that
    the weighting, not the schedule, decides the objective. Per example this is

    .. math::

        \mathrm{sigmoid}(b - \mathrm{logSNR}_t)\, \frac{g_t^2}{\sigma_t^2}\,
        \|\hat\epsilon - \epsilon\|^2, \qquad
        \mathrm{logSNR}_t = \log\frac{\alpha_t^2}{\sigma_t^2} = 2 \lambda_t,
        \quad -\frac{d\,\mathrm{logSNR}_t}{dt} = \frac{g_t^2}{\sigma_t^2},

    with the *full* log-SNR (twice genflow's half log-SNR ``lambda_t``) and without the paper's
    factor 1/2, so that ``bias -> inf`` (``w = 1``) is exactly :class:`LikelihoodWeighting`
    (the ELBO). ``w`` is monotone (decreasing in ``logSNR``), which makes the objective an ELBO
    of the data under Gaussian noise augmentation. It is Kingma & Gao's ``L_w`` for
    ``t ~ U[t_min, t_max]`` (the default time density); another time density
    (:mod:`genflow.time_densities`) multiplies the integrand by its density in ``t``.
    ``eps_hat`` comes from any prediction kind through :func:`genflow.prediction.to_x0_eps`.

    Attributes:
      bias: ``b`` (default 2, the value public implementations of this weighting use; the
        paper compares several biases, so set the one you reproduce). Larger ``b`` gives
        less noisy times more weight (``b -> inf``: the ELBO); smaller ``b`` less.
    """

    bias: float = 2.0

    def per_example(self, process, kind, pred, x0, eps, x_t, t):
        _, eps_hat = to_x0_eps(process, kind, pred, x_t, t)
        _, sigma = process.marginal(t)
        _, g2 = process.sde(t)
        weight = jax.nn.sigmoid(self.bias - 2.0 * process.log_snr(t)) * g2 / sigma**2
        return weight * _mean_per_example((eps_hat - eps) ** 2)


def denoising_loss(
    model_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    x0: Float[Array, "b *d"],
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str = Prediction.EPS,
    weighting: AbstractWeighting = Uniform(),
    t_min: float = 1e-5,
    t_max: float = 1.0,
    cond: Array | None = None,
    eps: Array | None = None,
    time_density: AbstractTimeDensity = UniformTime(),
) -> Float[Array, ""]:
    """Monte-Carlo denoising loss on one batch.

    Args:
      model_fn: ``model_fn(x_t, t, cond) -> prediction`` shaped like ``x_t``.
      process: the Gaussian path.
      x0: a batch of data.
      key: randomness for ``t`` and the noise.
      prediction: what ``model_fn`` predicts.
      weighting: :class:`Uniform`, :class:`LikelihoodWeighting`, :class:`EDMWeighting`,
        :class:`MinSNRWeighting`, :class:`SigmoidWeighting` (or your own).
      t_min, t_max: the range of the training times.
      cond: optional conditioning passed through to ``model_fn``.
      eps: the noise-end points tied to ``x0`` (coupled pairs, e.g. rectified flow's
        reflow); drawn independently from ``N(0, I)`` when ``None``.
      time_density: where in ``[t_min, t_max]`` the times are drawn
        (:mod:`genflow.time_densities`); the default :class:`~genflow.time_densities.UniformTime`
        is ``jax.random.uniform(key_t, (b,), x0.dtype, t_min, t_max)``.

    Returns:
      The scalar loss.
    """
    kind = Prediction.parse(prediction)
    key_t, key_eps = jax.random.split(key)
    t = time_density.sample(key_t, process, (x0.shape[0],), t_min=t_min, t_max=t_max,
                            dtype=x0.dtype)
    if eps is None:
        x_t, eps = process.sample_xt(key_eps, x0, t)
    else:
        alpha, sigma = process.marginal(t)
        x_t = (broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * eps).astype(
            x0.dtype
        )
    pred = model_fn(x_t, t, cond)
    return jnp.mean(weighting.per_example(process, kind, pred, x0, eps, x_t, t))

