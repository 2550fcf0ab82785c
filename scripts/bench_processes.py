"""Process benchmark: every forward process trained with the same network and budget on the
2-D checkerboard, then sampled with its samplers; sliced W2 to fresh data against the floor.

Each config loads the VP config and changes only the process, the prediction kind and its
default sampler (``toy_8gaussians_to_checkerboard``: a stochastic interpolant from 8 Gaussians
to the checkerboard; ``gbm`` also scales the data by 0.5 into [-1, 1]). Per process: the final training loss (mean of the last
10 logged values, in the process's own prediction space, so not comparable across processes),
then for each sampler the NFE and the sliced W2 between 20,000 samples and 20,000 fresh data
points, averaged over three independent data draws (with their standard deviation: one
4096-point comparison varies by about +-20 % between seeds), against the data-vs-data floor
averaged the same way. Gaussian paths whose log-SNR is infinite at t = 1 (rectified flow,
the linear interpolant, the kinetic-optimal path) start the log-SNR grid and the reverse SDE
at t = 1 - 1e-3. Samplers: Gaussian paths: the config's ODE sampler, DPM-Solver++(3M) at 20
NFE and the reverse SDE at 500 Euler-Maruyama steps; the interpolant: its Heun ODE and its SDE
(epsilon = 1, 500 steps); GBM: the Dale's-law exponential and the ambient Euler-Maruyama
reverse samplers at 500 steps.

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

from genflow.config import REGISTRY, apply_overrides, load_config_file, replace_sample
from genflow.metrics import sliced_wasserstein2
from genflow.run import open_run, train
from genflow.training import CHECKPOINT_DIR, METRICS_FILE, has_checkpoint

CONFIGS = ["vp", "subvp", "ve", "edm", "rf", "interpolant", "ko", "gbm", "8gaussians_to_checkerboard"]
NUM_SAMPLES = 20_000
NUM_DRAWS = 3  # independent data draws per comparison


def config_path(name: str) -> Path:
    path = Path("configs") / f"toy_{name}.py"
    return path if path.exists() else Path("configs") / f"toy_checkerboard_{name}.py"


def log_snr_start(process) -> float:
    """``t = 1``, or ``1 - 1e-3`` on a Gaussian path whose log-SNR is infinite at ``t = 1``."""
    return 1.0 if np.isfinite(float(process.log_snr(1.0))) else 1.0 - 1e-3


# The samplers compared besides the config's own, each with its ``sample`` fields; a config
# gets those that its method accepts (Gaussian-path, interpolant or GBM solvers).
COMPARISONS = [
    ("dpm_solver++_3m", lambda c: {"num_steps": 20, "grid": "log_snr",
                                   "t_start": log_snr_start(c.process)}),
    ("euler_maruyama", lambda c: {"num_steps": 500, "grid": "uniform",
                                  "t_start": log_snr_start(c.process)}),
    ("interpolant_sde", lambda c: {"num_steps": 500, "solver_options": {"epsilon": 1.0}}),
    ("gbm_exponential", lambda c: {"num_steps": 500}),
    ("gbm_euler_maruyama", lambda c: {"num_steps": 500}),
]


def plans(config) -> list[dict]:
    """The ``config.sample`` fields of each comparison (see the module notes): the config's
    own sampler, then every sampler of :data:`COMPARISONS` that the config's method accepts
    (one that would repeat a sample section already planned is left out)."""
    sc, method = config.sample, config.resolved.method
    chosen = [{"sampler": sc.sampler, "num_steps": sc.num_steps, "grid": sc.grid}]
    sections = [sc]
    for name, fields in COMPARISONS:
        if not method.accepts(REGISTRY.build("solver", name)):
            continue
        plan = {"sampler": name, **fields(config)}
        section = replace_sample(config, **plan).sample
        if section not in sections:
            chosen.append(plan)
            sections.append(section)
    return chosen


def network_prediction(method) -> str:
    """What the network predicts: the method's prediction kind (eps, x0, velocity, ...), or the
    fields of a stochastic interpolant (b+eta, ...)."""
    return getattr(method, "prediction", None) or method.fields


def options_text(options) -> str:
    """A sampler's options as ``key=value,...`` (the form of ``--option``; '' for none)."""
    return ",".join(f"{k}={v}" for k, v in options.items())


def run(name: str, steps: int | None, out_dir: Path, reuse: bool) -> dict:
    config = load_config_file(config_path(name))
    if steps is not None:
        config = apply_overrides(config, [f"train.num_steps={steps}"])
    workdir = out_dir / name
    start = time.perf_counter()
    trained = reuse and has_checkpoint(workdir / CHECKPOINT_DIR) and (
        open_run(workdir, config=config).step == config.train.num_steps
    )
    if not trained:
        train(config, workdir, fresh=True, progress=False)
    train_s = time.perf_counter() - start if not trained else float("nan")
    records = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    loss = float(np.mean([r["loss"] for r in records if "loss" in r][-10:]))

    trained_run = open_run(workdir, config=config)  # EMA weights, the config file's settings
    data = [trained_run.reference(NUM_SAMPLES, i) for i in range(NUM_DRAWS)]
    floor = float(np.mean([sliced_wasserstein2(trained_run.reference(NUM_SAMPLES, 100 + i),
                                               data[i]) for i in range(NUM_DRAWS)]))
    rows = []
    for plan in plans(config):
        samples = trained_run.sample(num_samples=NUM_SAMPLES, seed=1, **plan)
        sample, x = samples.config.sample, samples.x
        # A sample the sampler lost (the ambient GBM step can leave x > 0, where log x is
        # undefined) is counted and left out; every other sampler loses none.
        finite = np.all(np.isfinite(x), axis=1)
        lost = int((~finite).sum())
        sw2s = [sliced_wasserstein2(x[finite], d) for d in data]
        sw2 = float(np.mean(sw2s))
        rows.append({"sampler": sample.sampler, "steps": sample.num_steps, "grid": sample.grid,
                     "t_start": sample.t_start, "options": options_text(sample.solver_options),
                     "nfe": samples.nfe, "lost": lost, "sliced_w2": sw2, "sliced_w2_std": float(np.std(sw2s)),
                     "ratio": sw2 / floor})
    return {"process": name, "process_repr": repr(config.process),
            "prediction": network_prediction(config.method), "train_steps": config.train.num_steps,
            "train_s": train_s, "final_loss": loss, "floor": floor, "samplers": rows}


def print_table(results: list[dict]) -> None:
    print("\n| process | prediction | final loss | sampler | NFE | sliced W2 (+- std) | floor "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for i, s in enumerate(r["samplers"]):
            head = (f"| {r['process']} | {r['prediction']} | {r['final_loss']:.4f} " if i == 0
                    else "| | | ")
            lost = f", {s['lost']} of {NUM_SAMPLES} lost" if s["lost"] else ""
            print(f"{head}| {s['sampler']} ({s['grid']}{lost}) | {s['nfe']} | {s['sliced_w2']:.4f} "
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
