"""The training loop: one jitted, donated, multi-step dispatch, driven from the host.

``train(config, workdir)`` builds the state (or restores the latest checkpoint of
``workdir``), then repeats: draw ``k`` batches on the host, run ``k`` optimizer steps in
one compiled ``lax.scan``, log, and checkpoint. Chunks start at multiples of
``steps_per_dispatch`` and every random number is a function of the step index, so a run
that is stopped and resumed replays bit-for-bit the same computation as one that is not.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm.auto import tqdm

from genflow.config import Config, ConfigError, config_to_dict, load_config_json, save_config
from genflow.training._data import data_shape_of, drop_labels, make_batches
from genflow.training._state import Setup, TrainState, init_train_state, learning_rate_schedule
from genflow.training.checkpoint import Checkpointer

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
# fold_in indices of a step's key for its dropout masks and its label dropout.
_DROPOUT_STREAM = 1
_LABEL_DROPOUT_STREAM = 2


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint at ``step``."""

    def __init__(self, step: int, workdir: Path):
        super().__init__(f"training stopped at step {step}; checkpoint saved in {workdir}")
        self.step = step
        self.workdir = workdir


class _StopRequest:
    """Turns the first SIGINT (Ctrl-C) or SIGTERM into a request to stop after the running chunk.

    The loop then saves a checkpoint at the current step and returns cleanly, instead of being
    torn down in the middle of a checkpoint write. A second signal is handled as usual (an
    immediate KeyboardInterrupt); checkpoints already written stay intact either way, because
    each is written to a temporary directory and renamed into place when complete.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self._SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        self.uninstall()  # a second signal interrupts at once
        print(
            f"\n{signal.Signals(signum).name}: stopping after the current chunk and saving a "
            "checkpoint (send it again to stop at once)",
            file=sys.stderr, flush=True,
        )

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def make_train_chunk(config: Config, setup: Setup) -> Callable:
    """``chunk(state, batches) -> (state, metrics)``: ``k`` optimizer steps in one dispatch.

    ``batches["x"]`` has shape ``(k, batch, *data_shape)``; ``state`` is donated. The
    returned metrics are averages over the ``k`` steps.

    Step ``s`` uses the key ``fold_in(key(train.seed), s)`` for the loss; a network with
    dropout gets ``rngs=nnx.Rngs(dropout=fold_in(that key, 1))``, and the labels ``cond`` of a
    class-conditional model are dropped to the null class (:func:`drop_labels`) with
    ``fold_in(that key, 2)``. Every random number is thus a function of the step index.
    """
    tc = config.train
    base_key = jax.random.key(tc.seed)
    loss = config.resolved.method.loss
    dropout = config.model.uses_dropout
    label_dropout = tc.label_dropout if config.model.num_classes > 0 else 0.0

    def loss_fn(params, batch, key):
        net = nnx.merge(setup.graphdef, params, setup.rest)
        if dropout:
            net = _with_dropout(net, jax.random.fold_in(key, _DROPOUT_STREAM))
        return loss(setup.wrap(net), batch, key)

    def one_step(state: TrainState, batch):
        key = jax.random.fold_in(base_key, state.step)
        if label_dropout > 0.0 and "cond" in batch:
            labels_key = jax.random.fold_in(key, _LABEL_DROPOUT_STREAM)
            batch = {**batch, "cond": drop_labels(
                batch["cond"], labels_key, label_dropout, config.model.num_classes
            )}
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, key)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: tc.ema_decay * e + (1.0 - tc.ema_decay) * p, state.ema, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state, ema), metrics

    def chunk(state: TrainState, batches):
        state, metrics = jax.lax.scan(one_step, state, batches)
        return state, jax.tree.map(jnp.mean, metrics)

    return jax.jit(chunk, donate_argnums=0)


def _with_dropout(net: nnx.Module, key: jax.Array) -> Callable:
    """``net`` as a ``model_fn`` whose dropout is active, with masks drawn from ``key``."""

    def model_fn(x, t, cond=None):
        return net(x, t, cond, rngs=nnx.Rngs(dropout=key))

    return model_fn


# Method options that change what the network's output means: a resumed run must keep them.
_NETWORK_MEANING = ("name", "prediction", "fields", "precondition", "sigma_data")


def check_workdir_compatible(config: Config, workdir: Path) -> None:
    """Refuse to resume a run whose saved config would build a different model."""
    workdir = Path(workdir)
    saved_path = workdir / CONFIG_FILE
    if not saved_path.exists() or not (workdir / CHECKPOINT_DIR).exists():
        return
    saved = config_to_dict(load_config_json(saved_path))
    new = config_to_dict(config)
    saved["method"] = {k: v for k, v in saved["method"].items() if k in _NETWORK_MEANING}
    new["method"] = {k: v for k, v in new["method"].items() if k in _NETWORK_MEANING}
    for section in ("process", "method", "data", "model"):
        if saved[section] != new[section]:
            diff = [
                f"{section}.{k}: {saved[section].get(k)!r} -> {new[section].get(k)!r}"
                for k in sorted(set(saved[section]) | set(new[section]))
                if saved[section].get(k) != new[section].get(k)
            ]
            raise ConfigError(
                f"{workdir} holds a run with a different {section} config ({'; '.join(diff)}); "
                "use another --workdir, or --fresh to discard that run."
            )
    for key in ("seed", "steps_per_dispatch"):
        if saved["train"][key] != new["train"][key]:
            raise ConfigError(
                f"{workdir} holds a run with train.{key}={saved['train'][key]!r}, not "
                f"{new['train'][key]!r}; use another --workdir, or --fresh to discard that run."
            )


def train(
    config: Config,
    workdir: str | Path,
    *,
    fresh: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int, dict], None] | None = None,
    snapshot: Callable[[Setup], Callable[[int, Any], Path]] | None = None,
) -> tuple[Setup, TrainState]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint if any.

    Args:
      config: the experiment.
      workdir: the run directory (created); holds ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/``.
      fresh: delete an existing run in ``workdir`` first instead of resuming it.
      progress: show a progress bar.
      on_chunk: called as ``on_chunk(step, metrics)`` after every dispatch.
      snapshot: with ``train.sample_every > 0``: ``snapshot(setup)`` returns the function
        ``write(step, ema_params) -> path`` called every ``sample_every`` steps
        (:func:`genflow.run.train` passes the run's sample grids).

    Returns:
      ``(setup, state)`` after ``config.train.num_steps`` steps.
    """
    workdir = Path(workdir)
    if fresh:
        for name in (CHECKPOINT_DIR, METRICS_FILE, CONFIG_FILE, SAMPLES_DIR):
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    check_workdir_compatible(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir / CONFIG_FILE)

    tc = config.train
    next_batches = make_batches(config)
    setup, state = init_train_state(config, data_shape_of(config))
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, max_to_keep=tc.keep_checkpoints)
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(start, state)
        print(f"resuming from step {start} in {workdir / CHECKPOINT_DIR}")
    step = int(state.step)

    chunk = make_train_chunk(config, setup)
    snapshots = snapshot(setup) if tc.sample_every and snapshot is not None else None
    schedule = learning_rate_schedule(tc)
    bar = tqdm(
        total=tc.num_steps, initial=step, disable=not progress, unit="step",
        dynamic_ncols=True, mininterval=0.5,
    )
    last_time, last_step = time.perf_counter(), step
    stop = _StopRequest()
    try:
        with open(workdir / METRICS_FILE, "a") as log:
            while step < tc.num_steps:
                # End chunks on multiples of steps_per_dispatch (and at num_steps).
                k = min(tc.steps_per_dispatch - step % tc.steps_per_dispatch, tc.num_steps - step)
                batches = jax.tree.map(jnp.asarray, next_batches(step, k))
                state, metrics = chunk(state, batches)
                prev, step = step, step + k
                bar.update(k)
                crossed = lambda every: step // every > prev // every or step == tc.num_steps  # noqa: E731
                if crossed(tc.log_every):
                    metrics = {k_: float(v) for k_, v in metrics.items()}
                    now = time.perf_counter()
                    record = {
                        "step": step,
                        **metrics,
                        "lr": float(schedule(step)),
                        "steps_per_sec": (step - last_step) / max(now - last_time, 1e-9),
                        "time": time.time(),
                    }
                    last_time, last_step = now, step
                    if not math.isfinite(record["loss"]):
                        raise FloatingPointError(
                            f"loss became {record['loss']} at step {step}; lower train.lr or "
                            "train.grad_clip. The last good checkpoint is kept."
                        )
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_sec']:.0f}")
                    if on_chunk is not None:
                        on_chunk(step, record)
                if crossed(tc.checkpoint_every) or stop.requested:
                    ckpt.save(step, state)
                if snapshots is not None and crossed(tc.sample_every):
                    bar.write(f"step {step}: wrote {snapshots(step, state.ema)}")
                if stop.requested:
                    break
    finally:
        bar.close()
        ckpt.wait()
        ckpt.close()
        stop.uninstall()
    if stop.requested:
        raise TrainingInterrupted(step, workdir)
    return setup, state


