"""The README's sampler example runs as printed and gives the exact answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _example() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- example:start -->")[1].split("<!-- example:end -->")[0]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_readme_sampler_example():
    code = _example()
    assert len(code.strip().splitlines()) <= 14
    check = (
        "\nimport sys\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'optax', 'orbax'))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code + check], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    first, heavy = proc.stdout.splitlines()[0], proc.stdout.splitlines()[-1]
    mean, std, nfe = (float(v) for v in first.split())
    # Heun at 50 steps from t = 1 to 1e-3 on the exact model: the law at t = 1e-3 is
    # N(2 alpha, 0.25 alpha^2 + sigma^2) with alpha ~ 0.99995, sigma ~ 0.01; with 20,000
    # samples the standard errors are 0.0035 (mean) and 0.0025 (std).
    assert abs(mean - 2.0) < 0.02 and abs(std - 0.5) < 0.015 and nfe == 100
    assert heavy == "HEAVY []"
