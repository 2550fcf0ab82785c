"""The data and training sections of an experiment config (checked when built)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from genflow.config._errors import ConfigError
from genflow.config._types import check_type, field_types
from genflow.data import DIGITS_DATASETS, TOY_DATASETS

LR_DECAYS = ("cosine", "constant")
COMPUTE_DTYPES = ("float32", "bfloat16")
PARAM_SHARDINGS = ("replicated", "fsdp")


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


def _check_fields(obj: Any, section: str) -> None:
    """The annotated type of every field (what a config file passes is checked like --set)."""
    for name, tp in field_types(type(obj)).items():
        check_type(getattr(obj, name), tp, f"{section}.{name}")


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


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where training batches come from.

    ``name`` is a 2-D toy set (:data:`genflow.data.TOY_DATASETS`) or an image data set: the
    built-in ``"digits"`` (8x8) and ``"digits16"`` (16x16), made offline on first use, or a
    TFDS name such as ``"mnist"`` prepared once with ``genflow data prepare NAME``. Images
    arrive as ``(H, W, C)`` arrays in ``[-1, 1]`` with integer labels.

    Attributes:
      name, batch_size, seed: the data set, the global batch and the data order's seed.
      pairs: a pairs file (.npz with x0 and x1, written by ``genflow reflow``): train on these
        coupled (data, noise) pairs instead of ``name`` with independent noise.
      source: the data set at ``t = 1`` of a method between two data sets (e.g.
        ``"8gaussians"`` -> ``"checkerboard"``); empty: the process's prior.
      scale: training points are data points times ``scale``; samples are divided by it.
      data_dir, split, random_flip: image data sets only: the TFDS data directory (empty:
        ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``), the split, random left-right flips.
    """

    name: str = "checkerboard"
    batch_size: int = 512
    seed: int = 0
    pairs: str = ""
    source: str = ""
    scale: float = 1.0
    data_dir: str = ""
    split: str = "train"
    random_flip: bool = False

    def __post_init__(self):
        _check_fields(self, "data")
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

    @property
    def images(self) -> bool:
        return is_image_dataset(self.name)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The optimisation: optimizer, EMA, logging and checkpoints (the loss is the method's).

    Attributes:
      num_steps, lr, warmup_steps, lr_decay, weight_decay, grad_clip: AdamW with linear
        warm-up, then cosine decay to ``lr / 100`` or a constant rate; global-norm clipping.
      ema_decay: decay of the parameters' exponential moving average (its largest value
        with a warm-up).
      ema_warmup: k-diffusion's EMA warm-up power ``p`` (0: off): the decay after step ``s``
        is ``min(ema_decay, 1 - (1 + s)^-p)``, so early averages forget the initial weights
        (2/3 suits long runs, 3/4 shorter ones).
      ema_profiles: EDM2's power-function EMAs tracked beside the main one, by their
        relative standard deviation ``sigma_rel`` (e.g. ``(0.05, 0.10)``); with
        ``ema_snapshot_every`` their snapshots let ``genflow ema`` reconstruct the EMA of any
        other ``sigma_rel`` after training (post-hoc EMA).
      ema_snapshot_every: every this many steps the profiles are stored in
        ``WORKDIR/ema_snapshots`` (all kept; 0: never).
      accumulate: split each step's batch of ``data.batch_size`` into this many
        micro-batches that the network sees one after another (the backward pass recomputes
        each): the same update as one step on the whole batch, to round-off, at the
        activation memory of one micro-batch.
      compute_dtype: the network's arithmetic: ``"float32"``, or ``"bfloat16"`` with float32
        parameters, EMA, optimizer state, loss and schedule coefficients.
      param_sharding: ``"replicated"`` (every device holds the whole state) or ``"fsdp"``
        (each large parameter, its EMA and its optimizer moments split over the devices).
      steps_per_dispatch: optimizer steps per compiled dispatch (``lax.scan``).
      log_every, checkpoint_every, keep_checkpoints: cadence of ``metrics.jsonl`` records and
        checkpoints, and how many checkpoints are kept.
      sample_every: every this many steps, ``WORKDIR/samples/step_NNNNNNN.png`` shows samples
        drawn with the EMA weights and the run's sampler (0: never).
      seed: the seed of the initial weights and of every training key.
      label_dropout: class-conditional models: the probability that a training label is
        replaced by the null class (classifier-free guidance).
    """

    num_steps: int = 10_000
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_decay: str = "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: float = 0.0
    ema_profiles: tuple[float, ...] = ()
    ema_snapshot_every: int = 0
    accumulate: int = 1
    compute_dtype: str = "float32"
    param_sharding: str = "replicated"
    steps_per_dispatch: int = 50
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 0
    seed: int = 0
    label_dropout: float = 0.1

    def __post_init__(self):
        _check_fields(self, "train")
        # config.json stores tuples as lists
        object.__setattr__(self, "ema_profiles", tuple(float(v) for v in self.ema_profiles))
        _positive("train", num_steps=self.num_steps, lr=self.lr, grad_clip=self.grad_clip,
                  steps_per_dispatch=self.steps_per_dispatch, log_every=self.log_every,
                  checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints,
                  accumulate=self.accumulate)
        _non_negative("train", warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                      sample_every=self.sample_every, ema_warmup=self.ema_warmup,
                      ema_snapshot_every=self.ema_snapshot_every)
        _choose("learning-rate decay", self.lr_decay, LR_DECAYS)
        _choose("compute dtype (train.compute_dtype)", self.compute_dtype, COMPUTE_DTYPES)
        _choose("parameter sharding (train.param_sharding)", self.param_sharding,
                PARAM_SHARDINGS)
        for sigma_rel in self.ema_profiles:
            if not 0.0 < sigma_rel < 0.28:  # sigma_rel -> 0.2887 as gamma -> -1
                raise ConfigError(f"train.ema_profiles: each sigma_rel must lie in (0, 0.28), "
                                  f"got {sigma_rel}.")
        if self.ema_snapshot_every and not self.ema_profiles:
            raise ConfigError("train.ema_snapshot_every stores the EMA profiles; name them with "
                              "train.ema_profiles, e.g. --set 'train.ema_profiles=(0.05, 0.1)'.")
        if self.ema_snapshot_every % self.steps_per_dispatch:
            raise ConfigError(
                f"train.ema_snapshot_every ({self.ema_snapshot_every}) must be a multiple of "
                f"train.steps_per_dispatch ({self.steps_per_dispatch})."
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}.")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"train.label_dropout must lie in [0, 1), got {self.label_dropout}.")
        if self.checkpoint_every % self.steps_per_dispatch:
            raise ConfigError(
                f"train.checkpoint_every ({self.checkpoint_every}) must be a multiple of "
                f"train.steps_per_dispatch ({self.steps_per_dispatch}), so that a resumed run "
                "replays exactly the same compiled chunks."
            )