def _latest_step(ckpt: Checkpointer, workdir: Path) -> int:
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / CHECKPOINT_DIR}")
    return step


def restore_run(workdir: str | Path, *, weights: str = "ema",
                config: Config | None = None) -> tuple[Config, Setup, int, Any]:
    """Load ``workdir``'s config (or take ``config``) and the weights of its latest checkpoint,
    for sampling (:func:`genflow.run.open_run` wraps this in a :class:`~genflow.run.Run`).

    Only the step and the requested weights are read, not the optimizer state.

    Returns:
      ``(config, setup, step, params)`` where ``params`` are the EMA (``weights="ema"``) or
      raw (``"raw"``) parameters; ``model_fn_from(setup, params)`` is the model.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}.")
    workdir = Path(workdir)
    config = config or load_config_json(workdir / CONFIG_FILE)
    setup, state = init_train_state(config, data_shape_of(config))
    key = "ema" if weights == "ema" else "params"
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
    try:
        restored = ckpt.restore(_latest_step(ckpt, workdir), {"step": state.step, key: state.ema})
    finally:
        ckpt.close()
    return config, setup, int(restored["step"]), restored[key]


def restore_train_state(workdir: str | Path) -> tuple[Config, Setup, TrainState]:
    """Load ``workdir``'s config and the whole training state of its latest checkpoint."""
    workdir = Path(workdir)
    config = load_config_json(workdir / CONFIG_FILE)
    setup, state = init_train_state(config, data_shape_of(config))
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
    try:
        state = ckpt.restore(_latest_step(ckpt, workdir), state)
    finally:
        ckpt.close()
    return config, setup, state
