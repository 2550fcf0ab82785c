"""Many devices and many hosts, with JAX's own distribution: ``jax.sharding`` and
``jax.distributed``.

A run spans every device of every process in one :class:`jax.sharding.Mesh` with a single
``data`` axis. The batch is split along it (``PartitionSpec(None, "data")`` for the ``(k, b,
...)`` batches of one dispatch); the training state (parameters, EMA, optimizer state) is
replicated (``"replicated"``) or, with ``train.param_sharding="fsdp"``, each large array is
split along the same axis over one of its dimensions (fully-sharded data parallelism: each
device holds ``1/n`` of every large parameter and of its Adam moments; XLA gathers a
parameter where a layer needs it). The jitted multi-step dispatch is one SPMD program
either way; XLA's partitioner inserts the collectives.

Random numbers do not depend on the layout: JAX's partitionable threefry draws the same
values whether an array lives on one device or is split over many, so a run gives the same
losses on 1 and on ``n`` devices up to the order of floating-point reductions.

**Many hosts.** :func:`initialize_distributed` calls :func:`jax.distributed.initialize`
before anything else touches a device, either with an explicit coordinator or, when the
environment describes a cluster (SLURM, Cloud TPU pods, or JAX's own
``JAX_COORDINATOR_ADDRESS``), with JAX's cluster detection. Each process then owns its
local devices' shards of every global array (:func:`global_batch`, :func:`local_batch`).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from genflow.config import ConfigError

DATA_AXIS = "data"
PARAM_SHARDINGS = ("replicated", "fsdp")
# Arrays smaller than this stay replicated under FSDP: splitting them saves no memory worth
# the collective that gathers them (biases, norms, embeddings of a few hundred numbers).
FSDP_MIN_SIZE = 2**12


# ------------------------------------------------------------------------------ processes
def cluster_in_environment() -> bool:
    """Whether the environment describes a multi-process job that
    :func:`jax.distributed.initialize` can join without arguments: JAX's own
    ``JAX_COORDINATOR_ADDRESS``, a SLURM job step of several tasks, or a Cloud TPU pod slice
    of several hosts."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", env.get("SLURM_STEP_NUM_TASKS", "1")) or 1) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def check_distributed_args(coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """A :class:`~genflow.config.ConfigError` for flags that cannot describe a job: all
    three or none, ``HOST:PORT``, ``0 <= process_id < num_processes``."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("--coordinator, --num-processes and --process-id go together: give "
                          "all three (or none, to take them from the environment).")
    if not any(given):
        return
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--coordinator must be HOST:PORT, got {coordinator!r}.")
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process-id {process_id} is not one of the {num_processes} "
                          f"processes asked for (0 to {num_processes - 1}).")


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout: int = 300,
                           heartbeat_timeout: int = 100, from_environment: bool = False) -> bool:
    """Join a multi-process job (:func:`jax.distributed.initialize`); call before any device
    is used. Returns whether a job was joined.

    Args:
      coordinator: ``HOST:PORT`` of process 0's coordination service; ``None``: take the
        job from the environment if it describes one (:func:`cluster_in_environment`), else
        run as a single process.
      num_processes, process_id: the job's size and this process's rank (with
        ``coordinator``).
      timeout: seconds to wait for every process to connect. After that JAX ends the process
        (an abort, not an exception; ``genflow train`` runs a job's training in a child
        process and reports this as one line with exit status 2). Errors JAX raises as
        exceptions become a :class:`~genflow.config.ConfigError`.
      from_environment: join whatever job JAX's own cluster detection finds, even where
        :func:`cluster_in_environment` does not recognise the environment.
      heartbeat_timeout: seconds without a heartbeat after which JAX declares a process dead
        and stops the others (JAX then ends each surviving process with the message
        "Terminating process because the JAX distributed service detected fatal errors").
    """
    check_distributed_args(coordinator, num_processes, process_id)
    if coordinator is None and not (from_environment or cluster_in_environment()):
        return False
    # CPU collectives between processes go through gloo (the CPU default has none); the
    # setting only concerns the CPU backend, so it is harmless beside GPUs and TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(initialization_timeout=timeout, heartbeat_timeout_seconds=heartbeat_timeout)
    try:
        if coordinator is None:
            jax.distributed.initialize(**kwargs)
        else:
            jax.distributed.initialize(coordinator, num_processes, process_id, **kwargs)
    except Exception as exc:  # noqa: BLE001 - XLA raises its own status errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = coordinator or "the environment's coordinator"
        raise ConfigError(
            f"could not join the job at {where} within {timeout} s ({first[:200]}); start every "
            "process with the same --coordinator and --num-processes, and check the host and "
            "port are reachable."
        ) from None
    return True


def is_main_process() -> bool:
    """Whether this is process 0, the one that prints and writes logs, configs and grids."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (e.g. a stop request one process received)."""
    if jax.process_count() == 1:
        return flag
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.any(flags))


