"""The run directory: made usable or refused in one line, and one writer at a time.

:func:`prepare_workdir` creates ``WORKDIR`` or says in one line why it cannot (a file is in
the way, a parent is a file, no permission). :class:`RunLock` is an exclusive ``flock`` on
``WORKDIR/.train.lock``.

The operating system releases the lock when the holding process ends, however it ends (a
``kill -9`` included), so a stale lock never blocks a rerun. Readers (``genflow sample``,
``genflow evaluate``) take no lock: checkpoints are finalized atomically. In a multi-process
job process 0 holds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from genflow.config import ConfigError

LOCK_FILE = ".train.lock"


def prepare_workdir(workdir: str | Path) -> Path:
    """Create ``workdir`` (and its parents) and check that it can be written to.

    Raises:
      ConfigError: the path is a file, lies under a file, or cannot be written.
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; choose another path.")
    for parent in workdir.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--workdir {workdir} lies under {parent}, which is a file; choose "
                              "another path.")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create --workdir {workdir}: {exc.strerror or exc}.") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir} is not writable; choose another path or fix its "
                          "permissions.")
    return workdir


class RunLock:
    """Hold the exclusive lock of ``workdir`` (created if need be) until :meth:`release`.

    Raises:
      ConfigError: another process holds it (the message names its pid).
    """

    def __init__(self, workdir: str | Path):
        import fcntl

        self.path = Path(workdir) / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(
                f"{workdir} is being trained by another process (pid {holder}); wait for it to "
                "finish or stop it, or train in another --workdir."
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
