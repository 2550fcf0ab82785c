"""VE diffusion (sigma from 0.01 to 10, about the largest distance between two data points) on
the 2-D checkerboard.

The same network, optimizer and budget as ``toy_checkerboard_vp.py`` (it is loaded and only
the process, the prediction kind and the default sampler change), so that
``scripts/bench_processes.py`` compares processes and nothing else.
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.processes import VE


def get_config():
    base = load_config_file(Path(__file__).with_name("toy_checkerboard_vp.py"))
    return dataclasses.replace(
        base,
        process=VE(sigma_min=0.01, sigma_max=10.0),
        method=dataclasses.replace(base.method, prediction="eps"),
        sample=dataclasses.replace(base.sample, sampler="heun", grid="log_snr"),
    )
