"""The experiment schema: typed, frozen sections, checked when built, resolved once.

``Config(process, method, data, model, train, sample)``. Building a :class:`Config` checks
every section and how they fit together (the method's own checks decide which process, data,
network and sampler it accepts), and resolves every name once: :attr:`Config.resolved` holds
the bound method, the solver and the grid function that training and sampling use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

from genflow import processes
from genflow.config._errors import ConfigError
from genflow.config._networks import DiTConfig, MLPConfig, NetworkConfig, UNetConfig
from genflow.config._registry import REGISTRY
from genflow.config._types import parse_options, parse_value
from genflow.config._sections import (
    DataConfig,
    TrainConfig,
    _check_fields,
    _choose,
    _non_negative,
    _positive,
    is_image_dataset,
)
from genflow.data import TOY_DATASETS
from genflow.methods import AbstractMethod

@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Defaults of ``genflow sample`` (each can be overridden by its flag).

    Attributes:
      sampler: a solver name of the registry (``genflow sample --help`` lists them).
      solver_options: the solver's own options, e.g. ``{"variant": "taylor"}`` (typed by the
        solver's fields; ``"key=value,key=value"`` strings are read too).
      num_steps, grid: solver steps on the named time grid.
      num_samples, seed: how many samples, from which seed.
      t_start, t_end: the ends of the time grid (``t_start`` just below 1 where the path's
        log-SNR is infinite at ``t = 1`` and a log-SNR grid or the reverse SDE is used).
      threshold: dynamic thresholding of ``x0_hat`` at this quantile (0..1, e.g. 0.995; 0: off).
      label, guidance: class-conditional models: the class to draw (-1: classes in turn) and
        the classifier-free guidance scale ``1 + w`` (1: the conditional model alone).
    """

    sampler: str = "heun"
    num_steps: int = 100
    grid: str = "uniform"
    num_samples: int = 4096
    t_end: float = 1e-3
    t_start: float = 1.0
    seed: int = 0
    solver_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    threshold: float = 0.0
    label: int = -1
    guidance: float = 1.0

    def __post_init__(self):
        if isinstance(self.solver_options, str):
            object.__setattr__(self, "solver_options", parse_options(self.solver_options))
        _check_fields(self, "sample")
        _choose("sampler", self.sampler, REGISTRY.names("solver"))
        types_ = REGISTRY.option_types("solver", self.sampler)
        options = {}
        for key, value in self.solver_options.items():
            if key not in types_:
                known = ", ".join(sorted(types_)) or "none"
                raise ConfigError(f"unknown option {key!r} for sampler {self.sampler}; its "
                                  f"options: {known}.")
            if isinstance(value, str) and types_[key] is not str:
                value = parse_value(value, types_[key], f"sampler option {key}")
            options[key] = value
        object.__setattr__(self, "solver_options", options)
        for key, value in options.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ConfigError(f"sampler {self.sampler}: {key} must be positive, got {value}.")
        solver = REGISTRY.build("solver", self.sampler, options)
        object.__setattr__(self, "_solver", solver)
        need = getattr(solver, "min_steps", 1)
        if self.num_steps < need:
            raise ConfigError(f"sample.num_steps must be at least {need} for {self.sampler} (its "
                              f"order), got {self.num_steps}.")
        if self.label < -1:
            raise ConfigError(f"sample.label is a class (>= 0) or -1 for all, got {self.label}.")
        _non_negative("sample", guidance=self.guidance)
        if not (self.threshold == 0.0 or 0.0 < self.threshold <= 1.0):
            raise ConfigError(f"sample.threshold is a quantile on a 0..1 scale (e.g. 0.995) or 0 "
                              f"for off, got {self.threshold}.")
        _choose("time grid", self.grid, REGISTRY.names("grid"))
        _positive("sample", num_steps=self.num_steps, num_samples=self.num_samples)
        if not 0.0 <= self.t_end < 1.0:
            raise ConfigError(f"sample.t_end must lie in [0, 1), got {self.t_end}.")
        if not self.t_end < self.t_start <= 1.0:
            raise ConfigError(f"sample.t_start must lie in (sample.t_end, 1], got {self.t_start} "
                              f"(t_end {self.t_end}).")

    @property
    def solver(self) -> Any:
        """The solver object (built once, when this section was)."""
        return self._solver


class Resolved(NamedTuple):
    """Every name of a :class:`Config`, resolved once: what training and sampling use."""

    method: AbstractMethod  # bound to the process, its registry fields built
    solver: Any
    grid: Any


