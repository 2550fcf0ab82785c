"""Geometric Brownian motion: multiplicative noise and log-normal marginals on positive data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from genflow import processes, samplers
from genflow.methods._base import AbstractMethod, Batch, check_time_range
from genflow.processes._gbm import T_FLOOR

PREDICTIONS = ("eps", "score")
WEIGHTINGS = ("uniform", "paper")
T_SAMPLINGS = ("uniform", "log_uniform")


@dataclasses.dataclass(frozen=True)
class GBM(AbstractMethod):
    r"""Score matching for :class:`~genflow.processes.GeometricBrownianMotion`.

    Data (times ``data.scale``) must lie in ``[-1, 1]`` and are mapped onto ``[1, 2]`` by
    :func:`~genflow.processes.to_positive` (:meth:`encode`; checked on many points before
    training by :meth:`check_data`). With ``prediction="eps"`` the network reads ``log x``,
    standardised by the mean ``m_0 + (mu - sigma^2/2) t`` and standard deviation
    ``sqrt(s_0^2 + sigma^2 t)`` of ``log x_t`` (``m_0``, ``s_0``: the process's
    ``data_log_mean`` and ``data_log_std``), and predicts the noise ``z`` of
    ``log x_t = log x_0 + (mu - sigma^2/2) t + sigma sqrt(t) z``, so the Hyvarinen score is
    ``x o grad log p = -1 - eps / (sigma sqrt t)``; with ``"score"`` it reads ``x`` and
    predicts ``grad log p`` itself (the parametrisation of the GBM paper). Sampled by
    :class:`~genflow.samplers.GBMExponential` and :class:`~genflow.samplers.GBMEulerMaruyama`.

    Attributes:
      prediction: ``"eps"`` or ``"score"``.
      weighting: ``"uniform"`` weights the noise residual uniformly; ``"paper"`` is the
        authors' ``(sigma^2 t)^2`` on the Hyvarinen-score error
        (:func:`~genflow.processes.gbm_score_loss`).
      t_min: the smallest training time.
      t_sampling: ``"uniform"`` in ``[t_min, 1]`` or ``"log_uniform"`` (``log t`` uniform,
        which gives every decade of the noise scale the same share of the batch).
    """

    field_class = samplers.GBMScore

    prediction: str = "eps"
    weighting: str = "uniform"
    t_min: float = 1e-5
    t_sampling: str = "uniform"

    def __post_init__(self):
        for name, value, choices in (("prediction", self.prediction, PREDICTIONS),
                                     ("weighting", self.weighting, WEIGHTINGS),
                                     ("t_sampling", self.t_sampling, T_SAMPLINGS)):
            if value not in choices:
                raise ValueError(f"method.{name}={value!r} does not fit the gbm method; choose "
                                 f"one of: {', '.join(choices)}.")
        check_time_range("method", self.t_min)
        if self.t_sampling == "log_uniform" and not self.t_min > 0.0:
            raise ValueError("method.t_sampling=log_uniform needs method.t_min > 0, e.g. 1e-6.")

    def check_process(self) -> None:
        if not isinstance(self.process, processes.GeometricBrownianMotion):
            raise ValueError(f"the gbm method needs a GeometricBrownianMotion, not "
                             f"{type(self.process).__name__}.")

    def check(self, *, images: bool, scale: float = 1.0, **kwargs) -> None:
        if images and scale > 1.0:
            raise ValueError(f"gbm maps images in [-1, 1] onto [1, 2]; data.scale={scale} takes "
                             "them outside: use data.scale <= 1.")
        super().check(images=images, scale=scale, **kwargs)

    def encode(self, x):
        return np.asarray(processes.to_positive(x), np.float32) if isinstance(x, np.ndarray) \
            else processes.to_positive(x)

    def decode(self, x):
        return processes.from_positive(x)

    def check_data(self, x: np.ndarray) -> None:
        reach = float(np.abs(x).max())
        if reach > 1.0:
            raise ValueError(
                f"gbm maps data in [-1, 1] onto [1, 2], but the data times data.scale reach "
                f"{reach:.3g}; shrink data.scale by a factor {0.99 / reach:.3g} or more."
            )

    def score_fn(self, model_fn: Callable) -> Callable:
        """The Stein score ``grad log p_t(x)`` of the network (see the class notes)."""
        if self.prediction == "score":
            return model_fn
        process = self.process

        def score(x, t, cond=None):
            t_b = processes.broadcast_to_data(t, x).astype(x.dtype)
            noise = process.sigma * jnp.sqrt(jnp.maximum(t_b, T_FLOOR))
            mean = process.data_log_mean + (process.mu - 0.5 * process.sigma**2) * t_b
            std = jnp.sqrt(process.data_log_std**2 + process.sigma**2 * t_b)
            eps = model_fn((jnp.log(x) - mean) / std, t, cond).astype(x.dtype)
            return (-1.0 - eps / noise) / x

        return score

    def loss(self, model_fn: Callable, batch: Batch, key: PRNGKeyArray) -> Array:
        return processes.gbm_score_loss(
            self.score_fn(model_fn), self.process, batch["x"], key=key, t_min=self.t_min,
            weighting="noise" if self.weighting == "uniform" else "paper",
            t_sampling=self.t_sampling, cond=batch.get("cond"),
        )

    def sampling_model(self, model_fn: Callable) -> tuple[Callable, str]:
        return self.score_fn(model_fn), "score"
