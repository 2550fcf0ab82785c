"""Coupled training pairs ``(x0, x1)``: data and the noise it is tied to (rectified flow's reflow).

A pairs file is an ``.npz`` with arrays ``x0`` (data end, ``t = 0``) and ``x1`` (noise end,
``t = 1``) of the same shape ``(n, *data_shape)``. Training on it regresses the path through
each *given* pair, ``x_t = alpha_t x0 + sigma_t x1``, instead of pairing data with fresh
independent noise; ``genflow reflow`` writes such a file from a trained model's ODE.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


def load_pairs(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check a pairs file; a clear error names what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pairs file not found: {path}; write one with `genflow reflow --workdir RUN ...`."
        )
    with np.load(path) as f:
        missing = {"x0", "x1"} - set(f.files)
        if missing:
            raise ValueError(f"pairs file {path} lacks arrays {sorted(missing)} (needs x0 and x1).")
        x0, x1 = np.asarray(f["x0"], np.float32), np.asarray(f["x1"], np.float32)
    if x0.shape != x1.shape or x0.ndim < 2 or x0.shape[0] < 1:
        raise ValueError(
            f"pairs file {path}: x0 {x0.shape} and x1 {x1.shape} must have the same shape "
            "(n, *data_shape) with n >= 1."
        )
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(x1))):
        raise ValueError(f"pairs file {path} holds non-finite values.")
    return x0, x1


@dataclasses.dataclass(frozen=True, eq=False)
class PairBatches:
    """Batches of coupled pairs, drawn with replacement; batch ``step`` depends only on
    ``(seed, step)`` (as :class:`ToyBatches`), so a resumed run sees the same batches.

    Attributes:
      x0, x1: the pairs, ``(n, *data_shape)`` each.
      batch_size: pairs per batch.
      seed: the stream's seed.
    """

    x0: np.ndarray
    x1: np.ndarray
    batch_size: int
    seed: int = 0

    @classmethod
    def from_file(cls, path: str | Path, batch_size: int, seed: int = 0) -> "PairBatches":
        return cls(*load_pairs(path), batch_size=batch_size, seed=seed)

    def indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step, 1])  # 1: a stream of its own
        return rng.integers(0, self.x0.shape[0], size=self.batch_size)

    def batches(self, start_step: int, count: int) -> dict[str, np.ndarray]:
        """``{"x": (count, batch, *d), "eps": (count, batch, *d)}`` for steps
        ``start_step .. start_step + count - 1``: data and the noise tied to it."""
        idx = np.stack([self.indices(start_step + i) for i in range(count)])
        return {"x": self.x0[idx], "eps": self.x1[idx]}
