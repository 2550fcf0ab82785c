"""Checkpoints that verify themselves: a truncated or bit-flipped file in any item of the newest
checkpoint makes train, sample and evaluate fall back to the previous one with one warning
line; a failing write (disk full) keeps the previous checkpoint and stops in one line."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from genflow.cli import main
from genflow.training import restore_run, restore_train_state
from genflow.training.checkpoint import CHECKSUMS

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "toy_checkerboard_vp.py")
TINY = ["--no-progress", "--set", "model.hidden=16", "--set", "data.batch_size=32",
        "--set", "train.steps_per_dispatch=50", "--set", "train.log_every=50",
        "--set", "train.checkpoint_every=50", "--set", "train.lr_decay=constant"]
ITEMS = ("params", "ema", "opt_state", "step", "_CHECKPOINT_METADATA")


def train_args(workdir: Path, steps: int) -> list[str]:
    return ["train", "--config", CONFIG, "--workdir", str(workdir), *TINY,
            "--set", f"train.num_steps={steps}"]


@pytest.fixture(scope="module")
def run150(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("integrity") / "run"
    assert main(train_args(workdir, 150)) == 0
    return workdir


def damage(step_dir: Path, item: str, how: str) -> Path:
    """Truncate, or flip one bit of, the largest file of ``item`` in ``step_dir``."""
    path = step_dir / item
    if path.is_dir():
        path = max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    return path


def test_every_finalized_checkpoint_records_its_checksums(run150):
    for step in (50, 100, 150):
        sums = json.loads((run150 / "checkpoints" / str(step) / CHECKSUMS).read_text())
        assert any(name.startswith("params/") for name in sums) and len(sums) > 10


@pytest.mark.parametrize("item", ITEMS)
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(run150, tmp_path, capsys,
                                                                    item, how):
    workdir = tmp_path / "run"
    shutil.copytree(run150, workdir)
    damage(workdir / "checkpoints" / "150", item, how)
    capsys.readouterr()
    # Readers: the previous checkpoint, one warning line, the damaged one left in place.
    _, _, step, _ = restore_run(workdir)
    err = capsys.readouterr().err.strip().splitlines()
    assert step == 100 and len(err) == 1
    assert err[0].startswith(f"warning: checkpoint {workdir / 'checkpoints' / '150'} is "
                             "damaged (") and err[0].endswith("using step 100 instead.")
    assert (workdir / "checkpoints" / "150").is_dir()
    if how == "flip":  # the same paths follow for both kinds of damage: run them once
        return
    assert main(["sample", "--workdir", str(workdir), "--num", "32", "--steps", "4"]) == 0
    out, err = capsys.readouterr()
    assert "checkpoint step 100" in out and len(err.strip().splitlines()) == 1
    assert main(["evaluate", "--workdir", str(workdir), "--metrics", "sw2", "--num", "64"]) == 0
    out, err = capsys.readouterr()
    assert "checkpoint step 100" in out
    assert len([line for line in err.splitlines() if "is damaged" in line]) == 1
    # The writer: resumes from step 100, sets the damaged step aside, trains on.
    assert main(train_args(workdir, 200)) == 0
    out, err = capsys.readouterr()
    assert "resuming from step 100" in out and "is damaged" in err
    assert (workdir / "checkpoints_damaged" / "150").is_dir()
    assert int(restore_train_state(workdir)[2].step) == 200


def test_no_intact_checkpoint_is_one_line_and_exit_2(run150, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(run150, workdir)
    for step in (50, 100, 150):
        damage(workdir / "checkpoints" / str(step), "params", "truncate")
    capsys.readouterr()
    assert main(["sample", "--workdir", str(workdir), "--num", "32", "--steps", "4"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"genflow: error: no intact checkpoint in {workdir / 'checkpoints'} "
                           "(damaged: steps 150, 100, 50); delete them (rm -r ")
    assert main(["evaluate", "--workdir", str(workdir), "--metrics", "sw2"]) == 2
    assert "no intact checkpoint" in capsys.readouterr().err


def test_a_failing_checkpoint_write_keeps_the_previous_one(run150, tmp_path, capsys,
                                                           monkeypatch):
    """ENOSPC injected into the write of step 200: one line, exit 1; step 150 still restores."""
    workdir = tmp_path / "run"
    shutil.copytree(run150, workdir)
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 200:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    capsys.readouterr()
    assert main(train_args(workdir, 250)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"genflow: error: writing the checkpoint of step 200 to "
                   f"{(workdir / 'checkpoints').absolute()} failed (No space left on device); "
                   "the checkpoint of step 150 is intact. Free space or fix the directory, "
                   "then rerun to resume."]
    monkeypatch.undo()
    state = restore_train_state(workdir)[2]
    assert int(state.step) == 150
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["100", "150", "50"]
