"""Sampler benchmark: accuracy per NFE, per-step overhead over the network, compiled memory.

Three parts, each printed as a markdown table and written to one JSON file:

1. **Error vs NFE** on a 2-D Gaussian mixture under ``VPLinear`` with the exact eps model
   (posterior over components in closed form). Deterministic samplers: max / mean Euclidean
   error at ``t_end = 1e-3`` against Heun with very many steps (float64) from the same
   ``x_init``, on the log-SNR grid. Stochastic samplers: sliced W2 between the samples and
   exact draws of the mixture marginal at ``t_end`` (with the finite-sample floor).
2. **Overhead ratio** ``time(jitted sample) / (NFE * time(one jitted model call))`` at batch
   256, float32, for an MLP and a small conv net (compile excluded, median of repeats).
3. **Compiled memory** of ``sample()`` at 10 and 100 steps, with and without the trajectory,
   from ``jax.jit(...).lower(...).compile().memory_analysis()``.

Parts 2 and 3 run first with ``jax_enable_x64`` off (a user's default float32 setting, so the
sampler's coefficients are float32 too); part 1 then turns x64 on for the float64 reference.

    .venv/bin/python scripts/bench_samplers.py [--quick] [--out runs/bench/bench_samplers.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from genflow.metrics import sliced_wasserstein2
from genflow.networks import MLP, SinusoidalEmbedding, as_model_fn
from genflow.processes import VPLinear
from genflow.samplers import (
    DDIM,
    DPMSolverMultistep,
    DPMSolverSinglestep,
    EDMHeun,
    Euler,
    EulerMaruyama,
    Heun,
    PredictorCorrector,
    log_snr_uniform,
    sample,
    sample_adaptive,
    sample_dpm_adaptive,
)

T_START, T_END = 1.0, 1e-3

# name: (solver factory, NFE per step)
DETERMINISTIC = {
    "euler": (Euler, 1),
    "heun": (Heun, 2),
    "ddim": (lambda: DDIM(eta=0.0), 1),
    "dpm_solver_2m": (lambda: DPMSolverMultistep(order=2, algorithm="dpmsolver"), 1),
    "dpm_solver_3m": (lambda: DPMSolverMultistep(order=3, algorithm="dpmsolver"), 1),
    "dpm_solver++_2m": (lambda: DPMSolverMultistep(order=2, algorithm="dpmsolver++"), 1),
    "dpm_solver++_3m": (lambda: DPMSolverMultistep(order=3, algorithm="dpmsolver++"), 1),
    "edm_heun": (EDMHeun, 2),
}
# Singlestep solvers: NFE = steps, one compilation per NFE (their grids cannot be padded).
SINGLESTEP = {
    "dpm_solver_3s": lambda: DPMSolverSinglestep(order=3, algorithm="dpmsolver"),
    "dpm_solver++_2s": lambda: DPMSolverSinglestep(order=2, algorithm="dpmsolver++"),
    "dpm_solver++_3s": lambda: DPMSolverSinglestep(order=3, algorithm="dpmsolver++"),
}
# Adaptive step sizes: (function, fixed options); rows per tolerance rtol (atol = rtol / 10).
ADAPTIVE = {
    "dpm_solver_adaptive (order 2)": (sample_dpm_adaptive, dict(order=2)),
    "dpm_solver_adaptive (order 3)": (sample_dpm_adaptive, dict(order=3)),
    "ode_adaptive (tsit5)": (sample_adaptive, dict(solver="tsit5")),
}
ADAPTIVE_RTOLS = [1e-2, 1e-3, 1e-4]
STOCHASTIC = {
    "euler_maruyama": (EulerMaruyama, 1),
    "pc": (PredictorCorrector, 2),  # ReverseDiffusion predictor + 1 Langevin corrector step
}
OVERHEAD_SOLVERS = ["euler", "heun", "dpm_solver++_2m", "dpm_solver++_3s", "euler_maruyama", "pc"]
ALL = {**DETERMINISTIC, **{k: (v, 1) for k, v in SINGLESTEP.items()}, **STOCHASTIC}

# A 2-D mixture of three Gaussians with diagonal covariances.
MIX_W = np.array([0.25, 0.35, 0.40])
MIX_M = np.array([[-1.5, 0.5], [1.2, 1.0], [0.3, -1.4]])
MIX_V = np.array([[0.15, 0.30], [0.25, 0.10], [0.20, 0.20]])


# --------------------------------------------------------------------------- exact model
def mixture_eps_model(process):
    """The exact eps network of the mixture: ``eps_hat = -sigma_t * grad log p_t(x)``.

    ``p_t = sum_k w_k N(alpha_t m_k, diag(alpha_t^2 v_k + sigma_t^2))``, so with responsibilities
    ``r_k(x) = softmax_k(log w_k + log N(x; alpha m_k, S_k))`` the score is
    ``sum_k r_k (alpha m_k - x) / S_k``.
    """
    w, m, v = (jnp.asarray(a) for a in (MIX_W, MIX_M, MIX_V))

    def model_fn(x, t, cond=None):
        alpha, sigma = process.marginal(t)
        alpha = alpha[:, None, None].astype(x.dtype)
        sigma = sigma[:, None, None].astype(x.dtype)
        S = alpha**2 * v + sigma**2  # (b, K, d)
        resid = x[:, None, :] - alpha * m  # (b, K, d)
        log_r = jnp.log(w) - 0.5 * jnp.sum(jnp.log(2 * math.pi * S) + resid**2 / S, axis=-1)
        r = jax.nn.softmax(log_r, axis=-1)[..., None]  # (b, K, 1)
        score = jnp.sum(r * (-resid / S), axis=1)  # (b, d)
        return -sigma[:, 0] * score

    return model_fn


def mixture_marginal_samples(process, t, n, seed):
    """Exact draws of ``x_t = alpha_t x0 + sigma_t eps`` with ``x0`` from the mixture."""
    rng = np.random.default_rng(seed)
    alpha, sigma = (float(c) for c in process.marginal(jnp.asarray(t, jnp.float64)))
    k = rng.choice(len(MIX_W), size=n, p=MIX_W)
    x0 = MIX_M[k] + np.sqrt(MIX_V[k]) * rng.standard_normal((n, 2))
    return alpha * x0 + sigma * rng.standard_normal((n, 2))


# --------------------------------------------------------------------------- part 1: error
def error_vs_nfe(nfes, n_points, n_ref_steps, n_stoch):
    process = VPLinear()
    model = mixture_eps_model(process)
    x_init = jax.random.normal(jax.random.key(0), (n_points, 2), jnp.float64)

    @jax.jit
    def reference(x):
        return sample(model, process, Heun(), key=jax.random.key(1), x_init=x, prediction="eps",
                      num_steps=n_ref_steps, grid=log_snr_uniform, t_start=T_START,
                      t_end=T_END).x

    x_ref = np.asarray(reference(x_init))
    # Self-check of the reference: halving its steps must change it by far less than any row.
    x_half = np.asarray(jax.jit(lambda x: sample(
        model, process, Heun(), key=jax.random.key(1), x_init=x, prediction="eps",
        num_steps=n_ref_steps // 2, grid=log_snr_uniform, t_end=T_END).x)(x_init))
    ref_err = float(np.linalg.norm(x_half - x_ref, axis=1).max())

    # One compilation per solver: every grid is padded at the data end with copies of t_end
    # to a common length and the grids are vmapped. A step from t to t is the identity for
    # these solvers (all increments are proportional to the step, or to h = 0 in log-SNR),
    # so a padded grid gives the answer of the short one; the padded steps still evaluate
    # the model, so NFE is counted per real step (checked against SampleResult.nfe below).
    def padded_grids(per_step):
        steps = [n // per_step for n in nfes if n % per_step == 0]
        n_max = max(steps)
        grids = []
        for n in steps:
            ts = np.asarray(log_snr_uniform(process, T_START, T_END, n))
            grids.append(np.concatenate([ts, np.full(n_max - n, ts[-1])]))
        return steps, n_max, np.stack(grids)

    def solve_padded(solver, ts_batch, x, key, traced_nfe):
        def run(ts):
            res = sample(model, process, solver, key=key, x_init=x, prediction="eps", ts=ts)
            traced_nfe.append(res.nfe)
            return res.x
        return jax.vmap(run)(ts_batch)

    det_rows = []
    for name, (make, per_step) in DETERMINISTIC.items():
        steps, n_max, ts_batch = padded_grids(per_step)
        traced_nfe = []
        xs = np.asarray(jax.jit(lambda ts, x, s=make(), c=traced_nfe: solve_padded(
            s, ts, x, jax.random.key(1), c))(ts_batch, x_init))
        if traced_nfe[-1] != per_step * n_max:
            raise RuntimeError(f"{name}: nfe {traced_nfe[-1]} != {per_step} x {n_max} steps")
        for n, x_n in zip(steps, xs):
            err = np.linalg.norm(x_n - x_ref, axis=1)
            det_rows.append({"solver": name, "nfe": per_step * n, "steps": n,
                             "max_err": float(err.max()), "mean_err": float(err.mean())})

    for name, make in SINGLESTEP.items():
        for n in nfes:
            res = jax.jit(lambda x, s=make(), n=n: sample(
                model, process, s, key=jax.random.key(1), x_init=x, prediction="eps",
                num_steps=n, grid=log_snr_uniform, t_start=T_START, t_end=T_END))(x_init)
            if res.nfe != n:
                raise RuntimeError(f"{name}: nfe {res.nfe} != {n}")
            err = np.linalg.norm(np.asarray(res.x) - x_ref, axis=1)
            det_rows.append({"solver": name, "nfe": n, "steps": n,
                             "max_err": float(err.max()), "mean_err": float(err.mean())})

    adaptive_rows = []
    for name, (fn, options) in ADAPTIVE.items():
        run = jax.jit(lambda x, rtol, fn=fn, options=options: fn(
            model, process, key=jax.random.key(1), x_init=x, prediction="eps",
            t_start=T_START, t_end=T_END, rtol=rtol, atol=rtol / 10, **options))
        for rtol in ADAPTIVE_RTOLS:
            res = run(x_init, rtol)
            err = np.linalg.norm(np.asarray(res.x) - x_ref, axis=1)
            adaptive_rows.append({"solver": name, "rtol": rtol, "nfe": int(res.nfe),
                                  "max_err": float(err.max()), "mean_err": float(err.mean())})

    exact = mixture_marginal_samples(process, T_END, n_stoch, seed=123)
    floor = sliced_wasserstein2(mixture_marginal_samples(process, T_END, n_stoch, seed=456), exact)
    ode_sw2 = sliced_wasserstein2(np.asarray(jax.jit(lambda x: sample(
        model, process, Heun(), key=jax.random.key(7), x_init=x, prediction="eps",
        num_steps=200, grid=log_snr_uniform, t_end=T_END).x)(jax.random.normal(
            jax.random.key(8), (n_stoch, 2), jnp.float64))), exact)
    sto_rows = []
    x_prior = jax.random.normal(jax.random.key(8), (n_stoch, 2), jnp.float64)
    for name, (make, per_step) in STOCHASTIC.items():
        steps, n_max, ts_batch = padded_grids(per_step)
        if name == "euler_maruyama":
            # A zero-length Euler-Maruyama step adds no drift and no noise: pad and vmap.
            traced_nfe = []
            xs = np.asarray(jax.jit(lambda ts, x, s=make(), c=traced_nfe: solve_padded(
                s, ts, x, jax.random.key(7), c))(ts_batch, x_prior))
            if traced_nfe[-1] != per_step * n_max:
                raise RuntimeError(f"{name}: nfe {traced_nfe[-1]} != {per_step} x {n_max}")
        else:  # the corrector runs even on a zero-length step: one compilation per grid
            xs = []
            for n in steps:
                res = jax.jit(lambda x, s=make(), n=n: sample(
                    model, process, s, key=jax.random.key(7), x_init=x, prediction="eps",
                    num_steps=n, grid=log_snr_uniform, t_start=T_START, t_end=T_END))(x_prior)
                if res.nfe != per_step * n:
                    raise RuntimeError(f"{name}: nfe {res.nfe} != {per_step} x {n}")
                xs.append(np.asarray(res.x))
        for n, x_n in zip(steps, xs):
            sto_rows.append({"solver": name, "nfe": per_step * n, "steps": n,
                             "sliced_w2": float(sliced_wasserstein2(x_n, exact))})
    return {
        "n_points": n_points, "n_ref_steps": n_ref_steps, "ref_self_err": ref_err,
        "n_stochastic_samples": n_stoch, "sw2_floor": float(floor),
        "sw2_heun_200_steps": float(ode_sw2), "deterministic": det_rows, "stochastic": sto_rows,
        "adaptive": adaptive_rows,
    }


# --------------------------------------------------------------------------- part 2: overhead
class SmallConvNet(nnx.Module):
    """A tiny eps network for ``(b, 16, 16, 3)`` images: 3 convs, time added after the first."""

    def __init__(self, channels: int = 8, *, rngs: nnx.Rngs):
        self.embed = SinusoidalEmbedding(32)
        self.time = nnx.Linear(32, channels, rngs=rngs)
        self.conv_in = nnx.Conv(3, channels, (3, 3), rngs=rngs)
        self.conv_mid = nnx.Conv(channels, channels, (3, 3), rngs=rngs)
        self.conv_out = nnx.Conv(channels, 3, (3, 3), rngs=rngs)

    def __call__(self, x, t, cond=None):
        h = nnx.silu(self.conv_in(x) + self.time(self.embed(t))[:, None, None, :])
        h = nnx.silu(self.conv_mid(h))
        return self.conv_out(h)


def _median_time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def overhead(batch, steps, repeats, model_repeats):
    process = VPLinear()
    nets = {
        "mlp": (as_model_fn(MLP(2, hidden=256, depth=3, rngs=nnx.Rngs(0))), (2,)),
        "conv": (as_model_fn(SmallConvNet(rngs=nnx.Rngs(0))), (16, 16, 3)),
    }
    rows = []
    for net_name, (model_fn, data_shape) in nets.items():
        x = jax.random.normal(jax.random.key(0), (batch, *data_shape), jnp.float32)
        t = jnp.full((batch,), 0.5, jnp.float32)
        call = jax.jit(lambda m, x, t: m(x, t))
        t_model = _median_time(call, (model_fn, x, t), model_repeats)

        # Baseline without any sampler: the same number of model calls in a bare lax.scan
        # (x <- x + 0.01 model(x, t)), to separate XLA's loop cost from the sampler's.
        @jax.jit
        def bare_scan(m, x, t):
            body = lambda x, _: (x + 0.01 * m(x, t), None)  # noqa: E731
            return jax.lax.scan(body, x, None, length=steps)[0]

        t_scan = _median_time(bare_scan, (model_fn, x, t), repeats)
        rows.append({"net": net_name, "solver": "(bare scan of model)", "steps": steps,
                     "nfe": steps, "batch": batch, "model_ms": t_model * 1e3,
                     "sample_ms": t_scan * 1e3, "ratio": t_scan / (steps * t_model)})
        for name in OVERHEAD_SOLVERS:
            make, per_step = ALL[name]
            solver = make()
            run = jax.jit(lambda m, x, k, s=solver: sample(
                m, process, s, key=k, x_init=x, prediction="eps", num_steps=steps,
                grid=log_snr_uniform, t_start=T_START, t_end=T_END).x)
            nfe = per_step * steps  # checked against SampleResult.nfe in part 1
            t_sample = _median_time(run, (model_fn, x, jax.random.key(3)), repeats)
            rows.append({"net": net_name, "solver": name, "steps": steps, "nfe": nfe,
                         "batch": batch, "model_ms": t_model * 1e3, "sample_ms": t_sample * 1e3,
                         "ratio": t_sample / (nfe * t_model)})
    return rows


# --------------------------------------------------------------------------- part 3: memory
def memory(batch, solvers):
    process = VPLinear()
    model_fn = as_model_fn(MLP(2, hidden=256, depth=3, rngs=nnx.Rngs(0)))
    x = jnp.zeros((batch, 2), jnp.float32)
    rows, available = [], True
    for name in solvers:
        solver = ALL[name][0]()
        for traj in (False, True):
            for steps in (10, 100):
                fn = jax.jit(lambda m, x, k, s=solver, n=steps, r=traj: sample(
                    m, process, s, key=k, x_init=x, prediction="eps", num_steps=n,
                    grid=log_snr_uniform, return_trajectory=r))
                stats = fn.lower(model_fn, x, jax.random.key(0)).compile().memory_analysis()
                if stats is None:
                    available = False
                    continue
                rows.append({
                    "solver": name, "return_trajectory": traj, "steps": steps, "batch": batch,
                    "temp_bytes": int(stats.temp_size_in_bytes),
                    "output_bytes": int(stats.output_size_in_bytes),
                    "argument_bytes": int(stats.argument_size_in_bytes),
                    "generated_code_bytes": int(stats.generated_code_size_in_bytes),
                })
    return {"available": available, "rows": rows}


# --------------------------------------------------------------------------- report
def _kib(b):
    return f"{b / 1024:.1f}"


def print_tables(res):
    err = res["error_vs_nfe"]
    print(f"\n### 1a. Deterministic samplers: error at t={T_END} vs Heun x {err['n_ref_steps']} "
          f"steps (float64, {err['n_points']} points, log-SNR grid; reference self-error "
          f"{err['ref_self_err']:.1e})\n")
    nfes = sorted({r["nfe"] for r in err["deterministic"]})
    print("| solver | " + " | ".join(f"NFE {n} max / mean" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for name in (*DETERMINISTIC, *SINGLESTEP):
        cells = []
        for n in nfes:
            r = [r for r in err["deterministic"] if r["solver"] == name and r["nfe"] == n]
            cells.append(f"{r[0]['max_err']:.2e} / {r[0]['mean_err']:.2e}" if r else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\n### 1c. Adaptive step sizes: NFE and error per tolerance (atol = rtol / 10; "
          "same reference and points)\n")
    print("| solver | " + " | ".join(f"rtol {t:g}: NFE, max / mean" for t in ADAPTIVE_RTOLS)
          + " |")
    print("|---|" + "---|" * len(ADAPTIVE_RTOLS))
    for name in ADAPTIVE:
        cells = []
        for rtol in ADAPTIVE_RTOLS:
            r = [r for r in err["adaptive"] if r["solver"] == name and r["rtol"] == rtol][0]
            cells.append(f"{r['nfe']}, {r['max_err']:.2e} / {r['mean_err']:.2e}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print(f"\n### 1b. Stochastic samplers: sliced W2 to exact marginal samples "
          f"({err['n_stochastic_samples']} points; floor {err['sw2_floor']:.4f}, "
          f"Heun 200 steps {err['sw2_heun_200_steps']:.4f})\n")
    print("| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|---|" + "---|" * len(nfes))
    for name in STOCHASTIC:
        cells = []
        for n in nfes:
            r = [r for r in err["stochastic"] if r["solver"] == name and r["nfe"] == n]
            cells.append(f"{r[0]['sliced_w2']:.4f}" if r else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\n### 2. Overhead ratio: sample() time / (NFE x one model call), float32, batch "
          f"{res['overhead'][0]['batch']}, median, compile excluded\n")
    print("| net | solver | steps | NFE | model ms | sample ms | ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in res["overhead"]:
        flag = " **>1.10**" if r["ratio"] > 1.10 else ""
        print(f"| {r['net']} | {r['solver']} | {r['steps']} | {r['nfe']} | {r['model_ms']:.3f} "
              f"| {r['sample_ms']:.2f} | {r['ratio']:.3f}{flag} |")

    mem = res["memory"]
    print("\n### 3. Compiled memory of jitted sample() (MLP, batch "
          f"{mem['rows'][0]['batch'] if mem['rows'] else '?'}), KiB\n")
    if not mem["available"]:
        print("memory_analysis() returned None on this backend: not available.")
    if mem["rows"]:
        print("| solver | trajectory | temp 10 steps | temp 100 steps | output 10 | output 100 "
              "| grows with steps |")
        print("|---|---|---|---|---|---|---|")
        for name in dict.fromkeys(r["solver"] for r in mem["rows"]):
            for traj in (False, True):
                r10, r100 = ([r for r in mem["rows"] if r["solver"] == name
                              and r["return_trajectory"] == traj and r["steps"] == s][0]
                             for s in (10, 100))
                grows = (r100["temp_bytes"] + r100["output_bytes"]
                         > 1.05 * (r10["temp_bytes"] + r10["output_bytes"]))
                print(f"| {name} | {traj} | {_kib(r10['temp_bytes'])} | "
                      f"{_kib(r100['temp_bytes'])} | {_kib(r10['output_bytes'])} | "
                      f"{_kib(r100['output_bytes'])} | {'yes' if grows else 'no'} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/bench_samplers.json")
    parser.add_argument("--quick", action="store_true",
                        help="smaller settings (~30-60 s): NFE 10 and 50, 20 steps for part 2")
    args = parser.parse_args()

    start = time.perf_counter()
    q = args.quick
    settings = dict(
        nfes=[10, 50] if q else [10, 20, 50, 100], n_points=128 if q else 256, n_ref_steps=1000 if q else 4000,
        n_stoch=1000 if q else 4000, batch=256, steps=20 if q else 50, repeats=2 if q else 5,
        model_repeats=10 if q else 50,
    )

    # Parts 2 and 3 in float32 with x64 off, as a user runs them; part 1 in float64.
    jax.config.update("jax_enable_x64", False)
    over = overhead(settings["batch"], settings["steps"], settings["repeats"],
                    settings["model_repeats"])
    mem = memory(settings["batch"], ["euler"] if q else ["euler", "heun", "dpm_solver++_2m"])
    jax.config.update("jax_enable_x64", True)
    err = error_vs_nfe(settings["nfes"], settings["n_points"], settings["n_ref_steps"],
                       settings["n_stoch"])

    res = {"error_vs_nfe": err, "overhead": over, "memory": mem}
    print_tables(res)
    wall = time.perf_counter() - start
    print(f"\ntotal wall time {wall:.1f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "jax": jax.__version__, "backend": jax.default_backend(), "cpus": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()], "machine": platform.machine(),
        "python": platform.python_version(), "quick": q, "settings": settings,
        "wall_s": wall,
    }
    out.write_text(json.dumps({"meta": meta, **res}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
