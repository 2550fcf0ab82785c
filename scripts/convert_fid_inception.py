"""Convert the pytorch-fid Inception weights to the ``.npz`` read by genflow.

Usage (needs PyTorch, which genflow itself never needs)::

    python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth fid_inception.npz

The input is the state dict of the FID Inception-v3 that ``pytorch-fid`` uses (a port of the
2015-12-05 TensorFlow graph); obtain it yourself, this script downloads nothing. Every tensor is
stored under its state-dict name in PyTorch layout (convolution weights ``(out, in, kh, kw)``);
``genflow.networks.load_inception_weights`` converts the layout when it loads the file. Entries
the 2048-d pool features do not use (``fc.*``, ``*.num_batches_tracked``) are left out. Before
writing, the script checks the names and shapes against
``genflow.networks.inception_state_dict_shapes()``, so a wrong file fails here, with the
offending key, rather than at evaluation time. The output is written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def _skip(key: str) -> bool:
    return key.startswith(("fc.", "AuxLogits.")) or key.endswith(".num_batches_tracked")


def convert(src: Path, dst: Path) -> int:
    """Convert ``src`` (``.pth``) to ``dst`` (``.npz``); returns the number of arrays written."""
    import torch  # only here: genflow does not depend on PyTorch

    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    arrays = {
        key: value.detach().cpu().numpy().astype(np.float32)
        for key, value in state.items()
        if not _skip(key)
    }

    from genflow.networks import inception_state_dict_shapes

    expected = inception_state_dict_shapes()
    missing = sorted(set(expected) - set(arrays))
    unknown = sorted(set(arrays) - set(expected))
    if missing or unknown:
        raise ValueError(
            f"{src} is not the FID Inception-v3 state dict: missing {missing[:5]}, unknown "
            f"{unknown[:5]}."
        )
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{key}: shape {arrays[key].shape} in {src}, expected {shape}.")

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(arrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="pytorch-fid weights (.pth)")
    parser.add_argument("dst", type=Path, help="output .npz")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("This script needs PyTorch (pip install torch).", file=sys.stderr)
        return 1
    count = convert(args.src, args.dst)
    print(f"wrote {count} arrays to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
