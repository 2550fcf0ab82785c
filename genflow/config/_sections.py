"""The data and training sections of an experiment config (checked when built)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from genflow.config._errors import ConfigError
from genflow.config._types import check_type, field_types
from genflow.data import DIGITS_DATASETS, TOY_DATASETS

LR_DECAYS = ("cosine", "constant")


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
      ema_decay: decay of the parameters' exponential moving average.
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
    steps_per_dispatch: int = 50
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    sample_every: int = 0
    seed: int = 0
    label_dropout: float = 0.1

    def __post_init__(self):
        _check_fields(self, "train")
        _positive("train", num_steps=self.num_steps, lr=self.lr, grad_clip=self.grad_clip,
                  steps_per_dispatch=self.steps_per_dispatch, log_every=self.log_every,
                  checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints)
        _non_negative("train", warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                      sample_every=self.sample_every)
        _choose("learning-rate decay", self.lr_decay, LR_DECAYS)
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
