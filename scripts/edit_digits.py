"""Edit held-out digits to another class by inversion (RF-Edit style) with the conditional DiT.

Each held-out test digit of class ``a`` is carried to noise by the probability-flow ODE of
class ``a`` (RF-Solver-2 on the run's time grid) and regenerated under the target class
``b = (a + offset) % 10`` (default offset 1) over the same grid. With ``--share 0,2,5`` the
first ``k`` regeneration steps reuse the self-attention values recorded in the last ``k``
inversion steps (``samplers.edit(..., share_values_steps=k)``), which ties the layout of the
edit to the source.

The judge is the logistic regression of ``scripts/eval_digits.py`` (loaded from that file).
For every ``k`` the table gives the fraction of edits that the judge puts in class ``b``
(success) and what is kept of the source: the mean per-digit Pearson correlation of the 64
pixels and the mean relative L2 distance ``||edit - source|| / ||source||``. Two reference
rows bracket them: a fresh class-``b`` sample from the same model and solver (no relation to
the source: the floor) and the round trip under class ``a`` (invert and regenerate with the
source class: the ceiling, its distance is the reconstruction error). The round trip error of
RF-Solver-2 is also compared with Euler at the same NFE.

**Grid.** The run's ``log_snr`` grid is used from ``t_data = 1e-3`` (where sampling ends) to
``t_noise = 1``. On this VP path (linear beta 0.1..20) the log-SNR is finite at both ends
(about +9.2 at 1e-3 and -10 at 1: alpha(1) = 0.0066), so the grid is well defined there, unlike
on rectified flow where it is infinite at t = 1. Equal log-SNR steps put most of them near the
data end, where the trajectory bends and where the inversion's errors arise, and few in the
nearly linear high-noise part. ``--t-noise`` below 1 stops the inversion early (an
SDEdit-like partial inversion that keeps more of the source, at the price of success).
Where value sharing acts follows from the same grid: with 25 steps the first 10 regeneration
steps stay above t = 0.42 (log-SNR below -1.6), where the output hardly depends on the
attention values, so small ``k`` changes little; sharing reaches the layout only once its
steps get to SNR near 1 (``k`` of 15 or more).

**Guidance** (``--guidance G``, G != 1): classifier-free guidance is applied only to the
target class during regeneration; the inversion stays unguided under class ``a`` (guiding it
would invert a different ODE than the source's, and the round trip would no longer be the
identity). ``samplers.guided`` cannot carry attention values, so a small value-aware version
is used: the conditional and the null branch run as one double batch, and the shared values
(recorded on the unguided class-``a`` inversion) are injected into *both* branches, so that
the guided difference ``f(c_b) - f(null)`` is taken at the same layout. Without shared values
it equals ``samplers.guided`` (checked at start-up).

    .venv/bin/python scripts/edit_digits.py --workdir runs/digits_cond [--steps 25]
        [--share 0,2,5] [--guidance 1] [--num 100] [--out WORKDIR/edit_digits.json]

Prints a markdown table, writes the JSON and ``WORKDIR/edit_digits.png`` (rows: sources, the
edits at each ``k``, then the fresh class-``b`` samples; one column per digit).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genflow import samplers
from genflow.config import REGISTRY, DiTConfig
from genflow.data import digits_arrays
from genflow.methods import Denoising
from genflow.networks import as_value_model_fn
from genflow.plotting import image_grid_png
from genflow.run import open_run

_EVAL = Path(__file__).with_name("eval_digits.py")


def load_eval_digits():
    """``scripts/eval_digits.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("eval_digits", _EVAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Target:
    """A condition with a guidance scale: the labels (traced) and a static Python ``scale``.

    It is deliberately not a pytree: ``samplers.edit`` hands ``cond`` to the model untouched,
    so the scale stays a Python number and ``scale == 1`` costs a single batch.
    """

    labels: Any
    scale: float = 1.0


class GuidedValueFn:
    """Classifier-free guidance around a value-capable model function.

    ``cond`` is a label array (no guidance) or a :class:`Target`. With ``scale != 1`` the
    conditional and null branches run as one ``2 b`` batch, as ``samplers.guided`` does;
    injected ``values`` (shape ``b``) are used by both branches, and ``return_values`` returns
    the conditional branch's values.

    ``samplers.guided`` (genflow/samplers/_guidance.py) still wraps a plain
    ``model_fn(x, t, cond)`` only: it has no ``values`` / ``return_values`` hook, so this
    value-aware copy of it stays (checked against it at start-up).
    """

    supports_value_injection = True

    def __init__(self, fn, null_class: int):
        self.fn = fn
        self.null_class = null_class

    def __call__(self, x, t, cond=None, *, values=None, return_values=False):
        labels, scale = (cond.labels, cond.scale) if isinstance(cond, Target) else (cond, 1.0)
        if scale == 1.0:
            return self.fn(x, t, labels, values=values, return_values=return_values)
        b = x.shape[0]
        both = lambda a: jnp.concatenate([a, a], axis=0)  # noqa: E731
        t_b = jnp.broadcast_to(jnp.asarray(t), (b,))
        labels2 = jnp.concatenate([labels, jnp.full_like(labels, self.null_class)])
        values2 = None if values is None else tuple(
            None if v is None else both(v) for v in values)
        res = self.fn(both(x), both(t_b), labels2, values=values2, return_values=return_values)
        out, computed = res if return_values else (res, None)
        mixed = out[b:] + jnp.asarray(scale, out.dtype) * (out[:b] - out[b:])
        if return_values:
            return mixed, tuple(v[:b] for v in computed)
        return mixed


def pixel_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample Pearson correlation over the pixels (0 where an image is constant)."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-12), 0.0)


def kept(source: np.ndarray, other: np.ndarray) -> dict[str, float]:
    rel = np.asarray(samplers.reconstruction_error(source, other, per_sample=True))
    return {"pixel_corr": float(pixel_correlation(source, other).mean()),
            "rel_l2": float(rel.mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/digits_cond")
    parser.add_argument("--steps", type=int, default=25, help="solver steps per direction")
    parser.add_argument("--share", default="0,2,5", help="share_values_steps values, k")
    parser.add_argument("--guidance", type=float, default=1.0,
                        help="CFG scale for the target class (1: none)")
    parser.add_argument("--num", type=int, default=100, help="held-out digits to edit")
    parser.add_argument("--offset", type=int, default=1, help="target class b = (a + offset) %% 10")
    parser.add_argument("--t-data", type=float, default=1e-3)
    parser.add_argument("--t-noise", type=float, default=1.0)
    parser.add_argument("--grid", default=None, help="time grid (default: the run's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--columns", type=int, default=20, help="digits shown in the PNG")
    parser.add_argument("--out", default=None, help="JSON path (default WORKDIR/edit_digits.json)")
    parser.add_argument("--png", default=None, help="PNG path (default WORKDIR/edit_digits.png)")
    args = parser.parse_args()
    start = time.perf_counter()
    shares = [int(s) for s in args.share.split(",")]
    if args.offset % 10 == 0:
        raise SystemExit("--offset must not be a multiple of 10 (the target would be the source).")

    run = open_run(args.workdir)
    config, method = run.config, run.method
    if (config.data.name != "digits" or config.model.num_classes != 10
            or not isinstance(config.model, DiTConfig)
            or not isinstance(method, Denoising) or method.precondition != "none"):
        raise SystemExit(f"{args.workdir} is not a class-conditional DiT run on the 8x8 digits.")
    null = config.model.num_classes
    # The network with the restored EMA weights (the method's wrap is the identity without
    # EDM preconditioning), snapshotted with its attention-value hook; the denoising method
    # hands it to the samplers as it is, with its prediction kind.
    vfn, prediction = method.sampling_model(
        as_value_model_fn(nnx.merge(run.setup.graphdef, run.params, run.setup.rest)))
    model = GuidedValueFn(vfn, null)
    process = run.process
    grid_name = args.grid or config.sample.grid
    grid = REGISTRY.build("grid", grid_name)
    rf2, euler = samplers.RFSolver(order=2), samplers.Euler()
    ends = dict(t_data=args.t_data, t_noise=args.t_noise)

    ev = load_eval_digits()
    clf, held_out = ev.judge()
    predict = lambda x: clf.predict(np.clip(x, -1.0, 1.0).reshape(len(x), -1))  # noqa: E731
    print(f"judge: logistic regression, held-out accuracy {held_out:.3f}")

    images, labels = digits_arrays("digits", "test")
    num = min(args.num, len(images))
    src = ev.to_model_units(images[:num])  # (n, 8, 8, 1) in [-1, 1]
    a = labels[:num].astype(np.int32)
    b = ((a + args.offset) % 10).astype(np.int32)
    xs, ya, yb = jnp.asarray(src), jnp.asarray(a), jnp.asarray(b)
    print(f"{num} held-out digits, class a -> b = (a + {args.offset}) % 10; grid {grid_name} "
          f"t in [{args.t_data:g}, {args.t_noise:g}], {args.steps} steps per direction")

    if args.guidance != 1.0:  # the value-aware wrapper agrees with samplers.guided
        t_chk = jnp.full((num,), 0.5)
        ref = samplers.guided(vfn, args.guidance, null)(xs, t_chk, yb)
        mine = model(xs, t_chk, Target(yb, args.guidance))
        gap = float(jnp.max(jnp.abs(ref - mine)))
        assert gap < 1e-4, f"guided wrapper differs from samplers.guided by {gap}"

    def run_edit(k):
        fn = jax.jit(lambda m, x, ca, cb: samplers.edit(
            GuidedValueFn(m, null), process, rf2, x, source_cond=ca, target_cond=Target(cb, args.guidance),
            prediction=prediction, num_steps=args.steps, grid=grid, share_values_steps=k,
            **ends))
        res = fn(vfn, xs, ya, yb)
        return np.asarray(res.x), int(res.nfe)

    def run_round_trip(solver, steps):
        fn = jax.jit(lambda m, x, ca: samplers.round_trip(
            m, process, solver, x, cond=ca, prediction=prediction, num_steps=steps,
            grid=grid, **ends))
        res = fn(vfn, xs, ya)
        return np.asarray(res.x), int(res.nfe)

    rows, edits = [], {}
    for k in shares:
        t0 = time.perf_counter()
        x_edit, nfe = run_edit(k)
        pred = predict(x_edit)
        edits[k] = x_edit
        rows.append({"what": f"edit, share_values_steps={k}", "share_values_steps": k,
                     "to_b": float(np.mean(pred == b)), "still_a": float(np.mean(pred == a)),
                     **kept(src, x_edit), "nfe": nfe, "wall_s": time.perf_counter() - t0})
        print(f"k={k}: {rows[-1]['to_b']:.3f} judged b, corr {rows[-1]['pixel_corr']:.3f} "
              f"({rows[-1]['wall_s']:.0f} s)", flush=True)

    # Floor: a fresh class-b sample (same model, guidance, solver and grid) from new noise.
    maybe_guided = lambda m: m if args.guidance == 1.0 else samplers.guided(  # noqa: E731
        m, args.guidance, null)
    fresh = np.asarray(jax.jit(lambda m, key, cb: method.sample(
        maybe_guided(m), rf2, key=key, shape=src.shape, num_steps=args.steps, grid=grid,
        t_start=args.t_noise, t_end=args.t_data, cond=cb,
    ).x)(vfn, jax.random.key(args.seed), yb))
    pred = predict(fresh)
    rows.append({"what": "fresh class-b sample (floor)", "to_b": float(np.mean(pred == b)),
                 "still_a": float(np.mean(pred == a)), **kept(src, fresh),
                 "nfe": args.steps * rf2.nfe_per_step})

    # Ceiling: the round trip under the source class, RF-Solver-2 and Euler at equal NFE.
    round_trips = {}
    for name, solver, steps in (("RF-Solver-2", rf2, args.steps),
                                ("Euler", euler, args.steps * rf2.nfe_per_step)):
        x_rt, nfe = run_round_trip(solver, steps)
        pred = predict(x_rt)
        round_trips[name] = {
            "steps_per_direction": steps, "nfe": nfe,
            "relative_error": float(samplers.reconstruction_error(src, x_rt)),
            "judged_a": float(np.mean(pred == a)), **kept(src, x_rt)}
        if name == "RF-Solver-2":
            rows.append({"what": "round trip under a, RF-Solver-2 (ceiling)",
                         "to_b": float(np.mean(pred == b)), "still_a": float(np.mean(pred == a)),
                         **kept(src, x_rt), "nfe": nfe})

    real_b = float(np.mean(predict(src) == a))
    print(f"\njudge on the unedited sources: {real_b:.3f} in their own class a")
    guidance_note = "" if args.guidance == 1.0 else f", guidance {args.guidance:g} on b"
    print(f"\n{num} digits, a -> (a + {args.offset}) % 10, RF-Solver-2, {args.steps} steps per "
          f"direction, {grid_name} grid t in [{args.t_data:g}, {args.t_noise:g}]{guidance_note}\n")
    print("| | judged b | judged a | pixel corr. with source | rel. L2 to source | NFE |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['to_b']:.3f} | {r['still_a']:.3f} | {r['pixel_corr']:.3f} "
              f"| {r['rel_l2']:.3f} | {r['nfe']} |")
    print("\n| round trip under a | steps per direction | NFE | relative L2 error "
          "| pixel corr. | judged a |\n|---|---|---|---|---|---|")
    for name, r in round_trips.items():
        print(f"| {name} | {r['steps_per_direction']} | {r['nfe']} | {r['relative_error']:.4f} "
              f"| {r['pixel_corr']:.4f} | {r['judged_a']:.3f} |")

    workdir = Path(args.workdir)
    ncol = min(args.columns, num)
    tiles = [src[:ncol]] + [edits[k][:ncol] for k in shares] + [fresh[:ncol]]
    png = image_grid_png(args.png or workdir / "edit_digits.png",
                         np.clip(np.concatenate(tiles), -1, 1), nrow=ncol)
    out = Path(args.out) if args.out else workdir / "edit_digits.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "checkpoint_step": run.step, "judge_held_out_accuracy": held_out, "num_digits": num,
        "target": f"(a + {args.offset}) % 10", "solver": "RFSolver(order=2)",
        "steps_per_direction": args.steps, "grid": grid_name, "t_data": args.t_data,
        "t_noise": args.t_noise, "guidance": args.guidance, "judge_sources_in_a": real_b,
        "rows": rows, "round_trip": round_trips,
        "png": str(png), "png_rows": ["sources"] + [f"edit k={k}" for k in shares]
        + ["fresh class-b sample"], "wall_s": time.perf_counter() - start,
    }, indent=2) + "\n")
    print(f"\nwrote {out} and {png}")


if __name__ == "__main__":
    main()
