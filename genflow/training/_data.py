"""Training batches of a config: toy sets, image data sets, reflow pairs, a second data set.

Every batch holds ``"x"``: data points times ``data.scale``, encoded by the method (GBM maps
them onto ``[1, 2]``); ``"x1"``: points of ``data.source`` (a method between two data sets);
``"eps"``: the noise ends of reflow pairs; ``"cond"``: the labels of a class-conditional
model. Everything is a function of the step index, so a resumed run sees the same batches.

**Image data sets** (``data.name`` not a toy set; :class:`~genflow.data.ImageBatches`) give
batches ``x: (b, H, W, C)`` in ``[-1, 1]`` (in a multi-process run, this process's share of
``b``, read from its own shard of the split; toy sets and pairs files give every process the
whole batch, which the loop splits by device); inside the jitted step :func:`drop_labels` replaces
each label by the null class ``model.num_classes`` with probability ``train.label_dropout``
(classifier-free guidance), with a key derived from the step's key.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genflow.config import Config, ConfigError
from genflow.data import DatasetNotPreparedError, ImageBatches, PairBatches, ToyBatches, load_pairs, sample_toy

Batches = Callable[[int, int], dict[str, np.ndarray]]
SOURCE_STREAM = 1  # ToyBatches stream of data.source, independent of data.name's stream 0
_CHECK_POINTS = 100_000
REFERENCE_SEED = 2**31 - 1  # seeds of held-out points: training never uses them


def image_batches(config: Config, *, per_process: bool = False) -> ImageBatches:
    """The :class:`~genflow.data.ImageBatches` of an image ``config.data`` (nothing is read
    until a property or a batch is asked for). ``per_process``: this process's share of a
    multi-process run, ``data.batch_size / process_count`` images of every batch from its own
    shard of the split (shard ``jax.process_index()``)."""
    dc = config.data
    shards = dict(batch_size=dc.batch_size)
    if per_process and jax.process_count() > 1:
        shards = dict(batch_size=dc.batch_size // jax.process_count(),
                      shard_index=jax.process_index(), shard_count=jax.process_count())
    return ImageBatches(dc.name, seed=dc.seed, split=dc.split, data_dir=dc.data_dir or None,
                        random_flip=dc.random_flip, **shards)


def _open_image_data(config: Config) -> tuple[ImageBatches, tuple[int, int, int]]:
    data = image_batches(config, per_process=True)
    try:
        shape = data.data_shape
    except DatasetNotPreparedError as exc:
        raise ConfigError(str(exc)) from None
    return data, shape


def data_shape_of(config: Config) -> tuple[int, ...]:
    """Shape of one training example: ``(d,)`` for a toy set, ``(H, W, C)`` for an image data
    set (read from its metadata; no batch is drawn).

    Raises:
      ConfigError: an image data set that is not prepared (the message gives the
        ``genflow data prepare`` command); ``digits`` and ``digits16`` build themselves.
    """
    if config.data.pairs:
        return tuple(load_pairs(config.data.pairs)[0].shape[1:])
    if config.data.images:
        return tuple(_open_image_data(config)[1])
    return tuple(ToyBatches(config.data.name, 1, config.data.seed).batch(0).shape[1:])


def drop_labels(labels: jax.Array, key: jax.Array, p: float, num_classes: int) -> jax.Array:
    """Classifier-free guidance's label dropout: each label becomes the null class
    ``num_classes`` where ``uniform(key) < p``, independently (``p = 0``: unchanged)."""
    if p == 0.0:
        return labels
    drop = jax.random.uniform(key, labels.shape) < p
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def reference_data(config: Config, num: int, seed: int) -> np.ndarray:
    """Fresh points of the toy set ``data.name`` (the ``t = 0`` end), from seeds that
    training never uses."""
    return sample_toy(config.data.name, num, seed=[REFERENCE_SEED, seed])


def source_data(config: Config, num: int, seed: int) -> np.ndarray | None:
    """Fresh ``t = 1`` points of ``data.source`` (times ``data.scale``, encoded), or ``None``
    when the run starts from its process's prior."""
    dc = config.data
    if not dc.source:
        return None
    x = dc.scale * sample_toy(dc.source, num, seed=[REFERENCE_SEED, seed, SOURCE_STREAM])
    return np.asarray(config.resolved.method.encode(x))


def make_batches(config: Config) -> Batches:
    """``batches(step, k)``: the training batches of steps ``step .. step + k - 1`` as arrays
    with a leading axis ``k`` (see the module notes). Checks the data against the method's
    encoding before anything is trained."""
    dc, method = config.data, config.resolved.method
    if dc.pairs:
        return PairBatches.from_file(dc.pairs, dc.batch_size, dc.seed).batches  # model space
    if dc.images:
        return _image_batch_fn(config)
    data = ToyBatches(dc.name, dc.batch_size, dc.seed)
    try:
        method.check_data(dc.scale * sample_toy(dc.name, _CHECK_POINTS, seed=[dc.seed, 2**31 - 2]))
    except ValueError as exc:
        raise ConfigError(f"data.name={dc.name}, data.scale={dc.scale}: {exc}") from None

    def encode(x):
        return np.asarray(method.encode(dc.scale * x), np.float32)

    if dc.source:
        source = ToyBatches(dc.source, dc.batch_size, dc.seed, stream=SOURCE_STREAM)
        return lambda step, k: {"x": encode(data.batches(step, k)),
                                "x1": encode(source.batches(step, k))}
    return lambda step, k: {"x": encode(data.batches(step, k))}


def _image_batch_fn(config: Config) -> Batches:
    dc, num_classes, method = config.data, config.model.num_classes, config.resolved.method
    data, _ = _open_image_data(config)
    if num_classes > 0:
        have = data.num_classes
        if have is None:
            raise ConfigError(f"model.num_classes={num_classes}, but data set {dc.name!r} has no "
                              "labels; set model.num_classes=0.")
        if have > num_classes:
            raise ConfigError(f"data set {dc.name!r} has {have} classes but model.num_classes="
                              f"{num_classes}; set model.num_classes={have}.")

    def batches(step, k):
        out = data.batches(step, k)
        x = out["x"] if dc.scale == 1.0 else np.float32(dc.scale) * out["x"]
        x = np.asarray(method.encode(x), np.float32)
        return {"x": x, "cond": out["label"]} if num_classes > 0 else {"x": x}

    return batches
