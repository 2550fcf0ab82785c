"""Typed, frozen experiment configs, and the one place where names map to classes.

An experiment file ``configs/NAME.py`` defines ``get_config() -> Config``. The command
line overrides single fields with ``--set section.field=value``; every value is parsed
and checked against the field's annotated type and range before anything is computed::

    genflow train --config configs/toy_checkerboard_vp.py --set train.num_steps=2000
    genflow train --config ... --set process=vp_cosine --set process.s=0.01

A run directory stores the resolved config as ``config.json``; :func:`config_from_dict`
reads it back.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from genflow import losses, processes, samplers
from genflow.data import DIGITS_DATASETS, TOY_DATASETS
from genflow.prediction import Prediction
from genflow.processes._stochastic_interpolant import GAMMAS as STOCHASTIC_GAMMAS
from genflow.samplers._dpm_solver import check_options as check_dpm_options


class ConfigError(ValueError):
    """A config or command-line value that cannot be used; the message says how to fix it."""


# --- names -> classes: the only registry in genflow ------------------------------------

PROCESSES: dict[str, type] = {
    "vp_linear": processes.VPLinear,
    "vp_cosine": processes.VPCosine,
    "sub_vp": processes.SubVP,
    "ve": processes.VE,
    "edm": processes.EDM,
    "rectified_flow": processes.RectifiedFlow,
    "interpolant": processes.GaussianInterpolant,
    "kinetic_optimal": processes.KineticOptimalPath,
    "stochastic_interpolant": processes.StochasticInterpolant,
    "gbm": processes.GeometricBrownianMotion,
}
SOLVERS: dict[str, Callable[[], samplers.AbstractSolver]] = {
    "euler": samplers.Euler,
    "heun": samplers.Heun,
    "ddim": samplers.DDIM,
    "euler_maruyama": samplers.EulerMaruyama,
    # Reverse-diffusion predictor + one Langevin corrector step (snr 0.16), as in score_sde.
    "pc": samplers.PredictorCorrector,
    "edm_heun": samplers.EDMHeun,
    "dpm_solver_2m": functools.partial(samplers.DPMSolverMultistep, order=2, algorithm="dpmsolver"),
    "dpm_solver_3m": functools.partial(samplers.DPMSolverMultistep, order=3, algorithm="dpmsolver"),
    "dpm_solver++_2m": functools.partial(
        samplers.DPMSolverMultistep, order=2, algorithm="dpmsolver++"
    ),
    "dpm_solver++_3m": functools.partial(
        samplers.DPMSolverMultistep, order=3, algorithm="dpmsolver++"
    ),
    "dpm_solver_2s": functools.partial(
        samplers.DPMSolverSinglestep, order=2, algorithm="dpmsolver"
    ),
    "dpm_solver_3s": functools.partial(
        samplers.DPMSolverSinglestep, order=3, algorithm="dpmsolver"
    ),
    "dpm_solver++_2s": functools.partial(
        samplers.DPMSolverSinglestep, order=2, algorithm="dpmsolver++"
    ),
    "dpm_solver++_3s": functools.partial(
        samplers.DPMSolverSinglestep, order=3, algorithm="dpmsolver++"
    ),
    # RF-Solver (Wang et al. 2024): second- and third-order Taylor steps of the ODE velocity.
    "rf_solver_2": functools.partial(samplers.RFSolver, order=2),
    "rf_solver_3": functools.partial(samplers.RFSolver, order=3),
    # The probability-flow ODE (Heun) of a model trained with the Fokker-Planck regularizer
    # (train.fp_weight > 0); Config refuses it for other runs (see Config._check_fokker_planck).
    "fp_ode": samplers.Heun,
}
# Adaptive-step samplers are functions (their NFE depends on the data), with their options.
ADAPTIVE_SAMPLERS: dict[str, tuple[Callable[..., samplers.SampleResult], tuple[str, ...]]] = {
    "dpm_solver_adaptive": (
        samplers.sample_dpm_adaptive,
        ("order", "algorithm", "variant", "h_init", "atol", "rtol", "theta", "t_err", "max_steps"),
    ),
    "ode_adaptive": (samplers.sample_adaptive, ("solver", "rtol", "atol", "max_steps")),
}
# Samplers of the processes that are not Gaussian paths: name -> (family, {option: type}).
PROCESS_SAMPLERS: dict[str, tuple[str, dict[str, type]]] = {
    "interpolant_heun": ("interpolant", {}),
    "interpolant_euler": ("interpolant", {}),
    "interpolant_sde": ("interpolant", {"epsilon": float}),
    "gbm_exponential": ("gbm", {}),
    "gbm_euler_maruyama": ("gbm", {}),
}
SAMPLER_NAMES = (*SOLVERS, *ADAPTIVE_SAMPLERS, *PROCESS_SAMPLERS)
GRIDS = {
    "uniform": samplers.uniform,
    "log_snr": samplers.log_snr_uniform,
    "quadratic": samplers.quadratic,
    "karras": samplers.karras,
}
WEIGHTINGS: dict[str, type] = {
    "uniform": losses.Uniform,
    "likelihood": losses.LikelihoodWeighting,
    "edm": losses.EDMWeighting,
}
MODELS = ("mlp", "unet", "dit")
IMAGE_MODELS = ("unet", "dit")
PRECONDITIONINGS = ("none", "edm")
MODEL_OUTPUTS = ("field", "log_density")
FP_DIVERGENCES = ("exact", "hutchinson")
TIME_EMBEDDINGS = ("sinusoidal", "fourier")
LR_DECAYS = ("cosine", "constant")


# What the network predicts (train.prediction) and how the loss is weighted, per family.
# Stochastic interpolants learn one or two fields ("drift+noise", see genflow.training);
# GBM networks predict the noise of log x ("eps") or the score itself ("score").
INTERPOLANT_PREDICTIONS = ("b", "v", "b+eta", "b+s", "v+eta", "v+s")
GBM_PREDICTIONS = ("eps", "score")
GBM_WEIGHTINGS = ("uniform", "paper")
T_SAMPLINGS = ("uniform", "log_uniform")


def process_family(process: Any) -> str:
    """``"gaussian"`` (a Gaussian path: every sampler of :mod:`genflow.samplers`),
    ``"interpolant"`` (a stochastic interpolant between two data sets) or ``"gbm"``."""
    if isinstance(process, processes.AbstractGaussianPath):
        return "gaussian"
    if isinstance(process, processes.StochasticInterpolant):
        return "interpolant"
    if isinstance(process, processes.GeometricBrownianMotion):
        return "gbm"
    raise ConfigError(f"{type(process).__name__} is not a process genflow can train.")


def _choose(kind: str, value: str, names) -> None:
    if value not in names:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(names)}.")


def _positive(section: str, **fields) -> None:
    for name, value in fields.items():
        if not value > 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}.")


def _non_negative(section: str, **fields) -> None:
    for name, value in fields.items():
        if value < 0:
            raise ConfigError(f"{section}.{name} must be >= 0, got {value}.")


def is_image_dataset(name: str) -> bool:
    """Whether ``data.name`` is an image data set (anything that is not a toy set)."""
    return name not in TOY_DATASETS


def _check_image_dataset(name: str, data_dir: str) -> None:
    """Reject names that are neither built in nor in the TFDS catalogue nor in ``data_dir``.

    Only a name that is not built in imports ``tensorflow_datasets`` (lazily, about a second).
    """
    if name in DIGITS_DATASETS:
        return
    base = name.partition(":")[0].partition("/")[0]
    if base and data_dir and (Path(data_dir).expanduser() / base).is_dir():
        return  # a data set prepared in data_dir (perhaps a custom builder)
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # cannot check the catalogue: opening the data set will tell
        return
    try:
        tfds.builder_cls(base)
    except Exception:
        raise ConfigError(
            f"unknown data set {name!r} (data.name): not a toy set ({', '.join(TOY_DATASETS)}), "
            f"not a built-in image set ({', '.join(DIGITS_DATASETS)}) and not a TFDS data set "
            "name (e.g. mnist, fashion_mnist, cifar10)."
        ) from None


def _int_list(section: str, name: str, text: str, *, allow_empty: bool) -> tuple[int, ...]:
    """Parse a comma-separated list of positive ints such as ``"1,2,2"``."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts and not allow_empty:
        raise ConfigError(
            f"{section}.{name} must be a comma-separated list of positive ints such as "
            f"'1,2,2', got {text!r}."
        )
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        raise ConfigError(
            f"{section}.{name} must be a comma-separated list of positive ints such as "
            f"'1,2,2', got {text!r}."
        ) from None
    if any(v <= 0 for v in values):
        raise ConfigError(f"{section}.{name} entries must be positive, got {text!r}.")
    return values


