"""No run is lost or silently mixed: one writer per run directory, a non-finite state never
written, resumes that keep config.json true (or fork), paths refused in one line, sample
outputs that never overwrite an earlier result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from genflow.cli import main
from genflow.training import restore_train_state

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "toy_checkerboard_vp.py")
TINY = ["--no-progress", "--set", "model.hidden=32", "--set", "data.batch_size=64",
        "--set", "train.steps_per_dispatch=50", "--set", "train.log_every=50",
        "--set", "train.checkpoint_every=100"]


def train_args(workdir: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--config", CONFIG, "--workdir", str(workdir), *TINY,
            "--set", f"train.num_steps={steps}", *extra]


def error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


def listing(workdir: Path) -> dict[str, float]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime for p in workdir.rglob("*")
            if p.is_file() and p.name != ".train.lock"}


@pytest.fixture(scope="module")
def run200(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reliability") / "run"
    assert main(train_args(workdir, 200)) == 0
    return workdir


def copy_of(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


# ----------------------------------------------------------------------------- one writer
def test_a_second_train_is_refused_and_a_killed_one_leaves_no_stale_lock(run200, tmp_path,
                                                                         capsys):
    workdir = copy_of(run200, tmp_path)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.Popen([sys.executable, "-m", "genflow.cli",
                              *train_args(workdir, 100_000)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (workdir / "checkpoints" / "300").is_dir():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        before = {k: v for k, v in listing(workdir).items() if k != "metrics.jsonl"}
        config_before = (workdir / "config.json").read_text()
        start = time.time()
        code = main(train_args(workdir, 100_000, "--set", "train.log_every=100"))
        assert time.time() - start < 5
        assert code == 2
        lines = error_lines(capsys)
        assert len(lines) == 1 and "is being trained by another process" in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert (workdir / "config.json").read_text() == config_before
        assert all(listing(workdir).get(k) == v for k, v in before.items()
                   if not k.startswith("checkpoints/"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    kept = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    capsys.readouterr()
    assert main(train_args(workdir, kept + 50)) == 0  # the lock died with its holder
    assert f"resuming from step {kept}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- non-finite
def finite_checkpoints(workdir: Path) -> list[int]:
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    if steps:
        state = restore_train_state(workdir)[2]
        import jax

        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
    return steps


def test_a_diverging_fresh_run_stops_with_exit_3_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "nan"
    code = main(["train", "--config", CONFIG, "--workdir", str(workdir), "--no-progress",
                 "--set", "train.lr=1e3", "--set", "train.num_steps=300"])
    assert code == 3
    lines = error_lines(capsys)
    assert len(lines) == 1
    assert lines[0].startswith("genflow: error: grad_norm and loss became NaN or infinite "
                               "between steps 1 and 100;")
    assert "no checkpoint had been written yet" in lines[0] and "train.lr (now 1000)" in lines[0]
    assert finite_checkpoints(workdir) == []
    assert json.loads((workdir / "config.json").read_text())["train"]["lr"] == 1e3


def test_a_resume_keeps_config_json_true_and_a_fork_may_diverge(run200, tmp_path, capsys):
    workdir = copy_of(run200, tmp_path)
    saved = (workdir / "config.json").read_text()
    # Changing the learning rate of a resumed run is refused: config.json describes the weights.
    assert main(train_args(workdir, 400, "--set", "train.lr=1e3")) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "would change train.lr: 0.002 -> 1000.0" in lines[0]
    assert "--fork NEW_WORKDIR" in lines[0]
    assert (workdir / "config.json").read_text() == saved
    # Allowed changes are recorded with the step they took effect.
    assert main(train_args(workdir, 300, "--set", "train.log_every=100")) == 0
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text()
               .splitlines()]
    assert history[0]["step"] == 0 and history[0]["created"]
    assert history[-1]["step"] == 200 and history[-1]["changes"] == {
        "train.log_every": [50, 100], "train.num_steps": [200, 300]}
    # A fork trains the latest checkpoint elsewhere; diverging there is exit 3, the kept
    # checkpoint is the forked one, finite, and config.json + history say what happened.
    fork = tmp_path / "fork"
    capsys.readouterr()
    code = main(train_args(workdir, 600, "--set", "train.lr=1e6", "--fork", str(fork)))
    out, err = capsys.readouterr()
    assert "forked step 300" in out
    assert code == 3, err
    assert "the last good checkpoint is step 300" in err and len(err.strip().splitlines()) == 1
    assert finite_checkpoints(fork) == [300] and finite_checkpoints(workdir)[-1] == 300
    assert json.loads((fork / "config.json").read_text())["train"]["lr"] == 1e6
    first = json.loads((fork / "config_history.jsonl").read_text().splitlines()[0])
    assert first["forked_from"] == str(workdir) and first["changes"]["train.lr"] == [0.002, 1e6]
    # A fork never overwrites a run, nor forks a directory without a checkpoint.
    assert main(train_args(workdir, 600, "--fork", str(fork))) == 2
    assert "holds a run already" in error_lines(capsys)[0]
    assert main(train_args(tmp_path / "empty", 600, "--fork", str(tmp_path / "f2"))) == 2
    assert "has none" in error_lines(capsys)[0]


# ----------------------------------------------------------------------------- paths
def test_workdir_paths_that_cannot_hold_a_run(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a run")
    assert main(train_args(a_file, 100)) == 2
    assert error_lines(capsys) == [f"genflow: error: --workdir {a_file} is a file, not a "
                                   "directory; choose another path."]
    assert main(train_args(a_file / "run", 100)) == 2
    assert error_lines(capsys) == [f"genflow: error: --workdir {a_file / 'run'} lies under "
                                   f"{a_file}, which is a file; choose another path."]
    assert a_file.read_text() == "not a run"


def test_sample_never_overwrites_an_earlier_result(run200, tmp_path, capsys):
    workdir = copy_of(run200, tmp_path)
    base = ["sample", "--workdir", str(workdir), "--num", "64", "--steps", "5"]
    for expected in ("samples", "samples_001", "samples_002"):
        assert main(base) == 0
        assert f"wrote {workdir / expected}.npz" in capsys.readouterr().out
    out = tmp_path / "mine"
    assert main([*base, "--out", str(out)]) == 0
    first = np.load(f"{out}.npz")["samples"]
    assert main([*base, "--out", str(out), "--seed", "5"]) == 2
    assert error_lines(capsys)[-1] == (f"genflow: error: {out}.npz exists already; choose "
                                       "another --out or pass --overwrite.")
    np.testing.assert_array_equal(np.load(f"{out}.npz")["samples"], first)
    assert main([*base, "--out", str(out), "--seed", "5", "--overwrite"]) == 0
    assert not np.array_equal(np.load(f"{out}.npz")["samples"], first)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    capsys.readouterr()
    assert main([*base, "--out", str(a_file / "s")]) == 2
    assert error_lines(capsys) == [f"genflow: error: cannot write {a_file / 's'}.npz: {a_file} "
                                   "is a file."]
