"""Forward processes: from data at ``t = 0`` to noise at ``t = 1``."""

from genflow.processes._base import (
    AbstractForwardSDE as AbstractForwardSDE,
    AbstractGaussianPath as AbstractGaussianPath,
    broadcast_to_data as broadcast_to_data,
)
from genflow.processes._edm import (
    EDM as EDM,
    edm_coefficients as edm_coefficients,
    edm_loss_weight as edm_loss_weight,
    edm_precondition as edm_precondition,
)
from genflow.processes._interpolants import (
    GaussianInterpolant as GaussianInterpolant,
    RectifiedFlow as RectifiedFlow,
)
from genflow.processes._subvp import SubVP as SubVP
from genflow.processes._ve import VE as VE
from genflow.processes._vp import VPCosine as VPCosine, VPLinear as VPLinear

__all__ = [
    "AbstractForwardSDE",
    "AbstractGaussianPath",
    "EDM",
    "GaussianInterpolant",
    "RectifiedFlow",
    "SubVP",
    "VE",
    "VPCosine",
    "VPLinear",
    "broadcast_to_data",
    "edm_coefficients",
    "edm_loss_weight",
    "edm_precondition",
]
