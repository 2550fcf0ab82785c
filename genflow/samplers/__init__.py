"""Samplers: solvers, their fields, time grids and ``sample()``.

Every solver is an object with ``step`` (or, for the adaptive samplers, ``run``) that
:func:`sample` drives; it names the field it evaluates (``field_class``): :class:`Denoiser` for
Gaussian paths, :class:`GBMScore` for geometric Brownian motion (:class:`GBMExponential`,
:class:`GBMEulerMaruyama`), :class:`InterpolantField` for stochastic interpolants between two
data sets (:class:`InterpolantEuler`, :class:`InterpolantHeun`, :class:`InterpolantSDE`).

Importing this package needs JAX only. Example::

    from genflow import processes, samplers

    result = samplers.sample(
        model_fn, processes.VPLinear(), samplers.Heun(),
        key=jax.random.key(0), shape=(512, 2), prediction="eps", num_steps=50,
    )
    result.x, result.nfe
"""

from genflow.samplers._adaptive import AdaptiveODE as AdaptiveODE, sample_adaptive as sample_adaptive
from genflow.samplers._base import (
    AbstractAdaptiveSampler as AbstractAdaptiveSampler,
    AbstractField as AbstractField,
    AbstractSolver as AbstractSolver,
    Denoiser as Denoiser,
    DynamicThresholding as DynamicThresholding,
    ModelFn as ModelFn,
    SampleResult as SampleResult,
)
from genflow.samplers._ddim import DDIM as DDIM
from genflow.samplers._dpm_adaptive import (
    DPMSolverAdaptive as DPMSolverAdaptive,
    sample_dpm_adaptive as sample_dpm_adaptive,
)
from genflow.samplers._dpm_singlestep import DPMSolverSinglestep as DPMSolverSinglestep
from genflow.samplers._dpm_solver import DPMSolverMultistep as DPMSolverMultistep
from genflow.samplers._editing import (
    EditResult as EditResult,
    ValueModelFn as ValueModelFn,
    edit as edit,
    reconstruction_error as reconstruction_error,
    round_trip as round_trip,
    supports_value_injection as supports_value_injection,
)
from genflow.samplers._edm import EDMHeun as EDMHeun
from genflow.samplers._gbm import (
    GBMEulerMaruyama as GBMEulerMaruyama,
    GBMExponential as GBMExponential,
    GBMScore as GBMScore,
)
from genflow.samplers._grids import (
    karras as karras,
    log_snr_uniform as log_snr_uniform,
    quadratic as quadratic,
    uniform as uniform,
)
from genflow.samplers._guidance import guided as guided
from genflow.samplers._inpaint import (
    colorization_matrix as colorization_matrix,
    colorize as colorize,
    inpaint as inpaint,
)
from genflow.samplers._interpolant import (
    InterpolantEuler as InterpolantEuler,
    InterpolantField as InterpolantField,
    InterpolantHeun as InterpolantHeun,
    InterpolantSDE as InterpolantSDE,
)
from genflow.samplers._ode import Euler as Euler, FokkerPlanckHeun as FokkerPlanckHeun, Heun as Heun
from genflow.samplers._pc import (
    AncestralPredictor as AncestralPredictor,
    AnnealedLangevinCorrector as AnnealedLangevinCorrector,
    EulerMaruyamaPredictor as EulerMaruyamaPredictor,
    LangevinCorrector as LangevinCorrector,
    NoCorrector as NoCorrector,
    NoPredictor as NoPredictor,
    PredictorCorrector as PredictorCorrector,
    ReverseDiffusionPredictor as ReverseDiffusionPredictor,
)
from genflow.samplers._rf_solver import RFSolver as RFSolver
from genflow.samplers._sample import invert as invert, sample as sample
from genflow.samplers._sde import EulerMaruyama as EulerMaruyama

__all__ = [
    "AbstractAdaptiveSampler",
    "AbstractField",
    "AbstractSolver",
    "AdaptiveODE",
    "AncestralPredictor",
    "AnnealedLangevinCorrector",
    "DDIM",
    "DPMSolverAdaptive",
    "DPMSolverMultistep",
    "DPMSolverSinglestep",
    "Denoiser",
    "DynamicThresholding",
    "EDMHeun",
    "EditResult",
    "Euler",
    "EulerMaruyama",
    "EulerMaruyamaPredictor",
    "FokkerPlanckHeun",
    "GBMEulerMaruyama",
    "GBMExponential",
    "GBMScore",
    "Heun",
    "InterpolantEuler",
    "InterpolantField",
    "InterpolantHeun",
    "InterpolantSDE",
    "LangevinCorrector",
    "ModelFn",
    "NoCorrector",
    "NoPredictor",
    "PredictorCorrector",
    "RFSolver",
    "ReverseDiffusionPredictor",
    "SampleResult",
    "ValueModelFn",
    "colorization_matrix",
    "colorize",
    "edit",
    "guided",
    "inpaint",
    "invert",
    "karras",
    "log_snr_uniform",
    "quadratic",
    "reconstruction_error",
    "round_trip",
    "sample",
    "sample_adaptive",
    "sample_dpm_adaptive",
    "supports_value_injection",
    "uniform",
]
