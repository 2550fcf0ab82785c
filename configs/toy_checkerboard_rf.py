"""Rectified flow / conditional OT (alpha = 1 - t, sigma = t) on the 2-D checkerboard, with a
velocity network.

The same network, optimizer and budget as ``toy_checkerboard_vp.py`` (it is loaded and only
the process, the prediction kind and the default sampler change), so that
``scripts/bench_processes.py`` compares processes and nothing else.
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.processes import RectifiedFlow


def get_config():
    base = load_config_file(Path(__file__).with_name("toy_checkerboard_vp.py"))
    return dataclasses.replace(
        base,
        process=RectifiedFlow(),
        method=dataclasses.replace(base.method, prediction="velocity"),
        sample=dataclasses.replace(base.sample, sampler="heun", grid="uniform"),
    )
