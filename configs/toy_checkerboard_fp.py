"""VP diffusion on the 2-D checkerboard with the Fokker–Planck regularizer (Deveney et al. 2023).

The loss is denoising score matching plus ``method.fp_weight`` times the mean squared residual of
the score Fokker–Planck equation (:mod:`genflow.fokker_planck`) at ``method.fp_points``
collocation points per step, with the exact divergence (2-D data). Sample with the
probability-flow ODE (``--sampler fp_ode``) or compare it with the reverse SDE:
``scripts/bench_fp.py`` trains this config at several weights and reports the ODE–SDE gap.
Training with the regularizer costs several times a plain step (third derivatives of the MLP).
"""

from genflow.config import Config, DataConfig, MLPConfig, SampleConfig, TrainConfig
from genflow.methods import Denoising
from genflow.processes import VPLinear


def get_config() -> Config:
    return Config(
        process=VPLinear(beta_min=0.1, beta_max=20.0),
        data=DataConfig(name="checkerboard", batch_size=256, seed=0),
        method=Denoising(prediction="eps", weighting="uniform", t_min=1e-3, fp_weight=0.1,
                         fp_points=64, fp_divergence="exact"),
        model=MLPConfig(hidden=64, depth=2, embedding="fourier", embed_dim=32),
        train=TrainConfig(
            num_steps=3000,
            lr=2e-3,
            warmup_steps=100,
            lr_decay="cosine",
            grad_clip=1.0,
            ema_decay=0.99,
            steps_per_dispatch=100,
            log_every=100,
            checkpoint_every=1000,
        ),
        sample=SampleConfig(sampler="fp_ode", num_steps=100, grid="uniform", num_samples=4096),
    )
