"""The jax-only layers must not import the heavy stacks (docs/architecture.md, "Layers")."""

import ast
import json
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("flax", "optax", "orbax", "tensorflow", "genflow.training")

CODE = """
import json, sys
import genflow.samplers, genflow.processes, genflow.prediction, genflow.losses
import genflow.methods, genflow.metrics
print(json.dumps(sorted(sys.modules)))
"""


def offending(modules):
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


def test_offending_filter():
    mods = ["jax", "flax", "flax.nnx", "flaxen", "optax._src.base", "orbax.checkpoint",
            "tensorflow", "genflow.training", "genflow.training.loop", "genflow.trainingx"]
    assert offending(mods) == ["flax", "flax.nnx", "optax._src.base", "orbax.checkpoint",
                               "tensorflow", "genflow.training", "genflow.training.loop"]


def test_light_layers_import_jax_only():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert "genflow.samplers" in modules and "genflow.methods" in modules and "jax" in modules
    bad = offending(modules)
    assert bad == [], f"importing the jax-only layers pulled in: {bad}"


def _imported_modules(path):
    """Every module an ``import`` statement of ``path`` names, at any depth (lazy imports in
    function bodies included); ``from genflow import samplers`` gives ``genflow.samplers``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_processes_import_nothing_from_samplers():
    """The layers point one way: samplers use processes, never the reverse (not even lazily)."""
    root = Path(__file__).resolve().parents[1] / "genflow" / "processes"
    files = sorted(root.glob("*.py"))
    assert files
    bad = {
        str(f.relative_to(root.parent.parent)): m
        for f in files for m in _imported_modules(f)
        if m == "genflow.samplers" or m.startswith("genflow.samplers.")
    }
    assert bad == {}, f"genflow.processes imports from genflow.samplers: {bad}"
    code = ("import json, sys; import genflow.processes; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('genflow.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "genflow.processes" in loaded
    assert not [m for m in loaded if m.startswith("genflow.samplers")], loaded
