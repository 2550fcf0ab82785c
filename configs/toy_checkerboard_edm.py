"""EDM (Karras et al. 2022) on the 2-D checkerboard: the sigma(t) path (sigma 0.002..80, rho 7),
the network wrapped in EDM's preconditioning and predicting x0, EDM's loss weight, and EDM's
Heun sampler.

The same network, optimizer and budget as ``toy_checkerboard_vp.py`` (it is loaded and only
the process, the preconditioning, the loss and the default sampler change), so that
``scripts/bench_processes.py`` compares processes and nothing else. ``sigma_data`` is the
standard deviation of the checkerboard's coordinates (1.16).
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.methods import Denoising
from genflow.processes import EDM


def get_config():
    base = load_config_file(Path(__file__).with_name("toy_checkerboard_vp.py"))
    return dataclasses.replace(
        base,
        process=EDM(),
        # One sigma_data for the preconditioning and the loss weight.
        method=Denoising(prediction="x0", weighting="edm", precondition="edm", sigma_data=1.16),
        sample=dataclasses.replace(base.sample, sampler="edm_heun", grid="uniform"),
    )
