"""Forward processes: from data at ``t = 0`` to noise at ``t = 1``."""

from genflow.processes._base import (
    AbstractForwardSDE as AbstractForwardSDE,
    AbstractGaussianPath as AbstractGaussianPath,
    broadcast_to_data as broadcast_to_data,
)
from genflow.processes._edm import (
    EDM as EDM,
    EDMPreconditioned as EDMPreconditioned,
    edm_coefficients as edm_coefficients,
    edm_loss_weight as edm_loss_weight,
    edm_precondition as edm_precondition,
)
from genflow.processes._gbm import (
    GeometricBrownianMotion as GeometricBrownianMotion,
    from_positive as from_positive,
    to_positive as to_positive,
)
from genflow.processes._gbm_loss import gbm_score_loss as gbm_score_loss
from genflow.processes._interpolants import (
    GaussianInterpolant as GaussianInterpolant,
    RectifiedFlow as RectifiedFlow,
)
from genflow.processes._kinetic_optimal import (
    KineticOptimalPath as KineticOptimalPath,
    data_separation as data_separation,
    kinetic_energy as kinetic_energy,
)
from genflow.processes._stochastic_interpolant import (
    StochasticInterpolant as StochasticInterpolant,
    interpolant_loss as interpolant_loss,
)
from genflow.processes._subvp import SubVP as SubVP
from genflow.processes._ve import VE as VE
from genflow.processes._vp import VPCosine as VPCosine, VPLinear as VPLinear

__all__ = [
    "AbstractForwardSDE",
    "AbstractGaussianPath",
    "EDM",
    "EDMPreconditioned",
    "GaussianInterpolant",
    "GeometricBrownianMotion",
    "KineticOptimalPath",
    "RectifiedFlow",
    "StochasticInterpolant",
    "SubVP",
    "VE",
    "VPCosine",
    "VPLinear",
    "broadcast_to_data",
    "data_separation",
    "edm_coefficients",
    "edm_loss_weight",
    "edm_precondition",
    "from_positive",
    "gbm_score_loss",
    "interpolant_loss",
    "kinetic_energy",
    "to_positive",
]
