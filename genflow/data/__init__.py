"""Data sources. Importing this package needs numpy only; heavier back ends load lazily."""

from genflow.data._digits import (
    DIGITS_DATASETS as DIGITS_DATASETS,
    build_digits as build_digits,
    digits_arrays as digits_arrays,
)
from genflow.data._images import (
    DatasetNotPreparedError as DatasetNotPreparedError,
    ImageBatches as ImageBatches,
    default_data_dir as default_data_dir,
    prepare_command as prepare_command,
    prepare_dataset as prepare_dataset,
)
from genflow.data._pairs import PairBatches as PairBatches, load_pairs as load_pairs
from genflow.data._toy import (
    TOY_DATASETS as TOY_DATASETS,
    ToyBatches as ToyBatches,
    sample_toy as sample_toy,
)

__all__ = [
    "DIGITS_DATASETS",
    "DatasetNotPreparedError",
    "ImageBatches",
    "PairBatches",
    "TOY_DATASETS",
    "ToyBatches",
    "build_digits",
    "default_data_dir",
    "digits_arrays",
    "load_pairs",
    "prepare_command",
    "prepare_dataset",
    "sample_toy",
]
