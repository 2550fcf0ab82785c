"""The training loop: one jitted, donated, multi-step dispatch, driven from the host.

``train(config, workdir)`` builds the state (or restores the latest checkpoint of
``workdir``), then repeats: draw ``k`` batches on the host, run ``k`` optimizer steps in
one compiled ``lax.scan``, log, and checkpoint. Chunks start at multiples of
``steps_per_dispatch`` and every random number is a function of the step index, so a run
that is stopped and resumed replays bit-for-bit the same computation as one that is not.

The dispatch runs over a device mesh (:mod:`._sharding`): batches split along ``data``, the
state replicated or FSDP-split, one SPMD program; in a multi-process job every process runs
this loop, process 0 alone writes the logs, and all of them write each checkpoint.
"""

from __future__ import annotations

import json
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
from jax.sharding import Mesh
from tqdm.auto import tqdm

from genflow.config import Config, ConfigError, config_to_dict, load_config_json, save_config
from genflow.training._data import data_shape_of, drop_labels, make_batches
from genflow.networks import cast_floating, in_dtype
from genflow.training._ema import ema_decay, power_decay, sigma_rel_to_gamma
from genflow.training._posthoc import (
    EMA_SNAPSHOT_DIR,
    POSTHOC_DIR,
    parse_weights,
    posthoc_directory,
)
from genflow.training._sharding import (
    any_process,
    batch_sharding,
    check_batch,
    describe_layout,
    gather_to_host,
    global_batch,
    is_main_process,
    local_batch,
    make_mesh,
    place,
    replicated,
    state_shardings,
    sync,
)
from genflow.training._workdir import RunLock, prepare_workdir
from genflow.training._state import Setup, TrainState, init_train_state, learning_rate_schedule
from genflow.training.checkpoint import Checkpointer, NoIntactCheckpoint

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


