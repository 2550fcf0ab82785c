"""No file of the repository tells anyone to install `genflow` from the package index.

The name `genflow` on the package index belongs to an unrelated project; this one is distributed
as `genflow-jax` (import name `genflow`) and is installed from a checkout (`pip install -e .`) or
from an archive of the repository. The scan below reads every tracked (or new, not ignored) text
file, decodes notebooks' JSON source lines, joins each line with the next (so an instruction
split over two Python string literals or two lines of prose is still seen) and reports
``file:line`` for every install command whose requirement is the bare name `genflow`.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve()  # holds the bad examples below on purpose; not scanned

# Commands that install a requirement named on the command line.
_INSTALL = re.compile(
    r"(?:\b(?:pip3?|pipx|conda|mamba)\s+install|\buv\s+(?:add|tool\s+install)|\b(?:poetry|pdm)\s+add)\b",
    re.IGNORECASE,
)
# Where the arguments of such a command end: shell operators, a comment, the end of inline code
# in Markdown, a closing parenthesis, a comma, or the end of a sentence.
_END = re.compile(r"&&|\|\||[;|#`),]|\.(?=\s|$)")
# A requirement naming the other project: `genflow`, `genflow[extra]`, `genflow==1.0`,
# `genflow>=1`, `genflow @ URL`, `genflow; marker`; not `genflow-jax`, not a path such as
# `./genflow` or `genflow/`.
_OTHER_PROJECT = re.compile(r"genflow(?:\[[^\]]*\])?(?:[<>=!~@;].*)?", re.IGNORECASE)
# The list form of subprocess calls: "pip", "install", "-q", "genflow".
_LIST_FORM = re.compile(r"""(["'])pip3?\1\s*,\s*(["'])install\2\s*,(?P<items>[^\]\n]*)""")
_LIST_ITEM = re.compile(r"""[rbfu]{0,2}(["'])(?P<s>.*?)\1""", re.IGNORECASE)


def _names_other_project(token: str) -> bool:
    token = token.strip().strip("\\\"'").rstrip(".,:;!?)\"'\\")
    return bool(_OTHER_PROJECT.fullmatch(token))


def installs_other_project(text: str) -> bool:
    """Whether ``text`` (one line, or two joined) holds a command installing `genflow`."""
    text = text.replace('\\"', '"').replace("\\'", "'")  # quotes escaped in JSON or strings
    for match in _INSTALL.finditer(text):
        rest = text[match.end():]
        end = _END.search(rest)
        args = rest[: end.start()] if end else rest
        if any(_names_other_project(tok) for tok in args.split()):
            return True
    for match in _LIST_FORM.finditer(text):
        items = [m.group("s") for m in _LIST_ITEM.finditer(match.group("items"))]
        if any(item.split() and _names_other_project(item.split()[0]) for item in items):
            return True
    return False


def _joins(line: str, following: str) -> list[str]:
    """``line`` continued by ``following``: as it stands, and with the seam of an implicit
    string concatenation (``"... pip install "`` / ``"'genflow[tfds]' ..."``) removed."""
    plain = line.rstrip() + " " + following.lstrip()
    seamless = re.sub(r"[\"']\s*$", "", line.rstrip()) + " " + re.sub(r"^\s*[\"']", "", following)
    return [plain, seamless]


def _decoded_lines(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix not in (".ipynb", ".json"):
        return lines
    decoded = []
    for line in lines:  # a notebook's source line is one JSON string on one line of the file
        try:
            value = json.loads(line.strip().rstrip(","))
        except ValueError:
            value = line
        decoded.append(value if isinstance(value, str) else line)
    return decoded


_SCANNED = ["README.md", "CHANGELOG.md", "Makefile", "pyproject.toml", "docs", "notebooks",
            "genflow", "scripts", "configs", "tests", ".ci"]


def _repository_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout
        paths = [REPO / name for name in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an archive)
        paths = []
        for name in _SCANNED:
            root = REPO / name
            paths += [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return [p for p in paths if p.is_file() and p.resolve() != THIS_FILE]


def _text_files() -> list[Path]:
    files = []
    for path in _repository_files():
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def test_no_file_installs_the_other_genflow():
    files = _text_files()
    names = {p.relative_to(REPO).as_posix() for p in files}
    assert {"README.md", "Makefile", "notebooks/01_quickstart.ipynb", "genflow/cli.py"} <= names
    found = []
    for path in files:
        lines = _decoded_lines(path)
        alone = [installs_other_project(line) for line in lines]
        for i, line in enumerate(lines):
            # A match only in the join with the next line belongs to this line when the next
            # line alone does not match.
            split = i + 1 < len(lines) and not alone[i + 1] and any(
                installs_other_project(text) for text in _joins(line, lines[i + 1]))
            if alone[i] or split:
                found.append(f"{path.relative_to(REPO).as_posix()}:{i + 1}: {line.strip()}")
    assert not found, (
        "these lines install the unrelated `genflow` from the package index; install this "
        "project from the checkout (pip install -e '.[tfds]') or from the repository archive "
        "(distribution name genflow-jax):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    "text",
    [
        "pip install genflow",
        "pip install -U genflow",
        "pip install --upgrade --quiet genflow==0.6.0a2",
        "pip install 'genflow[tfds]'           # TensorFlow, needed only for this step",
        'pip install "genflow[tfds]"',
        "    pip install 'genflow[tfds]' && genflow data prepare cifar10",
        "%pip install genflow",
        "!pip install -q genflow",
        "uv pip install genflow",
        "python -m pip install genflow>=0.1",
        "pip3 install GenFlow",
        "pipx install genflow",
        "uv add genflow",
        "install it with `pip install genflow`.",
        "then run pip install genflow.",
        "pip install 'genflow @ https://example.org/genflow.zip'",
        'subprocess.run([sys.executable, "-m", "pip", "install", "-q", "genflow"], check=True)',
        # A line of the notebook's JSON as _decoded_lines sees it, and as it stands in the file.
        json.loads('"    subprocess.run([sys.executable, \\"-m\\", \\"pip\\", \\"install\\", '
                   '\\"-q\\", \\"genflow\\"], check=True)"'),
        '"    subprocess.run([sys.executable, \\"-m\\", \\"pip\\", \\"install\\", \\"genflow\\"])"',
        # Two string literals of the old `data prepare` help text, joined without the seam.
        _joins('        "(mnist, ...) downloads and converts it, which needs `pip install "',
               "        \"'genflow[tfds]'` (TensorFlow, only for this step)\",")[1],
        # A subprocess call's list over two lines, joined as it stands.
        _joins('    subprocess.run([sys.executable, "-m", "pip", "install", "-q",',
               '                    "genflow"], check=True)')[0],
        # Prose wrapped after the command.
        _joins("first run `pip install", "genflow` in a terminal")[0],
    ],
)
def test_detector_flags_installing_the_other_project(text):
    assert installs_other_project(text)


@pytest.mark.parametrize(
    "text",
    [
        "pip install -e '.[tfds]'",
        "pip install -e .",
        "pip install -e '.[tfds]' && genflow data prepare mnist   # in the genflow checkout",
        "$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'",
        "pip install genflow-jax",
        "pip install 'genflow-jax[tfds]'",
        'pip install "genflow-jax @ https://example.org/archive/main.zip"',
        "pip install -e /path/to/genflow",
        "This script needs PyTorch (pip install torch).",
        "the first run creates `.venv/` and installs genflow with its test extras",
        "`pip install -e .` in the checkout installs genflow with the ranges of pyproject.toml",
        "genflow data prepare mnist",
        '        subprocess.run([sys.executable, "-m", "pip", "install", "-q",',
        '                        f"genflow-jax @ {GENFLOW_ARCHIVE_URL}"], check=True)',
        *_joins('        subprocess.run([sys.executable, "-m", "pip", "install", "-q",',
                '                        f"genflow-jax @ {GENFLOW_ARCHIVE_URL}"], check=True)'),
        'subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(checkout)])',
    ],
)
def test_detector_leaves_this_project_alone(text):
    assert not installs_other_project(text)
