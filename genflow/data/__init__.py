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
    EIGHT_GAUSSIANS_SUPPORT_STDS as EIGHT_GAUSSIANS_SUPPORT_STDS,
    TOY_DATASETS as TOY_DATASETS,
    TOY_DENSITIES as TOY_DENSITIES,
    ToyBatches as ToyBatches,
    in_support as in_support,
    sample_toy as sample_toy,
    toy_log_density as toy_log_density,
    toy_support_mass as toy_support_mass,
)

__all__ = [
    "DIGITS_DATASETS",
    "DatasetNotPreparedError",
    "EIGHT_GAUSSIANS_SUPPORT_STDS",
    "ImageBatches",
    "PairBatches",
    "TOY_DATASETS",
    "TOY_DENSITIES",
    "ToyBatches",
    "build_digits",
    "default_data_dir",
    "digits_arrays",
    "in_support",
    "load_pairs",
    "prepare_command",
    "prepare_dataset",
    "sample_toy",
    "toy_log_density",
    "toy_support_mass",
]
