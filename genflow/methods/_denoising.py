"""Denoising on a Gaussian path: the network predicts eps, x0, v, the velocity or the score."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxtyping import Array, PRNGKeyArray

from genflow import fokker_planck, losses, samplers, time_densities
from genflow.methods._base import AbstractMethod, Batch, bound_field, check_time_range, finite_sde, registry_field
from genflow.prediction import Prediction
from genflow.processes import AbstractGaussianPath, edm_precondition

PRECONDITIONINGS = ("none", "edm")
FP_DIVERGENCES = ("exact", "hutchinson")


@dataclasses.dataclass(frozen=True)
class Denoising(AbstractMethod):
    """Denoising score matching on any Gaussian path ``x_t = alpha_t x0 + sigma_t eps``.

    The loss is :func:`genflow.losses.denoising_loss` with ``t`` in ``[t_min, 1]`` drawn from
    the named time density (uniform by default) and the named weighting; with
    ``fp_weight > 0`` the Fokker-Planck residual of the score is added
    (:func:`genflow.fokker_planck.fp_regularized_loss`). Every Gaussian-path solver of
    :mod:`genflow.samplers` samples it; coupled (data, noise) pairs (reflow) train it too.

    Attributes:
      prediction: what the network predicts: ``"eps"``, ``"x0"``, ``"v"``, ``"velocity"`` or
        ``"score"``.
      weighting: the loss weighting's registry name (``"uniform"``, ``"likelihood"``,
        ``"edm"``, ``"min_snr"``, ``"sigmoid"``) or a :class:`genflow.losses.AbstractWeighting`;
        a weighting with a ``sigma_data`` field gets this method's :attr:`sigma_data`.
      t_min: the smallest training time.
      time_density: where the training times are drawn, passed to the loss: the registry name
        of a :class:`genflow.time_densities.AbstractTimeDensity` (``"uniform"``, the default and
        the draw of earlier versions; ``"log_normal"``, EDM's; ``"logit_normal"``, SD3's;
        ``"log_uniform"``, log-uniform in the noise level) or such an object.
      precondition: ``"edm"`` wraps the network in EDM's preconditioning (``c_skip``,
        ``c_out``, ``c_in``, ``c_noise``), which predicts ``x0``; ``"none"``: the bare network.
      sigma_data: the data's standard deviation, for EDM's preconditioning and EDM's weighting
        alike (one number, so the two always agree).
      fp_weight: weight of the Fokker-Planck regularizer (0: off).
      fp_points: collocation points per step for the regularizer.
      fp_divergence: ``"exact"`` (Jacobian trace) or ``"hutchinson"`` divergence of the score.
    """

    thresholding = True
    coupled_pairs = True
    probability_flow = True

    prediction: str = "eps"
    weighting: Any = registry_field("weighting", "uniform")
    t_min: float = 1e-5
    time_density: Any = registry_field("time_density", "uniform")
    precondition: str = "none"
    sigma_data: float = 0.5
    fp_weight: float = 0.0
    fp_points: int = 64
    fp_divergence: str = "exact"
    # Set by bind(): the network's output is a scalar log-density whose x-gradient is the score.
    log_density: bool = bound_field(False)

    def __post_init__(self):
        try:
            Prediction.parse(self.prediction)
        except ValueError:
            raise ValueError(
                f"method.prediction={self.prediction!r} is not a prediction of a Gaussian path; "
                f"choose one of: {', '.join(p.value for p in Prediction)}."
            ) from None
        check_time_range("method", self.t_min)
        if self.precondition not in PRECONDITIONINGS:
            raise ValueError(f"method.precondition must be one of {PRECONDITIONINGS}, got "
                             f"{self.precondition!r}.")
        if not self.sigma_data > 0:
            raise ValueError(f"method.sigma_data must be positive, got {self.sigma_data}.")
        if self.precondition == "edm" and Prediction.parse(self.prediction) != Prediction.X0:
            raise ValueError(
                "method.precondition='edm' makes the network predict x0; set "
                f"method.prediction=x0 (got {self.prediction!r})."
            )
        if self.fp_weight < 0:
            raise ValueError(f"method.fp_weight must be >= 0, got {self.fp_weight}.")
        if not self.fp_points > 0:
            raise ValueError(f"method.fp_points must be positive, got {self.fp_points}.")
        if self.fp_divergence not in FP_DIVERGENCES:
            raise ValueError(f"method.fp_divergence must be one of {FP_DIVERGENCES}, got "
                             f"{self.fp_divergence!r}.")
        if isinstance(self.weighting, losses.AbstractWeighting):
            own = getattr(self.weighting, "sigma_data", self.sigma_data)
            if own != self.sigma_data:
                raise ValueError(
                    f"the weighting's sigma_data ({own}) differs from method.sigma_data "
                    f"({self.sigma_data}); give the data's standard deviation once, as "
                    "method.sigma_data."
                )

    def bind(self, process: Any, **context: Any) -> Denoising:
        method = self
        if isinstance(self.time_density, str) and self.time_density == "uniform":
            # The default, so that a method made without the config layer (which builds every
            # registry name) trains as before: Denoising(weighting=losses.Uniform()).bind(p).
            method = dataclasses.replace(self, time_density=time_densities.UniformTime())
        return super(Denoising, method).bind(process, **context)

    @property
    def kind(self) -> Prediction:
        return Prediction.parse(self.prediction)

    def check_process(self) -> None:
        if not isinstance(self.process, AbstractGaussianPath):
            raise ValueError(
                f"the denoising method needs a Gaussian path; {type(self.process).__name__} is "
                "not one (GBM and stochastic interpolants between data sets have their own "
                "methods: gbm, interpolant)."
            )
        if not isinstance(self.weighting, losses.AbstractWeighting):
            raise TypeError(f"weighting {self.weighting!r} was not built; bind a method whose "
                            "weighting is an AbstractWeighting (the config layer builds it).")
        if not isinstance(self.time_density, time_densities.AbstractTimeDensity):
            raise TypeError(f"time_density {self.time_density!r} was not built; bind a method "
                            "whose time_density is an AbstractTimeDensity (the config layer "
                            "builds it).")
        self.time_density.check(self.process, self.t_min, 1.0)
        if self.fp_weight > 0 and not finite_sde(self.process, self.t_min):
            raise ValueError(
                "method.fp_weight > 0 needs a Gaussian path whose forward SDE is finite on "
                f"[t_min, 1] (vp_linear, vp_cosine, sub_vp, ve, edm); {type(self.process).__name__}"
                " has none: set method.fp_weight=0."
            )
        if self.log_density and (self.kind != Prediction.SCORE or self.precondition != "none"):
            raise ValueError(
                "model.output='log_density' is a network whose x-gradient is a score: use "
                "method.prediction=score and "
                f"method.precondition=none (got {self.prediction!r}, {self.precondition!r})."
            )

    def wrap(self, net: Callable) -> Callable:
        if self.precondition == "edm":
            return edm_precondition(net, self.process, sigma_data=self.sigma_data)
        return net

    def loss(self, model_fn: Callable, batch: Batch, key: PRNGKeyArray) -> Array:
        common = dict(key=key, prediction=self.kind, weighting=self.weighting, t_min=self.t_min,
                      cond=batch.get("cond"), eps=batch.get("eps"),
                      time_density=self.time_density)
        if self.fp_weight > 0:  # DSM + w E|R|^2 (see genflow.fokker_planck)
            return fokker_planck.fp_regularized_loss(
                model_fn, self.process, batch["x"], weight=self.fp_weight,
                num_points=self.fp_points, divergence=self.fp_divergence,
                log_density_fn=model_fn.log_density if self.log_density else None, **common,
            )
        return losses.denoising_loss(model_fn, self.process, batch["x"], **common)

    def sampling_model(self, model_fn: Callable) -> tuple[Callable, str]:
        return model_fn, self.prediction

    def check_sampling(self, solver: Any, **kwargs: Any) -> None:
        if isinstance(solver, samplers.FokkerPlanckHeun) and not self.fp_weight > 0:
            raise ValueError(
                "fp_ode is the probability-flow ODE of a model trained with the Fokker-Planck "
                "regularizer; this run has method.fp_weight=0: use sampler heun."
            )
        super().check_sampling(solver, **kwargs)
