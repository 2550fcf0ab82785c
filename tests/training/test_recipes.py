"""Training recipes in the loop: bfloat16 compute, gradient accumulation, EMA warm-up, the
power-function EMA profiles and their post-hoc reconstruction.

Each check compares against a closed form or an independent computation: accumulation
against one step on the whole batch, the profiles against the exact discrete kernel
``w_T(t) = (t^(g+1) - (t-1)^(g+1)) / T^(g+1)`` applied to the recorded parameter trajectory,
the warm-up EMA against the recursion written out in numpy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.cli import main
from genflow.config import Config, DataConfig, DiTConfig, MLPConfig, TrainConfig
from genflow.methods import Denoising
from genflow.processes import VPLinear
from genflow.training import (
    init_train_state,
    make_batches,
    make_train_chunk,
    model_fn_from,
    restore_run,
    restore_train_state,
    train,
)
from genflow.training._ema import ema_decay, power_kernel, sigma_rel_to_gamma

CFG = Config(
    process=VPLinear(beta_min=0.1, beta_max=20.0),
    data=DataConfig(name="checkerboard", batch_size=512, seed=1),
    method=Denoising(prediction="eps"),
    model=MLPConfig(hidden=32, depth=2, embedding="fourier", embed_dim=16),
    train=TrainConfig(num_steps=8, lr=1e-2, warmup_steps=0, lr_decay="constant",
                      ema_decay=0.99, steps_per_dispatch=2, log_every=2, checkpoint_every=4),
)


def with_train(config: Config, **changes) -> Config:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def one_chunk(config: Config, steps: int = 2):
    setup, state = init_train_state(config, (2,))
    batches = jax.tree.map(jnp.asarray, make_batches(config)(0, steps))
    chunk = make_train_chunk(config, setup)
    return chunk, batches, chunk(state, batches)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# --------------------------------------------------------------------------- accumulation
def test_accumulation_gives_the_update_of_the_whole_batch():
    """train.accumulate=4 on data.batch_size=512 (micro-batches of 128) equals one step on the
    batch of 512: same loss, same gradient norm, same parameters after two Adam steps."""
    *_, (whole, m_whole) = one_chunk(CFG)
    *_, (accumulated, m_acc) = one_chunk(with_train(CFG, accumulate=4))
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(float(m_acc[name]), float(m_whole[name]), rtol=1e-5)
    for a, b in zip(leaves(accumulated.params), leaves(whole.params)):
        # Adam's first steps move each weight by about lr = 1e-2; round-off in the gradient
        # (1e-7 relative) changes that by far less than 1e-6 of the weights' scale.
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * max(np.abs(b).max(), 1e-3))


def test_accumulation_evaluates_micro_batches():
    """The compiled step really splits the network's calls: its matmuls see 128 rows."""
    config = with_train(CFG, accumulate=4)
    chunk, batches, _ = one_chunk(config)
    _, state = init_train_state(config, (2,))
    jaxpr = str(jax.make_jaxpr(chunk)(state, batches))
    assert "f32[128,32]" in jaxpr and "f32[512,32]" not in jaxpr


# --------------------------------------------------------------------------- bfloat16
def test_bfloat16_runs_the_network_in_bfloat16_and_keeps_the_state_float32():
    config = with_train(CFG, compute_dtype="bfloat16")
    chunk, batches, (state, metrics) = one_chunk(config)
    for tree in (state.params, state.ema, state.opt_state):
        for x in jax.tree.leaves(tree):
            if jnp.issubdtype(x.dtype, jnp.floating):
                assert x.dtype == jnp.float32
    assert metrics["loss"].dtype == jnp.float32 and metrics["grad_norm"].dtype == jnp.float32
    setup, state0 = init_train_state(config, (2,))
    jaxpr = str(jax.make_jaxpr(chunk)(state0, batches))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and all("bf16" in line for line in dots), dots[:3]
    # The loss's reduction runs in float32: the mean over the batch sums float32 numbers.
    assert "reduce_sum" in jaxpr and any(
        "reduce_sum" in line and "f32[]" in line for line in jaxpr.splitlines())
    # ...and the result is the float32 loss to bfloat16 precision.
    *_, (_, m32) = one_chunk(CFG)
    np.testing.assert_allclose(float(metrics["loss"]), float(m32["loss"]), rtol=3e-2)


@pytest.mark.parametrize("network", [
    MLPConfig(hidden=32, depth=2, embedding="fourier", embed_dim=16),
    DiTConfig(patch_size=2, hidden=32, depth=1, num_heads=2),
], ids=["mlp", "dit"])
def test_bfloat16_model_fn_matches_float32(network):
    shape = (2,) if isinstance(network, MLPConfig) else (8, 8, 1)
    data = DataConfig(name="checkerboard" if shape == (2,) else "digits", batch_size=8)
    config = dataclasses.replace(CFG, model=network, data=data)
    setup, state = init_train_state(config, shape)
    x = jax.random.normal(jax.random.key(0), (8, *shape), jnp.float32)
    t = jnp.linspace(0.05, 0.95, 8, dtype=jnp.float32)
    f32 = model_fn_from(setup, state.params)(x, t)
    bf16_fn = model_fn_from(setup, state.params, compute_dtype="bfloat16")
    out = bf16_fn(x, t)
    assert out.dtype == jnp.float32
    scale = float(jnp.abs(f32).max())
    np.testing.assert_allclose(np.asarray(out), np.asarray(f32), rtol=0, atol=0.05 * scale)
    jaxpr = str(jax.make_jaxpr(bf16_fn)(x, t))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and all("bf16" in line for line in dots)


