"""Training throughput and achieved FLOP/s, against the machine's measured matmul peak.

Three sections, printed as markdown tables and written to one JSON file:

1. **Matmul peak**: the best float32 ``jnp.dot`` rate of square ``n x n`` matrices (jitted,
   warm, best of several repeats; ``2 n^3`` FLOPs), with the CPU model and core count.
2. **Image models** on sklearn's digits (8x8x1, the real data pipeline, batch 128): the DiT
   of ``configs/digits_cond.py`` as it is and a small U-Net on the same data (the overrides
   in ``UNET_DIGITS``). For each: compile time, ms per optimizer step and steps/s over
   ``--repeats`` warm dispatches (after one warm-up dispatch) of 10 steps for the DiT and 2
   for the U-Net (``--steps-per-dispatch``), batches drawn on the host before the clock
   starts, ``block_until_ready`` after each dispatch; the best dispatch and the median are
   reported, FLOPs per optimizer step, achieved GFLOP/s and the fraction of
   the matmul peak measured in the same process right before that model's timing.
3. **MLP** on the embedded toy config with a few batch sizes and widths (ms per step).

**FLOPs per step** come from XLA's cost analysis of the training chunk compiled with
*one* step per dispatch. The cost analysis of a ``lax.scan`` counts its body once whatever
the trip count (a chunk of 1 and of 2 steps report the same number), so the chunk that is
timed cannot be used directly; its own count is kept as ``flops_scan_body`` for comparison.
The cross-checks are the forward pass alone (XLA's count) times 3 and, for the DiT, an
analytic count of its matmuls (times 3 for the backward pass). The counts include the
element-wise work (norms, activations, the optimizer), which is why they are a few percent
above the matmul-only estimate.

The machine may be shared with other jobs; absolute rates are then noisy, the ratio of a
model's rate to the peak measured just before it much less so.

FLOPs only, for any config (e.g. to estimate GPU run times of large models): one training
step is lowered and compiled, nothing is trained and no batch is drawn. An image data set
that is not prepared (any TFDS set) needs its example shape given with ``--shape H,W,C``;
the built-in digits and the toy sets need nothing. Compiling a large U-Net takes minutes on
a CPU; ``--lowered`` counts the lowered, unoptimised program instead (within about 1% of
the compiled count, e.g. 865 against 869 GFLOP for an MNIST U-Net, in seconds)::

    .venv/bin/python scripts/bench_train.py --flops-only --config configs/digits_cond.py \\
        --set data.name=cifar10 model=unet model.channels=128 \\
        model.channel_mult=1,2,2,2 model.num_res_blocks=4 model.attention_resolutions=16 \\
        --shape 32,32,3

The full benchmark::

    .venv/bin/python scripts/bench_train.py [--out runs/bench/bench_train.json] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from genflow.config import ConfigError, apply_overrides, load_config_file
from genflow.data import ToyBatches
from genflow.training import (
    data_shape_of,
    init_train_state,
    make_batches,
    make_train_chunk,
)

REPO = Path(__file__).resolve().parents[1]
MLP_CONFIG = REPO / "configs" / "toy_checkerboard_vp.py"
DIGITS_CONFIG = REPO / "configs" / "digits_cond.py"
MLP_VARIANTS = [
    [],
    ["data.batch_size=256"],
    ["data.batch_size=2048"],
    ["model.hidden=256"],
    ["model.hidden=512"],
]
# A small U-Net for the 8x8 digits: levels at 8x8 (32 channels) and 4x4 (64 channels), one
# residual block per level, self-attention at 4x4; everything else as in digits_cond.py.
UNET_DIGITS = [
    "model=unet", "model.channels=32", "model.channel_mult=1,2",
    "model.num_res_blocks=1", "model.attention_resolutions=4",
]
# name: (overrides of digits_cond.py, optimizer steps per timed dispatch). The U-Net's
# convolution backward passes are slow on CPU (seconds per step), hence its short dispatches.
IMAGE_MODELS = {"dit": ([], 10), "unet": (UNET_DIGITS, 2)}
MATMUL_SIZES = (1024, 2048, 3072)


# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "jax": jax.__version__, "backend": jax.default_backend(),
        "device_count": jax.device_count(), "devices": str(jax.devices()),
        "cpu_model": cpu_model(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "load_average": list(load) if load else None,
    }


def matmul_gflops(n: int, repeats: int) -> float:
    """Best float32 ``n x n @ n x n`` rate in GFLOP/s (``2 n^3`` FLOPs per product)."""
    ka, kb = jax.random.split(jax.random.key(n))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))  # compile and warm
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(dot(a, b))
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def matmul_peak(sizes=MATMUL_SIZES, repeats: int = 5) -> dict:
    rates = {n: matmul_gflops(n, repeats) for n in sizes}
    return {"sizes": {str(n): r for n, r in rates.items()}, "peak_gflops": max(rates.values())}


# --------------------------------------------------------------------------- FLOPs


def _cost_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returns one dict per computation
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def _abstract_batches(config, data_shape, k: int) -> dict:
    """Shapes of ``k`` training batches of ``config`` (no data is read)."""
    b = config.data.batch_size
    batches = {"x": jax.ShapeDtypeStruct((k, b, *data_shape), jnp.float32)}
    if config.model.num_classes > 0 and len(data_shape) == 3:
        batches["cond"] = jax.ShapeDtypeStruct((k, b), jnp.int32)
    return batches


def train_step_flops(config, data_shape, setup=None, state=None, *, compile=True) -> float:
    """FLOPs of one optimizer step: XLA's cost analysis of a one-step chunk, compiled, or
    (``compile=False``) only lowered: the unoptimised program, within about 1% of the
    compiled count and many times quicker for large networks."""
    if setup is None:
        setup, state = init_train_state(config, data_shape)
    chunk = make_train_chunk(config, setup)
    lowered = chunk.lower(state, _abstract_batches(config, data_shape, 1))
    return _cost_flops(lowered.compile() if compile else lowered)


def forward_flops(config, data_shape, setup, state) -> float:
    """FLOPs of one forward pass of the network on a batch (XLA's cost analysis)."""
    b = config.data.batch_size

    def forward(params, x, t, cond):
        net = setup.wrap(nnx.merge(setup.graphdef, params, setup.rest))
        return net(x, t, cond) if cond is not None else net(x, t)

    x = jax.ShapeDtypeStruct((b, *data_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((b,), jnp.float32)
    cond = jax.ShapeDtypeStruct((b,), jnp.int32) if config.model.num_classes > 0 else None
    return _cost_flops(jax.jit(forward).lower(state.params, x, t, cond).compile())


def dit_forward_flops_analytic(config, data_shape) -> float:
    """Matmul FLOPs of one DiT forward pass (2 per multiply-add; element-wise work left out).

    Per token: patch embedding ``P w``, per block ``3w^2 + w^2`` (attention projections),
    ``2 T w`` (scores and weighted values over ``T`` tokens), ``2 w h`` (MLP), and the output
    layer ``w P``; per example: the time MLP ``E w + w^2``, per block the modulation ``6 w^2``
    and the final modulation ``2 w^2``.
    """
    mc = config.model
    height, wide, ch = data_shape
    p, w, e = mc.patch_size, mc.hidden, mc.embed_dim
    tokens, patch, hid = (height // p) * (wide // p), p * p * ch, int(mc.hidden * mc.mlp_ratio)
    per_token = patch * w + mc.depth * (4 * w * w + 2 * tokens * w + 2 * w * hid) + w * patch
    per_example = e * w + w * w + mc.depth * 6 * w * w + 2 * w * w
    return 2.0 * config.data.batch_size * (tokens * per_token + per_example)


# --------------------------------------------------------------------------- timing


def measure_image_model(config, k: int, repeats: int) -> dict:
    data_shape = data_shape_of(config)
    next_batches = make_batches(config)
    setup, state = init_train_state(config, data_shape)
    chunk = make_train_chunk(config, setup)
    drawn = [jax.tree.map(jnp.asarray, next_batches(k * i, k)) for i in range(repeats + 1)]

    start = time.perf_counter()
    compiled = chunk.lower(state, drawn[0]).compile()
    compile_s = time.perf_counter() - start
    flops_scan_body = _cost_flops(compiled)
    flops = train_step_flops(config, data_shape, setup, state)
    fwd = forward_flops(config, data_shape, setup, state)

    state, _ = compiled(state, drawn[0])  # warm-up dispatch
    jax.block_until_ready(state)
    peak = matmul_gflops(2048, 5)  # back to back with the timing below
    times = []
    for batches in drawn[1:]:
        start = time.perf_counter()
        state, metrics = compiled(state, batches)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / k)
    best, median = min(times), statistics.median(times)
    row = {
        "model": config.model.name,
        "data": config.data.name,
        "data_shape": list(data_shape),
        "batch_size": config.data.batch_size,
        "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "steps_per_dispatch": k,
        "dispatches": repeats,
        "compile_s": compile_s,
        "ms_per_step": best * 1e3,
        "ms_per_step_median": median * 1e3,
        "steps_per_sec": 1.0 / best,
        "steps_per_sec_median": 1.0 / median,
        "flops_per_step": flops,
        "flops_scan_body": flops_scan_body,
        "forward_flops": fwd,
        "train_over_forward": flops / fwd,
        "achieved_gflops": flops / best / 1e9,
        "achieved_gflops_median": flops / median / 1e9,
        "matmul_peak_gflops_adjacent": peak,
        "fraction_of_peak": flops / best / 1e9 / peak,
        "fraction_of_peak_median": flops / median / 1e9 / peak,
        "final_loss": float(metrics["loss"]),
    }
    if config.model.name == "dit":
        analytic = dit_forward_flops_analytic(config, data_shape)
        row["forward_flops_analytic"] = analytic
        row["train_flops_analytic_x3"] = 3 * analytic
    return row


def measure_mlp(config, repeats: int) -> float:
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


def mlp_rows(config_path: str, repeats: int) -> list[dict]:
    base = load_config_file(config_path)
    rows = []
    for overrides in MLP_VARIANTS:
        config = apply_overrides(base, overrides)
        ms = measure_mlp(config, repeats)
        rows.append({
            "overrides": " ".join(overrides) or "(default)",
            "batch_size": config.data.batch_size,
            "hidden": config.model.hidden,
            "depth": config.model.depth,
            "ms_per_step": ms,
            "steps_per_sec": 1e3 / ms,
        })
    return rows


# --------------------------------------------------------------------------- output


def print_tables(result: dict) -> None:
    meta, peak = result["meta"], result["matmul"]
    print(f"\n{meta['cpu_model']}, {meta['cpus']} CPUs, {meta['device_count']} JAX device(s), "
          f"jax {meta['jax']}, load average at start {meta['load_average']}\n")
    print("| matmul n | GFLOP/s |")
    print("|---|---|")
    for n, rate in peak["sizes"].items():
        print(f"| {n} | {rate:.1f} |")
    print(f"| **peak** | **{peak['peak_gflops']:.1f}** |")
    if "matmul_end" in result:
        print(f"\nmatmul peak measured again at the end: {result['matmul_end']['peak_gflops']:.1f} "
              "GFLOP/s (the spread is the load from other jobs)")
    if result["image_models"]:
        print("\n| model (digits 8x8, batch) | params | compile s | ms / step | steps / s | "
              "GFLOP / step | GFLOP/s | matmul peak GFLOP/s | fraction of peak |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in result["image_models"]:
            print(
                f"| {r['model']} ({r['batch_size']}) | {r['params']:,} | {r['compile_s']:.1f} | "
                f"{r['ms_per_step']:.0f} (median {r['ms_per_step_median']:.0f}) | "
                f"{r['steps_per_sec']:.2f} | {r['flops_per_step'] / 1e9:.2f} | "
                f"{r['achieved_gflops']:.1f} | {r['matmul_peak_gflops_adjacent']:.1f} | "
                f"{r['fraction_of_peak']:.0%} (median {r['fraction_of_peak_median']:.0%}) |"
            )
        print("\n| model | train GFLOP / step (1-step chunk) | scan body count | forward x 3 | "
              "analytic matmuls x 3 |")
        print("|---|---|---|---|---|")
        for r in result["image_models"]:
            analytic = r.get("train_flops_analytic_x3")
            print(
                f"| {r['model']} | {r['flops_per_step'] / 1e9:.2f} | "
                f"{r['flops_scan_body'] / 1e9:.2f} | {3 * r['forward_flops'] / 1e9:.2f} | "
                f"{'-' if analytic is None else f'{analytic / 1e9:.2f}'} |"
            )
    if result["rows"]:
        print("\n| MLP config | batch | hidden x depth | ms / step | steps / s |")
        print("|---|---|---|---|---|")
        for r in result["rows"]:
            print(
                f"| {r['overrides']} | {r['batch_size']} | {r['hidden']} x {r['depth']} | "
                f"{r['ms_per_step']:.1f} | {r['steps_per_sec']:.0f} |"
            )


def flops_only(args) -> None:
    config = apply_overrides(load_config_file(args.config), args.set)
    if args.shape:
        data_shape = tuple(int(s) for s in args.shape.split(","))
    else:
        try:
            data_shape = data_shape_of(config)
        except ConfigError as exc:
            raise SystemExit(f"{exc}\nOr give the shape of one example with --shape H,W,C "
                             "(no data set is read then).") from None
    start = time.perf_counter()
    flops = train_step_flops(config, data_shape, compile=not args.lowered)
    seconds = time.perf_counter() - start
    print(f"config: {args.config} {' '.join(args.set)}")
    print(f"model {config.model.name}, data shape {data_shape}, batch {config.data.batch_size}")
    how = "lowered only" if args.lowered else "lowered and compiled"
    print(f"FLOPs per training step: {flops:.4g} ({flops / 1e9:.2f} GFLOP; {how} in "
          f"{seconds:.1f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/bench_train.json")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed dispatches per model (MLP: per variant)")
    parser.add_argument("--steps-per-dispatch", type=int, default=None,
                        help="optimizer steps per timed dispatch of the image models "
                             "(default: 10 for the DiT, 2 for the U-Net)")
    parser.add_argument("--mlp-config", default=str(MLP_CONFIG))
    parser.add_argument("--image-config", default=str(DIGITS_CONFIG))
    parser.add_argument("--skip", nargs="*", default=[], choices=["mlp", "dit", "unet"],
                        help="sections to leave out")
    parser.add_argument("--flops-only", action="store_true",
                        help="only print the FLOPs of one training step of --config")
    parser.add_argument("--config", default=str(DIGITS_CONFIG),
                        help="config file for --flops-only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of --config (for --flops-only)")
    parser.add_argument("--shape", default="",
                        help="H,W,C (or d) of one example, for --flops-only on a data set "
                             "that is not prepared")
    parser.add_argument("--lowered", action="store_true",
                        help="--flops-only from the lowered program, without compiling it "
                             "(within about 1%%, much quicker for large networks)")
    args = parser.parse_args()
    if args.flops_only:
        flops_only(args)
        return

    meta = {**machine_info(), "mlp_config": args.mlp_config, "image_config": args.image_config}
    peak = matmul_peak()
    print(f"matmul peak {peak['peak_gflops']:.1f} GFLOP/s", flush=True)
    image_models = []
    base = load_config_file(args.image_config)
    for name, (overrides, k) in IMAGE_MODELS.items():
        if name in args.skip:
            continue
        row = measure_image_model(apply_overrides(base, overrides),
                                  args.steps_per_dispatch or k, args.repeats)
        row["overrides"] = " ".join(overrides) or "(config as is)"
        image_models.append(row)
        print(f"{name}: {row['steps_per_sec']:.2f} steps/s, {row['achieved_gflops']:.1f} GFLOP/s "
              f"= {row['fraction_of_peak']:.0%} of the matmul peak", flush=True)
    rows = [] if "mlp" in args.skip else mlp_rows(args.mlp_config, args.repeats)
    peak_end = matmul_peak(repeats=3)
    meta["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {"meta": meta, "matmul": peak, "matmul_end": peak_end,
              "image_models": image_models, "rows": rows}
    print_tables(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
