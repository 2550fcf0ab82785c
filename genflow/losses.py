"""Denoising losses for Gaussian paths, for every prediction kind.

With ``t ~ U(t_min, 1)``, ``eps ~ N(0, I)`` and ``x_t = alpha_t x_0 + sigma_t eps``, the network
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

Squared errors are averaged over data dimensions, then over the batch.
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
) -> Float[Array, ""]:
    """Monte-Carlo denoising loss on one batch.

    Args:
      model_fn: ``model_fn(x_t, t, cond) -> prediction`` shaped like ``x_t``.
      process: the Gaussian path.
      x0: a batch of data.
      key: randomness for ``t`` and the noise.
      prediction: what ``model_fn`` predicts.
      weighting: :class:`Uniform`, :class:`LikelihoodWeighting`, :class:`EDMWeighting` (or
        your own).
      t_min, t_max: times are drawn uniformly from ``[t_min, t_max]``.
      cond: optional conditioning passed through to ``model_fn``.
      eps: the noise-end points tied to ``x0`` (coupled pairs, e.g. rectified flow's
        reflow); drawn independently from ``N(0, I)`` when ``None``.

    Returns:
      The scalar loss.
    """
    kind = Prediction.parse(prediction)
    key_t, key_eps = jax.random.split(key)
    t = jax.random.uniform(
        key_t, (x0.shape[0],), dtype=x0.dtype, minval=t_min, maxval=t_max
    )
    if eps is None:
        x_t, eps = process.sample_xt(key_eps, x0, t)
    else:
        alpha, sigma = process.marginal(t)
        x_t = (broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * eps).astype(
            x0.dtype
        )
    pred = model_fn(x_t, t, cond)
    return jnp.mean(weighting.per_example(process, kind, pred, x0, eps, x_t, t))

