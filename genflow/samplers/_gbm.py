"""Reverse-time samplers of geometric Brownian motion (Shetty, Prasath & Seelamantula,
"Dale meets Langevin", arXiv 2510.02730), as solvers of :func:`genflow.samplers.sample`.

The forward GBM ``dX = mu X dt + sigma X dW`` (:class:`~genflow.processes.GeometricBrownianMotion`)
has, with ``g(x) = sigma x`` elementwise, Anderson's reverse SDE

    dX = [mu X - 2 sigma^2 X - sigma^2 X o X o grad log p_t(X)] dt + sigma X dW_bar,

and in log space (``grad_y log p_Y = x o grad_x log p_X + 1``)

    dY = [(mu - sigma^2/2) - sigma^2 (x o grad log p_t + 1)] dt + sigma dW_bar.

With ``h = x o score(x, t_cur)`` (the Hyvarinen score), ``delta = t_cur - t_next`` and
``z ~ N(0, I)``, one step is

* :class:`GBMExponential` (the paper's Dale-Langevin sampler, Euler-Maruyama in ``log x``):
  ``x <- x o exp(delta sigma^2 h - delta (mu - 3/2 sigma^2) + sigma sqrt(delta) z)``; it keeps
  the sign of every entry, so positive samples stay positive;
* :class:`GBMEulerMaruyama` (sign-agnostic, Euler-Maruyama of the ambient reverse SDE):
  ``x <- x o [1 + delta (2 sigma^2 - mu) + delta sigma^2 h + sigma sqrt(delta) z]``; it can
  leave the positive orthant when a step is large.

This is the plain discretisation of the reverse SDE on the time grid. The authors' samplers use
a tuned constant step (not ``1/N``), several inner steps per level and noise annealed by 0.995
per step; none of that is reproduced here.

Noise is added at every step, so the result follows ``p_{t_end}``; the score is never evaluated
at ``t_end`` itself, so ``t_end = 0`` is allowed (uniform and quadratic grids) when the score is
finite as ``t -> 0``. ``denoise_final=True`` ends with Tweedie's estimate in log space instead
(:meth:`GBMScore.final`, one more evaluation). Grids: ``samplers.uniform`` in ``t``,
``samplers.quadratic`` (uniform in ``sqrt(t)``, i.e. in the noise scale ``sigma sqrt(t)`` of
``log x``) and ``samplers.log_snr_uniform`` (geometric in ``t``: uniform in the log of that noise
scale, see :meth:`GeometricBrownianMotion.log_snr`; needs ``t_end > 0``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from genflow.prediction import Prediction
from genflow.processes._base import AbstractForwardSDE, AbstractGaussianPath, pytree_dataclass
from genflow.samplers._base import AbstractField, AbstractSolver


class GBMScore(AbstractField):
    """The field of the GBM solvers: ``model_fn`` is the Stein score ``grad_x log p_t(x)``.

    Built by ``sample()`` as ``GBMScore(model_fn, process, "score", cond)``; the prediction must
    be ``"score"`` (a network in log space with another output is converted to the score by the
    caller). No thresholding (there is no ``x0`` estimate to clip).

    Attributes:
      process: the forward :class:`~genflow.processes.GeometricBrownianMotion`.
      calls: network evaluations traced since the last :meth:`reset_calls`.
    """

    def __init__(self, model_fn, process, prediction, cond=None, thresholding=None):
        if not self.fits(process):
            self._refuse(process, "a geometric Brownian motion (a forward SDE with "
                                  "multiplicative noise: drift mu x, diffusion sigma x)")
        if Prediction.parse(prediction) is not Prediction.SCORE:
            raise ValueError(
                f"the GBM solvers read a score model (prediction='score', grad log p_t(x)); got "
                f"prediction={str(getattr(prediction, 'value', prediction))!r}: convert the "
                "network's output to the score first."
            )
        if thresholding is not None:
            raise ValueError("dynamic thresholding needs an x0 estimate, which the GBM solvers "
                             "do not have; pass thresholding=None.")
        super().__init__(model_fn, process, Prediction.SCORE, cond, None)

    @classmethod
    def fits(cls, process: Any) -> bool:
        # A capability check: a forward SDE (not a Gaussian path) with scalar rates mu, sigma.
        return (isinstance(process, AbstractForwardSDE)
                and not isinstance(process, AbstractGaussianPath)
                and hasattr(process, "mu") and hasattr(process, "sigma"))

    def score(self, x: Array, t: ArrayLike) -> Array:
        """``grad_x log p_t(x)`` (one network evaluation)."""
        return self.raw(x, t)

    def final(self, x: Array, t: ArrayLike) -> Array:
        """Tweedie's estimate in log space at ``t``, written multiplicatively (keeps each sign):
        ``log x0_hat = log x - (mu - sigma^2/2) t + sigma^2 t (x o score + 1)``."""
        p = self.process
        h = x * self.score(x, t)
        s2t = p.sigma**2 * t
        return (x * jnp.exp(s2t * (h + 1.0) - (p.mu - 0.5 * p.sigma**2) * t)).astype(x.dtype)


def exponential_step(process, x, h, z, delta):
    """Dale-Langevin (sign-preserving) step: Euler-Maruyama of the reverse SDE of ``Y = log X``,
    exponentiated: ``x <- x exp(delta sigma^2 h - delta (mu - 3/2 sigma^2) + sigma sqrt(delta) z)``."""
    s2 = process.sigma**2
    noise = process.sigma * jnp.sqrt(delta) * z
    log_gain = delta * s2 * h - delta * (process.mu - 1.5 * s2) + noise
    return x * jnp.exp(log_gain)


def euler_maruyama_step(process, x, h, z, delta):
    """Sign-agnostic step: Euler-Maruyama of the ambient reverse SDE,
    ``x <- x [1 + delta (2 sigma^2 - mu) + delta sigma^2 h + sigma sqrt(delta) z]``."""
    s2 = process.sigma**2
    noise = process.sigma * jnp.sqrt(delta) * z
    gain = 1.0 + delta * (2.0 * s2 - process.mu) + delta * s2 * h + noise
    return x * gain


class _GBMSolver(AbstractSolver):
    order = 0.5
    stochastic = True
    min_steps = 1
    field_class = GBMScore
    _update = staticmethod(exponential_step)

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        h = x * denoise.score(x, t_cur)
        z = jax.random.normal(key, x.shape, x.dtype)
        return type(self)._update(denoise.process, x, h, z, t_cur - t_next).astype(x.dtype), state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class GBMExponential(_GBMSolver):
    """The Dale-Langevin (sign-preserving) reverse GBM step (module docstring).

    ``x <- x o exp(delta sigma^2 h - delta (mu - 3/2 sigma^2) + sigma sqrt(delta) z)`` with
    ``h = x o score``: Euler-Maruyama of the reverse SDE of ``log x``, exponentiated. Positive
    samples stay positive. 1 NFE per step; strong order 1/2 (Euler-Maruyama).
    """

    _update = staticmethod(exponential_step)


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class GBMEulerMaruyama(_GBMSolver):
    """Euler-Maruyama of the ambient reverse GBM SDE (module docstring).

    ``x <- x o [1 + delta (2 sigma^2 - mu) + delta sigma^2 h + sigma sqrt(delta) z]`` with
    ``h = x o score``; may leave the positive orthant on large steps. 1 NFE per step; strong
    order 1/2.
    """

    _update = staticmethod(euler_maruyama_step)
