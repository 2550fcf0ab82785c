"""The repository speaks of itself: every file it refers to is in it, and it carries its own
architecture page; the README shows the two commands first and how to reach `genflow` after."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".toml", ".ipynb", ".txt", ".cfg", ".yml", ".yaml", "Makefile", "run")


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / p for p in out.splitlines()
            if p.endswith(TEXT) and (REPO / p).is_file() and "v1_runs" not in p]


def test_nothing_points_outside_the_repository():
    """No reference to files beside the checkout (a design page, notes, ../ paths)."""
    bad = re.compile(r"\.\./shared|\bDESIGN\.md\b|\bREFERENCES\.md\b|\bSTYLE\.md\b")
    hits = [f"{p.relative_to(REPO)}:{i}" for p in tracked_text_files()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
            if bad.search(line) and p.name != "test_repository.py"]
    assert not hits, hits


def test_every_markdown_file_named_in_the_repository_exists():
    named = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
    missing = []
    for p in tracked_text_files():
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            for name in named.findall(line):
                if not ((REPO / name).exists() or (p.parent / name).exists()
                        or any(REPO.glob(f"**/{Path(name).name}"))):
                    missing.append(f"{p.relative_to(REPO)}:{i}: {name}")
    assert not missing, missing


def test_the_architecture_page_describes_the_layers():
    page = (REPO / "docs" / "architecture.md").read_text()
    for name in ("processes/", "samplers/", "methods/", "config/", "run.py", "REGISTRY",
                 "field_class", "Adding things"):
        assert name in page, name
    assert "docs/architecture.md" in (REPO / "README.md").read_text()


def test_readme_shows_the_two_commands_and_how_to_reach_genflow():
    text = (REPO / "README.md").read_text()
    demo, test = text.find("make demo"), text.find("make test")
    assert 0 <= demo < 2000 and 0 <= test < 2000
    assert ".venv/bin/genflow" in text and "source .venv/bin/activate" in text


def test_make_installs_pinned_versions_of_every_dependency():
    """CI installs exact versions (a new upstream release cannot turn main red overnight):
    `make venv` passes constraints.txt, which pins every dependency pyproject.toml names."""
    import tomllib

    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines()
                if "pip install" in line and not line.lstrip().startswith("#")]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, line
            pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    for requirement in wanted:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
