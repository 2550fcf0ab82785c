"""Process benchmark: every forward process trained with the same network and budget on the
2-D checkerboard, then sampled with three samplers; sliced W2 to fresh data against the floor.

Each ``configs/toy_checkerboard_*.py`` loads the VP config and changes only the process, the
prediction kind and its default sampler. Per process: the final training loss (mean of the last
10 logged values, in the process's own prediction space, so not comparable across processes),
then for each sampler the NFE and the sliced W2 between 20,000 samples and 20,000 fresh data
points, averaged over three independent data draws (with their standard deviation: one
4096-point comparison varies by about +-20 % between seeds), against the data-vs-data floor
averaged the same way. Paths whose log-SNR is infinite at t = 1 (rectified flow, the
linear interpolant) start the log-SNR grid and the reverse SDE at t = 1 - 1e-3.

    .venv/bin/python scripts/bench_processes.py [--steps 10000] [--reuse] [--out runs/bench/bench_processes.json]

``--reuse`` samples from runs already trained to the full budget in ``runs/bench/processes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from genflow import samplers
from genflow.config import GRIDS, apply_overrides, load_config_file, make_solver
from genflow.data import sample_toy
from genflow.metrics import sliced_wasserstein2
from genflow.training import METRICS_FILE, has_checkpoint, model_fn_from, restore_run, train

CONFIGS = ["vp", "subvp", "ve", "edm", "rf", "interpolant"]
NUM_SAMPLES = 20_000
NUM_DRAWS = 3  # independent data draws per comparison


def plans(config):
    """(sampler, steps, grid, t_start): the config's own ODE sampler, DPM-Solver++(3M) at 20
    steps on the log-SNR grid, and the reverse SDE at 500 Euler-Maruyama steps."""
    lam_one = float(config.process.log_snr(1.0))
    t_start = 1.0 if np.isfinite(lam_one) else 1.0 - 1e-3
    return [
        (config.sample.sampler, config.sample.num_steps, config.sample.grid, 1.0),
        ("dpm_solver++_3m", 20, "log_snr", t_start),
        ("euler_maruyama", 500, "uniform", t_start),
    ]


def run(name: str, steps: int | None, out_dir: Path, reuse: bool) -> dict:
    config = load_config_file(Path("configs") / f"toy_checkerboard_{name}.py")
    if steps is not None:
        config = apply_overrides(config, [f"train.num_steps={steps}"])
    workdir = out_dir / name
    start = time.perf_counter()
    trained = reuse and has_checkpoint(workdir / "checkpoints") and (
        restore_run(workdir)[2] == config.train.num_steps
    )
    if not trained:
        train(config, workdir, fresh=True, progress=False)
    train_s = time.perf_counter() - start if not trained else float("nan")
    records = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    loss = float(np.mean([r["loss"] for r in records[-10:]]))

    _, setup, _, params = restore_run(workdir, weights="ema")
    model_fn = model_fn_from(setup, params)
    fresh = lambda num, seed: sample_toy(config.data.name, num, seed=[2**31 - 1, seed])  # noqa: E731
    data = [fresh(NUM_SAMPLES, i) for i in range(NUM_DRAWS)]
    floor = float(np.mean([sliced_wasserstein2(fresh(NUM_SAMPLES, 100 + i), data[i])
                           for i in range(NUM_DRAWS)]))
    rows = []
    for sampler, n, grid, t_start in plans(config):
        solver = make_solver(sampler)
        draw = jax.jit(lambda m, key, solver=solver, n=n, grid=grid, t_start=t_start: (
            samplers.sample(m, config.process, solver, key=key, shape=(NUM_SAMPLES, 2),
                            prediction=config.train.prediction, num_steps=n, grid=GRIDS[grid],
                            t_start=t_start, t_end=config.sample.t_end)))
        res = draw(model_fn, jax.random.key(1))
        x = np.asarray(res.x)
        finite = np.all(np.isfinite(x))
        sw2s = [sliced_wasserstein2(x, d) if finite else float("nan") for d in data]
        sw2 = float(np.mean(sw2s))
        rows.append({"sampler": sampler, "steps": n, "grid": grid, "t_start": t_start,
                     "nfe": int(res.nfe), "sliced_w2": sw2, "sliced_w2_std": float(np.std(sw2s)),
                     "ratio": sw2 / floor})
    return {"process": name, "process_repr": repr(config.process),
            "prediction": config.train.prediction, "train_steps": config.train.num_steps,
            "train_s": train_s, "final_loss": loss, "floor": floor, "samplers": rows}


def print_table(results: list[dict]) -> None:
    print("\n| process | prediction | final loss | sampler | NFE | sliced W2 (+- std) | floor "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for i, s in enumerate(r["samplers"]):
            head = (f"| {r['process']} | {r['prediction']} | {r['final_loss']:.4f} " if i == 0
                    else "| | | ")
            print(f"{head}| {s['sampler']} ({s['grid']}) | {s['nfe']} | {s['sliced_w2']:.4f} "
                  f"(+- {s['sliced_w2_std']:.4f}) | {r['floor']:.4f} | {s['ratio']:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per process (default: the configs', 10000)")
    parser.add_argument("--reuse", action="store_true",
                        help="sample from runs already trained to the budget (skip training)")
    parser.add_argument("--only", default=None, help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--out", default="runs/bench/bench_processes.json")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else CONFIGS
    unknown = set(names) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown process {sorted(unknown)}; choose from {', '.join(CONFIGS)}")

    start = time.perf_counter()
    out = Path(args.out)
    results = []
    for name in names:
        results.append(run(name, args.steps, out.parent / "processes", args.reuse))
        print(f"{name}: trained in {results[-1]['train_s']:.0f} s (nan: reused)", flush=True)
    print_table(results)
    wall = time.perf_counter() - start
    print(f"\ntotal wall time {wall:.0f} s")
    meta = {"jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "steps_override": args.steps, "wall_s": wall}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
