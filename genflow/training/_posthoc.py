"""A run's post-hoc EMA (EDM2): reconstruct the EMA of any ``sigma_rel`` from stored snapshots.

During training with ``train.ema_profiles=(0.05, 0.1)`` and ``train.ema_snapshot_every=N``,
the loop tracks one power-function EMA per profile and stores both every ``N`` steps in
``WORKDIR/ema_snapshots``. :func:`posthoc_ema` solves the least-squares problem of
:func:`genflow.training._ema.posthoc_coefficients` over those snapshots and writes the
combination as ``WORKDIR/posthoc_ema/sigma_rel_S`` (an orbax checkpoint holding ``step`` and
``ema``, written atomically like every checkpoint); ``--weights sigma_rel=S`` samples it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from genflow.config import ConfigError, load_config_json
from genflow.training._data import data_shape_of
from genflow.training._ema import posthoc_coefficients, sigma_rel_to_gamma
from genflow.training._state import init_train_state
from genflow.training.checkpoint import Checkpointer

EMA_SNAPSHOT_DIR = "ema_snapshots"
POSTHOC_DIR = "posthoc_ema"
WEIGHTS = ("ema", "raw")


def parse_weights(text: str) -> float | None:
    """``"ema"`` / ``"raw"`` -> ``None``; ``"sigma_rel=S"`` -> ``S`` (a post-hoc EMA)."""
    if text in WEIGHTS:
        return None
    name, _, value = text.partition("=")
    try:
        if name.strip() != "sigma_rel":
            raise ValueError
        sigma_rel = float(value)
    except ValueError:
        raise ValueError(f"weights must be ema, raw or sigma_rel=S (e.g. sigma_rel=0.05), "
                         f"got {text!r}.") from None
    if not 0.0 < sigma_rel < 0.28:
        raise ValueError(f"sigma_rel must lie in (0, 0.28), got {sigma_rel}.")
    return sigma_rel


def posthoc_directory(workdir: str | Path, sigma_rel: float) -> Path:
    return Path(workdir) / POSTHOC_DIR / f"sigma_rel_{sigma_rel:g}"


@dataclasses.dataclass(frozen=True)
class PosthocResult:
    """What :func:`posthoc_ema` wrote: where, for which step, from how many snapshots of which
    profiles, and the relative L2 error of the reconstructed averaging kernel."""

    path: Path
    step: int
    num_snapshots: int
    profiles: tuple[float, ...]
    residual: float


def posthoc_ema(workdir: str | Path, sigma_rel: float, *, step: int | None = None) -> PosthocResult:
    """Reconstruct the power-function EMA of ``sigma_rel`` at ``step`` (default: the latest
    snapshot) of the run in ``workdir`` and write it (see the module docstring).

    The snapshots are summed one at a time in float64, so memory stays at two copies of the
    parameters whatever the number of snapshots.

    Raises:
      ConfigError: the run stored no snapshots, or ``step`` is not covered by them.
    """
    workdir = Path(workdir)
    parse_weights(f"sigma_rel={sigma_rel}")
    config = load_config_json(workdir / "config.json")
    profiles = config.train.ema_profiles
    directory = workdir / EMA_SNAPSHOT_DIR
    if not profiles or not directory.is_dir():
        raise ConfigError(
            f"{workdir} stored no EMA snapshots; train with e.g. --set "
            "'train.ema_profiles=(0.05, 0.1)' --set train.ema_snapshot_every=1000 to use "
            "post-hoc EMA.")
    ckpt = Checkpointer(directory, read_only=True)
    try:
        steps = sorted(ckpt.all_steps())
        if not steps:
            raise ConfigError(f"no EMA snapshot in {directory} yet; train longer.")
        target = steps[-1] if step is None else step
        if target > steps[-1] or target < 1:
            raise ConfigError(f"--step {target} is not covered by the snapshots of {workdir} "
                              f"(steps {steps[0]} to {steps[-1]}).")
        gammas = [sigma_rel_to_gamma(s) for s in profiles]
        coeffs, residual = posthoc_coefficients(
            np.repeat(steps, len(profiles)), np.tile(gammas, len(steps)), target,
            sigma_rel_to_gamma(sigma_rel))
        _, state = init_train_state(config, data_shape_of(config))
        template = {"profiles": state.profiles}
        total = None
        for i, snapshot_step in enumerate(steps):
            snap = ckpt.restore(snapshot_step, template)["profiles"]
            for j, tree in enumerate(snap):
                c = float(coeffs[i * len(profiles) + j])
                part = jax.tree.map(lambda a, c=c: c * np.asarray(a, np.float64), tree)
                total = part if total is None else jax.tree.map(np.add, total, part)
    finally:
        ckpt.close()
    ema = jax.tree.map(lambda t, like: np.asarray(t, like.dtype), total, state.ema)
    out = posthoc_directory(workdir, sigma_rel)
    writer = Checkpointer(out, max_to_keep=1)
    try:
        writer.save(target, {"step": np.asarray(target, np.int32), "ema": ema})
        writer.wait()
    finally:
        writer.close()
    return PosthocResult(out, target, len(steps), tuple(profiles), float(residual))

