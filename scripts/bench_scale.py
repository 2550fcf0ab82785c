"""Data-parallel throughput: steps/s and examples/s on 1, 2, 4, 8 devices, and bf16 vs float32.

Each measurement runs in its own process (so that the device count can be chosen), training
the digits DiT of ``configs/digits_cond.py`` with the real loop's compiled dispatch
(:func:`genflow.training.make_train_chunk` over a :func:`genflow.training.make_mesh` mesh,
the batch split along ``data``, the state replicated or FSDP-split) at a fixed batch *per
device* (weak scaling: ``--per-device-batch``, default 64, so the global batch is
``n x 64``). After one warm-up dispatch it times ``--repeats`` dispatches of
``--steps-per-dispatch`` steps (batches placed on the devices before the clock starts,
``block_until_ready`` after each) and reports the best and the median.

Columns: steps/s; examples/s; examples/s per device; the **efficiency**
``examples/s on n devices / (n x examples/s on 1)`` (1.0 is perfect scaling); and, where both
ran, the **bf16 / float32 step-time ratio** at the same device count.

**What the numbers mean depends on the machine.** Without an accelerator the devices are
forced host devices (``--xla_force_host_platform_device_count``) that share the same CPU
cores: 4 "devices" on 2 cores do not compute 4 times as fast, and the efficiency measures how
much the split and the all-reduce cost, not a speed-up. On a GPU or TPU host the devices are
real (as many as exist; larger counts are skipped) and the table is a real scaling curve.
bfloat16 speeds up only hardware with fast bf16 matrix units (GPUs, TPUs); on a CPU it is
emulated and about as fast as float32.

    .venv/bin/python scripts/bench_scale.py [--devices 1,2,4,8] [--dtypes float32,bfloat16]
        [--param-sharding replicated] [--out runs/bench/bench_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_train import cpu_model  # noqa: E402 - the sibling script (scripts/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = REPO / "configs" / "digits_cond.py"


# --------------------------------------------------------------------------- one measurement
def measure(args) -> dict:
    """In a worker process: time the training dispatch on ``args.devices`` devices."""
    import jax
    import jax.numpy as jnp

    from genflow.config import apply_overrides, load_config_file
    from genflow.training import (
        batch_sharding,
        data_shape_of,
        global_batch,
        init_train_state,
        make_batches,
        make_mesh,
        make_train_chunk,
        place,
        state_shardings,
    )

    if len(jax.devices()) < args.devices:
        return {"devices": args.devices, "skipped": f"only {len(jax.devices())} devices"}
    k = args.steps_per_dispatch
    overrides = [f"data.batch_size={args.per_device_batch * args.devices}",
                 f"train.compute_dtype={args.dtype}", f"train.param_sharding={args.param_sharding}",
                 f"train.steps_per_dispatch={k}", f"train.checkpoint_every={k}", *args.set]
    config = apply_overrides(load_config_file(args.config), overrides)
    mesh = make_mesh(jax.devices()[: args.devices])
    setup, state = init_train_state(config, data_shape_of(config))
    shardings = state_shardings(mesh, state, config.train.param_sharding)
    state = place(state, shardings)
    chunk = make_train_chunk(config, setup, mesh=mesh, state_shardings=shardings)
    draw = make_batches(config)
    sharding = batch_sharding(mesh, leading=1)
    batches = [global_batch(draw(i * k, k), sharding) for i in range(args.repeats + 1)]
    start = time.perf_counter()
    state, metrics = chunk(state, batches[0])
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    times = []
    for b in batches[1:]:
        start = time.perf_counter()
        state, metrics = chunk(state, b)
        jax.block_until_ready(state)
        times.append((time.perf_counter() - start) / k)
    best, median = min(times), statistics.median(times)
    batch = config.data.batch_size
    return {
        "devices": args.devices, "dtype": args.dtype, "param_sharding": args.param_sharding,
        "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
        "global_batch": batch, "compile_s": compile_s,
        "ms_per_step": best * 1e3, "ms_per_step_median": median * 1e3,
        "steps_per_sec": 1 / best, "examples_per_sec": batch / best,
        "examples_per_sec_per_device": batch / best / args.devices,
        "final_loss": float(jnp.asarray(metrics["loss"])),
    }


def run_worker(devices: int, dtype: str, args) -> dict:
    env = dict(os.environ)
    if args.platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={devices}").strip()
    cmd = [sys.executable, __file__, "--worker", "--devices", str(devices), "--dtype", dtype,
           "--config", args.config, "--per-device-batch", str(args.per_device_batch),
           "--steps-per-dispatch", str(args.steps_per_dispatch), "--repeats", str(args.repeats),
           "--param-sharding", args.param_sharding, "--set", *args.set]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker ({devices} devices, {dtype}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def accelerator_platform() -> str:
    """``"cpu"`` unless JAX finds a GPU or TPU (asked in a throwaway process, so that this one
    never initialises a backend)."""
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend(), "
                            "jax.device_count())"], capture_output=True, text=True)
    backend = probe.stdout.split()[0] if probe.returncode == 0 and probe.stdout else "cpu"
    return backend


# --------------------------------------------------------------------------- the table
def add_ratios(rows: list[dict]) -> None:
    base = {r["dtype"]: r for r in rows if r.get("devices") == 1 and "skipped" not in r}
    f32 = {r["devices"]: r for r in rows if r.get("dtype") == "float32" and "skipped" not in r}
    for r in rows:
        if "skipped" in r:
            continue
        one = base.get(r["dtype"])
        if one is not None:
            r["efficiency"] = r["examples_per_sec"] / (r["devices"] * one["examples_per_sec"])
        if r["dtype"] != "float32" and r["devices"] in f32:
            r["step_time_vs_float32"] = r["ms_per_step"] / f32[r["devices"]]["ms_per_step"]


def print_table(result: dict) -> None:
    meta = result["meta"]
    print(f"\n{meta['what']}\n{meta['cpu_model']}, {meta['cpus']} CPUs, platform "
          f"{meta['platform']}; {meta['model']}, {meta['per_device_batch']} examples per device "
          f"per step, state {meta['param_sharding']}\n")
    print("| devices | dtype | global batch | ms / step | steps / s | examples / s | "
          "examples / s / device | efficiency | step time / float32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        if "skipped" in r:
            print(f"| {r['devices']} | {r.get('dtype', '')} | skipped: {r['skipped']} |||||||")
            continue
        eff = f"{r['efficiency']:.2f}" if "efficiency" in r else "-"
        ratio = f"{r['step_time_vs_float32']:.2f}" if "step_time_vs_float32" in r else "-"
        print(f"| {r['devices']} | {r['dtype']} | {r['global_batch']} | {r['ms_per_step']:.1f} "
              f"(median {r['ms_per_step_median']:.1f}) | {r['steps_per_sec']:.2f} | "
              f"{r['examples_per_sec']:.0f} | {r['examples_per_sec_per_device']:.0f} | {eff} | "
              f"{ratio} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="1,2,4,8", help="device counts to measure")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--config", default=str(DIGITS_CONFIG))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. model.hidden=256")
    parser.add_argument("--per-device-batch", type=int, default=64)
    parser.add_argument("--steps-per-dispatch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--param-sharding", default="replicated", choices=("replicated", "fsdp"))
    parser.add_argument("--out", default="runs/bench/bench_scale.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.devices = int(args.devices)
        print(json.dumps(measure(args)))
        return
    args.platform = accelerator_platform()
    counts = [int(n) for n in args.devices.split(",") if n]
    dtypes = [d for d in args.dtypes.split(",") if d]
    rows = []
    for n in counts:
        for dtype in dtypes:
            row = run_worker(n, dtype, args)
            rows.append(row)
            print(f"{n} devices, {dtype}: " + (row.get("skipped") or
                  f"{row['ms_per_step']:.1f} ms / step"), file=sys.stderr, flush=True)
    add_ratios(rows)
    forced = args.platform == "cpu"
    result = {
        "meta": {
            "what": ("forced host devices sharing the CPU's cores: the efficiency is the cost of "
                     "splitting and all-reducing, not a speed-up" if forced else
                     f"real {args.platform} devices"),
            "platform": args.platform, "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "model": Path(args.config).stem + (" " + " ".join(args.set) if args.set else ""),
            "per_device_batch": args.per_device_batch, "param_sharding": args.param_sharding,
            "steps_per_dispatch": args.steps_per_dispatch, "repeats": args.repeats,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "rows": rows,
    }
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
