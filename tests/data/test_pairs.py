"""Coupled pairs for reflow: deterministic batches, and errors that name the problem."""

import numpy as np
import pytest

from genflow.data import PairBatches, load_pairs


def write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_batches_are_pairs_and_deterministic(tmp_path):
    x0 = np.arange(40, dtype=np.float32).reshape(20, 2)
    path = write(tmp_path / "p.npz", x0=x0, x1=-x0)
    pb = PairBatches.from_file(path, batch_size=8, seed=3)
    b = pb.batches(5, 3)
    assert b["x"].shape == b["eps"].shape == (3, 8, 2)
    np.testing.assert_array_equal(b["eps"], -b["x"])  # each x keeps its own partner
    again = PairBatches.from_file(path, batch_size=8, seed=3).batches(6, 2)
    np.testing.assert_array_equal(again["x"], b["x"][1:])  # batch k depends on (seed, k) only
    other = PairBatches.from_file(path, batch_size=8, seed=4).batches(5, 3)
    assert not np.array_equal(other["x"], b["x"])


def test_bad_pairs_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="genflow reflow"):
        load_pairs(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=r"lacks arrays \['x1'\]"):
        load_pairs(write(tmp_path / "a.npz", x0=np.zeros((3, 2))))
    with pytest.raises(ValueError, match="same shape"):
        load_pairs(write(tmp_path / "b.npz", x0=np.zeros((3, 2)), x1=np.zeros((4, 2))))
    with pytest.raises(ValueError, match="non-finite"):
        load_pairs(write(tmp_path / "c.npz", x0=np.full((3, 2), np.nan), x1=np.zeros((3, 2))))
