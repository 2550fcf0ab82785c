"""The jitted training loop: one step against a hand-written step, chunking, and ``train()``
runs on disk (logs, checkpoints, bit-for-bit resume, refusing incompatible run directories).

The end-to-end CLI (and resuming after SIGKILL) is tested in tests/test_cli.py.
"""

import dataclasses
import json
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from genflow.config import (
    Config,
    ConfigError,
    DataConfig,
    MLPConfig,
    TrainConfig,
    config_to_dict,
    load_config_json,
)
from genflow.data import ToyBatches
from genflow.losses import Uniform, denoising_loss
from genflow.processes import VPLinear
from genflow.training import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    Checkpointer,
    _loop,
    init_train_state,
    make_train_chunk,
    restore_run,
    restore_train_state,
    train,
)

CFG = Config(
    process=VPLinear(beta_min=0.1, beta_max=20.0),
    data=DataConfig(name="checkerboard", batch_size=32, seed=3),
    model=MLPConfig(hidden=16, depth=1, embedding="fourier", embed_dim=8),
    train=TrainConfig(
        num_steps=40,
        lr=1e-2,
        warmup_steps=3,
        lr_decay="constant",  # so that num_steps does not change the schedule
        grad_clip=1.0,
        ema_decay=0.9,
        steps_per_dispatch=10,
        log_every=10,
        checkpoint_every=20,
        keep_checkpoints=3,
        seed=7,
    ),
)
CFG60 = dataclasses.replace(CFG, train=dataclasses.replace(CFG.train, num_steps=60))
DATA_SHAPE = (2,)


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def copy(tree):
    return jax.tree.map(jnp.copy, tree)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y)


