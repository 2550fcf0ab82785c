"""Orbax checkpoints of a TrainState: exact round trips, retention, and interrupted writes.

An interrupted save is simulated by what orbax 0.12.8 leaves on disk while writing step N: a
directory ``N.orbax-checkpoint-tmp`` holding ``_CHECKPOINT_METADATA`` and a half-written item
directory per item, such as ``params.orbax-checkpoint-tmp``; only the final rename to ``N`` makes it a checkpoint.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.config import Config, DataConfig, MLPConfig, TrainConfig
from genflow.training import Checkpointer, TrainState, has_checkpoint, init_train_state

TINY = Config(
    data=DataConfig(batch_size=16),
    model=MLPConfig(hidden=16, depth=1, embed_dim=8),
    train=TrainConfig(num_steps=10, steps_per_dispatch=5, checkpoint_every=5, log_every=5),
)


@pytest.fixture(scope="module")
def template():
    """A step-0 TrainState: the structure, shapes and dtypes to restore into."""
    return init_train_state(TINY, (2,))[1]


def make_state(template, seed, step):
    """A TrainState with distinct random values in every leaf (including the optimizer's)."""
    leaves, treedef = jax.tree.flatten(template)
    rng = np.random.default_rng(seed)
    new = []
    for leaf in leaves:
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.integer):
            new.append(jnp.asarray(rng.integers(0, 1000, size=leaf.shape).astype(leaf.dtype)))
        else:
            new.append(jnp.asarray(rng.normal(size=leaf.shape).astype(leaf.dtype)))
    state = jax.tree.unflatten(treedef, new)
    return state._replace(step=jnp.asarray(step, jnp.int32))


def assert_states_equal(a, b):
    assert isinstance(b, TrainState)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def save(directory, states, **kwargs):
    ckpt = Checkpointer(directory, **kwargs)
    try:
        for step, state in states.items():
            ckpt.save(step, state)
        ckpt.wait()
    finally:
        ckpt.close()


def restore(directory, step, target):
    ckpt = Checkpointer(directory, read_only=True)
    try:
        return ckpt.restore(step, target)
    finally:
        ckpt.close()


def test_roundtrip_is_exact(tmp_path, template):
    state = make_state(template, seed=1, step=123)
    save(tmp_path / "ck", {123: state})
    restored = restore(tmp_path / "ck", 123, template)
    assert int(restored.step) == 123
    assert_states_equal(state, restored)
    # Float parameters and the optimizer's integer count keep their dtypes.
    dtypes = {np.asarray(x).dtype for x in jax.tree.leaves(restored)}
    assert {np.dtype("float32"), np.dtype("int32")} <= dtypes


def test_latest_and_retention(tmp_path, template):
    states = {s: make_state(template, seed=s, step=s) for s in (5, 10, 15, 20)}
    save(tmp_path / "ck", states, max_to_keep=2)
    ckpt = Checkpointer(tmp_path / "ck", read_only=True)
    try:
        assert ckpt.all_steps() == [15, 20]
        assert ckpt.latest_step() == 20
        assert_states_equal(states[15], ckpt.restore(15, template))
        assert_states_equal(states[20], ckpt.restore(20, template))
    finally:
        ckpt.close()


def test_has_checkpoint(tmp_path, template):
    missing = tmp_path / "missing"
    assert has_checkpoint(missing) is False
    assert not missing.exists()  # looking does not create it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert has_checkpoint(empty) is False
    save(tmp_path / "ck", {1: make_state(template, seed=0, step=1)})
    assert has_checkpoint(tmp_path / "ck") is True


def fabricate_interrupted_save(directory, good_step, step):
    """Leave ``step`` as orbax does mid-write: a tmp directory with partial contents."""
    tmp = directory / f"{step}.orbax-checkpoint-tmp"
    shutil.copytree(directory / str(good_step), tmp)
    (tmp / "commit_success.txt").unlink(missing_ok=True)
    # Every item (params, ema, opt_state, step) half-written.
    for item in [p for p in tmp.iterdir() if p.is_dir()]:
        partial = item.with_name(item.name + ".orbax-checkpoint-tmp")
        shutil.move(item, partial)
        (partial / "commit_success.txt").unlink(missing_ok=True)
        (partial / "manifest.ocdbt").write_bytes(b"\x00partial")  # truncated write
    return tmp


def test_interrupted_write_is_ignored(tmp_path, template):
    directory = tmp_path / "ck"
    good = make_state(template, seed=3, step=10)
    save(directory, {10: good})
    tmp = fabricate_interrupted_save(directory, good_step=10, step=20)

    # Read-only (restore_run, has_checkpoint): the tmp directory is left alone but never seen.
    ckpt = Checkpointer(directory, read_only=True)
    try:
        assert ckpt.latest_step() == 10
        assert ckpt.all_steps() == [10]
        assert_states_equal(good, ckpt.restore(10, template))
    finally:
        ckpt.close()
    assert tmp.exists()
    assert has_checkpoint(directory) is True

    # Writable (train): the same step can be written again, and no leftover remains.
    ckpt = Checkpointer(directory)
    try:
        assert ckpt.latest_step() == 10
        newer = make_state(template, seed=4, step=20)
        ckpt.save(20, newer)
        ckpt.wait()
        assert ckpt.all_steps() == [10, 20]
        assert sorted(p.name for p in directory.iterdir()) == ["10", "20"]
        assert_states_equal(newer, ckpt.restore(20, template))
        assert_states_equal(good, ckpt.restore(10, template))
    finally:
        ckpt.close()


def test_only_an_interrupted_write_is_no_checkpoint(tmp_path, template):
    directory = tmp_path / "ck"
    save(directory, {10: make_state(template, seed=5, step=10)})
    fabricate_interrupted_save(directory, good_step=10, step=20)
    shutil.rmtree(directory / "10")
    assert has_checkpoint(directory) is False
    ckpt = Checkpointer(directory, read_only=True)
    try:
        assert ckpt.latest_step() is None
    finally:
        ckpt.close()
