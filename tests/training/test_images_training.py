"""Training the image networks (DiT, U-Net) on an image data set (digits, built offline into a
temporary data directory): finite losses, parameters that move, bit-for-bit resume with dropout
and label dropout, label dropout itself, and the config errors of image training."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from genflow.config import (
    Config,
    ConfigError,
    DataConfig,
    DiTConfig,
    UNetConfig,
    SampleConfig,
    TrainConfig,
    apply_overrides,
)
from genflow import methods
from genflow.processes import GeometricBrownianMotion, StochasticInterpolant, VPLinear
from genflow.training import (
    CHECKPOINT_DIR,
    SAMPLES_DIR,
    Checkpointer,
    data_shape_of,
    init_train_state,
    drop_labels,
    make_batches,
    make_train_chunk,
    model_fn_from,
)
from genflow.run import sampling, train

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def image_config(data_dir, model, **train):
    train_fields = dict(
        num_steps=4, lr=1e-3, warmup_steps=0, lr_decay="constant", ema_decay=0.9,
        steps_per_dispatch=2, log_every=2, checkpoint_every=2, seed=5, label_dropout=0.5,
    ) | train
    return Config(
        process=VPLinear(),
        data=DataConfig(name="digits", batch_size=8, seed=1, data_dir=data_dir),
        model=model,
        train=TrainConfig(**train_fields),
        sample=SampleConfig(sampler="ddim", num_steps=4, num_samples=4),
    )


DIT = DiTConfig(hidden=32, depth=1, num_heads=2, patch_size=2, embed_dim=16,
                  num_classes=NUM_CLASSES)
UNET = UNetConfig(channels=16, channel_mult=(1,), num_res_blocks=1, dropout=0.1,
                  embed_dim=16, attention_resolutions=())


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_equal(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_dit_conditional_trains_and_resumes_bit_for_bit(tmp_path, data_dir):
    """genflow.run.train() on digits with labels: finite losses, moving parameters; the run resumed from
    its step-2 checkpoint (step 4 deleted) ends exactly where the straight run did, dropped
    labels included (they are a function of the step). Sample grids are written every 2
    steps."""
    config = image_config(data_dir, DIT, sample_every=2)
    assert data_shape_of(config) == (8, 8, 1)
    batch = make_batches(config)(0, 2)
    assert batch["x"].shape == (2, 8, 8, 8, 1) and batch["cond"].shape == (2, 8)
    assert batch["cond"].dtype == np.int32 and batch["cond"].max() < NUM_CLASSES

    losses = []
    _, straight = train(config, tmp_path / "straight", progress=False,
                        on_chunk=lambda step, record: losses.append(record["loss"]))
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The EMA starts at the initial parameters and lags behind: unequal once params moved.
    assert any(not np.array_equal(p, e)
               for p, e in zip(leaves(straight.params), leaves(straight.ema)))

    _check_sample_cli(tmp_path / "straight")
    _check_inpaint_cli(tmp_path / "straight")
    _check_evaluate_cli(tmp_path / "straight")

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / CHECKPOINT_DIR / "4")
    shutil.rmtree(tmp_path / "resumed" / SAMPLES_DIR)
    assert sorted(path.name for path in (tmp_path / "resumed" / CHECKPOINT_DIR).iterdir()) == ["2"]
    _, resumed = train(config, tmp_path / "resumed", progress=False)
    assert int(resumed.step) == 4
    assert_trees_equal(straight, resumed)
    _check_sample_snapshots(tmp_path / "straight", tmp_path / "resumed")


def _check_sample_snapshots(straight, resumed):
    """100 samples, a row per class (10 x 10 tiles of 8x8 with 2-pixel padding); they change
    as the weights train, and the resumed run's last grid is the straight run's."""
    two, four = (straight / SAMPLES_DIR / f"step_000000{s}.png" for s in (2, 4))
    grids = [np.asarray(Image.open(path)) for path in (two, four)]
    assert all(g.shape == (2 + 10 * 10, 2 + 10 * 10) for g in grids)
    assert not np.array_equal(*grids)
    assert (resumed / SAMPLES_DIR / four.name).read_bytes() == four.read_bytes()


def test_unet_with_dropout_trains_and_resumes_bit_for_bit(tmp_path, data_dir):
    """Unconditional U-Net with dropout, one compiled chunk: two chunks straight, and the
    second chunk again from the step-2 state saved and restored through a checkpoint, equal
    bit for bit (the dropout masks are a function of the step, not of hidden state)."""
    config = image_config(data_dir, UNET)
    assert "cond" not in make_batches(config)(0, 1)
    setup, state0 = init_train_state(config, data_shape_of(config))
    chunk = make_train_chunk(config, setup)
    batches = make_batches(config)
    first, second = (jax.tree.map(jnp.asarray, batches(s, 2)) for s in (0, 2))
    at2, metrics_a = chunk(state0, first)
    at2_copy = jax.tree.map(jnp.copy, at2)
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(2, at2)
    ckpt.wait()
    straight, metrics_b = chunk(at2_copy, second)
    _, template = init_train_state(config, (8, 8, 1))
    restored = ckpt.restore(2, template)
    ckpt.close()
    resumed, metrics_c = chunk(restored, second)
    assert np.isfinite(float(metrics_a["loss"])) and np.isfinite(float(metrics_b["loss"]))
    assert any(not np.array_equal(p, e)
               for p, e in zip(leaves(straight.params), leaves(straight.ema)))
    assert int(resumed.step) == 4
    assert_trees_equal(straight, resumed)
    assert float(metrics_b["loss"]) == float(metrics_c["loss"])


def test_only_the_unet_with_dropout_gets_dropout_keys():
    assert UNET.uses_dropout
    assert not dataclasses.replace(UNET, dropout=0.0).uses_dropout
    assert not DIT.uses_dropout


def test_drop_labels():
    labels = jnp.asarray(np.random.default_rng(0).integers(0, NUM_CLASSES, 4000), jnp.int32)
    key = jax.random.key(3)
    kept = drop_labels(labels, key, 0.0, NUM_CLASSES)
    assert not np.any(np.asarray(kept) == NUM_CLASSES)
    np.testing.assert_array_equal(kept, labels)
    mostly = np.asarray(drop_labels(labels, key, 0.99, NUM_CLASSES))
    assert mostly.dtype == np.int32
    assert np.mean(mostly == NUM_CLASSES) > 0.97
    assert np.all((mostly == NUM_CLASSES) | (mostly == np.asarray(labels)))
    half = np.asarray(drop_labels(labels, key, 0.5, NUM_CLASSES))
    assert 0.45 < np.mean(half == NUM_CLASSES) < 0.55
    jitted = jax.jit(drop_labels, static_argnums=(2, 3))(labels, key, 0.5, NUM_CLASSES)
    np.testing.assert_array_equal(jitted, half)


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.name=unet"], "data.name"),  # image network on toy data (the old key)
        (["model=dit"], "data.name"),
        (["data.name=digits"], "data.name"),  # MLP on images
        (["model.num_classes=10"], "model.num_classes"),  # labels on toy data
        (["model.channel_mult=1,x"], "model.channel_mult"),
        (["model.attention_resolutions=0"], "model.attention_resolutions"),
        (["model.dropout=1.0"], "model.dropout"),
        (["train.label_dropout=1.0"], "train.label_dropout"),
        (["data.random_flip=true"], "data.random_flip"),  # an image-only field on toy data
        (["data.name=digits", "model.name=dit", "process=stochastic_interpolant",  # 2 fields
          "train.prediction=b+eta", "train.t_min=1e-3", "sample.sampler=interpolant_heun"],
         "predicts one field"),
    ],
)
def test_image_config_errors_name_the_field(overrides, key):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    assert key in str(info.value)


def test_unprepared_tfds_data_set_says_how_to_prepare_it(tmp_path):
    config = Config(
        data=DataConfig(name="mnist", batch_size=8, data_dir=str(tmp_path)),
        model=DiTConfig(hidden=32, depth=1),
    )
    with pytest.raises(ConfigError, match="genflow data prepare mnist"):
        data_shape_of(config)


def test_network_rejects_data_shape_as_config_error(data_dir):
    config = image_config(data_dir, dataclasses.replace(DIT, patch_size=3))
    with pytest.raises(ConfigError, match="patch_size"):
        init_train_state(config, data_shape_of(config))


def _check_sample_cli(workdir):
    """`genflow sample` on a class-conditional image run: a per-class PNG grid (row c holds
    class c) and the samples with their labels; --label and --guidance checked first."""
    from PIL import Image

    from genflow.cli import main

    out = workdir / "grid"
    assert main(["sample", "--workdir", str(workdir), "--num", "20", "--guidance", "2.0",
                 "--out", str(out)]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert saved["samples"].shape == (20, 8, 8, 1) and np.all(np.isfinite(saved["samples"]))
    # In the data range, as the PNG shows them; the sampler's raw output kept beside them.
    raw = saved["samples_raw"]
    np.testing.assert_array_equal(saved["samples"], np.clip(raw, -1.0, 1.0))
    assert saved["samples"].min() >= -1.0 and saved["samples"].max() <= 1.0
    assert np.abs(raw).max() > 1.0  # a 4-step DiT overshoots: the clipping is really tested
    np.testing.assert_array_equal(saved["labels"], np.arange(20) % NUM_CLASSES)
    assert float(saved["guidance"]) == 2.0
    with Image.open(out.with_suffix(".png")) as image:  # 2 per class in 10 rows, 2 px padding
        assert image.size == (2 * 10 + 2, 10 * 10 + 2)
    assert main(["sample", "--workdir", str(workdir), "--label", "10"]) == 2
    assert main(["sample", "--workdir", str(workdir), "--guidance", "-1"]) == 2


def _check_inpaint_cli(workdir):
    """`genflow inpaint`: the bottom halves of test digits generated, the top halves kept bit
    for bit; the PNG holds originals, inputs and results in three rows; bad masks refused."""
    from genflow.cli import main

    out = workdir / "filled"
    assert main(["inpaint", "--workdir", str(workdir), "--num", "3", "--steps", "2",
                 "--out", str(out)]) == 0
    saved = np.load(out.with_suffix(".npz"))
    original, result, mask = saved["original"], saved["result"], saved["mask"]
    assert result.shape == original.shape == (3, 8, 8, 1)
    assert mask[:4].all() and not mask[4:].any()
    np.testing.assert_array_equal(result[:, :4], original[:, :4])
    assert np.all(np.isfinite(result)) and not np.array_equal(result[:, 4:], original[:, 4:])
    with Image.open(out.with_suffix(".png")) as image:
        assert image.size == (2 + 3 * 10, 2 + 3 * 10)
    assert main(["inpaint", "--workdir", str(workdir), "--mask", "color"]) == 2  # gray digits
    assert main(["inpaint", "--workdir", str(workdir), "--mask", "diagonal"]) == 2
    assert main(["inpaint", "--workdir", str(workdir), "--sampler", "ode_adaptive"]) == 2


def _check_evaluate_cli(workdir):
    """`genflow evaluate` on images: bits/dim over the 297 test digits (positive: it bounds a
    discrete NLL from above), and the Fréchet and kernel distances of the digits' fallback
    features, named as such (never FID); a 4-step model is far from its data-vs-data floor."""
    import json

    from genflow.cli import main

    assert main(["evaluate", "--workdir", str(workdir), "--metrics", "nll,fd,kid",
                 "--num", "40"]) == 0
    record = json.loads((workdir / "metrics.jsonl").read_text().splitlines()[-1])
    nll, fd, kd = (record["evaluate"][m] for m in ("nll", "fd", "kid"))
    assert nll["unit"] == "bits/dim" and nll["num_examples"] == 297 and nll["value"] > 0
    assert fd["label"] == "FD_digits-mlp-d64" and kd["label"] == "KD_digits-mlp-d64"
    assert fd["value"] > 2 * fd["floor"] > 0 and kd["value"] > kd["floor"]
    assert main(["evaluate", "--workdir", str(workdir), "--metrics", "fd",
                 "--inception", str(workdir / "missing.npz")]) == 2


def test_guidance_on_an_unconditional_model_is_refused(data_dir):
    with pytest.raises(ConfigError, match="need a class-conditional model"):
        dataclasses.replace(image_config(data_dir, UNET), sample=SampleConfig(guidance=3.0))


@pytest.mark.parametrize("process, method, sample", [
    (GeometricBrownianMotion(mu=1.125, sigma=1.5), methods.GBM(),
     SampleConfig(sampler="gbm_exponential")),
    (StochasticInterpolant("linear", gamma="sqrt"), methods.Interpolant(fields="b", t_min=1e-3),
     SampleConfig(sampler="interpolant_heun")),
])
def test_gbm_and_interpolants_are_selectable_for_images(data_dir, process, method, sample):
    """The process set is the same for images: GBM sees the images mapped onto [1, 2]; an
    image interpolant starts from N(0, I) and learns one field. The loss and the sampler are
    traced (shapes only; the toy-data tests run them)."""
    base = image_config(data_dir, dataclasses.replace(DIT, num_classes=0))
    config = Config(process=process, method=method, data=base.data, model=base.model,
                    train=base.train,
                    sample=dataclasses.replace(sample, num_samples=4, num_steps=2))
    batch = jax.tree.map(lambda a: jnp.asarray(a[0]), make_batches(config)(0, 1))
    if isinstance(process, GeometricBrownianMotion):
        assert 1.0 <= float(batch["x"].min()) and float(batch["x"].max()) <= 2.0
    setup, state = init_train_state(config, data_shape_of(config))
    model_fn = model_fn_from(setup, state.params)
    loss = jax.eval_shape(config.resolved.method.loss, model_fn, batch, jax.random.key(0))
    assert loss.shape == ()
    draw = sampling(config).draw
    x, _ = jax.eval_shape(draw, model_fn, jax.random.key(0), None)
    assert x.shape == (4, 8, 8, 1)
    with pytest.raises(ConfigError, match="predicts one field"):
        dataclasses.replace(config, method=methods.Interpolant(fields="b+eta", t_min=1e-3),
            process=StochasticInterpolant("linear", gamma="sqrt"),
            sample=SampleConfig(sampler="interpolant_heun"))
