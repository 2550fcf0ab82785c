"""One picture of every process: samples of the runs that ``bench_processes.py`` trained.

For each ``runs/bench/processes/NAME`` (trained by ``scripts/bench_processes.py``) it draws
4096 samples with the run's own sampler (its whole ``sample`` section: options, grid, both
ends of the time grid, and ``data.scale``) and renders one density panel per process, side by
side, with the data on the left.

    .venv/bin/python scripts/figure_processes.py [--runs runs/bench/processes] [--out docs/processes.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from genflow.data import sample_toy
from genflow.plotting import scatter_png
from genflow.run import open_run

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
            samples = open_run(runs / name).sample(num_samples=4096, seed=1)
            title = f"{name}: {samples.config.sample.sampler}"
            path = scatter_png(Path(tmp) / f"{name}.png", samples.x, size=args.size,
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
