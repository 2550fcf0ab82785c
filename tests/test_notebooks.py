"""Execute the notebooks at small settings."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    workdir = tmp_path / "quickstart"
    monkeypatch.setenv("GENFLOW_QUICKSTART_STEPS", "100")
    monkeypatch.setenv("GENFLOW_QUICKSTART_SAMPLES", "256")
    monkeypatch.setenv("GENFLOW_QUICKSTART_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(REPO / "notebooks" / "01_quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    # The run really trained: 100 steps logged every 50, and the loss went down.
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100]
    assert records[-1]["loss"] < records[0]["loss"]
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
    )
    assert "reverse SDE: 500 NFE, probability-flow ODE: 200 NFE" in text
    sw2 = [float(line.split("sliced W2")[1].split()[0]) for line in text.splitlines() if "sliced W2" in line]
    assert len(sw2) == 2 and all(np.isfinite(sw2))
    assert (workdir / "samples.png").stat().st_size > 0
