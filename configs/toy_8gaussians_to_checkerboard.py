"""A stochastic interpolant between two data sets: 8 Gaussians (t = 1) to the checkerboard (t = 0).

``x_t = (1 - t) x0 + t x1 + gamma(t) z`` with ``gamma = sqrt(t (1 - t))``, ``x0`` from the
checkerboard and ``x1`` from ``data.source = "8gaussians"``, drawn independently. One network
learns the drift ``b`` and the denoiser ``eta`` (``method.fields = "b+eta"``, two outputs);
``genflow sample`` starts from fresh 8-Gaussians points and follows the probability-flow ODE
(``interpolant_heun``), or the SDE with ``--sampler interpolant_sde --option epsilon=1``. The
same network, optimizer and budget as ``toy_checkerboard_vp.py``.
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.methods import Interpolant
from genflow.processes import StochasticInterpolant


def get_config():
    base = load_config_file(Path(__file__).with_name("toy_checkerboard_vp.py"))
    return dataclasses.replace(
        base,
        process=StochasticInterpolant("linear", gamma="sqrt"),
        data=dataclasses.replace(base.data, source="8gaussians"),
        method=Interpolant(fields="b+eta", t_min=1e-3),
        sample=dataclasses.replace(base.sample, sampler="interpolant_heun", t_end=0.0),
    )
