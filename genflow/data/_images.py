"""Image data sets from TFDS, read through grain, with no TensorFlow at training time.

A prepared TFDS data set in array_record format is opened with
``tfds.data_source(name, split=split, data_dir=data_dir)``, a random-access sequence of
``{"image": uint8 (h, w, c), "label": int}`` records (PNG decoding uses Pillow, not
TensorFlow). :class:`ImageBatches` turns it into training batches:

    split -> shard [shard_index::shard_count] -> per-epoch seeded permutation -> batch
          -> float32 in [-1, 1] (+ seeded random flips)

Every stage is random access, so the batch of step ``k`` is a pure function of ``(seed, k)``
and resuming a run at step ``k`` replays exactly the batches it would have seen (as
:class:`ToyBatches` does). ``ImageBatches.as_grain_dataset()`` is the same stream as a grain
``MapDataset`` of batches, for reading ahead in background threads or processes.

Preparing a public data set (``genflow data prepare NAME --data-dir DIR``, i.e.
:func:`prepare_dataset`) is the only step that downloads anything and needs TensorFlow
(``pip install -e '.[tfds]'`` in the checkout). The built-in ``"digits"`` and ``"digits16"`` sets are made
from scikit-learn's digits on first use, offline and without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from genflow.data._digits import DIGITS_DATASETS, build_digits
from genflow.data._toy import _check_count

_AUTO_CACHE_BYTES = 64 * 2**20
# Second entries of the seed sequences, so that shuffles and flips draw independent streams.
_SHUFFLE_STREAM = 0x73687566  # b"shuf"
_FLIP_STREAM = 0x666C6970  # b"flip"


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS data set is not (fully) prepared in the data directory; the message says the
    command that prepares it."""


def default_data_dir() -> Path:
    """TFDS's default data directory: ``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets``."""
    return Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    return default_data_dir() if data_dir is None else Path(data_dir).expanduser()


def prepare_command(name: str, data_dir: str | os.PathLike[str] | None = None) -> str:
    """The shell command that prepares data set ``name`` in ``data_dir``."""
    return f"genflow data prepare {name} --data-dir {_resolve_data_dir(data_dir)}"


def _not_prepared(name: str, data_dir: Path, detail: str = "") -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"Image data set {name!r} is not prepared in {data_dir}{detail}. Prepare it once "
        f"(this downloads it) with:\n    {prepare_command(name, data_dir)}"
    )


def prepare_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Prepare a TFDS image data set in array_record format (``genflow data prepare``).

    ``"digits"`` and ``"digits16"`` are built from scikit-learn's digits, offline and without
    TensorFlow (see :mod:`genflow.data._digits`). Any other name is a TFDS catalogue name
    (``"mnist"``, ``"cifar10"``, ``"mnist:3.0.1"``, ...) and goes through
    ``tfds.builder(name, data_dir=...).download_and_prepare(file_format="array_record")``,
    which downloads the data and needs TensorFlow, the optional ``tfds`` extra. A data set that
    is already prepared is left as it is.

    Args:
        name: Data set name.
        data_dir: TFDS data directory; default :func:`default_data_dir`.

    Returns:
        The directory of the prepared data set, ``data_dir/name/version``.

    Raises:
        ImportError: If a catalogue data set is asked for and TensorFlow is not installed.
    """
    data_dir = _resolve_data_dir(data_dir)
    if name in DIGITS_DATASETS:
        return build_digits(name, data_dir)
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    if not builder.is_prepared():
        if importlib.util.find_spec("tensorflow") is None:
            raise ImportError(
                f"Preparing the TFDS data set {name!r} needs TensorFlow (only this once: training "
                "reads it without). Install the extra from the genflow checkout with:\n    pip install -e '.[tfds]'"
            )
        builder.download_and_prepare(file_format="array_record")
    return Path(str(builder.data_dir))


def _open_source(name: str, split: str, data_dir: Path) -> Any:
    """``tfds.data_source`` for one split, turning TFDS's failures into clear errors."""
    import tensorflow_datasets as tfds

    if name in DIGITS_DATASETS:
        build_digits(name, data_dir)  # built on first use; a no-op once there
    try:
        return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)
    except tfds.core.DatasetNotFoundError:
        raise _not_prepared(name, data_dir, " (or is not a TFDS data set name)") from None
    except Exception as err:
        # TFDS reports a missing data set as an unsupported (TFRecord) format; tell them apart.
        builder = tfds.builder(name, data_dir=str(data_dir))
        if not builder.is_prepared():
            raise _not_prepared(name, data_dir) from None
        file_format = builder.info.file_format
        if getattr(file_format, "value", file_format) != "array_record":
            raise ValueError(
                f"Image data set {name!r} in {builder.data_dir} is stored as {file_format}, which "
                "has no random access. Delete that directory and prepare it again as array_record "
                f"with:\n    {prepare_command(name, data_dir)}"
            ) from err
        raise


