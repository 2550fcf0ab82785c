"""The one registry: every name a config or the command line can use, mapped to its class.

Kinds: ``process``, ``method``, ``solver``, ``grid``, ``weighting``, ``time_density``,
``network``. An entry holds the class (or function), the keyword arguments its name fixes
(``dpm_solver++_2m`` is ``DPMSolverMultistep`` with ``order=2, algorithm="dpmsolver++"``), and
the types of the options that remain, read from the dataclass fields. A name is resolved once,
by :meth:`Registry.build`, into one object.

Adding a process, method, solver, grid, weighting, time density or network is one ``register``
line below.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from genflow import losses, methods, processes, samplers, time_densities
from genflow.config import _networks as networks
from genflow.config._errors import ConfigError
from genflow.config._types import check_type, field_types


KINDS = ("process", "method", "solver", "grid", "weighting", "time_density", "network")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name.

    Attributes:
      kind, name: where it is registered.
      target: the class (or, for grids, the function) the name stands for.
      fixed: keyword arguments the name fixes.
      doc: one line for the command line's help.
      options: option types, where they are not the dataclass fields (non-dataclass
        processes); ``None``: read from the fields.
      to_fields, from_fields: how an object is written to and read from ``config.json`` when
        that is not ``dataclasses.asdict`` and ``target(**fields)``.
      method: for processes, the name of the method that trains them by default.
    """

    kind: str
    name: str
    target: Any
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    doc: str = ""
    options: Mapping[str, Any] | None = None
    to_fields: Callable[[Any], dict] | None = None
    from_fields: Callable[[dict], dict] | None = None
    method: str | None = None


