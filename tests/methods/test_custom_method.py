"""Adding a method is one class and one registry line: a method defined here, registered here,
trains through the command line and samples, with nothing else changed.

The toy method trains the denoiser of a VP path on data divided by a fixed scale (its encoding)
and multiplies samples by it again (its decoding). Truth: the CLI's samples equal the plain
library sampler run on the same network with the same key, times the scale.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow import losses, methods, samplers
from genflow.cli import main
from genflow.config import REGISTRY
from genflow.run import open_run
from tests.config.test_config import TOY_FILE


@dataclasses.dataclass(frozen=True)
class FixedScaleDenoising(methods.AbstractMethod):
    """Eps-prediction denoising on data divided by ``scale``."""

    scale: float = 2.0

    def check_process(self):
        if not hasattr(self.process, "marginal"):
            raise ValueError("needs a Gaussian path")

    def encode(self, x):
        return x / self.scale

    def decode(self, x):
        return x * self.scale

    def loss(self, model_fn, batch, key):
        return losses.denoising_loss(model_fn, self.process, batch["x"], key=key, prediction="eps")


@pytest.fixture
def registered():
    REGISTRY.register("method", "fixed_scale", FixedScaleDenoising, doc="a test's own method")
    yield
    REGISTRY.unregister("method", "fixed_scale")


def test_a_method_registered_in_a_test_trains_and_samples_through_the_cli(registered, tmp_path,
                                                                          capsys):
    workdir = tmp_path / "run"
    code = main(["train", "--config", str(TOY_FILE), "--workdir", str(workdir), "--no-progress",
                 "--set", "method=fixed_scale", "--set", "method.scale=3",
                 "--set", "train.num_steps=20", "--set", "train.steps_per_dispatch=10",
                 "--set", "train.checkpoint_every=10", "--set", "model.hidden=16"])
    assert code == 0, capsys.readouterr().err
    assert (workdir / "config.json").read_text().count('"fixed_scale"') == 1
    out = tmp_path / "s"
    assert main(["sample", "--workdir", str(workdir), "--num", "64", "--steps", "5",
                 "--seed", "3", "--out", str(out)]) == 0
    saved = np.load(tmp_path / "s.npz")["samples"]

    run = open_run(workdir)
    assert isinstance(run.method, FixedScaleDenoising) and run.method.scale == 3.0
    plain = samplers.sample(run.model_fn, run.process, samplers.Heun(), key=jax.random.key(3),
                            prediction="eps", shape=(64, 2), num_steps=5,
                            t_end=run.config.sample.t_end)
    expected = 3.0 * np.asarray(plain.x)
    # jit vs eager float32 through 10 MLP evaluations: round-off follows the output's size
    np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=2e-5 * np.abs(expected).max())
    assert np.abs(saved).max() > 1.5 * np.abs(np.asarray(plain.x)).max()
    assert jnp.isfinite(saved).all()