class NonFiniteTraining(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite; nothing from that state was written.

    Attributes:
      step: the last step of the dispatch in which it happened.
      kept: the step of the newest checkpoint on disk, or ``None``.
    """

    def __init__(self, message: str, step: int, kept: int | None):
        super().__init__(message)
        self.step, self.kept = step, kept


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


def make_train_chunk(config: Config, setup: Setup, *, mesh: Mesh | None = None,
                     state_shardings: Any = None) -> Callable:
    """``chunk(state, batches) -> (state, metrics)``: ``k`` optimizer steps in one dispatch.

    ``batches["x"]`` has shape ``(k, batch, *data_shape)``; ``state`` is donated. The
    returned metrics are averages over the ``k`` steps.

    Step ``s`` uses the key ``fold_in(key(train.seed), s)`` for the loss; a network with
    dropout gets ``rngs=nnx.Rngs(dropout=fold_in(that key, 1))``, and the labels ``cond`` of a
    class-conditional model are dropped to the null class (:func:`drop_labels`) with
    ``fold_in(that key, 2)``. Every random number is thus a function of the step index.

    With ``mesh``, the dispatch is one SPMD program over its devices: batches split along
    ``data``, the state laid out as ``state_shardings`` (see :mod:`._sharding`).
    ``train.compute_dtype="bfloat16"`` runs the network on bfloat16 copies of the float32
    parameters (the loss, its reduction, the gradients, the optimizer and the EMAs stay
    float32); ``train.accumulate=m`` evaluates the network on ``m`` micro-batches in turn,
    each rematerialised in the backward pass (:func:`_micro_batched`).
    """
    tc = config.train
    base_key = jax.random.key(tc.seed)
    loss = config.resolved.method.loss
    dropout = config.model.uses_dropout
    label_dropout = tc.label_dropout if config.model.num_classes > 0 else 0.0
    dtype = None if tc.compute_dtype == "float32" else jnp.dtype(tc.compute_dtype)
    gammas = tuple(sigma_rel_to_gamma(s) for s in tc.ema_profiles)

    def loss_fn(params, batch, key):
        net = nnx.merge(setup.graphdef, params if dtype is None else cast_floating(params, dtype),
                        setup.rest)
        dropout_key = jax.random.fold_in(key, _DROPOUT_STREAM)

        def network(chunk_index=None):  # the model_fn of micro-batch chunk_index
            fn = net
            if dropout:
                k_ = dropout_key if chunk_index is None else jax.random.fold_in(dropout_key,
                                                                                 chunk_index)
                fn = _with_dropout(net, k_)
            return in_dtype(fn, dtype)

        fn = network() if tc.accumulate == 1 else _micro_batched(network, tc.accumulate)
        return loss(setup.wrap(fn), batch, key)

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
        step = state.step + 1
        if tc.ema_warmup == 0.0:  # Python constants: the same arithmetic as ever
            ema = jax.tree.map(lambda e, p: tc.ema_decay * e + (1.0 - tc.ema_decay) * p,
                               state.ema, params)
        else:
            ema = _average(state.ema, params,
                           ema_decay(step, decay=tc.ema_decay, warmup_power=tc.ema_warmup))
        profiles = tuple(_average(prof, params, power_decay(step, g))
                         for g, prof in zip(gammas, state.profiles))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step, params, opt_state, ema, profiles), metrics

    def chunk(state: TrainState, batches):
        state, metrics = jax.lax.scan(one_step, state, batches)
        # Every step's loss and gradient norm, checked on the device: one flag per dispatch.
        flags = {f"{k}_finite": jnp.all(jnp.isfinite(v)) for k, v in metrics.items()}
        return state, {**jax.tree.map(jnp.mean, metrics), **flags}

    if mesh is None:
        return jax.jit(chunk, donate_argnums=0)
    return jax.jit(chunk, donate_argnums=0,
                   in_shardings=(state_shardings, batch_sharding(mesh, leading=1)),
                   out_shardings=(state_shardings, replicated(mesh)))


def _average(ema: Any, params: Any, decay: jax.Array) -> Any:
    """``decay * ema + (1 - decay) * params`` in each leaf's own dtype."""
    def mix(e, p):
        d = decay.astype(e.dtype)
        return d * e + (1 - d) * p

    return jax.tree.map(mix, ema, params)


def _micro_batched(network: Callable[[Any], Callable], m: int) -> Callable:
    """A ``model_fn`` that evaluates ``network(j)`` on micro-batch ``j = 0 .. m-1`` in turn
    (``lax.map``), each under :func:`jax.checkpoint`: the backward pass recomputes one
    micro-batch's activations at a time instead of storing the whole batch's, and the
    parameter gradients add up across micro-batches inside autodiff (gradient accumulation).

    Micro-batch ``j`` holds examples ``j, j + m, j + 2m, ...``, so with the batch split over
    devices every device keeps its own examples. Examples are independent through every
    genflow network, so the output, the loss and the gradient are those of the whole batch
    up to the order of floating-point sums. A batch that ``m`` does not divide (the
    collocation points of a regularizer, say) is evaluated whole.
    """
    def model_fn(x, t, cond=None):
        b = x.shape[0]
        if b % m:
            return network()(x, t, cond)

        def split(a):
            return None if a is None else a.reshape(b // m, m, *a.shape[1:]).swapaxes(0, 1)

        @jax.checkpoint
        def one(args):
            j, xj, tj, cj = args
            return network(j)(xj, tj, cj)

        out = jax.lax.map(one, (jnp.arange(m), split(x), split(t), split(cond)))
        return out.swapaxes(0, 1).reshape(b, *out.shape[2:])

    return model_fn


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
    # The state's layout (profiles) and the arithmetic of every step (dtype) must match.
    for key in ("seed", "steps_per_dispatch", "compute_dtype", "ema_profiles"):
        if saved["train"][key] != new["train"][key]:
            raise ConfigError(
                f"{workdir} holds a run with train.{key}={saved['train'][key]!r}, not "
                f"{new['train'][key]!r}; use another --workdir, or --fresh to discard that run."
            )


# What a resumed run may change: how long it trains and how often it logs, checkpoints and
# samples. Anything else would make config.json stop describing the checkpointed weights.
RESUMABLE_CHANGES = ("train.num_steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.sample_every", "train.ema_snapshot_every")
HISTORY_FILE = "config_history.jsonl"


def config_changes(old: Config, new: Config) -> dict[str, list]:
    """``{"section.key": [old, new]}`` for every setting that differs (the ``sample`` section,
    which describes how to sample and not how the weights were made, is left out)."""
    a, b = config_to_dict(old), config_to_dict(new)
    changes = {}
    for section in ("process", "method", "data", "model", "train"):
        for key in sorted(set(a[section]) | set(b[section])):
            if a[section].get(key) != b[section].get(key):
                changes[f"{section}.{key}"] = [a[section].get(key), b[section].get(key)]
    return changes


def check_resume_changes(config: Config, workdir: Path) -> dict[str, list]:
    """The changes a resume of ``workdir`` with ``config`` makes (:func:`config_changes`);
    a :class:`ConfigError` if any is not in :data:`RESUMABLE_CHANGES`."""
    saved_path = workdir / CONFIG_FILE
    if not saved_path.exists() or not (workdir / CHECKPOINT_DIR).exists():
        return {}
    changes = config_changes(load_config_json(saved_path), config)
    refused = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
    if refused:
        said = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in refused.items())
        raise ConfigError(
            f"resuming {workdir} would change {said}; a resumed run may change only "
            f"{', '.join(RESUMABLE_CHANGES)}. Train the latest checkpoint with the new settings "
            "in a new directory with --fork NEW_WORKDIR, or use another --workdir, or --fresh."
        )
    return changes


def _record_history(workdir: Path, step: int, **entry: Any) -> None:
    with open(workdir / HISTORY_FILE, "a") as f:
        f.write(json.dumps({"step": step, **entry, "time": time.time()}) + "\n")


def fork_run(config: Config, source: str | Path, workdir: str | Path) -> int:
    """Start ``workdir`` from the latest checkpoint of ``source`` with ``config``'s settings
    (which may differ in anything but the network's meaning); returns the forked step.

    The checkpoint and the metrics up to it are copied; ``source`` is left unchanged; the fork
    is the first line of ``workdir``'s ``config_history.jsonl``.
    """
    source, workdir = Path(source), Path(workdir)
    check_workdir_compatible(config, source)
    ckpt = Checkpointer(source / CHECKPOINT_DIR, read_only=True) if (
        source / CHECKPOINT_DIR).is_dir() else None
    step = ckpt.latest_step() if ckpt is not None else None
    if ckpt is not None:
        ckpt.close()
    if step is None:
        raise ConfigError(f"--fork copies the latest checkpoint of {source}, which has none.")
    if workdir.resolve() == source.resolve():
        raise ConfigError("--fork needs a new directory, not the run being forked.")
    if (workdir / CONFIG_FILE).exists() or (workdir / CHECKPOINT_DIR).exists():
        raise ConfigError(f"--fork {workdir}: that directory holds a run already; choose a new "
                          "one.")
    prepare_workdir(workdir)
    tmp = workdir / f".{CHECKPOINT_DIR}.fork"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source / CHECKPOINT_DIR / str(step), tmp / str(step))
    tmp.rename(workdir / CHECKPOINT_DIR)  # all or nothing
    if (source / METRICS_FILE).exists():
        lines = [line for line in (source / METRICS_FILE).read_text().splitlines()
                 if line.strip() and json.loads(line).get("step", 0) <= step]
        (workdir / METRICS_FILE).write_text("".join(f"{line}\n" for line in lines))
    changes = config_changes(load_config_json(source / CONFIG_FILE), config)
    _record_history(workdir, step, forked_from=str(source), changes=changes)
    return step