# --- sections ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training batches come from.

    ``name`` is a 2-D toy set (:data:`genflow.data.TOY_DATASETS`) or an image data set: the
    built-in ``"digits"`` (8x8) and ``"digits16"`` (16x16), made offline on first use, or a
    TFDS name such as ``"mnist"`` prepared once with ``genflow data prepare NAME``. Images
    arrive as ``(H, W, C)`` arrays in ``[-1, 1]`` with integer labels.
    """

    name: str = "checkerboard"
    batch_size: int = 512
    seed: int = 0
    # A pairs file (.npz with x0 and x1, written by `genflow reflow`): train on these coupled
    # (data, noise) pairs instead of `name` with independent noise. Empty: not used.
    pairs: str = ""
    # The data set at t = 1 of a stochastic interpolant between two data sets (e.g.
    # "8gaussians" -> name "checkerboard"); empty: N(0, I). Only for stochastic_interpolant.
    source: str = ""
    # Training points are data points times `scale`; samples are divided by it again.
    scale: float = 1.0
    # Image data sets only. The TFDS data directory (empty: $TFDS_DATA_DIR or
    # ~/tensorflow_datasets), the TFDS split (e.g. "train" or "train[:90%]"), and random
    # left-right flips (not for digits or text).
    data_dir: str = ""
    split: str = "train"
    random_flip: bool = False

    def __post_init__(self):
        if not self.name:
            raise ConfigError("data.name must name a data set, got ''.")
        if is_image_dataset(self.name):
            _check_image_dataset(self.name, self.data_dir)
            if not self.split:
                raise ConfigError("data.split must name a TFDS split such as 'train', got ''.")
        else:
            defaults = {"data_dir": "", "split": "train", "random_flip": False}
            for field, default in defaults.items():
                if getattr(self, field) != default:
                    raise ConfigError(
                        f"data.{field} applies to image data sets only; data.name="
                        f"{self.name!r} is a toy set: leave data.{field} at {default!r}."
                    )
        if self.source:
            _choose("source data set", self.source, TOY_DATASETS)
        _positive("data", batch_size=self.batch_size, scale=self.scale)
        if self.pairs and not Path(self.pairs).is_file():
            raise ConfigError(
                f"data.pairs file not found: {self.pairs}; write one with `genflow reflow`."
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: ``"mlp"`` for toy (flat) data, ``"unet"`` or ``"dit"`` for images.

    ``hidden`` and ``depth`` are the MLP's width and number of residual blocks, and the DiT's
    token width and number of transformer blocks. The U-Net uses ``channels``,
    ``channel_mult``, ``num_res_blocks``, ``attention_resolutions`` and ``dropout``; the DiT
    ``patch_size``, ``num_heads`` and ``mlp_ratio``. With ``num_classes > 0`` the network is
    class-conditional and label ``num_classes`` is the null class (classifier-free guidance).
    """

    name: str = "mlp"
    hidden: int = 256
    depth: int = 3
    embedding: str = "fourier"
    embed_dim: int = 64
    num_classes: int = 0
    # "edm": the network is wrapped in EDM's preconditioning (c_skip, c_out, c_in, c_noise) and
    # predicts x0 (train.prediction must be "x0"); sigma_data is the data's standard deviation.
    precondition: str = "none"
    sigma_data: float = 0.5
    # U-Net: base width, width multiplier per level ("1,2,2": three levels), residual blocks
    # per level, feature-map heights with self-attention ("16,8"; empty: none), dropout rate
    # in the residual blocks (training only).
    channels: int = 64
    channel_mult: str = "1,2,2"
    num_res_blocks: int = 2
    attention_resolutions: str = ""
    dropout: float = 0.1
    # DiT: side of the square patches, attention heads, MLP width over the token width.
    patch_size: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # "field": outputs shaped like the data; "log_density" (MLP only): a scalar phi(x, t) whose
    # x-gradient is the output, a score by construction (train.prediction must be "score").
    output: str = "field"

    def __post_init__(self):
        _choose("model", self.name, MODELS)
        _choose("model output", self.output, MODEL_OUTPUTS)
        _positive(
            "model", channels=self.channels, num_res_blocks=self.num_res_blocks,
            patch_size=self.patch_size, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
        )
        self.channel_mult_tuple  # noqa: B018 (parses and checks)
        self.attention_resolutions_tuple  # noqa: B018
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}.")
        if self.name == "dit" and (self.hidden % self.num_heads or self.hidden % 4):
            raise ConfigError(
                f"model.hidden (the DiT's token width, {self.hidden}) must be divisible by "
                f"model.num_heads ({self.num_heads}) and by 4."
            )
        _choose("preconditioning", self.precondition, PRECONDITIONINGS)
        _positive("model", sigma_data=self.sigma_data)
        _choose("time embedding", self.embedding, TIME_EMBEDDINGS)
        _positive("model", hidden=self.hidden, depth=self.depth, embed_dim=self.embed_dim)
        _non_negative("model", num_classes=self.num_classes)
        if self.embed_dim % 2:
            raise ConfigError(f"model.embed_dim must be even, got {self.embed_dim}.")

    @property
    def channel_mult_tuple(self) -> tuple[int, ...]:
        """``channel_mult`` parsed, e.g. ``(1, 2, 2)``."""
        return _int_list("model", "channel_mult", self.channel_mult, allow_empty=False)

    @property
    def attention_resolutions_tuple(self) -> tuple[int, ...]:
        """``attention_resolutions`` parsed, e.g. ``(16, 8)`` or ``()``."""
        return _int_list(
            "model", "attention_resolutions", self.attention_resolutions, allow_empty=True
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation: loss, optimizer, EMA, logging and checkpoints."""

    num_steps: int = 10_000
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    prediction: str = "eps"
    weighting: str = "uniform"
    t_min: float = 1e-5
    steps_per_dispatch: int = 50
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    # Every this many steps, WORKDIR/samples/step_NNNNNNN.png shows samples drawn with the
    # EMA weights and config.sample's sampler (100 images or 2,000 points); 0: never.
    sample_every: int = 0
    seed: int = 0
    # How training times are drawn: "uniform" in [t_min, 1], or "log_uniform" (log t uniform;
    # gbm only), which gives every decade of the noise scale the same share of the batch.
    t_sampling: str = "uniform"
    # Class-conditional models: the probability that a training label is replaced by the
    # null class model.num_classes (classifier-free guidance), drawn inside the jitted step.
    label_dropout: float = 0.1
    # Fokker-Planck regularizer (genflow.fokker_planck; Gaussian paths with a finite SDE):
    # loss = DSM + fp_weight * E|R|^2 over fp_points collocation points per step, with the
    # divergence of the score computed "exact"ly (Jacobian trace) or by "hutchinson" probes.
    fp_weight: float = 0.0
    fp_points: int = 64
    fp_divergence: str = "exact"

    def __post_init__(self):
        _positive(
            "train",
            num_steps=self.num_steps,
            lr=self.lr,
            grad_clip=self.grad_clip,
            steps_per_dispatch=self.steps_per_dispatch,
            log_every=self.log_every,
            checkpoint_every=self.checkpoint_every,
            keep_checkpoints=self.keep_checkpoints,
        )
        _non_negative("train", warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                      sample_every=self.sample_every)
        _choose("learning-rate decay", self.lr_decay, LR_DECAYS)
        # prediction and weighting depend on the process: checked by Config.
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}.")
        if not 0.0 <= self.t_min < 1.0:
            raise ConfigError(f"train.t_min must lie in [0, 1), got {self.t_min}.")
        _choose("time sampling", self.t_sampling, T_SAMPLINGS)
        _non_negative("train", fp_weight=self.fp_weight)
        _positive("train", fp_points=self.fp_points)
        _choose("train.fp_divergence", self.fp_divergence, FP_DIVERGENCES)
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(
                f"train.label_dropout must lie in [0, 1), got {self.label_dropout}."
            )
        if self.checkpoint_every % self.steps_per_dispatch:
            raise ConfigError(
                f"train.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"train.steps_per_dispatch ({self.steps_per_dispatch}), so that a resumed run "
                "replays exactly the same compiled chunks."
            )


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Defaults of ``genflow sample`` (each can be overridden by its flag)."""

    sampler: str = "heun"
    num_steps: int = 100
    grid: str = "uniform"
    num_samples: int = 4096
    t_end: float = 1e-3
    # Start of the time grid: 1.0, or just below where the path's log-SNR is infinite at t = 1
    # (rectified flow) and a log-SNR grid or the reverse SDE is used.
    t_start: float = 1.0
    seed: int = 0
    # The sampler's own options as "key=value,key=value", e.g. "variant=taylor" or
    # "rtol=1e-3,order=2"; see `genflow sample --help`.
    solver_options: str = ""
    # Dynamic thresholding of x0_hat at this quantile (0..1 scale, e.g. 0.995); 0 = off.
    threshold: float = 0.0
    # Class-conditional models: the class to draw (-1: classes in turn, one grid row each)
    # and the classifier-free guidance scale 1 + w (1: the conditional model alone).
    label: int = -1
    guidance: float = 1.0

    def __post_init__(self):
        _choose("sampler", self.sampler, SAMPLER_NAMES)
        if self.label < -1:
            raise ConfigError(f"sample.label is a class (>= 0) or -1 for all, got {self.label}.")
        _non_negative("sample", guidance=self.guidance)
        if self.solver_options:
            sampler_options(self.sampler, self.solver_options)  # validates them
        if self.sampler in SOLVERS:
            need = make_solver(self.sampler, self.solver_options).min_steps
            if self.num_steps < need:
                raise ConfigError(
                    f"sample.num_steps must be at least {need} for {self.sampler} (its order), "
                    f"got {self.num_steps}."
                )
        if not (self.threshold == 0.0 or 0.0 < self.threshold <= 1.0):
            raise ConfigError(
                f"sample.threshold is a quantile on a 0..1 scale (e.g. 0.995) or 0 for off, "
                f"got {self.threshold}."
            )
        _choose("time grid", self.grid, tuple(GRIDS))
        _positive("sample", num_steps=self.num_steps, num_samples=self.num_samples)
        if not 0.0 <= self.t_end < 1.0:
            raise ConfigError(f"sample.t_end must lie in [0, 1), got {self.t_end}.")
        if not self.t_end < self.t_start <= 1.0:
            raise ConfigError(
                f"sample.t_start must lie in (sample.t_end, 1], got {self.t_start} "
                f"(t_end {self.t_end})."
            )


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment. ``process`` is a process object, e.g. ``VPLinear()``."""

    # A Gaussian path, a StochasticInterpolant or a GeometricBrownianMotion (see PROCESSES).
    process: Any = processes.VPLinear()
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    # A factory: validating a SampleConfig uses the name registry defined further down.
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)

    def __post_init__(self):
        if type(self.process) not in PROCESSES.values():
            raise ConfigError(
                f"process must be one of {', '.join(c.__name__ for c in PROCESSES.values())}, "
                f"got {type(self.process).__name__}."
            )
        family = process_family(self.process)
        name = process_name(self.process)
        tc, sc = self.train, self.sample
        predictions = {
            "gaussian": tuple(p.value for p in Prediction),
            "interpolant": INTERPOLANT_PREDICTIONS,
            "gbm": GBM_PREDICTIONS,
        }[family]
        weightings = {"gaussian": tuple(WEIGHTINGS), "interpolant": ("uniform",),
                      "gbm": GBM_WEIGHTINGS}[family]
        if tc.prediction not in predictions:
            raise ConfigError(
                f"train.prediction={tc.prediction!r} does not fit process {name}; "
                f"choose one of: {', '.join(predictions)}."
            )
        if tc.weighting not in weightings:
            raise ConfigError(
                f"train.weighting={tc.weighting!r} does not fit process {name}; "
                f"choose one of: {', '.join(weightings)}."
            )
        if self.model.precondition == "edm" and (family != "gaussian" or tc.prediction != "x0"):
            raise ConfigError(
                "model.precondition='edm' makes the network of a Gaussian path predict x0; set "
                f"train.prediction=x0 (got {tc.prediction!r} for process {name})."
            )
        samplers_ = {
            "gaussian": (*SOLVERS, *ADAPTIVE_SAMPLERS),
            **{f: tuple(k for k, v in PROCESS_SAMPLERS.items() if v[0] == f)
               for f in ("interpolant", "gbm")},
        }[family]
        if sc.sampler not in samplers_:
            raise ConfigError(
                f"sample.sampler={sc.sampler!r} cannot sample process {name}; "
                f"choose one of: {', '.join(samplers_)}."
            )
        if self.data.source and family != "interpolant":
            raise ConfigError(
                f"data.source={self.data.source!r} is the t = 1 data set of a "
                f"stochastic_interpolant; process {name} starts from its own prior: leave it empty."
            )
        if family == "interpolant":
            self._check_interpolant()
        grids = {"gaussian": tuple(GRIDS), "interpolant": ("uniform",),
                 "gbm": ("uniform", "quadratic", "log_snr")}[family]
        if sc.grid not in grids:
            raise ConfigError(
                f"sample.grid={sc.grid!r} is not available for process {name}; choose one of: "
                f"{', '.join(grids)}."
            )
        if tc.t_sampling != "uniform" and family != "gbm":
            raise ConfigError(
                f"train.t_sampling={tc.t_sampling!r} is available for process gbm only; "
                f"process {name} trains with t_sampling=uniform."
            )
        if tc.t_sampling == "log_uniform" and tc.t_min <= 0.0:
            raise ConfigError("train.t_sampling=log_uniform needs train.t_min > 0, e.g. 1e-6.")
        if self.data.pairs and family != "gaussian":
            raise ConfigError(f"data.pairs (reflow) needs a Gaussian path, not process {name}.")
        self._check_model_data(family, name)
        self._check_fokker_planck(family, name)
        classes = self.model.num_classes
        if classes == 0 and (sc.label != -1 or sc.guidance != 1.0):
            raise ConfigError(
                "sample.label and sample.guidance (--label, --guidance) need a class-conditional "
                "model (model.num_classes > 0); this model is unconditional."
            )
        if classes and sc.label >= classes:
            raise ConfigError(
                f"sample.label={sc.label} is not a class of this model (0 .. {classes - 1})."
            )

    def _check_model_data(self, family: str, name: str) -> None:
        mc, dc = self.model, self.data
        images = is_image_dataset(dc.name)
        if mc.name == "mlp" and images:
            raise ConfigError(
                f"model.name='mlp' needs flat (toy) data, but data.name={dc.name!r} is an image "
                f"data set; use model.name=unet or dit, or a toy set ({', '.join(TOY_DATASETS)})."
            )
        if mc.name in IMAGE_MODELS and not images:
            raise ConfigError(
                f"model.name={mc.name!r} is an image network, but data.name={dc.name!r} is a "
                "toy (flat) data set; use model.name=mlp, or an image data set such as digits."
            )
        if mc.num_classes > 0 and not images:
            raise ConfigError(
                f"model.num_classes={mc.num_classes} makes the network class-conditional, but "
                f"data.name={dc.name!r} has no labels; set model.num_classes=0, or use a "
                "labelled image data set such as digits."
            )
        if mc.num_classes > 0 and dc.pairs:
            raise ConfigError(
                "data.pairs (reflow) has no labels to condition on; set model.num_classes=0."
            )
        if mc.name in IMAGE_MODELS and family == "interpolant" and "+" in self.train.prediction:
            raise ConfigError(
                f"model.name={mc.name!r} predicts one field; train.prediction="
                f"{self.train.prediction!r} asks for two: use train.prediction=b (ODE sampling)."
            )
        if images and dc.source:
            raise ConfigError(
                f"data.source={dc.source!r} is a toy set; an image interpolant starts from "
                "N(0, I): leave data.source empty."
            )
        if images and family == "gbm" and dc.scale > 1.0:
            raise ConfigError(
                f"gbm maps images in [-1, 1] onto [1, 2]; data.scale={dc.scale} takes them "
                "outside: use data.scale <= 1."
            )

    def _check_fokker_planck(self, family: str, name: str) -> None:
        """``train.fp_weight``, ``model.output="log_density"`` and ``sample.sampler=fp_ode``.

        ``fp_ode`` is the probability-flow ODE of a model trained with ``fp_weight > 0``: the
        regularizer is what makes the ODE's and the reverse SDE's distributions agree. A
        log-density model alone is a conservative field but not a solution of the Fokker-Planck
        equation, so it does not qualify.
        """
        tc, mc = self.train, self.model
        if tc.fp_weight > 0:
            ok = family == "gaussian"
            if ok:  # f_t and g_t^2 finite (g^2 > 0) on [t_min, 1]: rectified flow's f is not
                f, g2 = self.process.sde(np.array([max(tc.t_min, 1e-6), 0.5, 1.0]))
                ok = bool(np.all(np.isfinite(f)) and np.all(np.isfinite(g2)) and np.all(g2 > 0))
            if not ok:
                raise ConfigError(
                    f"train.fp_weight > 0 needs a Gaussian path whose forward SDE is finite on "
                    f"[train.t_min, 1] (vp_linear, vp_cosine, sub_vp, ve, edm); process {name} "
                    "has none: set train.fp_weight=0."
                )
        if self.sample.sampler == "fp_ode" and not tc.fp_weight > 0:
            raise ConfigError(
                "sample.sampler=fp_ode is the probability-flow ODE of a model trained with the "
                "Fokker-Planck regularizer; this run has train.fp_weight=0: use sampler heun."
            )
        if mc.output == "log_density" and (
            mc.name != "mlp" or family != "gaussian" or tc.prediction != "score"
            or mc.precondition != "none"
        ):
            raise ConfigError(
                "model.output='log_density' is an MLP whose x-gradient is the score of a Gaussian "
                "path: use model.name=mlp, train.prediction=score and model.precondition=none "
                f"(got {mc.name}, {tc.prediction!r}, process {name})."
            )

    def _check_interpolant(self) -> None:
        process, tc, sc = self.process, self.train, self.sample
        if self.data.source and process.one_sided:
            raise ConfigError(
                f"interpolant {process.interpolant!r} is one-sided (its t = 1 end is N(0, I)); "
                "leave data.source empty or use a two-sided interpolant such as 'linear'."
            )
        fields = tc.prediction.split("+")
        zero_gamma = not process.one_sided and process.gamma_schedule == "zero"
        if len(fields) == 2 and zero_gamma:
            raise ConfigError(
                f"train.prediction={tc.prediction!r} learns a score, but gamma='zero' leaves no "
                "noise to learn it from; use train.prediction=b, or a gamma such as 'sqrt'."
            )
        if fields == ["v"] and not (zero_gamma or process.one_sided):
            raise ConfigError(
                "train.prediction='v' alone does not give the drift b = v + gamma' eta when "
                "gamma != 0; use train.prediction=b or v+eta."
            )
        if tc.t_min <= 0.0:
            raise ConfigError(
                "stochastic interpolants train on t in [train.t_min, 1 - train.t_min], where the "
                "score and (for gamma='sqrt') the drift are finite; set train.t_min > 0, e.g. 1e-3."
            )
        if sc.sampler == "interpolant_sde" and len(fields) == 1:
            raise ConfigError(
                "interpolant_sde needs a score or denoiser field besides the drift; train with "
                "train.prediction=b+eta (or b+s), or sample with interpolant_heun."
            )


# --- building objects from names ----------------------------------------------------------


def process_name(process: Any) -> str:
    for name, cls in PROCESSES.items():
        if type(process) is cls:
            return name
    raise ConfigError(f"{type(process).__name__} has no name in genflow.config.PROCESSES.")


def _option_types(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` that can be set by name, with their types."""
    if name in ADAPTIVE_SAMPLERS:
        fn, options = ADAPTIVE_SAMPLERS[name]
        hints = typing.get_type_hints(fn)
        return {o: hints[o] for o in options}
    if name in PROCESS_SAMPLERS:
        return dict(PROCESS_SAMPLERS[name][1])
    factory = SOLVERS[name]
    cls = factory.func if isinstance(factory, functools.partial) else factory
    fixed = factory.keywords if isinstance(factory, functools.partial) else {}
    return {k: v for k, v in _field_types(cls).items() if k not in fixed}


def sampler_options(name: str, text: str) -> dict[str, Any]:
    """Parse ``"key=value,..."`` into the typed options of sampler ``name`` and check them.

    Raises:
      ConfigError: an unknown sampler or option, a value of the wrong type, or one that the
        sampler rejects (e.g. ``order=5``).
    """
    _choose("sampler", name, SAMPLER_NAMES)
    types_ = _option_types(name)
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"sampler option {item!r} must look like key=value.")
        if key not in types_:
            known = ", ".join(sorted(types_)) or "none"
            raise ConfigError(f"unknown option {key!r} for sampler {name}; its options: {known}.")
        options[key] = _parse(raw.strip(), types_[key], f"sampler option {key}")
    try:
        if name in SOLVERS:
            SOLVERS[name](**options)
        elif name == "dpm_solver_adaptive":
            defaults = dict(order=3, algorithm="dpmsolver++", variant="midpoint") | options
            check_dpm_options(
                name, defaults["order"], defaults["algorithm"], defaults["variant"], orders=(2, 3)
            )
        for key, value in options.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
                raise ValueError(f"{key} must be positive, got {value}.")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sampler {name}: {exc}") from None
    return options


