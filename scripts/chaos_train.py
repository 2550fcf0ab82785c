"""Kill a training run with SIGKILL at random moments, resume it each time, and check that
nothing was lost: no damaged checkpoint, and a final state bit-identical to a straight run.

1. A straight run: ``genflow train`` of the config to the end, uninterrupted.
2. The chaos run, in another directory: start ``genflow train``; kill it with SIGKILL at a
   random moment (uniform over ``--window`` seconds after the start, or, for a share
   ``--during-writes`` of the kills, the moment orbax's temporary directory of a checkpoint
   write appears); check every checkpoint on disk (its checksums, and that it restores);
   start again. After ``--kills`` kills, let it finish (if the run completes first, the
   table says how many kills landed: train longer for more).
3. Compare the final parameters, EMA and optimizer state with the straight run's, bit for bit.

With ``--processes 2`` each start is a two-process job on this machine (``--coordinator
127.0.0.1:PORT``, 2 forced host devices each) and each kill hits one of the two processes,
in turn; the other stops by itself once JAX's heartbeat times out (``--heartbeat-timeout``).

    .venv/bin/python scripts/chaos_train.py --kills 100 [--config configs/toy_checkerboard_vp.py]
        [--set train.num_steps=20000 ...] [--processes 1] [--out runs/bench/chaos_train.json]

Prints a table and writes JSON; exits 1 if a checkpoint was damaged or the states differ.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from genflow.training import restore_train_state
from genflow.training.checkpoint import Checkpointer, verify

REPO = Path(__file__).resolve().parents[1]
TMP_MARK = "orbax-checkpoint-tmp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(args, workdir: Path) -> list[tuple[list[str], dict]]:
    base = [sys.executable, "-m", "genflow.cli", "train", "--config", args.config,
            "--workdir", str(workdir), "--no-progress"]
    for item in args.set:
        base += ["--set", item]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    if args.processes == 1:
        return [(base, env)]
    port = free_port()
    env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [([*base, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
              str(args.processes), "--process-id", str(i), "--heartbeat-timeout",
              str(args.heartbeat_timeout), "--connect-timeout", "30"], env)
            for i in range(args.processes)]


def start(args, workdir: Path) -> list[subprocess.Popen]:
    return [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for cmd, env in commands(args, workdir)]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(deadline - time.time(), 1)))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def damaged_checkpoints(workdir: Path, template) -> list[int]:
    """Finalized steps that fail their checksums or cannot be restored."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    ckpt = Checkpointer(directory, read_only=True)
    bad = []
    try:
        for step in ckpt.all_steps():
            if verify(directory / str(step)) is not None:
                bad.append(step)
                continue
            try:
                ckpt.restore(step, template)
            except Exception:  # noqa: BLE001 - any failure to read is damage
                bad.append(step)
    finally:
        ckpt.close()
    return bad


def write_in_progress(workdir: Path, old: set[str]) -> bool:
    """Whether orbax has a temporary directory of a new checkpoint write open."""
    return any(TMP_MARK in p.name and p.name not in old
               for p in (workdir / "checkpoints").glob("*"))


def kill_once(args, workdir: Path, rng: random.Random, kill_index: int) -> dict:
    # Temporary directories a killed write left behind are not a write in progress.
    old = {p.name for p in (workdir / "checkpoints").glob("*")}
    procs = start(args, workdir)
    during_write = rng.random() < args.during_writes
    target = procs[kill_index % len(procs)]
    began = time.time()
    moment = rng.uniform(0.0, args.window)
    hit_write = False
    while time.time() - began < (args.window * 4 if during_write else moment):
        if any(p.poll() is not None for p in procs):
            break  # finished (or failed) before the kill
        if during_write and write_in_progress(workdir, old):
            hit_write = True
            break
        time.sleep(0.002 if during_write else 0.01)
    finished = target.poll() is not None
    if not finished:
        target.send_signal(signal.SIGKILL)
    codes = wait_all(procs, timeout=args.heartbeat_timeout * 6 + 60)
    return {"kill": kill_index, "after_s": round(time.time() - began, 2),
            "during_write": hit_write, "finished_first": finished, "exit_codes": codes}


def state_leaves(workdir: Path) -> list[np.ndarray]:
    state = restore_train_state(workdir)[2]
    return [np.asarray(x) for x in jax.tree.leaves((state.step, state.params, state.ema,
                                                    state.opt_state, state.profiles))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--config", default=str(REPO / "configs" / "toy_checkerboard_vp.py"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--processes", type=int, default=1, choices=(1, 2))
    parser.add_argument("--window", type=float, default=8.0,
                        help="kill moments are uniform over this many seconds after a start")
    parser.add_argument("--during-writes", type=float, default=0.3,
                        help="share of the kills aimed at a checkpoint write in progress")
    parser.add_argument("--heartbeat-timeout", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/chaos")
    parser.add_argument("--out", default="runs/bench/chaos_train.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(args.workdir)
    straight, chaos = root / "straight", root / "chaos"
    for d in (straight, chaos):
        shutil.rmtree(d, ignore_errors=True)
    began = time.time()
    codes = wait_all(start(args, straight), timeout=3600)
    if any(codes):
        raise SystemExit(f"the straight run failed (exit codes {codes})")
    straight_s = time.time() - began
    template = restore_train_state(straight)[2]
    kills, damaged, landed = [], set(), 0
    while landed < args.kills:
        record = kill_once(args, chaos, rng, landed)
        bad = damaged_checkpoints(chaos, template)
        record["damaged"] = bad
        damaged.update(bad)
        kills.append(record)
        if record["finished_first"]:  # the run completed before this kill: nothing to kill
            print(f"the run finished after {landed} kills; for more, train longer "
                  "(--set train.num_steps=...)", file=sys.stderr, flush=True)
            break
        landed += 1
        print(f"kill {landed}/{args.kills}: after {record['after_s']} s"
              f"{' during a checkpoint write' if record['during_write'] else ''}; damaged "
              f"checkpoints: {bad or 'none'}", file=sys.stderr, flush=True)
    codes = wait_all(start(args, chaos), timeout=3600)
    identical = not any(codes) and all(
        np.array_equal(a, b) for a, b in zip(state_leaves(chaos), state_leaves(straight)))
    result = {
        "config": args.config, "set": args.set, "processes": args.processes,
        "kills_asked": args.kills, "kills": landed,
        "kills_during_writes": sum(k["during_write"] for k in kills),
        "damaged_checkpoints": sorted(damaged), "final_exit_codes": codes,
        "bit_identical": identical, "straight_run_s": round(straight_s, 1),
        "total_s": round(time.time() - began, 1), "seed": args.seed, "kill_log": kills,
    }
    print("\n| kills | during checkpoint writes | damaged checkpoints | final state vs straight "
          "run | time |")
    print("|---|---|---|---|---|")
    print(f"| {landed} | {result['kills_during_writes']} | {len(damaged)} | "
          f"{'bit-identical' if identical else 'DIFFERENT'} | {result['total_s']:.0f} s |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    sys.exit(0 if identical and not damaged else 1)


if __name__ == "__main__":
    main()
