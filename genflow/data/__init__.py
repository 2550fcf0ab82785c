"""Data sources. Importing this package needs numpy only; heavier back ends load lazily."""

from genflow.data._pairs import PairBatches as PairBatches, load_pairs as load_pairs
from genflow.data._toy import (
    TOY_DATASETS as TOY_DATASETS,
    ToyBatches as ToyBatches,
    sample_toy as sample_toy,
)

__all__ = ["TOY_DATASETS", "PairBatches", "ToyBatches", "load_pairs", "sample_toy"]
