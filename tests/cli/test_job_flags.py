"""The multi-process flags of ``genflow train``: wrong combinations are one line and exit 2,
before any process joins anything (the runs themselves: tests/training/test_scale.py)."""

from pathlib import Path

import pytest

from genflow.cli import main
from genflow.training import cluster_in_environment

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "toy_checkerboard_vp.py")


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2 is not one of the 2 processes asked for (0 to 1)."),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "-1"],
     "--process-id -1 is not one of the 2 processes asked for (0 to 1)."),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "0", "--process-id", "0"],
     "--num-processes must be at least 1, got 0."),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"],
     "--coordinator, --num-processes and --process-id go together: give all three (or none, "
     "to take them from the environment)."),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT, got 'localhost'."),
    (["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"],
     "--coordinator must be HOST:PORT, got 'h:99999'."),
])
def test_job_flags_that_cannot_describe_a_job(flags, message, tmp_path, capsys):
    code = main(["train", "--config", CONFIG, "--workdir", str(tmp_path / "run"), *flags])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"genflow: error: {message}"]
    assert not (tmp_path / "run").exists()


def test_the_environment_describes_a_job_only_when_it_says_so(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS",
                 "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    assert not cluster_in_environment()
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is a single process
    assert not cluster_in_environment()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert cluster_in_environment()
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-0")  # one host: not a pod
    assert not cluster_in_environment()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-0,t1k-1")
    assert cluster_in_environment()
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    assert cluster_in_environment()