class _Records:
    """Random-access ``(image uint8 (h, w, c), label int32)`` records of one shard of a split.

    Reads through the TFDS source, or from numpy arrays holding the whole shard once
    :meth:`cached` has loaded them (one pass over the shard's examples).
    """

    def __init__(
        self,
        source: Any,
        shard: range,
        image_key: str,
        label_key: str | None,
        shape: tuple[int, ...],
    ):
        self._source = source
        self._shard = shard
        self._image_key = image_key
        self._label_key = label_key
        self._shape = shape
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def _read(self, index: int) -> tuple[np.ndarray, np.int32]:
        example = self._source[index]
        image = np.asarray(example[self._image_key])
        if image.dtype != np.uint8:
            raise ValueError(
                f"ImageBatches needs uint8 images; feature {self._image_key!r} is {image.dtype}."
            )
        if image.ndim == 2:
            image = image[:, :, None]
        label = 0 if self._label_key is None else example[self._label_key]
        return image, np.int32(label)

    def cached(self) -> _Records:
        if self._images is None:
            images = np.empty((len(self._shard), *self._shape), dtype=np.uint8)
            labels = np.empty((len(self._shard),), dtype=np.int32)
            for i, index in enumerate(self._shard):
                images[i], labels[i] = self._read(index)
            self._images, self._labels = images, labels
        return self

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images ``(k, h, w, c)`` and labels ``(k,)`` at the given split indices (in the shard)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            rows = (indices - self._shard.start) // self._shard.step
            return self._images[rows], self._labels[rows]
        images = np.empty((len(indices), *self._shape), dtype=np.uint8)
        labels = np.empty((len(indices),), dtype=np.int32)
        for i, index in enumerate(indices):
            images[i], labels[i] = self._read(int(index))
        return images, labels


def _to_model_input(
    images: np.ndarray, labels: np.ndarray, *, flip_seed: list[int] | None
) -> dict[str, np.ndarray]:
    """uint8 ``u`` -> ``u / 127.5 - 1`` in ``[-1, 1]``; with a ``flip_seed``, each image is
    mirrored left-right where ``default_rng(flip_seed).random(b) < 1/2``."""
    x = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    if flip_seed is not None:
        mirror = np.random.default_rng(flip_seed).random(x.shape[0]) < 0.5
        x[mirror] = x[mirror, :, ::-1]
    return {"x": x, "label": np.asarray(labels, dtype=np.int32)}


