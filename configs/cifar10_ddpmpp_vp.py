"""CIFAR-10 with a DDPM++-style U-Net on the continuous VP SDE (score_sde's "DDPM++ cont. (VP)").

Follows the published score_sde settings (configs/vp/cifar10_ddpmpp_continuous.py of Song et
al. 2021): VP SDE with beta 0.1..20, 128 base channels, channel multipliers 1, 2, 2, 2, four
residual blocks per level, self-attention at 16x16, dropout 0.1, sinusoidal ("positional")
time embedding, Adam at 2e-4 with 5,000 warm-up steps, gradient clipping at 1, EMA 0.9999,
batch 128, 1.3 M steps, random horizontal flips, training times in [1e-5, 1]. Sampling as in
the paper's VP runs: Euler-Maruyama predictor, no corrector, 1,000 steps to t = 1e-3.

Where genflow differs: images are scaled to [-1, 1] (score_sde feeds [0, 1] and centres them
inside the network); the residual blocks are DDPM++'s plain ones (no BigGAN-style up/down-
sampling blocks, no skip rescaling by 1/sqrt(2)); the network predicts eps with the uniform
(noise-residual) weighting, which is score_sde's continuous VP loss with
``likelihood_weighting=False``.

Prepare the data once (needs the optional TensorFlow extra, only for this step; run in the
genflow checkout)::

    pip install -e '.[tfds]' && genflow data prepare cifar10
    genflow train --config configs/cifar10_ddpmpp_vp.py

Expected run time: 7.4 TFLOP per training step at batch 128 (XLA's cost analysis,
``python scripts/bench_train.py --flops-only --config configs/cifar10_ddpmpp_vp.py --shape
32,32,3 --lowered``). At a sustained 50 TFLOP/s (about a third of an A100's TF32 peak) that
is 0.15 s per step, about 2.2 days for the 1.3 M steps on one such GPU; an estimate, not a
measurement. Sampling 1,000 Euler-Maruyama steps costs 1,000 forward passes of about 19
GFLOP per image.
"""

from genflow.config import Config, DataConfig, SampleConfig, TrainConfig, UNetConfig
from genflow.methods import Denoising
from genflow.processes import VPLinear


def get_config() -> Config:
    return Config(
        process=VPLinear(beta_min=0.1, beta_max=20.0),
        data=DataConfig(name="cifar10", batch_size=128, seed=0, random_flip=True),
        method=Denoising(prediction="eps", weighting="uniform", t_min=1e-5),
        model=UNetConfig(
            channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=4,
            attention_resolutions=(16,), dropout=0.1, embedding="sinusoidal", embed_dim=128,
        ),
        train=TrainConfig(
            num_steps=1_300_000,
            lr=2e-4,
            warmup_steps=5_000,
            lr_decay="constant",
            grad_clip=1.0,
            ema_decay=0.9999,
            steps_per_dispatch=100,
            log_every=1_000,
            checkpoint_every=50_000,
            sample_every=50_000,
        ),
        sample=SampleConfig(sampler="euler_maruyama", num_steps=1000, grid="uniform",
                            t_end=1e-3, num_samples=64),
    )