def make_solver(name: str, options: str = "") -> samplers.AbstractSolver:
    """The solver object for a fixed-grid sampler name, with its options."""
    _choose("sampler", name, SAMPLER_NAMES)
    if name not in SOLVERS:
        raise ConfigError(f"{name} is not a fixed-grid solver of a Gaussian path.")
    options_ = sampler_options(name, options)  # checks the name first
    return SOLVERS[name](**options_)


def make_weighting(name: str) -> losses.AbstractWeighting:
    _choose("loss weighting", name, tuple(WEIGHTINGS))
    return WEIGHTINGS[name]()


# --- files, dicts and overrides -----------------------------------------------------------


def load_config_file(path: str | Path) -> Config:
    """Import ``path`` and call its ``get_config()``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_genflow_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except Exception as exc:  # a user's file: report it in one line
        raise ConfigError(f"config file {path} failed to load: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config() function.")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ConfigError(f"get_config() in {path} must return genflow.config.Config.")
    return config


def config_to_dict(config: Config) -> dict:
    """A JSON-ready dict; the process is stored as ``{"name": ..., **fields}``."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "process":
            out["process"] = {"name": process_name(value), **_process_fields(value)}
        else:
            out[field.name] = dataclasses.asdict(value)
    return out


def config_from_dict(d: dict) -> Config:
    """Inverse of :func:`config_to_dict`; unknown keys are errors."""
    kwargs = {}
    section_types = _section_types()
    for key, value in d.items():
        if key not in section_types:
            raise ConfigError(f"unknown config section {key!r}; sections: {', '.join(section_types)}.")
        if key == "process":
            value = dict(value)
            name = value.pop("name", None)
            _choose("process", name, tuple(PROCESSES))
            kwargs[key] = _make_process(PROCESSES[name], value)
        else:
            kwargs[key] = _build(section_types[key], value, key)
    return Config(**kwargs)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


