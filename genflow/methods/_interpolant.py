"""Stochastic interpolants between two data sets (Albergo, Boffi and Vanden-Eijnden 2023)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from genflow import processes, samplers
from genflow.methods._base import AbstractMethod, Batch, check_time_range

FIELDS = ("b", "v", "b+eta", "b+s", "v+eta", "v+s")


@dataclasses.dataclass(frozen=True)
class Interpolant(AbstractMethod):
    """Learn the drift (and a denoiser or score) of ``x_t = I(t, x0, x1) + gamma(t) z``.

    ``x0`` is drawn from ``data.name`` (``t = 0``) and ``x1`` from ``data.source`` (``t = 1``;
    ``N(0, I)`` when empty), independently. The network predicts one or two fields, joined by
    ``+`` in :attr:`fields` and concatenated along the last axis of its output: a drift (``b``,
    or ``v`` with ``b = v + gamma' eta``) and optionally a denoiser ``eta`` or a score ``s``.
    Each field has its own quadratic loss (:func:`genflow.processes.interpolant_loss`,
    antithetic, ``t ~ U[t_min, 1 - t_min]``); the losses are summed. Samples start from
    ``data.source`` draws (or ``N(0, I)``) at ``t = 1`` and follow the ODE
    (:class:`~genflow.samplers.InterpolantHeun`, :class:`~genflow.samplers.InterpolantEuler`)
    or the SDE (:class:`~genflow.samplers.InterpolantSDE`).

    Attributes:
      fields: ``"b"``, ``"v"``, ``"b+eta"``, ``"b+s"``, ``"v+eta"`` or ``"v+s"``.
      t_min: training times lie in ``[t_min, 1 - t_min]``, where the score and (for
        ``gamma="sqrt"``) the drift are finite; must be positive.
    """

    field_class = samplers.InterpolantField
    two_data_sets = True

    fields: str = "b+eta"
    t_min: float = 1e-3

    def __post_init__(self):
        if self.fields not in FIELDS:
            raise ValueError(f"method.fields={self.fields!r} is not a set of interpolant fields; "
                             f"choose one of: {', '.join(FIELDS)}.")
        check_time_range("method", self.t_min)
        if not self.t_min > 0.0:
            raise ValueError(
                "stochastic interpolants train on t in [t_min, 1 - t_min], where the score and "
                "(for gamma='sqrt') the drift are finite; set method.t_min > 0, e.g. 1e-3."
            )

    @property
    def targets(self) -> list[str]:
        return self.fields.split("+")

    @property
    def num_fields(self) -> int:
        return len(self.targets)

    def check_process(self) -> None:
        process = self.process
        if not isinstance(process, processes.StochasticInterpolant):
            raise ValueError(f"the interpolant method needs a StochasticInterpolant, not "
                             f"{type(process).__name__}.")
        zero_gamma = not process.one_sided and process.gamma_schedule == "zero"
        if self.num_fields == 2 and zero_gamma:
            raise ValueError(
                f"method.fields={self.fields!r} learns a score, but gamma='zero' leaves no noise "
                "to learn it from; use method.fields=b, or a gamma such as 'sqrt'."
            )
        if self.targets == ["v"] and not (zero_gamma or process.one_sided):
            raise ValueError("method.fields='v' alone does not give the drift b = v + gamma' eta "
                             "when gamma != 0; use method.fields=b or v+eta.")

    def check(self, *, source: bool, **kwargs) -> None:
        if source and self.process is not None and self.process.one_sided:
            raise ValueError(
                f"interpolant {self.process.interpolant!r} is one-sided (its t = 1 end is "
                "N(0, I)); leave data.source empty or use a two-sided interpolant such as 'linear'."
            )
        super().check(source=source, **kwargs)

    def loss(self, model_fn: Callable, batch: Batch, key: PRNGKeyArray) -> Array:
        x0 = batch["x"]
        key_x1, key = jax.random.split(key)
        x1 = batch.get("x1")
        if x1 is None:
            x1 = jax.random.normal(key_x1, x0.shape, x0.dtype)
        n = self.num_fields
        total = 0.0
        for i, target in enumerate(self.targets):
            field = model_fn if n == 1 else (
                lambda x, t, cond=None, i=i: jnp.split(model_fn(x, t, cond), n, axis=-1)[i])
            total = total + processes.interpolant_loss(
                field, self.process, x0, x1, key=key, target=target, t_min=self.t_min,
                t_max=1.0 - self.t_min, antithetic=True, cond=batch.get("cond"),
            )
        return total

    def sampling_model(self, model_fn: Callable) -> tuple[Callable, str]:
        return model_fn, self.fields

    def check_sampling(self, solver, **kwargs) -> None:
        if isinstance(solver, samplers.InterpolantSDE) and self.num_fields == 1:
            raise ValueError(
                "interpolant_sde needs a score or denoiser field besides the drift; train with "
                "method.fields=b+eta (or b+s), or sample with interpolant_heun."
            )
        super().check_sampling(solver, **kwargs)

    def sampling_interval(self, solver, t_start: float, t_end: float) -> tuple[float, float]:
        # The drift b is finite at t = 1 when it is learnt directly; v + gamma' eta is not for
        # gamma = sqrt(a t (1 - t)) (gamma' -> -inf), nor is eta / gamma in the SDE: start just
        # inside then.
        finite = self.targets[0] == "b" and not isinstance(solver, samplers.InterpolantSDE)
        return (t_start if finite else min(t_start, 1.0 - self.t_min)), t_end
