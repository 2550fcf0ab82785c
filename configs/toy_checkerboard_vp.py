"""The embedded default: VP diffusion (linear beta 0.1..20) on the 2-D checkerboard.

``make demo`` runs it: 10,000 steps of a residual MLP (about two minutes on 2 CPU cores), then 100 Heun
steps of the probability-flow ODE. Override anything with ``--set``, e.g.
``genflow train --config configs/toy_checkerboard_vp.py --set train.num_steps=2000``.
"""

from genflow.config import Config, DataConfig, MLPConfig, SampleConfig, TrainConfig
from genflow.methods import Denoising
from genflow.processes import VPLinear


def get_config() -> Config:
    return Config(
        process=VPLinear(beta_min=0.1, beta_max=20.0),
        data=DataConfig(name="checkerboard", batch_size=512, seed=0),
        method=Denoising(prediction="eps", weighting="uniform"),
        model=MLPConfig(hidden=128, depth=3, embedding="fourier", embed_dim=64),
        train=TrainConfig(
            num_steps=10_000,
            lr=2e-3,
            warmup_steps=200,
            lr_decay="cosine",
            grad_clip=1.0,
            ema_decay=0.995,
            steps_per_dispatch=100,
            log_every=100,
            checkpoint_every=1000,
        ),
        sample=SampleConfig(sampler="heun", num_steps=100, grid="uniform", num_samples=4096),
    )