def load_config_json(path: str | Path) -> Config:
    return config_from_dict(json.loads(Path(path).read_text()))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (or ``process=NAME``) in order.

    Each section is checked as it changes; the whole config (which prediction, sampler and
    data fit which process) once all overrides are in, so that ``--set process=gbm --set
    train.prediction=eps`` works in either order.
    """
    sections = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}.")
        key, raw = item.split("=", 1)
        key, raw = key.strip(), raw.strip()
        parts = key.split(".")
        if parts[0] not in sections:
            raise ConfigError(
                f"unknown config key {key!r}: no section {parts[0]!r}; "
                f"sections: {', '.join(sections)}."
            )
        if parts[0] == "process" and len(parts) == 1:
            _choose("process", raw, tuple(PROCESSES))
            try:
                sections["process"] = PROCESSES[raw]()
            except TypeError:
                raise ConfigError(
                    f"process {raw} has no default settings (it is fitted to data); build it in "
                    "a config file, as configs/toy_checkerboard_ko.py does."
                ) from None
            continue
        if len(parts) != 2:
            raise ConfigError(f"config keys look like section.field, got {key!r}.")
        section = sections[parts[0]]
        is_process = parts[0] == "process"
        hints = _process_types(type(section)) if is_process else _field_types(type(section))
        if parts[1] not in hints:
            raise ConfigError(
                f"unknown config key {key!r}; fields of {parts[0]}: {', '.join(hints)}."
            )
        value = _parse(raw, hints[parts[1]], key)
        try:
            if is_process:
                section = _make_process(type(section), _process_fields(section) | {parts[1]: value})
            else:
                section = dataclasses.replace(section, **{parts[1]: value})
        except ValueError as exc:  # ConfigError included: make sure the message names the key
            if isinstance(exc, ConfigError) and key in str(exc):
                raise
            raise ConfigError(f"bad value for {key}: {exc}") from exc
        sections[parts[0]] = section
    return Config(**sections)


def _section_types() -> dict[str, type]:
    return {f.name: t for f, t in zip(dataclasses.fields(Config), _field_types(Config).values())}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# How processes are written to and read from config.json: their constructor's arguments.
_TABLE_FIELDS = ("phi", "theta", "slope")  # KineticOptimalPath's tabulated path


def _process_types(cls: type) -> dict[str, Any]:
    if cls is processes.StochasticInterpolant:
        return {"interpolant": str, "gamma": str, "a": float}
    if cls is processes.KineticOptimalPath:
        return {name: list for name in _TABLE_FIELDS}
    return _field_types(cls)


def _process_fields(process: Any) -> dict[str, Any]:
    if isinstance(process, processes.StochasticInterpolant):
        if callable(process.gamma_schedule):
            raise ConfigError(
                "a StochasticInterpolant with a callable gamma cannot be saved in config.json; "
                f"use a named gamma ({', '.join(STOCHASTIC_GAMMAS)})."
            )
        return {"interpolant": process.interpolant, "gamma": process.gamma_schedule,
                "a": float(process.a)}
    if isinstance(process, processes.KineticOptimalPath):
        return {name: [float(v) for v in getattr(process, name)] for name in _TABLE_FIELDS}
    return dataclasses.asdict(process)


def _make_process(cls: type, values: dict) -> Any:
    hints = _process_types(cls)
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"unknown config key process.{name}; fields: {', '.join(hints)}.")
        _check_type(value, hints[name], f"process.{name}")
    if cls is processes.KineticOptimalPath:
        dtype = jnp.result_type(float)
        values = {k: jnp.asarray(np.asarray(v, np.float64), dtype) for k, v in values.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad process config: {exc}") from exc


def _build(cls: type, values: dict, section: str):
    hints = _field_types(cls)
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"unknown config key {section}.{name}; fields: {', '.join(hints)}.")
        _check_type(value, hints[name], f"{section}.{name}")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(f"bad {section} config: {exc}") from exc


def _check_type(value: Any, tp: Any, key: str) -> None:
    if tp is list:
        if not (isinstance(value, list) and all(isinstance(v, (int, float)) for v in value)):
            raise ConfigError(f"{key} must be a list of numbers.")
        return
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}.")


def _parse(raw: str, tp: Any, key: str) -> Any:
    """Parse a command-line string as ``tp`` (int, float, bool, str or Optional of those)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        tp = args[0]
    if tp is bool:
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key} must be a bool (true/false), got {raw!r}.")
    if tp is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key} must be an int, got {raw!r}.") from None
    if tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{key} must be a float, got {raw!r}.") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {raw!r}.")
        return value
    if tp is str:
        return raw
    raise ConfigError(f"{key} cannot be set from the command line (type {tp}).")
