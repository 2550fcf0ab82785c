"""One picture of every process: samples of the runs that ``bench_processes.py`` trained.

For each ``runs/bench/processes/NAME`` (trained by ``scripts/bench_processes.py``) it draws
4096 samples with the config's own sampler and renders one density panel per process, side by
side, with the data on the left.

    .venv/bin/python scripts/figure_processes.py [--runs runs/bench/processes] [--out docs/processes.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from genflow import samplers
from genflow.config import GRIDS, make_solver
from genflow.data import sample_toy
from genflow.plotting import scatter_png
from genflow.training import model_fn_from, restore_run

ORDER = ["vp", "subvp", "ve", "edm", "rf", "interpolant"]
EXTENT = (-3.0, 3.0, -3.0, 3.0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench/processes")
    parser.add_argument("--out", default="docs/processes.png")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    runs = Path(args.runs)
    names = [n for n in ORDER if (runs / n / "config.json").is_file()]
    if not names:
        parser.error(f"no trained runs in {runs}; run scripts/bench_processes.py first.")

    panels = []
    with tempfile.TemporaryDirectory() as tmp:
        data = sample_toy("checkerboard", 4096, seed=[2**31 - 1, 0])
        panels.append(Image.open(scatter_png(Path(tmp) / "data.png", data, size=args.size,
                                             extent=EXTENT, title="data")).convert("L"))
        for name in names:
            config, setup, _, params = restore_run(runs / name)
            sc = config.sample
            x = jax.jit(lambda m, sc=sc, config=config: samplers.sample(
                m, config.process, make_solver(sc.sampler), key=jax.random.key(1),
                shape=(4096, 2), prediction=config.train.prediction, num_steps=sc.num_steps,
                grid=GRIDS[sc.grid], t_end=sc.t_end).x)(model_fn_from(setup, params))
            title = f"{name}: {sc.sampler}"
            path = scatter_png(Path(tmp) / f"{name}.png", np.asarray(x), size=args.size,
                               extent=EXTENT, title=title)
            panels.append(Image.open(path).convert("L"))
        width = sum(p.width for p in panels)
        canvas = Image.new("L", (width, max(p.height for p in panels)), 255)
        left = 0
        for p in panels:
            canvas.paste(p, (left, 0))
            left += p.width
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    print(f"wrote {out} ({', '.join(names)})")


if __name__ == "__main__":
    main()
