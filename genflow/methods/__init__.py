"""Methods: one object per way of training a network and sampling from it.

A method owns the loss, the fields the network predicts, the encoding of data, how its solvers
are driven and its compatibility checks (see :class:`AbstractMethod`). Importing this package
needs JAX only. Example::

    from genflow import losses, methods, processes, samplers

    method = methods.Denoising(prediction="eps", weighting=losses.Uniform()).bind(
        processes.VPLinear())
    loss = method.loss(model_fn, {"x": x0}, key)
    result = method.sample(model_fn, samplers.Heun(), key=key, shape=(512, 2), num_steps=50)
"""

from genflow.methods._base import (
    AbstractMethod as AbstractMethod,
    bound_field as bound_field,
    option_names as option_names,
    registry_field as registry_field,
)
from genflow.methods._denoising import Denoising as Denoising
from genflow.methods._gbm import GBM as GBM
from genflow.methods._interpolant import Interpolant as Interpolant

__all__ = [
    "AbstractMethod",
    "Denoising",
    "GBM",
    "Interpolant",
    "bound_field",
    "option_names",
    "registry_field",
]
