"""MNIST with a DDPM++-style U-Net on the continuous VP SDE, class-conditional.

score_sde publishes no MNIST setting; this scales its CIFAR-10 "DDPM++ cont. (VP)" recipe
(configs/cifar10_ddpmpp_vp.py) to 28x28x1: 64 base channels, multipliers 1, 2, 2 (28, 14, 7),
two residual blocks per level, attention at 14x14, dropout 0.1; VP beta 0.1..20, eps
prediction, Adam 2e-4 with warm-up, EMA 0.9999, batch 128, 100,000 steps; class labels with
10 % label dropout, so that samples can be guided (``genflow sample --guidance 2``). No flips
(digits are not mirror-symmetric). Sampling: DPM-Solver++(2M), 50 steps on the log-SNR grid.

    pip install -e '.[tfds]' && genflow data prepare mnist   # in the genflow checkout
    genflow train --config configs/mnist_ddpmpp_vp.py

Expected run time: 0.87 TFLOP per training step at batch 128 (XLA's cost analysis,
``python scripts/bench_train.py --flops-only --config configs/mnist_ddpmpp_vp.py --shape
28,28,1 --lowered``): at a sustained 50 TFLOP/s about 17 ms per step, half an hour for the
100,000 steps on one A100-class GPU (an estimate, not a measurement; small convolutions
usually run below that rate, so plan for about an hour). Not for a CPU: a U-Net's training
step runs at about 1.6 GFLOP/s on 2 cores (scripts/bench_train.py, a smaller U-Net), about
ten minutes per step for this one; use configs/digits_cond.py there.
"""

from genflow.config import Config, DataConfig, SampleConfig, TrainConfig, UNetConfig
from genflow.methods import Denoising
from genflow.processes import VPLinear


def get_config() -> Config:
    return Config(
        process=VPLinear(beta_min=0.1, beta_max=20.0),
        data=DataConfig(name="mnist", batch_size=128, seed=0),
        method=Denoising(prediction="eps", weighting="uniform", t_min=1e-5),
        model=UNetConfig(
            channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
            attention_resolutions=(14,), dropout=0.1, embedding="sinusoidal", embed_dim=64,
            num_classes=10,
        ),
        train=TrainConfig(
            num_steps=100_000,
            lr=2e-4,
            warmup_steps=2_000,
            lr_decay="constant",
            grad_clip=1.0,
            ema_decay=0.9999,
            label_dropout=0.1,
            steps_per_dispatch=100,
            log_every=1_000,
            checkpoint_every=10_000,
            sample_every=10_000,
        ),
        sample=SampleConfig(sampler="dpm_solver++_2m", num_steps=50, grid="log_snr",
                            num_samples=100, guidance=2.0),
    )
