"""Training throughput of the jitted multi-step dispatch.

Prints a markdown table and writes JSON: milliseconds per optimizer step (compile excluded)
for the embedded default config and a few variations of batch size and width.

    .venv/bin/python scripts/bench_train.py [--out runs/bench/bench_train.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from genflow.config import apply_overrides, load_config_file
from genflow.data import ToyBatches
from genflow.training import data_shape_of, init_train_state, make_train_chunk

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [
    [],
    ["data.batch_size=256"],
    ["data.batch_size=2048"],
    ["model.hidden=256"],
    ["model.hidden=512"],
]


def measure(config, repeats: int) -> float:
    setup, state = init_train_state(config, data_shape_of(config))
    chunk = make_train_chunk(config, setup)
    data = ToyBatches(config.data.name, config.data.batch_size, config.data.seed)
    k = config.train.steps_per_dispatch
    state, _ = chunk(state, {"x": jnp.asarray(data.batches(0, k))})  # compile
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(repeats):
        state, _ = chunk(state, {"x": jnp.asarray(data.batches(k * (i + 1), k))})
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / (repeats * k) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "toy_checkerboard_vp.py"))
    parser.add_argument("--out", default="runs/bench/bench_train.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    base = load_config_file(args.config)
    rows = []
    for overrides in VARIANTS:
        config = apply_overrides(base, overrides)
        ms = measure(config, args.repeats)
        rows.append({
            "overrides": " ".join(overrides) or "(default)",
            "batch_size": config.data.batch_size,
            "hidden": config.model.hidden,
            "depth": config.model.depth,
            "ms_per_step": ms,
            "steps_per_sec": 1e3 / ms,
        })
    print("| config | batch | hidden x depth | ms / step | steps / s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['overrides']} | {r['batch_size']} | {r['hidden']} x {r['depth']} | "
            f"{r['ms_per_step']:.1f} | {r['steps_per_sec']:.0f} |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "config": args.config,
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