@dataclasses.dataclass(frozen=True)
class ImageBatches:
    """An endless (or ``num_epochs``-long), random-access stream of image batches from TFDS.

    Batch ``step`` holds the stream positions ``step * batch_size, ..., step * batch_size +
    batch_size - 1`` of this process's shard. With ``n`` examples in the shard, position ``p`` is
    example ``perm_e[p mod n]`` of epoch ``e = p // n``, where
    ``perm_e = numpy.random.default_rng([seed, S, e]).permutation(n)`` (``S`` a fixed constant
    that keeps shuffles apart from flips): every epoch visits each example of the shard exactly
    once, in its own order, and a batch may straddle two epochs. Images go from uint8 ``u`` to
    ``x = u / 127.5 - 1`` in ``[-1, 1]``; with ``random_flip`` image ``j`` of batch ``step`` is
    mirrored left-right where ``numpy.random.default_rng([seed, F, step]).random(batch_size)[j]
    < 1/2``. So ``batch(k)`` depends only on the fields and ``k`` (and the data set), any step
    can be computed on its own, and a resumed run replays exactly the same batches. A batch costs
    two small numpy draws and a gather from the cache (or ``batch_size`` reads from the array_record
    files); :meth:`as_grain_dataset` serves the same batches as a grain ``MapDataset`` for reading
    ahead in background threads or processes.

    The data set is opened on first use of a property or a batch; images are read through
    ``tfds.data_source`` (array_record, Pillow for PNG) and never through TensorFlow.
    ``"digits"`` and ``"digits16"`` are built in ``data_dir`` on first use; any other data set
    must have been prepared (:func:`prepare_dataset`), else :class:`DatasetNotPreparedError` names
    the command that does it.

    Attributes:
        name: TFDS data set name, e.g. ``"digits"``, ``"mnist"``, ``"cifar10"``.
        batch_size: Images per batch (per process), ``>= 1``.
        seed: Non-negative integer seed of the shuffle and of the flips.
        split: TFDS split, e.g. ``"train"``, ``"test"`` or ``"train[:90%]"``.
        data_dir: TFDS data directory; ``None`` means :func:`default_data_dir`.
        random_flip: Mirror images left-right at random (only for data where that is harmless:
            not for digits or text).
        num_epochs: Passes over the shard; ``None`` for an endless stream. The stream then has
            :attr:`num_steps` ``= num_epochs * n // batch_size`` batches (the incomplete last one
            is dropped).
        shard_index: This process's shard, ``0 <= shard_index < shard_count`` (e.g.
            ``jax.process_index()``).
        shard_count: Number of shards (e.g. ``jax.process_count()``). Shard ``i`` holds the
            examples ``i, i + shard_count, i + 2 shard_count, ...`` of the split: the shards are
            disjoint, cover the split, and differ in size by at most one.
        cache: Hold the shard's decoded images in memory after one pass over it. ``None`` caches
            when they take at most 64 MiB (digits, MNIST, not CIFAR-10).
        image_key: Name of the image feature (uint8, ``(h, w, c)`` or ``(h, w)``).
        label_key: Name of the integer label feature, or ``None`` for unlabelled data (labels
            are then all 0).

    Examples:
        >>> stream = ImageBatches("digits", batch_size=32, seed=0, data_dir=tmp_dir)
        ... # doctest: +SKIP
        >>> stream.data_shape, stream.num_classes  # doctest: +SKIP
        ((8, 8, 1), 10)
        >>> stream.batch(3)["x"].shape, stream.batches(10, 4)["label"].shape  # doctest: +SKIP
        ((32, 8, 8, 1), (4, 32))
    """

    name: str
    batch_size: int
    seed: int = 0
    split: str = "train"
    data_dir: str | os.PathLike[str] | None = None
    random_flip: bool = False
    num_epochs: int | None = None
    shard_index: int = 0
    shard_count: int = 1
    cache: bool | None = None
    image_key: str = "image"
    label_key: str | None = "label"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ImageBatches.name must be a TFDS data set name, got {self.name!r}.")
        _check_count(self.batch_size, "ImageBatches.batch_size", minimum=1)
        _check_count(self.seed, "ImageBatches.seed", minimum=0)
        if self.num_epochs is not None:
            _check_count(self.num_epochs, "ImageBatches.num_epochs", minimum=1)
        count = _check_count(self.shard_count, "ImageBatches.shard_count", minimum=1)
        index = _check_count(self.shard_index, "ImageBatches.shard_index", minimum=0)
        if index >= count:
            raise ValueError(
                f"ImageBatches.shard_index must be < shard_count = {count}, got {index}."
            )

    # -- metadata (no batch drawn) ------------------------------------------------------------

    @functools.cached_property
    def _source(self) -> Any:
        return _open_source(self.name, self.split, _resolve_data_dir(self.data_dir))

    @functools.cached_property
    def _features(self) -> Any:
        features = self._source.dataset_info.features
        keys = [self.image_key] + ([] if self.label_key is None else [self.label_key])
        for key in keys:
            if key not in features:
                raise ValueError(
                    f"Data set {self.name!r} has no feature {key!r}; its features are "
                    f"{sorted(features.keys())} (set image_key / label_key)."
                )
        return features

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one image, from the TFDS features."""
        shape = tuple(self._features[self.image_key].shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3 or any(d is None for d in shape):
            raise ValueError(
                f"ImageBatches needs images of one fixed shape; {self.name!r} has {shape}."
            )
        return shape  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        """Number of label classes (TFDS ``ClassLabel.num_classes``), ``None`` without labels."""
        if self.label_key is None:
            return None
        return getattr(self._features[self.label_key], "num_classes", None)

    @property
    def num_examples(self) -> int:
        """Examples in this process's shard of the split (one epoch)."""
        return len(range(self.shard_index, len(self._source), self.shard_count))

    @property
    def num_steps(self) -> int | None:
        """Batches in the stream: ``num_epochs * num_examples // batch_size``, or ``None``."""
        if self.num_epochs is None:
            return None
        return self.num_epochs * self.num_examples // self.batch_size

    def epoch(self, step: int) -> int:
        """The epoch of the first image of batch ``step``, ``step * batch_size // num_examples``."""
        return _check_count(step, "step", minimum=0) * self.batch_size // self.num_examples

    # -- batches ------------------------------------------------------------------------------

    @functools.cached_property
    def _shard(self) -> np.ndarray:
        """Split indices of this process's examples, ``shard_index::shard_count``."""
        shard = np.arange(self.shard_index, len(self._source), self.shard_count, dtype=np.int64)
        if shard.size == 0:
            raise ValueError(
                f"Shard {self.shard_index} of {self.shard_count} of {self.name!r} "
                f"split {self.split!r} is empty."
            )
        return shard

    @functools.cached_property
    def _permutations(self) -> tuple[threading.Lock, dict[int, np.ndarray]]:
        return threading.Lock(), {}

    def _permutation(self, epoch: int) -> np.ndarray:
        """Order of the shard in ``epoch``: ``default_rng([seed, "shuf", epoch]).permutation``."""
        lock, cached = self._permutations  # grain may call batch() from several threads
        with lock:
            if epoch not in cached:
                if len(cached) >= 4:  # consecutive steps need the last one or two epochs only
                    del cached[min(cached)]
                rng = np.random.default_rng([self.seed, _SHUFFLE_STREAM, epoch])
                cached[epoch] = rng.permutation(self._shard.size)
            return cached[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Indices into the split (not the shard) of the images of batch ``step``, int64 ``(b,)``."""
        step = self._check_step(step)
        n = self._shard.size
        positions = step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        epochs, within = np.divmod(positions, n)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            out[here] = self._shard[self._permutation(int(epoch))[within[here]]]
        return out

    def _check_step(self, step: int) -> int:
        step = _check_count(step, "step", minimum=0)
        if self.num_steps is not None and step >= self.num_steps:
            raise ValueError(
                f"step {step} is past the end of the stream ({self.num_steps} steps for "
                f"num_epochs={self.num_epochs}); use num_epochs=None for an endless stream."
            )
        return step

    @functools.cached_property
    def _records(self) -> _Records:
        shard = range(self.shard_index, len(self._source), self.shard_count)
        records = _Records(self._source, shard, self.image_key, self.label_key, self.data_shape)
        cache = self.cache
        if cache is None:
            cache = len(shard) * math.prod(self.data_shape) <= _AUTO_CACHE_BYTES
        return records.cached() if cache else records

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The batch of training step ``step`` (``>= 0``).

        Returns:
            ``{"x": float32 (batch_size, h, w, c) in [-1, 1], "label": int32 (batch_size,)}``.
        """
        images, labels = self._records.take(self.indices(step))
        flip_seed = [self.seed, _FLIP_STREAM, step] if self.random_flip else None
        return _to_model_input(images, labels, flip_seed=flip_seed)

    def as_grain_dataset(self) -> Any:
        """This stream as a ``grain.MapDataset`` whose element ``k`` is ``batch(k)``.

        Its length is :attr:`num_steps`, or ``sys.maxsize`` for an endless stream. Use it to read
        ahead in background threads or processes, e.g.
        ``iter(stream.as_grain_dataset()[start:].to_iter_dataset(grain.ReadOptions(num_threads=4)))``.
        """
        import grain

        length = sys.maxsize if self.num_steps is None else self.num_steps
        return grain.MapDataset.range(length).map(self.batch)

    def batches(self, start_step: int, count: int) -> dict[str, np.ndarray]:
        """The batches of steps ``start_step, ..., start_step + count - 1``, stacked.

        Exactly ``np.stack`` of :meth:`batch` over those steps, key by key.

        Returns:
            ``{"x": float32 (count, batch_size, h, w, c), "label": int32 (count, batch_size)}``.
        """
        start_step = _check_count(start_step, "start_step", minimum=0)
        count = _check_count(count, "count", minimum=0)
        out = {
            "x": np.empty((count, self.batch_size, *self.data_shape), dtype=np.float32),
            "label": np.empty((count, self.batch_size), dtype=np.int32),
        }
        for i in range(count):
            one = self.batch(start_step + i)
            out["x"][i] = one["x"]
            out["label"][i] = one["label"]
        return out
