"""scikit-learn's handwritten digits as an offline TFDS data set (array_record, no TensorFlow).

``sklearn.datasets.load_digits`` ships 1797 real 8x8 grey-scale digits (values ``0..16``,
labels ``0..9``) inside scikit-learn, so these sets are built on the spot, without a download
and without TensorFlow, and read back like any other prepared TFDS data set
(``tfds.data_source(name, split=..., data_dir=...)``). Two variants:

- ``"digits"``: ``8x8x1`` uint8. A value ``v in {0..16}`` becomes ``floor(v * 255 / 16 + 1/2)``
  (round half up; ``0 -> 0``, ``8 -> 128``, ``16 -> 255``).
- ``"digits16"``: ``16x16x1`` uint8. The ``0..16`` image is upsampled by 2 with bilinear
  interpolation on pixel centres (output pixel ``i`` samples input coordinate
  ``(i + 1/2) / 2 - 1/2``, i.e. weights ``(3/4, 1/4)`` towards the nearer neighbour, borders
  clamped; the same as ``jax.image.resize(..., method="bilinear")``), then scaled and rounded as
  above.

Splits are fixed and stratified: ``"train"`` (1500 images) and ``"test"`` (297 images). Class
``c`` with ``n_c`` images puts ``t_c`` of them into ``"test"``, where the ``t_c`` apportion 297 by
largest remainders of ``297 n_c / 1797`` (ties to the smaller class); which images go is decided
by ``numpy.random.default_rng(DIGITS_SPLIT_SEED).permutation(1797)``: per class, the first
``t_c`` images in permuted order. Inside each split the images keep sklearn's order.

The files are written by a TFDS ``GeneratorBasedBuilder`` in array_record format, images as PNG
(encoded with Pillow), into a temporary ``incomplete.*`` directory that is renamed into place only
when complete, so an interrupted build never leaves a data set that looks prepared.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np

DIGITS_DATASETS: tuple[str, ...] = ("digits", "digits16")
"""Names of the built-in, offline digit data sets."""

DIGITS_VERSION = "1.0.0"
"""TFDS version of the digit data sets; bump it whenever their construction changes."""

DIGITS_SPLIT_SEED = 20_240_501
"""Seed of the permutation that decides the fixed train/test split."""

DIGITS_NUM_TEST = 297
"""Images in the ``"test"`` split (the other 1500 are ``"train"``)."""

_SHAPES = {"digits": (8, 8, 1), "digits16": (16, 16, 1)}


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _SHAPES:
        raise ValueError(
            f"Unknown digits data set {name!r}; use one of {', '.join(map(repr, DIGITS_DATASETS))}."
        )
    return name


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Map ``[0, 16]`` to ``{0..255}`` as ``floor(v * 255 / 16 + 1/2)``."""
    return np.floor(values * (255.0 / 16.0) + 0.5).astype(np.uint8)