def resolve_method(method: AbstractMethod, process: Any, **context: Any) -> AbstractMethod:
    """Build ``method``'s registry-named fields (with its other fields as context) and bind it."""
    values = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    built = {}
    for f in dataclasses.fields(method):
        kind = f.metadata.get("registry")
        if kind and isinstance(values[f.name], (str, Mapping)):  # a name, or name + options
            built[f.name] = _build_registry_value(kind, values[f.name], values)
    try:
        return dataclasses.replace(method, **built).bind(process, **context)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _build_registry_value(kind: str, value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return REGISTRY.build(kind, value, context=context)
    if "name" not in value:
        raise ConfigError(f"a {kind} given as a mapping needs its 'name', got {dict(value)!r}.")
    options = {k: v for k, v in value.items() if k != "name"}
    return REGISTRY.build(kind, value["name"], options, context=context)


def default_method(process: Any) -> AbstractMethod:
    entry = REGISTRY.entry("process", REGISTRY.name_of("process", process))
    return REGISTRY.build("method", entry.method)


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment.

    Attributes:
      process: a process object, e.g. ``VPLinear()`` (any registered process).
      method: how it is trained and sampled, e.g. ``Denoising(prediction="x0")``; ``None``:
        the process's default method (denoising for Gaussian paths) with its defaults.
      data, model, train, sample: the sections; ``model`` is one network's config
        (:class:`MLPConfig`, :class:`UNetConfig`, :class:`DiTConfig`).
    """

    process: Any = processes.VPLinear()
    method: AbstractMethod | None = None
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: NetworkConfig = dataclasses.field(default_factory=MLPConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)

    def __post_init__(self):
        for name, cls in (("data", DataConfig), ("model", NetworkConfig), ("train", TrainConfig),
                          ("sample", SampleConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"Config.{name} must be a {cls.__name__}, got "
                                  f"{type(getattr(self, name)).__name__}.")
        REGISTRY.name_of("process", self.process)  # a registered process
        if self.method is None:
            object.__setattr__(self, "method", default_method(self.process))
        if not isinstance(self.method, AbstractMethod):
            raise ConfigError(f"Config.method must be a method object such as Denoising(), got "
                              f"{type(self.method).__name__}.")
        method = resolve_method(self.method, self.process, **self._bound_context())
        dc, mc, sc = self.data, self.model, self.sample
        images = dc.images
        if mc.images and not images:
            raise ConfigError(
                f"model {mc.name!r} is an image network, but data.name={dc.name!r} is a toy "
                "(flat) data set; use model MLPConfig, or an image data set such as digits."
            )
        if not mc.images and images:
            raise ConfigError(
                f"model {mc.name!r} needs flat (toy) data, but data.name={dc.name!r} is an image "
                f"data set; use UNetConfig or DiTConfig, or a toy set ({', '.join(TOY_DATASETS)})."
            )
        if mc.num_classes > 0 and not images:
            raise ConfigError(
                f"model.num_classes={mc.num_classes} makes the network class-conditional, but "
                f"data.name={dc.name!r} has no labels; set model.num_classes=0, or use a "
                "labelled image data set such as digits."
            )
        if mc.num_classes > 0 and dc.pairs:
            raise ConfigError("data.pairs (reflow) has no labels to condition on; set "
                              "model.num_classes=0.")
        if images and dc.source:
            raise ConfigError(f"data.source={dc.source!r} is a toy set; an image run starts from "
                              "its process's prior: leave data.source empty.")
        grid = REGISTRY.build("grid", sc.grid)
        if not method.accepts(sc.solver):
            fits = REGISTRY.names("solver", lambda e: getattr(e.target, "field_class", None)
                                  is method.field_class)
            raise ConfigError(
                f"sample.sampler={sc.sampler!r} cannot sample method "
                f"{REGISTRY.name_of('method', self.method)} (process "
                f"{REGISTRY.name_of('process', self.process)}); choose one of: {', '.join(fits)}."
            )
        if mc.log_density and not self._bound_context():
            raise ConfigError(f"model.output='log_density' is a score network for the denoising "
                              f"method, not {REGISTRY.name_of('method', self.method)}.")
        try:
            method.check(images=images, source=bool(dc.source), pairs=bool(dc.pairs),
                         single_field_network=not mc.fields, num_classes=mc.num_classes,
                         scale=dc.scale)
            method.check_sampling(sc.solver, grid=grid, num_steps=sc.num_steps,
                                  t_start=sc.t_start, t_end=sc.t_end,
                                  thresholding=sc.threshold > 0)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{exc} (sampler {sc.sampler}, grid {sc.grid}, method "
                              f"{REGISTRY.name_of('method', self.method)}, process "
                              f"{REGISTRY.name_of('process', self.process)})") from None
        if mc.num_classes == 0 and (sc.label != -1 or sc.guidance != 1.0):
            raise ConfigError(
                "sample.label and sample.guidance (--label, --guidance) need a class-conditional "
                "model (model.num_classes > 0); this model is unconditional."
            )
        if mc.num_classes and sc.label >= mc.num_classes:
            raise ConfigError(f"sample.label={sc.label} is not a class of this model "
                              f"(0 .. {mc.num_classes - 1}).")
        object.__setattr__(self, "_resolved", Resolved(method, sc.solver, grid))

    def _bound_context(self) -> dict[str, Any]:
        names = {f.name for f in dataclasses.fields(self.method) if f.metadata.get("bound")}
        return {"log_density": self.model.log_density} if "log_density" in names else {}

    @property
    def resolved(self) -> Resolved:
        """The bound method, the solver and the grid function, built once."""
        return self._resolved


__all__ = ["Config", "DataConfig", "DiTConfig", "MLPConfig", "SampleConfig", "TrainConfig",
           "UNetConfig", "is_image_dataset"]
