"""One config class per network: its settings, checked, and how it is built.

``model`` in an experiment config is one of these. Each knows whether it needs images, and
builds its :mod:`genflow.networks` module for a data shape.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar

from genflow.config._errors import ConfigError
from genflow.config._types import check_type, field_types

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
OUTPUTS = ("field", "log_density")


def _positive(section: str, **fields: Any) -> None:
    for name, value in fields.items():
        if not value > 0:
            raise ConfigError(f"{section}.{name} must be positive, got {value}.")


def _int_tuple(value: Any, key: str, *, allow_empty: bool) -> tuple[int, ...]:
    """A tuple of positive ints; the comma string of older configs (``"1,2,2"``) is read too."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
        try:
            value = [int(v) for v in value]
        except ValueError:
            raise ConfigError(f"{key} must be a tuple of positive ints such as (1, 2, 2), got "
                              f"{value!r}.") from None
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key} must be a tuple of positive ints such as (1, 2, 2), got {value!r}.")
    if (not value and not allow_empty) or any(v <= 0 for v in value):
        raise ConfigError(f"{key} entries must be positive (and at least one), got {value!r}.")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Settings every network shares: the time embedding and class conditioning.

    With ``num_classes > 0`` the network is class-conditional and label ``num_classes`` is the
    null class (classifier-free guidance).
    """

    name: ClassVar[str]
    images: ClassVar[bool]  # needs (H, W, C) data; else flat (d,)
    fields: ClassVar[bool] = False  # can predict several fields (concatenated)

    embedding: str = "fourier"
    embed_dim: int = 64
    num_classes: int = 0

    def __post_init__(self):
        for name, tp in field_types(type(self)).items():
            value = getattr(self, name)
            if not (isinstance(value, str) and typing.get_origin(tp) is tuple):  # "1,2,2": read below
                check_type(value, tp, f"model.{name}")
        if self.embedding not in TIME_EMBEDDINGS:
            raise ConfigError(f"unknown time embedding {self.embedding!r}; choose one of: "
                              f"{', '.join(TIME_EMBEDDINGS)}.")
        _positive("model", embed_dim=self.embed_dim)
        if self.embed_dim % 2:
            raise ConfigError(f"model.embed_dim must be even, got {self.embed_dim}.")
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes must be >= 0, got {self.num_classes}.")

    @property
    def uses_dropout(self) -> bool:
        """Whether a training step must feed the network a dropout key."""
        return False

    @property
    def log_density(self) -> bool:
        """Whether the network's output is the x-gradient of a scalar log-density."""
        return False

    def build(self, data_shape: tuple[int, ...], *, num_fields: int, seed: Any):
        """The :mod:`genflow.networks` module for one example of shape ``data_shape``."""
        raise NotImplementedError

    def _common(self, seed: Any) -> dict[str, Any]:
        from flax import nnx

        return dict(embedding=self.embedding, embed_dim=self.embed_dim,
                    num_classes=self.num_classes, rngs=nnx.Rngs(seed))

    def _image_shape(self, data_shape: tuple[int, ...], num_fields: int) -> None:
        if len(data_shape) != 3:
            raise ConfigError(f"model {self.name!r} needs images (H, W, C), got data shape "
                              f"{data_shape}.")
        if num_fields != 1:
            raise ConfigError(f"model {self.name!r} predicts one field; {num_fields} were asked for.")


@dataclasses.dataclass(frozen=True)
class MLPConfig(NetworkConfig):
    """A residual MLP with a time embedding, for flat (toy) data.

    Attributes:
      hidden, depth: width and number of residual blocks.
      output: ``"field"``: outputs shaped like the data; ``"log_density"``: a scalar
        ``phi(x, t)`` whose x-gradient is the output, a score by construction (use
        ``method.prediction="score"``).
    """

    name = "mlp"
    images = False
    fields = True

    hidden: int = 256
    depth: int = 3
    output: str = "field"

    def __post_init__(self):
        super().__post_init__()
        _positive("model", hidden=self.hidden, depth=self.depth)
        if self.output not in OUTPUTS:
            raise ConfigError(f"unknown model output {self.output!r}; choose one of: "
                              f"{', '.join(OUTPUTS)}.")

    @property
    def log_density(self) -> bool:
        return self.output == "log_density"

    def build(self, data_shape, *, num_fields, seed):
        from genflow.networks import MLP

        if len(data_shape) != 1:
            raise ConfigError(f"the MLP needs flat data (d,), got data shape {data_shape}.")
        return MLP(data_shape[0], hidden=self.hidden, depth=self.depth, num_fields=num_fields,
                   output=self.output, **self._common(seed))


@dataclasses.dataclass(frozen=True)
class UNetConfig(NetworkConfig):
    """A DDPM++-style U-Net for images.

    Attributes:
      channels: base width.
      channel_mult: width multiplier per level (``(1, 2, 2)``: three levels).
      num_res_blocks: residual blocks per level.
      attention_resolutions: feature-map heights with self-attention (``(16, 8)``; ``()``:
        none).
      dropout: dropout rate in the residual blocks (training only).
    """

    name = "unet"
    images = True

    channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = ()
    dropout: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "channel_mult", _int_tuple(
            self.channel_mult, "model.channel_mult", allow_empty=False))
        object.__setattr__(self, "attention_resolutions", _int_tuple(
            self.attention_resolutions, "model.attention_resolutions", allow_empty=True))
        _positive("model", channels=self.channels, num_res_blocks=self.num_res_blocks)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must lie in [0, 1), got {self.dropout}.")

    @property
    def uses_dropout(self) -> bool:
        return self.dropout > 0.0

    def build(self, data_shape, *, num_fields, seed):
        from genflow.networks import UNet

        self._image_shape(data_shape, num_fields)
        try:
            return UNet(data_shape, channels=self.channels, channel_mult=self.channel_mult,
                        num_res_blocks=self.num_res_blocks,
                        attention_resolutions=self.attention_resolutions, dropout=self.dropout,
                        **self._common(seed))
        except ValueError as exc:
            raise ConfigError(f"model (unet, data shape {data_shape}): {exc}") from None


@dataclasses.dataclass(frozen=True)
class DiTConfig(NetworkConfig):
    """A DiT-style patch transformer with adaLN-Zero, for images (fast on CPU).

    Attributes:
      patch_size: side of the square patches.
      hidden, depth: token width and number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP width over the token width.
    """

    name = "dit"
    images = True

    patch_size: int = 2
    hidden: int = 256
    depth: int = 3
    num_heads: int = 4
    mlp_ratio: float = 4.0

    def __post_init__(self):
        super().__post_init__()
        _positive("model", patch_size=self.patch_size, hidden=self.hidden, depth=self.depth,
                  num_heads=self.num_heads, mlp_ratio=self.mlp_ratio)
        if self.hidden % self.num_heads or self.hidden % 4:
            raise ConfigError(
                f"model.hidden (the DiT's token width, {self.hidden}) must be divisible by "
                f"model.num_heads ({self.num_heads}) and by 4."
            )

    def build(self, data_shape, *, num_fields, seed):
        from genflow.networks import DiT

        self._image_shape(data_shape, num_fields)
        try:
            return DiT(data_shape, patch_size=self.patch_size, width=self.hidden,
                       depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                       **self._common(seed))
        except ValueError as exc:
            raise ConfigError(f"model (dit, data shape {data_shape}): {exc}") from None