def _upsample2_bilinear(images: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling on pixel centres, borders clamped; ``(n, h, w) -> (n, 2h, 2w)``."""

    def along(x: np.ndarray, axis: int) -> np.ndarray:
        x = np.moveaxis(x, axis, -1)
        prev = np.concatenate([x[..., :1], x[..., :-1]], axis=-1)  # x[k - 1], clamped
        nxt = np.concatenate([x[..., 1:], x[..., -1:]], axis=-1)  # x[k + 1], clamped
        out = np.empty(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        out[..., 0::2] = 0.75 * x + 0.25 * prev  # output 2k samples k - 1/4
        out[..., 1::2] = 0.75 * x + 0.25 * nxt  # output 2k + 1 samples k + 1/4
        return np.moveaxis(out, -1, axis)

    return along(along(images, 1), 2)


def _test_counts(labels: np.ndarray, num_test: int) -> np.ndarray:
    """Largest-remainder apportionment of ``num_test`` over the classes (ties: smaller class)."""
    counts = np.bincount(labels, minlength=10)
    quota = counts * num_test / counts.sum()
    out = np.floor(quota).astype(np.int64)
    remainder = quota - out
    order = sorted(range(len(counts)), key=lambda c: (-remainder[c], c))
    out[order[: num_test - out.sum()]] += 1
    return out


@functools.cache
def _split_masks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8) in 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    is_test = np.zeros(len(labels), dtype=bool)
    for c, t_c in enumerate(_test_counts(labels, DIGITS_NUM_TEST)):
        in_class = perm[labels[perm] == c]
        is_test[in_class[:t_c]] = True
    return values, labels, is_test


def digits_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of one split of a digits set, straight from scikit-learn.

    This is exactly what the prepared TFDS data set holds (see the module docstring for the
    construction), without reading any file.

    Args:
        name: ``"digits"`` or ``"digits16"``.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 ``(n, h, w, 1)`` and int64 ``(n,)`` with values ``0..9``;
        ``n`` is 1500 for ``"train"`` and 297 for ``"test"``.

    Raises:
        ValueError: If ``name`` or ``split`` is unknown.
    """
    name = _check_name(name)
    if split not in ("train", "test"):
        raise ValueError(f"Unknown split {split!r} of {name!r}; use 'train' or 'test'.")
    values, labels, is_test = _split_masks()
    keep = is_test if split == "test" else ~is_test
    images = values[keep]
    if name == "digits16":
        images = _upsample2_bilinear(images)
    return _to_uint8(images)[..., None], labels[keep].copy()


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def _builder_class(name: str) -> type:
    """A TFDS builder for one digits set, created on demand (TFDS is imported lazily)."""
    import tensorflow_datasets as tfds

    shape = _SHAPES[name]

    class _DigitsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(DIGITS_VERSION)
        RELEASE_NOTES = {DIGITS_VERSION: "scikit-learn digits, fixed stratified 1500/297 split."}
        # No source file with download checksums beside this builder (looking for one needs
        # the undeclared `importlib_resources` package).
        code_path = None

        def _info(self) -> tfds.core.DatasetInfo:
            return tfds.core.DatasetInfo(
                builder=self,
                description=(
                    f"scikit-learn's handwritten digits as {shape[0]}x{shape[1]} grey-scale "
                    "images (built offline by genflow)."
                ),
                features=tfds.features.FeaturesDict(
                    {
                        # Given as PNG bytes: TFDS would need TensorFlow to encode arrays.
                        "image": tfds.features.Image(shape=shape, encoding_format="png"),
                        "label": tfds.features.ClassLabel(num_classes=10),
                    }
                ),
                supervised_keys=("image", "label"),
                # Keep the examples in key order (sklearn's order) rather than hash order.
                disable_shuffling=True,
                homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            )

        def _split_generators(self, dl_manager):  # noqa: ARG002 - nothing to download
            return {split: self._generate_examples(split) for split in ("train", "test")}

        def _generate_examples(self, split):
            images, labels = digits_arrays(name, split)
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {"image": _png(image), "label": int(label)}

    _DigitsBuilder.name = name
    _DigitsBuilder.__name__ = _DigitsBuilder.__qualname__ = f"Digits_{name}"
    return _DigitsBuilder


def build_digits(name: str, data_dir: str | Path) -> Path:
    """Write a digits set as a TFDS array_record data set under ``data_dir``, if not there yet.

    Offline and without TensorFlow; takes about a second. The result is read by
    ``tfds.data_source(name, split=..., data_dir=data_dir)`` like any prepared TFDS data set.

    Args:
        name: ``"digits"`` or ``"digits16"``.
        data_dir: TFDS data directory; the set goes to ``data_dir/name/1.0.0``.

    Returns:
        The directory of the prepared data set.

    Raises:
        ValueError: If ``name`` is unknown.
    """
    name = _check_name(name)
    builder = _builder_class(name)(data_dir=str(data_dir), file_format="array_record")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(file_format="array_record")
        except OSError:
            # Another process may have finished the same build first: its rename won.
            if not builder.is_prepared():
                raise
    return Path(str(builder.data_dir))
