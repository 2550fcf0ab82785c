"""The kinetic-optimal Gaussian path of the 2-D checkerboard, with a velocity network.

The path is fitted when the config loads (``KineticOptimalPath.from_data`` on 256 checkerboard
points: its data separation function, then the tabulated path; a few seconds) and stored in the
run's ``config.json``. The same network, optimizer and budget as ``toy_checkerboard_vp.py`` (it
is loaded and only the process, the prediction kind and the sampler change), so that ``scripts/bench_processes.py``
compares processes and nothing else. The path's log-SNR is infinite at ``t = 1``, so the
log-SNR grid and the reverse SDE start at ``t = 1 - 1e-3`` (``sample.t_start``).
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.data import sample_toy
from genflow.processes import KineticOptimalPath

FIT_POINTS = 256
FIT_SEED = [2**31 - 3, 0]  # a seed sequence that training and evaluation never use


def get_config():
    base = load_config_file(Path(__file__).with_name("toy_checkerboard_vp.py"))
    data = sample_toy(base.data.name, FIT_POINTS, seed=FIT_SEED)
    return dataclasses.replace(
        base,
        process=KineticOptimalPath.from_data(data),
        method=dataclasses.replace(base.method, prediction="velocity"),
        sample=dataclasses.replace(base.sample, sampler="heun", grid="uniform"),
    )
