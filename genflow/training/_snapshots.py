"""Sample snapshots during training: ``WORKDIR/samples/step_NNNNNNN.png`` every few steps.

A snapshot draws a fixed set of samples with the run's own sampler (``config.sample``) from the
EMA weights: 100 images (ten per class, one class per row, for a class-conditional model) or
2,000 points of 2-D data drawn over fresh data. The prior draw and the key are the same at
every snapshot, so the images of one run show the same noise turning into samples as training
goes on. The jitted sampler is compiled at the first snapshot and reused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from genflow.config import Config, is_image_dataset
from genflow.plotting import class_grid, image_grid_png, scatter_png
from genflow.training._families import make_sampling, reference_data, sample_labels
from genflow.training._state import Setup, model_fn_from

SAMPLES_DIR = "samples"
_IMAGES = 100
_POINTS = 2000


class SampleSnapshots:
    """Writes the sample grid of a run at a given step.

    Args:
      config: the run's config; its ``sample`` section chooses the sampler.
      setup: the network's static half (from :func:`init_train_state`).
      workdir: the run directory; snapshots go to ``workdir/samples/``.
    """

    def __init__(self, config: Config, setup: Setup, workdir: str | Path):
        self.images = is_image_dataset(config.data.name)
        num = _IMAGES if self.images else _POINTS
        sample = dataclasses.replace(config.sample, num_samples=num, label=-1)
        self.config = dataclasses.replace(config, sample=sample)
        self.setup = setup
        self.directory = Path(workdir) / SAMPLES_DIR
        initial, run, self.description = make_sampling(self.config)
        self._draw = jax.jit(run)
        self._x_init = initial(num, sample.seed)
        self._labels = sample_labels(self.config, num)
        self._reference = None if self.images else reference_data(self.config, num, sample.seed)

    def path(self, step: int) -> Path:
        return self.directory / f"step_{step:07d}.png"

    def __call__(self, step: int, ema_params: Any) -> Path:
        """Draw the samples with ``ema_params`` and write ``samples/step_NNNNNNN.png``."""
        x, _ = self._draw(model_fn_from(self.setup, ema_params),
                          jax.random.key(self.config.sample.seed), self._x_init)
        x = np.asarray(jax.device_get(x))
        out = self.path(step)
        if self.images:
            grid, nrow = class_grid(x, self._labels, self.config.model.num_classes)
            image_grid_png(out, grid, nrow=nrow)
        else:
            scatter_png(out, x, self._reference,
                        title=f"{self.config.data.name}, step {step}: {self.description}")
        return out
