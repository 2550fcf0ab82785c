"""Predictor–corrector sampling (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

A :class:`PredictorCorrector` solver is composed of two objects:

* a *predictor* moves ``x`` from ``t_cur`` to ``t_next`` with one step of a reverse-time
  sampler: ``predictor.predict(denoise, x, t_cur, t_next, key) -> x_next``;
* a *corrector* runs MCMC that leaves the marginal ``p_t`` (approximately) invariant at a fixed
  time: ``corrector.correct(denoise, x, t, key) -> x``.

Order within a step follows score_sde's ``pc_sampler``: at each grid time the corrector runs
first (``corrector_steps`` times, at ``t_cur``), then the predictor moves to ``t_next``. So the
first corrections happen on the prior draw at ``t_start`` and no correction is applied at
``t_end`` (score_sde's last predictor step lands there too).

Every formula is written through ``alpha_t``, ``sigma_t`` and the half log-SNR
``lambda_t = log alpha_t - log sigma_t`` of the process, so each predictor and corrector works for
every Gaussian path, with every prediction kind (the score is ``-eps_hat / sigma_t``).

NFE per step: ``predictor evaluations + corrector_steps * corrector evaluations`` (1 for every
predictor except :class:`NoPredictor`, which has 0; 1 for the Langevin correctors, 0 for
:class:`NoCorrector`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractSolver, Denoiser


def _bc(a: Array, x: Array) -> Array:
    return broadcast_to_data(a, x)


def _neg_expm1_neg2h(process, t_cur, t_next) -> tuple[Array, Array]:
    """``h = lambda_next - lambda_cur`` and ``1 - exp(-2h)`` (computed without cancellation)."""
    h = process.log_snr(t_next) - process.log_snr(t_cur)
    return h, -jnp.expm1(-2.0 * h)


# --------------------------------------------------------------------------- predictors
@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class EulerMaruyamaPredictor:
    """Euler–Maruyama on the reverse SDE (score_sde's ``EulerMaruyamaPredictor``).

    With ``h = t_cur - t_next > 0``, ``(f, g^2) = process.sde(t_cur)`` and ``z ~ N(0, I)``::

        x_next = x - h (f x - g^2 score(x, t_cur)) + sqrt(g^2 h) z

    1 NFE.
    """

    order = 0.5
    stochastic = True

    def predict(self, denoise: Denoiser, x: Array, t_cur, t_next, key: PRNGKeyArray) -> Array:
        h = t_cur - t_next
        f, g2 = denoise.process.sde(t_cur)
        score = denoise.score(x, t_cur)
        drift = _bc(f, x) * x - _bc(g2, x) * score
        z = jax.random.normal(key, x.shape, x.dtype)
        return x - h * drift + _bc(jnp.sqrt(g2 * h), x) * z


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class ReverseDiffusionPredictor:
    """The discretized reverse SDE (score_sde's ``ReverseDiffusionPredictor``).

    The forward chain of the grid, ``x_cur = a x_next + G z`` with ``a = alpha_cur / alpha_next``
    and ``G^2 = sigma_cur^2 - a^2 sigma_next^2 = sigma_cur^2 (1 - exp(-2h))``
    (``h = lambda_next - lambda_cur``), has the discrete drift ``f x = (a - 1) x`` and diffusion
    ``G``. Its reverse step, as in score_sde's ``discretize``, is::

        x_next = x - [f x - G^2 score(x, t_cur)] + G z = (2 - a) x + G^2 score + G z

    For VP this is score_sde's ``(2 - sqrt(1 - beta_i)) x + beta_i score + sqrt(beta_i) z``; for
    VE (``a = 1``) it is ``x + (sigma_i^2 - sigma_{i-1}^2) score + sqrt(...) z``. 1 NFE.
    """

    order = 0.5
    stochastic = True

    def predict(self, denoise: Denoiser, x: Array, t_cur, t_next, key: PRNGKeyArray) -> Array:
        process = denoise.process
        alpha_cur, sigma_cur = process.marginal(t_cur)
        alpha_next, _ = process.marginal(t_next)
        _, one_minus_r = _neg_expm1_neg2h(process, t_cur, t_next)
        a = alpha_cur / alpha_next
        g2 = sigma_cur**2 * one_minus_r
        score = denoise.score(x, t_cur)
        z = jax.random.normal(key, x.shape, x.dtype)
        return _bc(2.0 - a, x) * x + _bc(g2, x) * score + _bc(jnp.sqrt(g2), x) * z


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class AncestralPredictor:
    """Ancestral sampling: draw ``x_next`` from the Gaussian posterior ``q(x_next | x_cur, x0_hat)``.

    With ``h = lambda_next - lambda_cur`` the posterior of the path is::

        mean = alpha_next (1 - e^{-2h}) x0_hat + (sigma_next / sigma_cur) e^{-h} x_cur
        std  = sigma_next sqrt(1 - e^{-2h})

    which is DDPM's step with the posterior variance ``beta_tilde`` (and SMLD's ancestral step for
    VE) for every Gaussian path; it equals ``DDIM(eta=1)``. score_sde's VP ancestral predictor uses
    the variance ``beta_i`` instead of ``beta_tilde_i``; here the posterior is used throughout.
    1 NFE.
    """

    order = 1
    stochastic = True

    def predict(self, denoise: Denoiser, x: Array, t_cur, t_next, key: PRNGKeyArray) -> Array:
        process = denoise.process
        x0, _ = denoise(x, t_cur)
        _, sigma_cur = process.marginal(t_cur)
        alpha_next, sigma_next = process.marginal(t_next)
        h, one_minus_r = _neg_expm1_neg2h(process, t_cur, t_next)
        coef_x = sigma_next / sigma_cur * jnp.exp(-h)
        coef_x0 = alpha_next * one_minus_r
        std = sigma_next * jnp.sqrt(one_minus_r)
        z = jax.random.normal(key, x.shape, x.dtype)
        return _bc(coef_x0, x) * x0 + _bc(coef_x, x) * x + _bc(std, x) * z


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class NoPredictor:
    """Leaves ``x`` unchanged (corrector-only sampling, e.g. annealed Langevin / NCSN). 0 NFE."""

    order = 0
    stochastic = False

    def predict(self, denoise: Denoiser, x: Array, t_cur, t_next, key: PRNGKeyArray) -> Array:
        return x


# --------------------------------------------------------------------------- correctors
def _alpha_i(process, t, num_scales) -> Array:
    """score_sde's ``alpha_i`` for a general Gaussian path: ``(alpha_t / alpha_{t - 1/N})^2``.

    score_sde multiplies the Langevin step by ``alpha_i = 1 - beta_i`` of its N-step discrete
    VP chain (N = 1000) and by 1 for VE. The one-step signal retention of an N-step chain,
    ``alpha_t^2 / alpha_{t - 1/N}^2``, is exactly 1 for VE and ``exp(-int beta) = 1 - beta_i +
    O(1/N^2)`` for VP, so this expression reproduces both and defines the factor for every path.
    """
    t = jnp.asarray(t)
    t_prev = jnp.maximum(t - 1.0 / num_scales, 0.0)
    alpha_t, _ = process.marginal(t)
    alpha_prev, _ = process.marginal(t_prev)
    return (alpha_t / alpha_prev) ** 2


def _langevin_update(x: Array, score: Array, step: Array, z: Array) -> Array:
    """``x + step * score + sqrt(2 step) z`` (unadjusted Langevin)."""
    return x + _bc(step, x) * score + _bc(jnp.sqrt(2.0 * step), x) * z


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class LangevinCorrector:
    """One step of Langevin MCMC at time ``t`` with a signal-to-noise-ratio step size.

    As in score_sde's ``LangevinCorrector``::

        eps_step = 2 alpha_i (snr * mean_b ||z_b|| / mean_b ||score_b||)^2
        x <- x + eps_step score(x, t) + sqrt(2 eps_step) z

    The norms are per example (over the data dimensions) and then averaged over the batch, exactly
    as in score_sde, so the step size is one scalar per batch: a per-example ratio
    ``||z_b|| / ||score_b||`` is heavy-tailed in low dimension (it diverges where the score
    vanishes). ``alpha_i = (alpha_t / alpha_{t - 1/num_scales})^2`` generalizes score_sde's
    ``1 - beta_i`` (VP) and ``1`` (VE); see :func:`_alpha_i`. 1 NFE.

    Attributes:
      snr: the target signal-to-noise ratio (score_sde: 0.16 on CIFAR-10, 0.075 on CelebA-HQ).
      num_scales: ``N`` of the discrete chain that defines ``alpha_i`` (score_sde's 1000).
    """

    snr: float = 0.16
    num_scales: int = 1000

    stochastic = True

    def correct(self, denoise: Denoiser, x: Array, t, key: PRNGKeyArray) -> Array:
        score = denoise.score(x, t)
        z = jax.random.normal(key, x.shape, x.dtype)
        axes = tuple(range(1, x.ndim))
        grad_norm = jnp.mean(jnp.sqrt(jnp.sum(score**2, axis=axes)))
        noise_norm = jnp.mean(jnp.sqrt(jnp.sum(z**2, axis=axes)))
        alpha = _alpha_i(denoise.process, t, self.num_scales)
        step = 2.0 * alpha * (self.snr * noise_norm / grad_norm) ** 2
        return _langevin_update(x, score, step, z)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class AnnealedLangevinCorrector:
    """Annealed Langevin dynamics (Song & Ermon 2019; score_sde's ``AnnealedLangevinDynamics``).

    The step size follows the marginal noise level instead of the sampled norms::

        eps_step = 2 alpha_i (snr * sigma_t)^2
        x <- x + eps_step score(x, t) + sqrt(2 eps_step) z

    with ``alpha_i`` as in :class:`LangevinCorrector`. 1 NFE.
    """

    snr: float = 0.16
    num_scales: int = 1000

    stochastic = True

    def correct(self, denoise: Denoiser, x: Array, t, key: PRNGKeyArray) -> Array:
        score = denoise.score(x, t)
        z = jax.random.normal(key, x.shape, x.dtype)
        _, sigma = denoise.process.marginal(t)
        alpha = _alpha_i(denoise.process, t, self.num_scales)
        step = 2.0 * alpha * (self.snr * sigma) ** 2
        return _langevin_update(x, score, step, z)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class NoCorrector:
    """Leaves ``x`` unchanged. 0 NFE."""

    stochastic = False

    def correct(self, denoise: Denoiser, x: Array, t, key: PRNGKeyArray) -> Array:
        return x


# --------------------------------------------------------------------------- the solver
# corrector_steps is a loop count: it stays a Python int under jit, so that the step makes a
# fixed number of model calls (which is how sample() counts NFE).
@pytree_dataclass(static=("corrector_steps",))
@dataclasses.dataclass(frozen=True)
class PredictorCorrector(AbstractSolver):
    """Predictor–corrector sampler (Song et al. 2021, Algorithms 2 and 3).

    One step from ``t_cur`` to ``t_next`` runs, in score_sde's order::

        for i in range(corrector_steps):
            x = corrector.correct(denoise, x, t_cur, fold_in(key, i + 1))
        x = predictor.predict(denoise, x, t_cur, t_next, key)

    The predictor draws from the step's own ``key`` (so ``PredictorCorrector(AncestralPredictor(),
    NoCorrector())`` reproduces ``DDIM(eta=1)`` draw for draw); corrector step ``i`` uses
    ``jax.random.fold_in(key, i + 1)``.

    Example::

        PredictorCorrector(predictor=ReverseDiffusionPredictor(),
                           corrector=LangevinCorrector(snr=0.16), corrector_steps=1)

    Attributes:
      predictor: an object with ``predict(denoise, x, t_cur, t_next, key) -> x``.
      corrector: an object with ``correct(denoise, x, t, key) -> x``.
      corrector_steps: corrector iterations per step (a static Python int, part of the pytree
        structure, so changing it recompiles).

    NFE per step: predictor NFE + ``corrector_steps`` x corrector NFE.
    """

    predictor: Any = dataclasses.field(default_factory=ReverseDiffusionPredictor)
    corrector: Any = dataclasses.field(default_factory=LangevinCorrector)
    corrector_steps: int = 1

    min_steps = 1

    def __post_init__(self):
        if not callable(getattr(self.predictor, "predict", None)):
            raise TypeError(
                "predictor must have a method predict(denoise, x, t_cur, t_next, key), e.g. "
                f"ReverseDiffusionPredictor(); got {type(self.predictor).__name__}."
            )
        if not callable(getattr(self.corrector, "correct", None)):
            raise TypeError(
                "corrector must have a method correct(denoise, x, t, key), e.g. "
                f"LangevinCorrector(snr=0.16); got {type(self.corrector).__name__}."
            )
        steps = self.corrector_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"corrector_steps must be an int >= 0, got {steps!r}.")

    @property
    def order(self) -> float:  # type: ignore[override]
        return self.predictor.order

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        corrects = self.corrector_steps > 0 and self.corrector.stochastic
        return bool(self.predictor.stochastic or corrects)

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        for i in range(self.corrector_steps):
            x = self.corrector.correct(denoise, x, t_cur, jax.random.fold_in(key, i + 1))
        return self.predictor.predict(denoise, x, t_cur, t_next, key), state



__all__ = [
    "AncestralPredictor",
    "AnnealedLangevinCorrector",
    "EulerMaruyamaPredictor",
    "LangevinCorrector",
    "NoCorrector",
    "NoPredictor",
    "PredictorCorrector",
    "ReverseDiffusionPredictor",
]