class Registry:
    """Names -> classes, for every kind (see the module docstring)."""

    def __init__(self):
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def register(self, kind: str, name: str, target: Any, **info: Any) -> None:
        if kind not in self._entries:
            raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}.")
        if name in self._entries[kind]:
            raise ValueError(f"{kind} {name!r} is registered already.")
        self._entries[kind][name] = Entry(kind, name, target, **info)

    def unregister(self, kind: str, name: str) -> None:
        """Remove ``name`` (e.g. a method a test registered)."""
        self.entry(kind, name)
        del self._entries[kind][name]

    def names(self, kind: str, where: Callable[[Entry], bool] | None = None) -> tuple[str, ...]:
        return tuple(n for n, e in self._entries[kind].items() if where is None or where(e))

    def entries(self, kind: str) -> tuple[Entry, ...]:
        return tuple(self._entries[kind].values())

    def entry(self, kind: str, name: Any) -> Entry:
        table = self._entries[kind]
        if not isinstance(name, str) or name not in table:
            raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(table)}.")
        return table[name]

    def option_types(self, kind: str, name: str) -> dict[str, Any]:
        """The options of ``name`` that a config can set, with their types."""
        entry = self.entry(kind, name)
        if entry.options is not None:
            return dict(entry.options)
        if not dataclasses.is_dataclass(entry.target):
            return {}
        return {k: v for k, v in field_types(entry.target).items() if k not in entry.fixed}

    def build(self, kind: str, name: str, options: Mapping[str, Any] | None = None,
              context: Mapping[str, Any] | None = None) -> Any:
        """The object ``name`` stands for, with ``options`` (checked against their types) and,
        for fields the options leave out, the values of the same name in ``context``."""
        entry = self.entry(kind, name)
        options = dict(options or {})
        known = self.option_types(kind, name)
        for key, value in options.items():
            if key not in known:
                raise ConfigError(f"unknown option {key!r} for {kind} {name}; its options: "
                                  f"{', '.join(sorted(known)) or 'none'}.")
            check_type(value, known[key], f"{kind} option {key}")
        if entry.from_fields is not None:
            options = entry.from_fields(options)
        for key, value in (context or {}).items():
            if key in known and key not in options:
                options[key] = value
        if not inspect.isclass(entry.target):
            return entry.target  # a grid function: no options
        try:
            return entry.target(**entry.fixed, **options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{kind} {name}: {exc}") from None

    def name_of(self, kind: str, obj: Any) -> str:
        """The registered name of ``obj`` (its class and the fields its name fixes)."""
        for entry in self._entries[kind].values():
            if entry.target is obj or (type(obj) is entry.target and all(
                    getattr(obj, k, None) == v for k, v in entry.fixed.items())):
                return entry.name
        raise ConfigError(f"{type(obj).__name__} has no {kind} name in the registry; register it "
                          "(genflow.config.REGISTRY.register) to use it in a config.")

    def fields_of(self, kind: str, obj: Any) -> dict[str, Any]:
        """``obj``'s options as JSON-ready values (the inverse of :meth:`build`)."""
        entry = self.entry(kind, self.name_of(kind, obj))
        if entry.to_fields is not None:
            return entry.to_fields(obj)
        known = self.option_types(kind, entry.name)
        return {k: _jsonable(getattr(obj, k)) for k in known}


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


# --------------------------------------------------------------------------- the entries
REGISTRY = Registry()
register = REGISTRY.register

# Processes, with the method that trains each by default.
_KO_TABLE = ("phi", "theta", "slope")  # KineticOptimalPath's tabulated path


def _ko_from_fields(fields: dict) -> dict:
    dtype = jnp.result_type(float)
    return {k: jnp.asarray(np.asarray(v, np.float64), dtype) for k, v in fields.items()}


def _interpolant_fields(p: Any) -> dict:
    if callable(p.gamma_schedule):
        raise ConfigError(
            "a StochasticInterpolant with a callable gamma cannot be saved in config.json; use a "
            "named gamma (sqrt, quadratic, sin2, zero)."
        )
    return {"interpolant": p.interpolant, "gamma": p.gamma_schedule, "a": float(p.a)}


register("process", "vp_linear", processes.VPLinear, method="denoising",
         doc="variance-preserving SDE, linear beta (DDPM)")
register("process", "vp_cosine", processes.VPCosine, method="denoising",
         doc="variance-preserving, cosine schedule")
register("process", "sub_vp", processes.SubVP, method="denoising", doc="sub-VP SDE")
register("process", "ve", processes.VE, method="denoising", doc="variance-exploding SDE")
register("process", "edm", processes.EDM, method="denoising", doc="EDM's sigma(t) path")
register("process", "rectified_flow", processes.RectifiedFlow, method="denoising",
         doc="rectified flow / conditional OT path")
register("process", "interpolant", processes.GaussianInterpolant, method="denoising",
         doc="Gaussian-base stochastic interpolant")
register("process", "kinetic_optimal", processes.KineticOptimalPath, method="denoising",
         options={k: list for k in _KO_TABLE}, from_fields=_ko_from_fields,
         to_fields=lambda p: {k: [float(v) for v in getattr(p, k)] for k in _KO_TABLE},
         doc="kinetic-optimal Gaussian path fitted to data")
register("process", "stochastic_interpolant", processes.StochasticInterpolant,
         method="interpolant", options={"interpolant": str, "gamma": str, "a": float},
         to_fields=_interpolant_fields, doc="stochastic interpolant between two data sets")
register("process", "gbm", processes.GeometricBrownianMotion, method="gbm",
         doc="geometric Brownian motion (positive data)")

register("method", "denoising", methods.Denoising, doc="denoising on a Gaussian path")
register("method", "interpolant", methods.Interpolant,
         doc="drift (+ denoiser/score) of a stochastic interpolant")
register("method", "gbm", methods.GBM, doc="score matching for geometric Brownian motion")

_S = samplers
register("solver", "euler", _S.Euler, doc="Euler on the probability-flow ODE")
register("solver", "heun", _S.Heun, doc="Heun on the probability-flow ODE")
register("solver", "ddim", _S.DDIM, doc="DDIM (eta: stochasticity)")
register("solver", "euler_maruyama", _S.EulerMaruyama, doc="Euler-Maruyama on the reverse SDE")
register("solver", "pc", _S.PredictorCorrector,
         doc="reverse diffusion + one Langevin corrector step (snr 0.16), as in score_sde")
register("solver", "edm_heun", _S.EDMHeun, doc="EDM's Heun sampler (s_churn...)")
for _alg, _prefix in (("dpmsolver", "dpm_solver"), ("dpmsolver++", "dpm_solver++")):
    for _order in (2, 3):
        register("solver", f"{_prefix}_{_order}m", _S.DPMSolverMultistep,
                 fixed={"order": _order, "algorithm": _alg},
                 doc=f"{_prefix.replace('_', '-')}({_order}M), multistep")
        register("solver", f"{_prefix}_{_order}s", _S.DPMSolverSinglestep,
                 fixed={"order": _order, "algorithm": _alg},
                 doc=f"{_prefix.replace('_', '-')}-{_order}, singlestep (steps = NFE)")
register("solver", "rf_solver_2", _S.RFSolver, fixed={"order": 2}, doc="RF-Solver, order 2")
register("solver", "rf_solver_3", _S.RFSolver, fixed={"order": 3}, doc="RF-Solver, order 3")
register("solver", "fp_ode", _S.FokkerPlanckHeun,
         doc="Heun on the ODE of a Fokker-Planck-regularized run")
register("solver", "dpm_solver_adaptive", _S.DPMSolverAdaptive,
         doc="DPM-Solver with adaptive steps")
register("solver", "ode_adaptive", _S.AdaptiveODE, doc="diffrax Tsit5/Dopri5, adaptive steps")
register("solver", "interpolant_heun", _S.InterpolantHeun, doc="interpolants: Heun on the ODE")
register("solver", "interpolant_euler", _S.InterpolantEuler, doc="interpolants: Euler")
register("solver", "interpolant_sde", _S.InterpolantSDE, doc="interpolants: the SDE (epsilon)")
register("solver", "gbm_exponential", _S.GBMExponential,
         doc="GBM: Dale's-law exponential step (keeps signs)")
register("solver", "gbm_euler_maruyama", _S.GBMEulerMaruyama, doc="GBM: ambient Euler-Maruyama")
del _S, _alg, _prefix, _order

register("grid", "uniform", samplers.uniform, doc="uniform in t")
register("grid", "log_snr", samplers.log_snr_uniform, doc="uniform in the log-SNR")
register("grid", "quadratic", samplers.quadratic, doc="uniform in sqrt(t)")
register("grid", "karras", samplers.karras, doc="Karras et al.'s rho = 7 grid")

register("weighting", "uniform", losses.Uniform, doc="plain MSE")
register("weighting", "likelihood", losses.LikelihoodWeighting, doc="g^2 / sigma^2 on eps")
register("weighting", "edm", losses.EDMWeighting, doc="EDM's weight (sigma_data from the method)")
register("weighting", "min_snr", losses.MinSNRWeighting, doc="min(SNR, 5) on x0 (Min-SNR)")
register("weighting", "sigmoid", losses.SigmoidWeighting,
         doc="sigmoid(2 - log SNR) on the ELBO's eps loss (Kingma & Gao)")

register("time_density", "uniform", time_densities.UniformTime, doc="t uniform in [t_min, 1]")
register("time_density", "log_normal", time_densities.LogNormalNoise,
         doc="EDM's log-normal noise level, ln s ~ N(-1.2, 1.2^2)")
register("time_density", "logit_normal", time_densities.LogitNormalTime,
         doc="SD3's logit-normal t, logit t ~ N(0, 1)")
register("time_density", "log_uniform", time_densities.LogUniformNoise,
         doc="noise level log-uniform over [t_min, 1]")

register("network", "mlp", networks.MLPConfig, doc="residual MLP (flat data)")
register("network", "unet", networks.UNetConfig, doc="DDPM++-style U-Net (images)")
register("network", "dit", networks.DiTConfig, doc="DiT patch transformer (images)")


def help_list(kind: str, where: Callable[[Entry], bool] | None = None) -> str:
    """``name (doc); name (doc); ...`` for the command line's help."""
    return "; ".join(f"{e.name}" + (f" ({e.doc})" if e.doc else "") for e in REGISTRY.entries(kind)
                     if where is None or where(e))
