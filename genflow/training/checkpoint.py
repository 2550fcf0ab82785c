"""Checkpoints with orbax: the only module in genflow that imports orbax.

Each save is written to a temporary directory and renamed into place when complete, so
a crash or ``kill -9`` during a write leaves the previous checkpoint untouched; restore
only ever sees finalized checkpoints.

**Checkpoints verify themselves.** Once orbax has finalized a step, the SHA-256 of every
file in it is written to ``STEP/genflow_checksums.json`` (atomically, by process 0). A restore
checks them first; a step whose files do not match, or that cannot be read, is skipped with
one warning line naming it, and the newest intact step is used instead
(:meth:`Checkpointer.restore_latest`). A writer moves the skipped steps to
``checkpoints_damaged/`` so that it can write those step numbers again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKSUMS = "genflow_checksums.json"
DAMAGED_DIR = "checkpoints_damaged"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (disk full, read-only directory, ...)."""


class NoIntactCheckpoint(ValueError):
    """Every checkpoint of a directory is damaged or unreadable."""


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(step_dir: Path) -> None:
    """Record the SHA-256 of every file of a finalized step (tmp file, then rename)."""
    sums = {str(p.relative_to(step_dir)): _digest(p) for p in sorted(step_dir.rglob("*"))
            if p.is_file() and p.name != CHECKSUMS}
    tmp = step_dir / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(sums, indent=0))
    os.replace(tmp, step_dir / CHECKSUMS)


def verify(step_dir: Path) -> str | None:
    """``None`` if ``step_dir`` matches its checksums (or predates them), else what is wrong."""
    record = step_dir / CHECKSUMS
    if not record.is_file():
        return None
    try:
        sums = json.loads(record.read_text())
    except ValueError:
        return f"{CHECKSUMS} is unreadable"
    for name, digest in sums.items():
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if _digest(path) != digest:
            return f"{name} does not match its checksum"
    return None


class Checkpointer:
    """Save and restore a training-state pytree under ``<workdir>/checkpoints``.

    Args:
      directory: where step directories are written.
      max_to_keep: how many recent checkpoints to keep.
      read_only: open an existing directory without creating or cleaning it.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=True,
        )
        # orbax announces read-only mode through absl warnings; it is what we asked for.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        if read_only:
            absl_logger.setLevel(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.setLevel(level)
        self._pending = None  # the step being written in the background

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def restore_latest(self, target: Any, *, warn: Callable[[str], None] | None = None,
                       set_aside: bool = False) -> tuple[int | None, Any]:
        """Restore the newest intact step into ``target``'s structure: ``(step, restored)``,
        or ``(None, target)`` when there is no checkpoint at all.

        A step that fails its checksums or cannot be restored is skipped with one ``warn``
        line (default: to stderr) and, with ``set_aside`` (a writer), moved to
        ``checkpoints_damaged/``.

        Raises:
          NoIntactCheckpoint: there are checkpoints, and none is intact.
        """
        warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        damaged = []
        for step in sorted(self.all_steps(), reverse=True):
            problem = verify(self.step_dir(step))
            if problem is None:
                try:
                    return step, self.restore(step, target)
                except Exception as exc:  # noqa: BLE001 - orbax and tensorstore raise many kinds
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    problem = f"it cannot be read ({type(exc).__name__}: {first[:160]})"
            damaged.append(step)
            older = [s for s in self.all_steps() if s < step]
            fallback = f"using step {max(older)} instead" if older else "no older checkpoint"
            warn(f"warning: checkpoint {self.step_dir(step)} is damaged ({problem}); "
                 f"{fallback}.")
            if set_aside:
                self._set_aside(step)
        if damaged:
            where = " ".join(str(self.step_dir(s)) for s in damaged)
            raise NoIntactCheckpoint(
                f"no intact checkpoint in {self.directory} (damaged: steps "
                f"{', '.join(map(str, damaged))}); delete them (rm -r {where}) to start over, "
                "or train with --fresh.")
        return None, target

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            aside = self.directory.parent / DAMAGED_DIR / str(step)
            shutil.rmtree(aside, ignore_errors=True)
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.step_dir(step), aside)
        self._manager.reload()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Start writing ``state`` as ``step`` in the background (returns at once).

        ``state`` is a dict or a NamedTuple of pytrees; each entry is its own orbax item, so
        that a reader can restore some of them (the EMA weights alone, say) without the rest.
        """
        items = _items(state)
        self._finish()  # the previous write: finalized and checksummed before the next starts
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    # Wrapped in a dict: orbax's standard handler refuses a bare scalar.
                    **{k: ocp.args.StandardSave({"value": v}) for k, v in items.items()}
                ),
            )
        except Exception as exc:  # noqa: BLE001
            raise self._write_error(step, exc) from None
        self._pending = step

    def _finish(self) -> None:
        """Wait for the write in progress; then record its checksums."""
        step, self._pending = self._pending, None
        if step is None:
            return
        try:
            self._manager.wait_until_finished()
            if jax.process_index() == 0 and self.step_dir(step).is_dir():
                write_checksums(self.step_dir(step))
        except Exception as exc:  # noqa: BLE001
            raise self._write_error(step, exc) from None

    def _write_error(self, step: int, exc: Exception) -> CheckpointError:
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [""])[0]
        kept = [s for s in self._manager.all_steps() if s < step and self.step_dir(s).is_dir()]
        said = (f"the checkpoint of step {max(kept)} is intact" if kept else
                "no earlier checkpoint exists")
        return CheckpointError(f"writing the checkpoint of step {step} to {self.directory} "
                               f"failed ({reason[:200]}); {said}. Free space or fix the "
                               "directory, then rerun to resume.")

    def restore(self, step: int, target: Any) -> Any:
        """Restore ``step`` into the structure, shapes and dtypes of ``target``.

        ``target`` may name a subset of the saved entries; the result has ``target``'s type.
        """
        items = _items(target)
        abstract = {
            k: {"value": jax.tree.map(ocp.utils.to_shape_dtype_struct, v)} for k, v in items.items()
        }
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in abstract.items()}),
        )
        if hasattr(target, "_asdict"):
            return target._replace(**{k: restored[k]["value"] for k in items})
        return {**target, **{k: restored[k]["value"] for k in items}}

    def wait(self) -> None:
        """Block until background writes are finalized (and checksummed)."""
        self._finish()
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _items(state: Any) -> dict[str, Any]:
    """The entries of ``state`` that hold arrays (an empty entry, such as a run's ``()`` of EMA
    profiles, is neither written nor read)."""
    if hasattr(state, "_asdict"):
        items = dict(state._asdict())
    elif isinstance(state, dict):
        items = dict(state)
    else:
        raise TypeError(f"checkpoint a dict or NamedTuple of pytrees, got {type(state).__name__}.")
    return {k: v for k, v in items.items() if jax.tree.leaves(v)}


def has_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds at least one finalized checkpoint (creates nothing)."""
    directory = Path(directory)
    if not directory.is_dir():
        return False
    ckpt = Checkpointer(directory, read_only=True)
    try:
        return ckpt.latest_step() is not None
    finally:
        ckpt.close()
