"""The jax-only layers must not import the heavy stacks (DESIGN.md section 2)."""

import json
import subprocess
import sys

FORBIDDEN = ("flax", "optax", "orbax", "tensorflow", "genflow.training")

CODE = """
import json, sys
import genflow.samplers, genflow.processes, genflow.prediction, genflow.losses
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
    assert "genflow.samplers" in modules and "jax" in modules
    bad = offending(modules)
    assert bad == [], f"importing the jax-only layers pulled in: {bad}"
