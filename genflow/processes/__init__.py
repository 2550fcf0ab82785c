"""Forward processes: from data at ``t = 0`` to noise at ``t = 1``."""

from genflow.processes._base import (
    AbstractForwardSDE as AbstractForwardSDE,
    AbstractGaussianPath as AbstractGaussianPath,
    broadcast_to_data as broadcast_to_data,
)
from genflow.processes._vp import VPCosine as VPCosine, VPLinear as VPLinear

__all__ = [
    "AbstractForwardSDE",
    "AbstractGaussianPath",
    "VPCosine",
    "VPLinear",
    "broadcast_to_data",
]
