"""Geometric Brownian motion (multiplicative noise, log-normal marginals) on the 2-D checkerboard.

The checkerboard (in ``[-2, 2]^2``) is scaled by ``data.scale = 0.5`` into ``[-1, 1]`` and
mapped onto ``[1, 2]`` by ``to_positive``; the network reads ``log x`` and predicts the noise of
``log x_t`` (``method.prediction = "eps"``). ``sigma = 1.5`` (``mu = sigma^2 / 2``, so ``log X``
has no drift) makes the noise at ``t = 1`` dominate the data's own spread in ``log x``; the
log-normal prior is matched to the data's log-moments when the config loads.

The noise of ``log x`` is ``sigma sqrt(t)``, and one unit of ``log x`` is about six units of the
checkerboard, so its squares form at ``t`` below about ``3e-3``: training draws ``log t``
uniformly in ``[log 1e-6, 0]`` (``method.t_sampling = "log_uniform"``; with uniform ``t`` those
times get under 1 % of the batch) and sampling walks a grid geometric in ``t`` down to
``1e-6`` (``sample.grid = "log_snr"``), with the Dale's-law exponential sampler, which keeps
every coordinate positive. The same network, optimizer and budget as ``toy_checkerboard_vp.py``.
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.data import sample_toy
from genflow.methods import GBM
from genflow.processes import GeometricBrownianMotion, to_positive

SCALE = 0.5
SIGMA = 1.5
FIT_SEED = [2**31 - 3, 1]  # a seed sequence that training and evaluation never use


def get_config():
    base = load_config_file(Path(__file__).with_name("toy_checkerboard_vp.py"))
    positive = to_positive(SCALE * sample_toy(base.data.name, 20_000, seed=FIT_SEED))
    return dataclasses.replace(
        base,
        process=GeometricBrownianMotion.from_data(positive, sigma=SIGMA),
        data=dataclasses.replace(base.data, scale=SCALE),
        method=GBM(prediction="eps", weighting="uniform", t_sampling="log_uniform", t_min=1e-6),
        sample=dataclasses.replace(base.sample, sampler="gbm_exponential", num_steps=500,
                                   grid="log_snr", t_end=1e-6),
    )
