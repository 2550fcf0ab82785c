"""Evaluation metrics."""

from genflow.metrics._distances import (
    sliced_wasserstein2 as sliced_wasserstein2,
    sliced_wasserstein2_floor as sliced_wasserstein2_floor,
)

__all__ = ["sliced_wasserstein2", "sliced_wasserstein2_floor"]
