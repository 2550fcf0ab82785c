"""Fokker–Planck regularization benchmark: the ODE–SDE gap against the regularizer's weight.

``configs/toy_checkerboard_fp.py`` (VP, eps-predicting MLP, 2-D checkerboard) is trained with
``method.fp_weight`` = w for each w of ``--weights`` (default 0, 0.1, 1) at the same budget
(steps, batch, seed, collocation points). Each model's EMA weights are then sampled from the
*same* prior draws with the probability-flow ODE (Heun, 100 steps) and the reverse SDE
(Euler–Maruyama, 500 steps), both to ``t = 1e-3``, and measured with
:func:`genflow.metrics.ode_sde_gap`:

* the ODE–SDE gap: sliced W2 (and MMD^2) between the ODE and the SDE samples;
* sample quality: sliced W2 of each against fresh data (same size), next to the data-vs-data
  floor :func:`genflow.metrics.sliced_wasserstein2_floor`;
* the mean normalized Fokker–Planck residual ``sqrt(E |sigma^3/g^2 R|^2 / d)`` over a grid of
  times in [0.01, 1] (:mod:`genflow.fokker_planck`).

Prints a markdown table, writes JSON and plots the residual against t for every w (next to the
JSON, ``fp.png``; ``--plot-only`` redraws it from an existing JSON)::

    .venv/bin/python scripts/bench_fp.py [--steps 3000] [--weights 0,0.1,1] [--out runs/bench/fp.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from genflow.config import load_config_file
from genflow.data import sample_toy
from genflow.metrics import ode_sde_gap, sliced_wasserstein2_floor
from genflow.plotting import curves_png
from genflow.run import train
from genflow.training import METRICS_FILE, model_fn_from, reference_data

CONFIG = Path("configs") / "toy_checkerboard_fp.py"


def run(weight: float, steps: int, num: int, out_dir: Path) -> dict:
    config = load_config_file(CONFIG)
    tc = dataclasses.replace(config.train, num_steps=steps,
                             checkpoint_every=steps - steps % config.train.steps_per_dispatch
                             or config.train.steps_per_dispatch)
    method = dataclasses.replace(config.method, fp_weight=weight)
    sample = dataclasses.replace(config.sample, sampler="fp_ode" if weight > 0 else "heun")
    config = dataclasses.replace(config, method=method, train=tc, sample=sample)
    workdir = out_dir / f"w{weight:g}"
    start = time.perf_counter()
    setup, state = train(config, workdir, fresh=True, progress=False)
    train_s = time.perf_counter() - start
    losses = [json.loads(line)["loss"] for line in (workdir / METRICS_FILE).read_text().splitlines()]
    # The EMA weights in memory, as the method hands them to its samplers.
    method = config.resolved.method
    model_fn, prediction = method.sampling_model(model_fn_from(setup, state.ema))
    data = reference_data(config, num, seed=1) * config.data.scale
    start = time.perf_counter()
    gap = ode_sde_gap(
        model_fn, config.process, key=jax.random.key(0), prediction=prediction,
        shape=(num, 2), data=data, t_end=1e-3, ode_steps=100, sde_steps=500,
        residual_points=256, scale_data=config.data.scale,
    )
    eval_s = time.perf_counter() - start
    return {"weight": weight, "steps": steps, "batch": config.data.batch_size,
            "fp_points": config.method.fp_points, "train_seconds": train_s,
            "eval_seconds": eval_s, "final_loss": float(np.mean(losses[-5:])), **gap.summary()}


def table(rows: list[dict], floor: float) -> str:
    lines = [
        "| w | SW2(ODE, SDE) | MMD²(ODE, SDE) | SW2(ODE, data) | SW2(SDE, data) | mean FP residual "
        "| final loss | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['weight']:g} | {r['sw2_ode_sde']:.4f} | {r['mmd_ode_sde']:.2e} | "
            f"{r['sw2_ode_data']:.4f} | {r['sw2_sde_data']:.4f} | {r['residual_mean']:.4f} | "
            f"{r['final_loss']:.4f} | {r['train_seconds']:.0f} |"
        )
    lines.append(f"\nSW2 floor (data vs data, same size): {floor:.4f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """The RMS normalized residual against t, one curve per weight."""
    return curves_png(
        path, rows[0]["residual_times"],
        {f"w = {r['weight']:g}": r["residual_rms"] for r in rows}, log_x=True,
        title="RMS Fokker-Planck residual (normalized) against t, by regularizer weight w",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--weights", default="0,0.1,1")
    parser.add_argument("--num", type=int, default=4000, help="samples per sampler")
    parser.add_argument("--out", default="runs/bench/fp.json")
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw the plot from the JSON at --out")
    args = parser.parse_args()
    if args.plot_only:
        rows = json.loads(Path(args.out).read_text())["rows"]
        print(f"wrote {plot(rows, Path(args.out).with_suffix('.png'))}")
        return
    weights = [float(w) for w in args.weights.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for w in weights:
        rows.append(run(w, args.steps, args.num, out.parent / "fp"))
        print(f"w={w:g}: gap SW2 {rows[-1]['sw2_ode_sde']:.4f}", flush=True)
    floor = sliced_wasserstein2_floor(lambda n, s: sample_toy("checkerboard", n, seed=s), args.num)
    text = table(rows, floor)
    print(text)
    result = {
        "config": str(CONFIG), "rows": rows, "sw2_floor": floor,
        "total_seconds": time.perf_counter() - start,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend()},
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} and {plot(rows, out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
