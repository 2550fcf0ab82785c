"""Data sources. Importing this package needs numpy only; heavier back ends load lazily."""

from genflow.data._toy import (
    TOY_DATASETS as TOY_DATASETS,
    ToyBatches as ToyBatches,
    sample_toy as sample_toy,
)

__all__ = ["TOY_DATASETS", "ToyBatches", "sample_toy"]
