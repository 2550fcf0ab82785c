"""Checkpoints with orbax: the only module in genflow that imports orbax.

Each save is written to a temporary directory and renamed into place when complete, so
a crash or ``kill -9`` during a write leaves the previous checkpoint untouched; restore
only ever sees finalized checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


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

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Start writing ``state`` as ``step`` in the background (returns at once).

        ``state`` is a dict or a NamedTuple of pytrees; each entry is its own orbax item, so
        that a reader can restore some of them (the EMA weights alone, say) without the rest.
        """
        items = _items(state)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                # Wrapped in a dict: orbax's standard handler refuses a bare scalar.
                **{k: ocp.args.StandardSave({"value": v}) for k, v in items.items()}
            ),
        )

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
        """Block until background writes are finalized."""
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
