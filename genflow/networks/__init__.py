"""Networks (flax.nnx) and the adapter from a module to a pure ``model_fn``."""

from genflow.networks._adapter import (
    ModelFn as ModelFn,
    ValueModelFn as ValueModelFn,
    as_model_fn as as_model_fn,
    as_value_model_fn as as_value_model_fn,
    cast_floating as cast_floating,
    in_dtype as in_dtype,
)
from genflow.networks._dit import DiT as DiT, sincos_position_embedding as sincos_position_embedding
from genflow.networks._embedding import (
    FourierEmbedding as FourierEmbedding,
    FrozenParam as FrozenParam,
    SinusoidalEmbedding as SinusoidalEmbedding,
    make_time_embedding as make_time_embedding,
)
from genflow.networks._inception import (
    FIDInceptionV3 as FIDInceptionV3,
    InceptionFeatureExtractor as InceptionFeatureExtractor,
    inception_state_dict_shapes as inception_state_dict_shapes,
    load_inception_weights as load_inception_weights,
    resize_for_inception as resize_for_inception,
)
from genflow.networks._mlp import MLP as MLP
from genflow.networks._unet import UNet as UNet

__all__ = [
    "cast_floating",
    "in_dtype",
    "DiT",
    "FIDInceptionV3",
    "FourierEmbedding",
    "FrozenParam",
    "InceptionFeatureExtractor",
    "MLP",
    "ModelFn",
    "SinusoidalEmbedding",
    "UNet",
    "ValueModelFn",
    "as_model_fn",
    "as_value_model_fn",
    "inception_state_dict_shapes",
    "load_inception_weights",
    "make_time_embedding",
    "resize_for_inception",
    "sincos_position_embedding",
]
