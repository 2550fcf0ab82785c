"""Tests for genflow.data._images: TFDS image batches through grain, without TensorFlow."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from genflow.data._digits import build_digits, digits_arrays
from genflow.data._images import (
    DatasetNotPreparedError,
    ImageBatches,
    default_data_dir,
    prepare_command,
    prepare_dataset,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    build_digits("digits", path)
    return path


def _stream(data_dir, **kwargs):
    kwargs.setdefault("batch_size", 16)
    kwargs.setdefault("cache", False)  # a few batches read faster than the whole split
    return ImageBatches("digits", data_dir=data_dir, **kwargs)


def _as_float(images):
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def test_training_never_imports_tensorflow(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from genflow.data._images import ImageBatches
        stream = ImageBatches("digits16", batch_size=8, seed=1, data_dir={str(tmp_path)!r},
                              random_flip=True, cache=False)
        out = stream.batches(0, 3)
        assert out["x"].shape == (3, 8, 16, 16, 1), out["x"].shape
        print("tensorflow" in sys.modules, sorted(m for m in sys.modules if "tensorflow." in m
                                                  and not m.startswith("tensorflow_datasets"))[:3])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False []"


@pytest.mark.parametrize(("name", "shape"), [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_mock_tfds_data_sets(tmp_path, name, shape):
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        stream = ImageBatches(name, batch_size=5, seed=3, data_dir=tmp_path)
        assert stream.data_shape == shape
        assert stream.num_classes == 10
        assert stream.num_examples == 24
        out = stream.batches(0, 6)  # 30 images: crosses into the second epoch
        source = tfds.data_source(name, split="train", data_dir=tmp_path)
        for step in (0, 5):
            expected = np.stack([source[int(i)]["image"] for i in stream.indices(step)])
            labels = [source[int(i)]["label"] for i in stream.indices(step)]
            np.testing.assert_array_equal(out["x"][step], _as_float(expected))
            np.testing.assert_array_equal(out["label"][step], labels)
    assert out["x"].shape == (6, 5, *shape) and out["x"].dtype == np.float32
    assert out["label"].dtype == np.int32
    assert out["x"].min() >= -1.0 and out["x"].max() <= 1.0
    assert out["x"].min() < -0.9 and out["x"].max() > 0.9  # the full range is used


def test_shape_and_classes_without_a_batch(data_dir):
    stream = _stream(data_dir, cache=True)
    assert (stream.data_shape, stream.num_classes, stream.num_examples) == ((8, 8, 1), 10, 1500)
    assert "_records" not in vars(stream)  # no image was read
    assert _stream(data_dir, split="test").num_examples == 297


def test_batches_are_the_split_images_scaled_to_unit_interval(data_dir):
    images, labels = digits_arrays("digits", "train")
    for cache in (True, False):
        stream = _stream(data_dir, seed=4, cache=cache)
        idx = stream.indices(2)
        out = stream.batch(2)
        assert out["x"].dtype == np.float32 and out["label"].dtype == np.int32
        np.testing.assert_array_equal(out["x"], _as_float(images[idx]))
        np.testing.assert_array_equal(out["label"], labels[idx])
    assert out["x"].min() == -1.0 and out["x"].max() == 1.0  # 0 -> -1, 255 -> 1


def test_deterministic_per_seed(data_dir):
    a = _stream(data_dir, seed=7).batches(3, 2)
    b = _stream(data_dir, seed=7).batches(3, 2)
    c = _stream(data_dir, seed=8).batches(3, 2)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["x"], c["x"])


def test_resume_replays_the_same_batches(data_dir):
    stream = _stream(data_dir, seed=2, random_flip=True)
    run = stream.batches(90, 6)  # steps 90..95 cross the epoch boundary at 1500 / 16 = 93.75
    resumed = _stream(data_dir, seed=2, random_flip=True)  # a fresh object, as after a restart
    for i in range(6):
        one = resumed.batch(90 + i)
        np.testing.assert_array_equal(run["x"][i], one["x"])
        np.testing.assert_array_equal(run["label"][i], one["label"])
    assert stream.epoch(93) == 0 and stream.epoch(94) == 1


def test_every_epoch_is_a_fresh_permutation(data_dir):
    stream = _stream(data_dir, batch_size=64, seed=5)
    n = stream.num_examples
    idx = np.concatenate([stream.indices(k) for k in range(3 * n // 64 + 1)])
    epochs = [idx[e * n : (e + 1) * n] for e in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(n))


def test_flips_only_when_enabled(data_dir):
    images, _ = digits_arrays("digits", "train")
    for flip in (False, True):
        stream = _stream(data_dir, batch_size=64, seed=9, random_flip=flip)
        masks = []
        for step in range(3):
            x, idx = stream.batch(step)["x"], stream.indices(step)
            mask = []
            for got, image in zip(x, _as_float(images[idx])):
                if np.array_equal(image, image[:, ::-1]):
                    continue  # symmetric: tells nothing
                is_plain, is_mirror = (
                    np.array_equal(got, image),
                    np.array_equal(got, image[:, ::-1]),
                )
                assert is_plain or is_mirror
                mask.append(is_mirror)
            masks.append(np.array(mask))
        mirrored = np.concatenate(masks)
        if flip:
            assert 0.3 < mirrored.mean() < 0.7
            # Fresh draws each step, not one pattern repeated per position in the batch.
            assert not np.array_equal(masks[0][:40], masks[1][:40])
        else:
            assert not mirrored.any() and mirrored.size > 100


def test_shards_are_disjoint_and_cover_the_split(data_dir):
    count, n = 3, 1500
    shards = []
    for index in range(count):
        stream = _stream(data_dir, batch_size=50, seed=1, shard_index=index, shard_count=count)
        assert stream.num_examples == n // count
        steps = stream.num_examples // stream.batch_size
        shards.append(np.concatenate([stream.indices(k) for k in range(steps)]))
    images, _ = digits_arrays("digits", "train")
    for cache in (False, True):  # the cache holds this shard only
        stream = _stream(data_dir, batch_size=50, seed=1, shard_index=2, shard_count=3, cache=cache)
        np.testing.assert_array_equal(stream.batch(1)["x"], _as_float(images[stream.indices(1)]))
    union = np.concatenate(shards)
    np.testing.assert_array_equal(np.sort(union), np.arange(n))  # disjoint and covering
    assert not np.array_equal(shards[0] % count, shards[1] % count)


def test_uneven_shards_differ_by_at_most_one(data_dir):
    sizes = [
        _stream(data_dir, split="test", shard_index=i, shard_count=4).num_examples for i in range(4)
    ]
    assert sizes == [75, 74, 74, 74] and sum(sizes) == 297


def test_num_epochs_ends_the_stream(data_dir):
    stream = _stream(data_dir, batch_size=100, num_epochs=2)
    assert stream.num_steps == 30
    assert stream.batch(29)["x"].shape == (100, 8, 8, 1)
    with pytest.raises(ValueError, match="past the end"):
        stream.batch(30)
    assert _stream(data_dir).num_steps is None


def test_grain_dataset_serves_the_same_batches(data_dir):
    stream = _stream(data_dir, seed=6, random_flip=True, num_epochs=1)
    dataset = stream.as_grain_dataset()
    assert len(dataset) == stream.num_steps == 1500 // 16
    np.testing.assert_array_equal(dataset[4]["x"], stream.batch(4)["x"])
    import grain

    options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=1)
    first = next(iter(dataset[7:].to_iter_dataset(options)))
    np.testing.assert_array_equal(first["label"], stream.batch(7)["label"])


def test_not_prepared_error_names_the_command(tmp_path):
    for name in ("mnist", "no_such_data_set"):
        with pytest.raises(DatasetNotPreparedError) as info:
            ImageBatches(name, batch_size=4, data_dir=tmp_path).batch(0)
        assert isinstance(info.value, FileNotFoundError)
        assert f"genflow data prepare {name} --data-dir {tmp_path}" in str(info.value)
    assert (
        prepare_command("cifar10", tmp_path)
        == f"genflow data prepare cifar10 --data-dir {tmp_path}"
    )


def test_digits_are_built_on_first_use(tmp_path):
    stream = ImageBatches("digits16", batch_size=4, data_dir=tmp_path, split="test")
    assert stream.data_shape == (16, 16, 1)
    assert (tmp_path / "digits16" / "1.0.0" / "dataset_info.json").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed"
)
def test_preparing_a_catalogue_data_set_without_tensorflow_says_what_to_install(tmp_path):
    with pytest.raises(ImportError, match=r"pip install -e '\.\[tfds\]'"):
        prepare_dataset("mnist", data_dir=tmp_path)


def test_prepare_dataset_builds_digits(tmp_path):
    path = prepare_dataset("digits", data_dir=tmp_path)
    assert path == tmp_path / "digits" / "1.0.0"
    assert len(tfds.data_source("digits", split="test", data_dir=tmp_path)) == 297


def test_default_data_dir_follows_tfds(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    assert prepare_command("mnist") == f"genflow data prepare mnist --data-dir {tmp_path}"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert str(default_data_dir()).endswith("tensorflow_datasets")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"batch_size": 2.0}, TypeError),
        ({"batch_size": 4, "seed": -1}, ValueError),
        ({"batch_size": 4, "shard_index": 2, "shard_count": 2}, ValueError),
        ({"batch_size": 4, "num_epochs": 0}, ValueError),
    ],
)
def test_bad_arguments_are_rejected(kwargs, error):
    with pytest.raises(error):
        ImageBatches("digits", **kwargs)


def test_missing_feature_is_a_clear_error(data_dir):
    with pytest.raises(ValueError, match="has no feature 'img'"):
        _ = _stream(data_dir, image_key="img").data_shape