def check_train_inputs(config: Config, mesh: Mesh) -> None:
    """Problems that would only show after compiling, as a :class:`ConfigError`: a batch the
    devices (and micro-batches) do not divide, an image batch the processes do not divide."""
    tc = config.train
    check_batch(config.data.batch_size, mesh, accumulate=tc.accumulate)
    if config.data.images and config.data.batch_size % jax.process_count():
        raise ConfigError(f"data.batch_size={config.data.batch_size}: each of the "
                          f"{jax.process_count()} processes reads an equal share of every "
                          "image batch; use a multiple of the process count.")
    if tc.accumulate > 1 and config.model.log_density:
        raise ConfigError("train.accumulate > 1 splits the network's calls into micro-batches; "
                          "a log-density network (model.output=log_density) is called whole: "
                          "set train.accumulate=1.")


def train(
    config: Config,
    workdir: str | Path,
    *,
    fresh: bool = False,
    progress: bool = True,
    on_chunk: Callable[[int, dict], None] | None = None,
    snapshot: Callable[[Setup], Callable[[int, Any], Path]] | None = None,
    mesh: Mesh | None = None,
) -> tuple[Setup, TrainState]:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint if any.

    The run spans ``mesh`` (default: every device of every process, :func:`make_mesh`); in a
    multi-process job every process calls this with the same arguments, and only process 0
    prints, writes ``config.json``, ``metrics.jsonl`` and the sample grids, while every process
    takes part in each checkpoint.

    Args:
      config: the experiment.
      workdir: the run directory (created); holds ``config.json``, ``metrics.jsonl`` and
        ``checkpoints/`` (and ``ema_snapshots/`` with ``train.ema_snapshot_every``).
      fresh: delete an existing run in ``workdir`` first instead of resuming it.
      progress: show a progress bar.
      on_chunk: called as ``on_chunk(step, metrics)`` after every logged dispatch.
      snapshot: with ``train.sample_every > 0``: ``snapshot(setup)`` returns the function
        ``write(step, ema_params) -> path`` called every ``sample_every`` steps
        (:func:`genflow.run.train` passes the run's sample grids).
      mesh: the devices to train on.

    Returns:
      ``(setup, state)`` after ``config.train.num_steps`` steps.
    """
    workdir = Path(workdir)
    mesh = make_mesh() if mesh is None else mesh
    check_train_inputs(config, mesh)
    lock = None
    if is_main_process():
        prepare_workdir(workdir)
        lock = RunLock(workdir)  # one writer: a second train on this workdir stops here
    try:
        return _train(config, workdir, fresh=fresh, progress=progress, on_chunk=on_chunk,
                      snapshot=snapshot, mesh=mesh)
    finally:
        if lock is not None:
            lock.release()


def _train(config, workdir, *, fresh, progress, on_chunk, snapshot, mesh):
    tc = config.train
    main = is_main_process()
    if fresh and main:  # the whole run goes, its sample files included
        names = (CHECKPOINT_DIR, METRICS_FILE, CONFIG_FILE, SAMPLES_DIR, EMA_SNAPSHOT_DIR,
                 POSTHOC_DIR, HISTORY_FILE, *(p.name for p in workdir.glob("samples*.npz")),
                 *(p.name for p in workdir.glob("samples*.png")))
        for name in names:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    sync("genflow-fresh")
    check_workdir_compatible(config, workdir)
    changes = check_resume_changes(config, workdir)
    sync("genflow-checked")  # nobody writes config.json before everyone has read the old one
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / CONFIG_FILE).exists() and not (workdir / HISTORY_FILE).exists():
            _record_history(workdir, 0, created=True)
        save_config(config, workdir / CONFIG_FILE)

    next_batches = make_batches(config)
    if tc.param_sharding == "fsdp":  # created split: no device ever holds the whole state
        setup, state = init_train_state(
            config, data_shape_of(config),
            layout=lambda abstract: state_shardings(mesh, abstract, "fsdp"))
        shardings = jax.tree.map(lambda x: x.sharding, state)
    else:
        setup, state = init_train_state(config, data_shape_of(config))
        shardings = state_shardings(mesh, state, tc.param_sharding)
        state = place(state, shardings)
    if main:
        print(describe_layout(state, shardings, mesh))
    sync("genflow-workdir")
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, max_to_keep=tc.keep_checkpoints)
    warn = (lambda line: print(line, file=sys.stderr)) if main else (lambda line: None)
    try:
        start, state = ckpt.restore_latest(state, set_aside=True, warn=warn)
    except NoIntactCheckpoint as exc:
        ckpt.close()
        raise ConfigError(str(exc)) from None
    ema_ckpt = (Checkpointer(workdir / EMA_SNAPSHOT_DIR, max_to_keep=None)
                if tc.ema_snapshot_every else None)
    if start is not None:
        if main:
            print(f"resuming from step {start} in {workdir / CHECKPOINT_DIR}")
            if changes:
                _record_history(workdir, start, changes=changes)
    step = int(state.step)

    chunk = make_train_chunk(config, setup, mesh=mesh, state_shardings=shardings)
    to_global = local_batch if config.data.images else global_batch
    batches_sharding = batch_sharding(mesh, leading=1)
    snapshots = snapshot(setup) if tc.sample_every and snapshot is not None and main else None
    schedule = learning_rate_schedule(tc)
    bar = tqdm(
        total=tc.num_steps, initial=step, disable=not (progress and main), unit="step",
        dynamic_ncols=True, mininterval=0.5,
    )
    last_time, last_step = time.perf_counter(), step
    stop = _StopRequest()
    log = open(workdir / METRICS_FILE, "a") if main else None
    stopping = False
    unchecked = None  # (flags, first step, last step) of the dispatch not yet checked

    def check_finite():
        nonlocal unchecked
        if unchecked is not None:
            flags, first, last = unchecked
            unchecked = None
            bad = [name[: -len("_finite")] for name, ok in flags.items() if not bool(ok)]
            if bad:
                kept = ckpt.latest_step()
                where = (f"the last good checkpoint is step {kept} in {workdir / CHECKPOINT_DIR}"
                         f" (train resumes from it)" if kept is not None else
                         "no checkpoint had been written yet")
                raise NonFiniteTraining(
                    f"{' and '.join(bad)} became NaN or infinite between steps {first} and "
                    f"{last}; nothing from there on was written and {where}. Lower train.lr "
                    f"(now {tc.lr:g}) or train.grad_clip (now {tc.grad_clip:g}).", last, kept)

    try:
        while step < tc.num_steps:
            # End chunks on multiples of steps_per_dispatch (and at num_steps).
            k = min(tc.steps_per_dispatch - step % tc.steps_per_dispatch, tc.num_steps - step)
            batches = to_global(next_batches(step, k), batches_sharding)
            state, metrics = chunk(state, batches)
            # The previous dispatch's flags are ready by now: checking them costs no wait.
            check_finite()
            flags = {name: metrics.pop(name) for name in list(metrics) if name.endswith("_finite")}
            unchecked = (flags, step + 1, step + k)
            prev, step = step, step + k
            bar.update(k)
            crossed = lambda every: step // every > prev // every or step == tc.num_steps  # noqa: E731
            stopping = any_process(stop.requested)
            writes = (crossed(tc.log_every) or crossed(tc.checkpoint_every) or stopping
                      or (ema_ckpt is not None and step % tc.ema_snapshot_every == 0)
                      or (tc.sample_every and crossed(tc.sample_every)))
            if writes:  # nothing is written from a state that is not finite
                check_finite()
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
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{record['loss']:.4f}", steps_s=f"{record['steps_per_sec']:.0f}")
                if on_chunk is not None:
                    on_chunk(step, record)
            if crossed(tc.checkpoint_every) or stopping:
                ckpt.save(step, state)
            if ema_ckpt is not None and (step % tc.ema_snapshot_every == 0 or step == tc.num_steps):
                ema_ckpt.save(step, {"step": state.step, "profiles": state.profiles})
            if tc.sample_every and crossed(tc.sample_every):
                ema = gather_to_host(state.ema, mesh)  # a collective: every process
                if snapshots is not None:
                    bar.write(f"step {step}: wrote {snapshots(step, ema)}")
            if stopping:
                break
        check_finite()
    finally:
        bar.close()
        if log is not None:
            log.close()
        for manager in (ckpt, ema_ckpt):
            if manager is not None:
                manager.wait()
                manager.close()
        stop.uninstall()
    if stopping:
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

    Args:
      weights: ``"ema"``, ``"raw"``, or ``"sigma_rel=S"``: the post-hoc EMA that
        ``genflow ema --sigma-rel S`` wrote (:func:`posthoc_ema`).

    Returns:
      ``(config, setup, step, params)``; ``model_fn_from(setup, params)`` is the model.
    """
    sigma_rel = parse_weights(weights)
    workdir = Path(workdir)
    config = config or load_config_json(workdir / CONFIG_FILE)
    setup, state = init_train_state(config, data_shape_of(config))
    key = "params" if weights == "raw" else "ema"
    directory = workdir / CHECKPOINT_DIR
    if sigma_rel is not None:
        directory = posthoc_directory(workdir, sigma_rel)
        if not directory.is_dir():
            raise ConfigError(f"{workdir} has no post-hoc EMA with sigma_rel {sigma_rel:g}; "
                              f"write it with `genflow ema --workdir {workdir} --sigma-rel "
                              f"{sigma_rel:g}`.")
    restored = _restore_latest(directory, workdir, {"step": state.step, key: state.ema})
    return config, setup, int(restored["step"]), restored[key]


def _restore_latest(directory: Path, workdir: Path, target: Any) -> Any:
    """The newest intact checkpoint of ``directory`` in ``target``'s structure (a reader: a
    damaged newest step is skipped with a warning and left in place)."""
    ckpt = Checkpointer(directory, read_only=True)
    try:
        _latest_step(ckpt, workdir)
        return ckpt.restore_latest(target)[1]
    except NoIntactCheckpoint as exc:
        raise ConfigError(str(exc)) from None
    finally:
        ckpt.close()


def restore_train_state(workdir: str | Path) -> tuple[Config, Setup, TrainState]:
    """Load ``workdir``'s config and the whole training state of its latest checkpoint."""
    workdir = Path(workdir)
    config = load_config_json(workdir / CONFIG_FILE)
    setup, state = init_train_state(config, data_shape_of(config))
    return config, setup, _restore_latest(workdir / CHECKPOINT_DIR, workdir, state)