def assert_trees_close(a, b, rtol, atol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def max_abs_diff(a, b):
    return max(
        float(np.abs(np.asarray(x) - np.asarray(y)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def shared_chunk():
    """Compile each chunk once for the whole module.

    ``train()`` builds (and so compiles) a new jitted chunk on every call. Runs here differ only
    in ``num_steps``, which with a constant learning rate does not enter the computation, so they
    share one ``make_train_chunk`` result; the chunk tests below use it too.
    """
    cache = {}

    def cached(config, setup, **layout):
        key = config_to_dict(config)
        if config.train.lr_decay == "constant":
            key["train"].pop("num_steps")
        key = json.dumps(key, sort_keys=True)
        if key not in cache:
            cache[key] = make_train_chunk(config, setup, **layout)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_loop, "make_train_chunk", cached)
        yield cached


# --------------------------------------------------------------------------- one chunk


@pytest.fixture(scope="module")
def chunk_setup(shared_chunk):
    setup, state = init_train_state(CFG, DATA_SHAPE)
    chunk = shared_chunk(CFG, setup)
    data = ToyBatches(CFG.data.name, CFG.data.batch_size, CFG.data.seed)
    return setup, to_numpy(state), chunk, data


@pytest.fixture(scope="module")
def manual_step(chunk_setup):
    """One optimizer step written out from the loss, independently of make_train_chunk."""
    setup, _, _, _ = chunk_setup
    tc = CFG.train

    @jax.jit
    def step(state, x):
        key = jax.random.fold_in(jax.random.key(tc.seed), state.step)

        def loss_fn(params):
            model = nnx.merge(setup.graphdef, params, setup.rest)
            return denoising_loss(
                model,
                CFG.process,
                x,
                key=key,
                prediction=CFG.method.prediction,
                weighting=Uniform(),
                t_min=CFG.method.t_min,
            )

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = setup.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return params, opt_state, loss, optax.tree.norm(grads)

    return step


def test_single_steps_match_manual_computation(chunk_setup, manual_step):
    _, state0, chunk, data = chunk_setup
    state = jax.tree.map(jnp.asarray, state0)
    d = CFG.train.ema_decay
    for step in range(2):  # step 0 (lr 0 during warm-up) and step 1 (lr = lr / 3)
        x = data.batches(step, 1)
        params, opt_state, loss, gnorm = manual_step(state, jnp.asarray(x[0]))
        new, metrics = chunk(copy(state), {"x": jnp.asarray(x)})
        assert int(new.step) == step + 1
        # Two float32 programs (the scanned chunk and this step): forward and backward passes
        # fused differently, so reductions differ by ~1e-6 relative; Adam's moments are
        # gradients, whose nearly cancelling entries get an absolute floor.
        np.testing.assert_allclose(float(metrics["loss"]), float(loss), rtol=1e-5)
        np.testing.assert_allclose(float(metrics["grad_norm"]), float(gnorm), rtol=1e-5)
        assert_trees_close(new.params, params, rtol=1e-5, atol=1e-7)
        assert_trees_close(new.opt_state, opt_state, rtol=1e-5, atol=1e-7)
        expected_ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema, new.params)
        # Exact up to float32 rounding: a fused multiply-add against two roundings, <= 2 ulp.
        assert_trees_close(new.ema, expected_ema, rtol=1e-6, atol=1e-9)
        state = new
    # Step 1 ran with lr = 1e-2 / 3: the raw parameters moved, and the EMA moved a tenth as far.
    moved = max_abs_diff(state.params, state0.params)
    assert 1e-3 < moved < 1e-2
    assert max_abs_diff(state.ema, state0.params) < 0.2 * moved


def test_step_key_depends_on_step(chunk_setup, manual_step):
    # The same batch at steps 0 and 1 draws different (t, eps): the loss differs.
    _, state0, _, data = chunk_setup
    x = jnp.asarray(data.batch(0))
    state = jax.tree.map(jnp.asarray, state0)
    loss0 = float(manual_step(state, x)[2])
    loss1 = float(manual_step(state._replace(step=jnp.int32(1)), x)[2])
    assert abs(loss0 - loss1) > 1e-4


def test_two_chunks_of_five_equal_one_chunk_of_ten(chunk_setup):
    _, state0, chunk, data = chunk_setup
    xs = jnp.asarray(data.batches(0, 10))
    start = jax.tree.map(jnp.asarray, state0)
    s10, m10 = chunk(copy(start), {"x": xs})
    s5, m5a = chunk(copy(start), {"x": xs[:5]})
    s5, m5b = chunk(s5, {"x": xs[5:]})
    assert int(s10.step) == int(s5.step) == 10
    assert_trees_equal(to_numpy(s5), to_numpy(s10))  # the same scan body, step by step
    np.testing.assert_allclose(
        float(m10["loss"]), (float(m5a["loss"]) + float(m5b["loss"])) / 2, rtol=1e-6
    )
    assert max_abs_diff(s10.params, state0.params) > 1e-2  # ten steps did train


# --------------------------------------------------------------------------- train() on disk


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]


def checkpoint_steps(workdir):
    ckpt = Checkpointer(workdir / CHECKPOINT_DIR, read_only=True)
    try:
        return ckpt.all_steps()
    finally:
        ckpt.close()


@pytest.fixture(scope="module")
def run40(shared_chunk, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run40")
    calls = []
    setup, state = train(CFG, workdir, progress=False, on_chunk=lambda s, r: calls.append(s))
    return workdir, setup, to_numpy(state), calls


@pytest.fixture(scope="module")
def resumed60(shared_chunk, run40, tmp_path_factory):
    src = run40[0]
    workdir = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(src, workdir)
    calls = []
    _, state = train(CFG60, workdir, progress=False, on_chunk=lambda s, r: calls.append(s))
    return workdir, to_numpy(state), calls


@pytest.fixture(scope="module")
def fresh60(shared_chunk, run40, tmp_path_factory):
    src = run40[0]
    workdir = tmp_path_factory.mktemp("fresh") / "run"
    shutil.copytree(src, workdir)
    calls = []
    started = time.time()
    _, state = train(
        CFG60, workdir, fresh=True, progress=False, on_chunk=lambda s, r: calls.append(s)
    )
    return workdir, to_numpy(state), calls, started


def test_train_writes_config(run40):
    workdir = run40[0]
    assert load_config_json(workdir / CONFIG_FILE) == CFG


def test_train_writes_metrics(run40):
    workdir, _, state, calls = run40
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert calls == [10, 20, 30, 40]
    for r in records:
        assert set(r) == {"step", "loss", "grad_norm", "lr", "steps_per_sec", "time"}
        assert np.isfinite(r["loss"]) and r["loss"] > 0
        assert r["grad_norm"] > 0
        assert r["lr"] == pytest.approx(CFG.train.lr, rel=1e-6)  # past the 3 warm-up steps
        assert r["steps_per_sec"] > 0
    assert int(state.step) == 40


def test_train_writes_checkpoints(run40):
    workdir = run40[0]
    assert checkpoint_steps(workdir) == [20, 40]


def test_resume_continues_bit_for_bit(run40, resumed60, fresh60):
    workdir, state, calls = resumed60
    assert calls == [50, 60]  # only the missing chunks ran
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[:4] == read_metrics(run40[0])  # appended to the old log
    assert checkpoint_steps(workdir) == [20, 40, 60]
    assert int(state.step) == 60
    straight = fresh60[1]
    assert_trees_equal(state.params, straight.params)
    assert_trees_equal(state.ema, straight.ema)
    assert_trees_equal(state.opt_state, straight.opt_state)
    assert max_abs_diff(state.params, run40[2].params) > 1e-3  # 20 more steps changed something


def test_fresh_discards_the_old_run(fresh60):
    workdir, state, calls, started = fresh60
    assert calls == [10, 20, 30, 40, 50, 60]  # started from step 0, not from checkpoint 40
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert all(r["time"] >= started for r in records)  # the old log was deleted
    assert checkpoint_steps(workdir) == [20, 40, 60]
    assert load_config_json(workdir / CONFIG_FILE) == CFG60
    assert int(state.step) == 60


@pytest.mark.parametrize(
    "change, field",
    [
        (
            lambda c: dataclasses.replace(c, model=dataclasses.replace(c.model, hidden=32)),
            "model.hidden",
        ),
        (lambda c: dataclasses.replace(c, process=VPLinear(beta_max=10.0)), "process.beta_max"),
        (
            lambda c: dataclasses.replace(c, data=dataclasses.replace(c.data, name="moons")),
            "data.name",
        ),
        (
            lambda c: dataclasses.replace(c, train=dataclasses.replace(c.train, seed=8)),
            "train.seed",
        ),
    ],
)
def test_incompatible_workdir_is_refused(run40, tmp_path, change, field):
    workdir = tmp_path / "run"
    shutil.copytree(run40[0], workdir)
    before = (workdir / CONFIG_FILE).read_text()
    with pytest.raises(ConfigError) as info:
        train(change(CFG), workdir, progress=False)
    assert field in str(info.value)
    assert (workdir / CONFIG_FILE).read_text() == before  # nothing was overwritten


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_restore_run_returns_trained_weights(run40, weights):
    workdir, _, trained, _ = run40
    config, _, step, params = restore_run(workdir, weights=weights)
    assert config == CFG
    assert step == 40
    _, _, state = restore_train_state(workdir)
    assert_trees_equal(to_numpy(state), trained)
    assert_trees_equal(to_numpy(params), trained.ema if weights == "ema" else trained.params)
    assert max_abs_diff(trained.ema, trained.params) > 1e-5  # the two choices do differ


def test_restore_run_rejects_unknown_weights(run40):
    with pytest.raises(ValueError, match="ema, raw or sigma_rel=S"):
        restore_run(run40[0], weights="best")


def test_restore_run_without_checkpoint(tmp_path):
    workdir = tmp_path / "empty"
    workdir.mkdir()
    (workdir / CONFIG_FILE).write_text(json.dumps(config_to_dict(CFG)))
    with pytest.raises(FileNotFoundError):
        restore_run(workdir)