# ------------------------------------------------------------------------------ the mesh
def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh (``"data"``) over ``devices`` (default: every device of every
    process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch(batch_size: int, mesh: Mesh, *, accumulate: int = 1) -> None:
    """A :class:`~genflow.config.ConfigError` unless every device gets whole examples of
    every micro-batch: ``batch_size`` divisible by ``devices x accumulate``."""
    n = mesh.size
    if batch_size % (n * accumulate):
        per = f"{n} devices" + (f" x {accumulate} micro-batches" if accumulate > 1 else "")
        good = n * accumulate * max(1, round(batch_size / (n * accumulate)))
        raise ConfigError(
            f"data.batch_size={batch_size} does not split evenly over {per}; use a multiple "
            f"of {n * accumulate} (e.g. --set data.batch_size={good})."
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, *, leading: int = 1) -> NamedSharding:
    """Examples split along ``data`` after ``leading`` unsplit axes (1: the ``k`` steps of a
    dispatch; 0: a plain batch)."""
    return NamedSharding(mesh, PartitionSpec(*(None,) * leading, DATA_AXIS))


def _leaf_sharding(mesh: Mesh, leaf: Any, mode: str) -> NamedSharding:
    shape = getattr(leaf, "shape", ())
    if mode == "replicated" or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return replicated(mesh)
    n = mesh.size
    # Split the largest dimension that the device count divides (the last one on ties).
    dims = [d for d in range(len(shape)) if shape[d] % n == 0]
    if not dims:
        return replicated(mesh)
    dim = max(dims, key=lambda d: (shape[d], d))
    spec = [None] * len(shape)
    spec[dim] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def state_shardings(mesh: Mesh, state: Any, mode: str = "replicated") -> Any:
    """The sharding of every leaf of ``state``: replicated, or split by
    :data:`FSDP_MIN_SIZE`-and-divisibility rules (``"fsdp"``). The rule depends only on a
    leaf's shape, so a parameter, its EMA and its Adam moments are split alike."""
    if mode not in PARAM_SHARDINGS:
        raise ValueError(f"param sharding must be one of {PARAM_SHARDINGS}, got {mode!r}.")
    return jax.tree.map(lambda leaf: _leaf_sharding(mesh, leaf, mode), state)


def describe_layout(state: Any, shardings: Any, mesh: Mesh) -> str:
    """One line on how ``state`` lies on ``mesh``: e.g. ``"state replicated on 4 devices"`` or
    ``"state split over 4 devices (fsdp): 12 of 30 arrays, 96% of the numbers"``."""
    leaves = jax.tree.leaves(state)
    split = [DATA_AXIS in tuple(sh.spec) for sh in jax.tree.leaves(shardings)]
    if not any(split):
        return f"state replicated on {mesh.size} device{'s' * (mesh.size > 1)}"
    sizes = [int(np.prod(np.shape(x), dtype=np.int64)) for x in leaves]
    share = sum(n for n, s in zip(sizes, split) if s) / max(sum(sizes), 1)
    return (f"state split over {mesh.size} devices (fsdp): {sum(split)} of {len(leaves)} "
            f"arrays, {share:.0%} of the numbers")


def place(tree: Any, shardings: Any) -> Any:
    """Put host-identical values (the same on every process) onto ``shardings``: each process
    supplies the shards of its own devices."""
    def put(x, sharding):
        x = np.asarray(jax.device_get(x)) if not isinstance(x, np.ndarray) else x
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def global_batch(batches: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Global arrays from batches every process has in full (toy sets, pairs files): each
    process keeps the rows of its own devices, so the data do not depend on the topology."""
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
            for k, v in batches.items()}


def local_batch(batches: dict[str, np.ndarray], sharding: NamedSharding,
                axis: int = 1) -> dict[str, jax.Array]:
    """Global arrays from this process's own part of each batch (image shards): the global
    batch is the processes' parts stacked along ``axis`` in process order."""
    out = {}
    for k, v in batches.items():
        shape = list(v.shape)
        shape[axis] *= jax.process_count()
        out[k] = jax.make_array_from_process_local_data(sharding, v, tuple(shape))
    return out


def gather_to_host(tree: Any, mesh: Mesh) -> Any:
    """A fully replicated copy of ``tree`` as single-device arrays of this process (every
    process must call it: gathering a sharded array is a collective)."""
    tree = _replicate(mesh)(tree)
    return jax.tree.map(lambda a: a.addressable_data(0), tree)


@functools.lru_cache(maxsize=8)
def _replicate(mesh: Mesh):
    return jax.jit(lambda x: x, out_shardings=replicated(mesh))
