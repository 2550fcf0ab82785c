"""CIFAR-10 with an NCSN++-style U-Net on the continuous VE SDE (score_sde's "NCSN++ cont. (VE)").

Follows the published score_sde settings (configs/ve/cifar10_ncsnpp_continuous.py of Song et
al. 2021): VE SDE with sigma 0.01..50, 128 base channels, channel multipliers 1, 2, 2, 2, four
residual blocks per level, self-attention at 16x16, dropout 0.1, Gaussian Fourier time
embedding, Adam at 2e-4 with 5,000 warm-up steps, gradient clipping at 1, EMA 0.999, batch
128, 1.3 M steps, random horizontal flips. Sampling as in the paper's VE runs: reverse-
diffusion predictor with one Langevin corrector step (snr 0.16), 1,000 steps to t = 1e-5.

Where genflow differs: images are scaled to [-1, 1] (score_sde uses [0, 1]); the U-Net has
neither FIR up/down-sampling nor the progressive input/output branches of NCSN++; the network
predicts eps = -sigma_t * score (score_sde's ``scale_by_sigma`` output) with the uniform
weighting, i.e. score_sde's sigma^2-weighted score matching, averaged instead of summed over
pixels.

Prepare the data once (needs the optional TensorFlow extra, only for this step; run in the
genflow checkout)::

    pip install -e '.[tfds]' && genflow data prepare cifar10
    genflow train --config configs/cifar10_ncsnpp_ve.py

Expected run time: about the same as configs/cifar10_ddpmpp_vp.py, 7.4 TFLOP per training
step at batch 128 (same U-Net; XLA's cost analysis via ``python scripts/bench_train.py
--flops-only --config configs/cifar10_ncsnpp_ve.py --shape 32,32,3 --lowered``): about 2.2
days for 1.3 M steps at a sustained 50 TFLOP/s on one GPU (an estimate, not a measurement).
Predictor-corrector sampling takes two network evaluations per step, 2,000 in all.
"""

import dataclasses
from pathlib import Path

from genflow.config import load_config_file
from genflow.processes import VE


def get_config():
    # The data, network size and optimizer of the DDPM++ config; the process, the time
    # embedding, the EMA rate and the sampler change.
    base = load_config_file(Path(__file__).with_name("cifar10_ddpmpp_vp.py"))
    return dataclasses.replace(
        base,
        process=VE(sigma_min=0.01, sigma_max=50.0),
        model=dataclasses.replace(base.model, embedding="fourier"),
        train=dataclasses.replace(base.train, ema_decay=0.999),
        sample=dataclasses.replace(base.sample, sampler="pc", t_end=1e-5),
    )
