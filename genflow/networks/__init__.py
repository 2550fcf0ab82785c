"""Networks (flax.nnx) and the adapter from a module to a pure ``model_fn``."""

from genflow.networks._adapter import ModelFn as ModelFn, as_model_fn as as_model_fn
from genflow.networks._dit import DiT as DiT, sincos_position_embedding as sincos_position_embedding
from genflow.networks._embedding import (
    FourierEmbedding as FourierEmbedding,
    FrozenParam as FrozenParam,
    SinusoidalEmbedding as SinusoidalEmbedding,
    make_time_embedding as make_time_embedding,
)
from genflow.networks._mlp import MLP as MLP
from genflow.networks._unet import UNet as UNet

__all__ = [
    "MLP",
    "DiT",
    "FourierEmbedding",
    "FrozenParam",
    "ModelFn",
    "SinusoidalEmbedding",
    "UNet",
    "as_model_fn",
    "make_time_embedding",
    "sincos_position_embedding",
]