# --------------------------------------------------------------------------- EMA
def trajectory(config: Config, steps: int):
    """Run ``steps`` single-step chunks and record the parameters after each step."""
    config = with_train(config, steps_per_dispatch=1, num_steps=steps, checkpoint_every=steps)
    setup, state = init_train_state(config, (2,))
    chunk = make_train_chunk(config, setup)
    batches = make_batches(config)
    params = []
    for step in range(steps):
        state, _ = chunk(state, jax.tree.map(jnp.asarray, batches(step, 1)))
        params.append(leaves(state.params))
    return state, params


def test_ema_warmup_and_power_profiles_follow_their_closed_forms():
    steps, sigma_rels = 12, (0.05, 0.2)
    config = with_train(CFG, ema_warmup=0.75, ema_profiles=sigma_rels)
    state, params = trajectory(config, steps)
    p = [np.stack([step_params[i] for step_params in params]).astype(np.float64)
         for i in range(len(params[0]))]
    # Warm-up EMA: the recursion with decay_s = min(0.99, 1 - (1 + s)^-0.75) from the initial
    # parameters.
    _, state0 = init_train_state(config, (2,))
    ema = [np.asarray(x, np.float64) for x in jax.tree.leaves(state0.params)]
    for s in range(1, steps + 1):
        d = float(ema_decay(jnp.asarray(s), decay=0.99, warmup_power=0.75))
        np.testing.assert_allclose(d, min(0.99, 1 - (1 + s) ** -0.75), rtol=1e-6)
        ema = [d * e + (1 - d) * q[s - 1] for e, q in zip(ema, p)]
    for got, want in zip(leaves(state.ema), ema):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(np.abs(want).max(), 1))
    # Power-function profiles: the exact discrete kernel over the recorded trajectory (the
    # initial parameters get weight 0).
    for sigma_rel, profile in zip(sigma_rels, state.profiles):
        w = power_kernel(steps, sigma_rel_to_gamma(sigma_rel))
        assert w.shape == (steps,) and abs(w.sum() - 1) < 1e-12
        for got, q in zip(leaves(profile), p):
            want = np.tensordot(w, q, axes=1)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(np.abs(want).max(), 1))


def test_posthoc_ema_through_the_command_line(tmp_path, capsys):
    """Snapshots of two profiles every 2 steps; `genflow ema` reconstructs a stored profile
    exactly and another one with a small kernel residual; `--weights sigma_rel=S` samples it."""
    config = with_train(CFG, num_steps=16, ema_profiles=(0.05, 0.1), ema_snapshot_every=2,
                        checkpoint_every=8)
    workdir = tmp_path / "run"
    train(config, workdir, progress=False)
    assert sorted(int(p.name) for p in (workdir / "ema_snapshots").iterdir()) == list(
        range(2, 17, 2))
    capsys.readouterr()
    assert main(["ema", "--workdir", str(workdir), "--sigma-rel", "0.1",
                 "--sigma-rel", "0.07"]) == 0
    out = capsys.readouterr().out
    assert "sigma_rel 0.1 at step 16: 8 snapshots" in out
    residual = float(out.split("sigma_rel 0.07")[1].split("kernel residual ")[1].split()[0])
    assert residual < 0.05
    _, _, state = restore_train_state(workdir)
    _, _, step, stored = restore_run(workdir, weights="sigma_rel=0.1")
    assert step == 16
    for got, want in zip(leaves(stored), leaves(state.profiles[1])):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(np.abs(want).max(), 1))
    _, _, _, other = restore_run(workdir, weights="sigma_rel=0.07")
    assert any(not np.allclose(a, b) for a, b in zip(leaves(other), leaves(stored)))
    out_path = tmp_path / "s"
    assert main(["sample", "--workdir", str(workdir), "--weights", "sigma_rel=0.07",
                 "--num", "64", "--steps", "10", "--out", str(out_path), "--dtype",
                 "bfloat16"]) == 0
    assert np.isfinite(np.load(f"{out_path}.npz")["samples"]).all()
    # A reconstruction that was never written, and a run without snapshots: one line, exit 2.
    assert main(["sample", "--workdir", str(workdir), "--weights", "sigma_rel=0.2"]) == 2
    assert "genflow ema --workdir" in capsys.readouterr().err
    plain = tmp_path / "plain"
    train(with_train(CFG, num_steps=4), plain, progress=False)
    assert main(["ema", "--workdir", str(plain), "--sigma-rel", "0.05"]) == 2
    assert "stored no EMA snapshots" in capsys.readouterr().err


def test_resuming_with_another_compute_dtype_is_refused(tmp_path, capsys):
    workdir = tmp_path / "run"
    config = Path(__file__).resolve().parents[2] / "configs" / "toy_checkerboard_vp.py"
    args = ["train", "--config", str(config), "--workdir", str(workdir),
            "--no-progress", "--set", "model.hidden=16", "--set", "data.batch_size=32",
            "--set", "train.steps_per_dispatch=2", "--set", "train.checkpoint_every=2"]
    assert main([*args, "--set", "train.num_steps=2"]) == 0
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    capsys.readouterr()
    code = main([*args, "--set", "train.num_steps=4", "--set", "train.compute_dtype=bfloat16"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"genflow: error: {workdir} holds a run with train.compute_dtype='float32', "
                   "not 'bfloat16'; use another --workdir, or --fresh to discard that run."]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
