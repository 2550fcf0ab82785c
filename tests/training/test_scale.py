"""Training on many devices and many processes, through the command line.

Every run here is a real ``genflow train`` in its own process: 4 forced host devices
(``--xla_force_host_platform_device_count``), or two processes of 2 devices each joined
through ``--coordinator 127.0.0.1:PORT`` with CPU collectives over gloo. The references are
the same command on 1 device: with the same global batch the data, the keys and the
arithmetic are the same, so losses and parameters agree up to the order of floating-point
reductions (an all-reduce over devices sums in another order than one device does).

All runs share one short config (checkerboard, MLP of width 64 so that FSDP splits its
kernels, constant learning rate so that a resumed run with more steps continues the same
computation) and are made once per module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from genflow.training import restore_train_state

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "toy_checkerboard_vp.py")
SETTINGS = [
    "data.batch_size=64", "model.hidden=64", "train.steps_per_dispatch=50",
    "train.log_every=50", "train.checkpoint_every=100", "train.lr_decay=constant",
    "train.warmup_steps=20",
]
TIMEOUT = 300  # per command; a hang fails the test instead of the suite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict[str, str]:
    out = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    out["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return out


def genflow(*args: str, devices: int = 1, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genflow.cli", *args], env=env(devices),
                          capture_output=True, text=True, timeout=TIMEOUT, **kwargs)


def train_args(workdir: Path, steps: int, *extra: str) -> list[str]:
    sets = [a for s in [*SETTINGS, f"train.num_steps={steps}"] for a in ("--set", s)]
    return ["train", "--config", CONFIG, "--workdir", str(workdir), "--no-progress", *sets,
            *extra]


def train(workdir: Path, steps: int, *extra: str, devices: int = 1) -> str:
    done = genflow(*train_args(workdir, steps, *extra), devices=devices)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def start_job(workdir: Path, steps: int, *extra: str) -> list[subprocess.Popen]:
    """Two processes of 2 devices each, one job."""
    port = free_port()
    return [
        subprocess.Popen(
            [sys.executable, "-m", "genflow.cli", *train_args(workdir, steps, *extra),
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
             "--process-id", str(rank), "--connect-timeout", "60", "--heartbeat-timeout", "5"],
            env=env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def train_job(workdir: Path, steps: int, *extra: str) -> list[str]:
    results = finish(start_job(workdir, steps, *extra))
    for code, _, stderr in results:
        assert code == 0, stderr[-3000:]
    return [stdout for _, stdout, _ in results]


def losses(workdir: Path) -> np.ndarray:
    import json

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return np.array([[r["step"], r["loss"], r["grad_norm"]] for r in records])


def state_of(workdir: Path):
    return restore_train_state(workdir)[2]


def assert_states_close(a, b, rtol=2e-4):
    """Parameters, EMA and Adam moments after the same steps: equal up to reduction order
    (relative to each array's scale: round-off of 1e-7 per step, through 200-400 Adam steps)."""
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves((a.params, a.ema, a.opt_state)),
                    jax.tree.leaves((b.params, b.ema, b.opt_state))):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        scale = max(float(np.abs(x).max()), 1e-6)
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The module's runs: 1 device, 4 devices replicated, 4 devices FSDP, 2 x 2 devices."""
    root = tmp_path_factory.mktemp("scale")
    out = {"root": root}
    out["one_log"] = train(root / "one", 200)
    out["four_log"] = train(root / "four", 200, devices=4)
    # FSDP and the job also write a sample grid: gathering the EMA is a collective.
    out["fsdp_log"] = train(root / "fsdp", 200, "--set", "train.param_sharding=fsdp",
                            "--set", "train.sample_every=200", devices=4)
    out["job_logs"] = train_job(root / "job", 200, "--set", "train.sample_every=200")
    return out


def test_four_devices_train_like_one(runs):
    root = runs["root"]
    assert "(4 cpu devices)" in runs["four_log"] and "state replicated on 4 devices" in runs["four_log"]
    one, four = losses(root / "one"), losses(root / "four")
    np.testing.assert_array_equal(one[:, 0], [50, 100, 150, 200])
    np.testing.assert_allclose(four, one, rtol=1e-5)
    assert_states_close(state_of(root / "four"), state_of(root / "one"))


def test_resume_on_four_devices_is_bit_identical(runs, tmp_path):
    half = tmp_path / "half"
    train(half, 100, devices=4)
    train(half, 200, devices=4)
    np.testing.assert_array_equal(losses(half)[:, 1:], losses(runs["root"] / "four")[:, 1:])
    a, b = state_of(half), state_of(runs["root"] / "four")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fsdp_splits_the_state_and_trains_like_one_device(runs):
    root = runs["root"]
    log = runs["fsdp_log"]
    assert "state split over 4 devices (fsdp)" in log, log
    share = int(log.split("arrays, ")[1].split("%")[0])
    assert share > 90  # the MLP's 64 x 64 kernels and their Adam moments hold most numbers
    assert (root / "fsdp" / "samples" / "step_0000200.png").is_file()
    np.testing.assert_allclose(losses(root / "fsdp"), losses(root / "one"), rtol=1e-5)
    assert_states_close(state_of(root / "fsdp"), state_of(root / "one"))


def test_two_processes_train_like_four_devices(runs):
    root = runs["root"]
    first, second = runs["job_logs"]
    assert "4 cpu devices in 2 processes" in first
    assert second.strip() == "" or "training" not in second  # only process 0 prints
    assert sorted(p.name for p in (root / "job" / "checkpoints").iterdir()) == ["100", "200"]
    assert [p.name for p in (root / "job" / "samples").iterdir()] == ["step_0000200.png"]
    np.testing.assert_allclose(losses(root / "job"), losses(root / "four"), rtol=1e-5)
    assert_states_close(state_of(root / "job"), state_of(root / "four"))


def test_a_killed_process_stops_the_job_and_both_resume(runs, tmp_path):
    """Train on 1 device, resume on 2 processes; kill one of them; the other says so and
    exits; rerunning both resumes from the last checkpoint (and the resumed run equals the
    same steps taken on 2 x 2 devices, then 1 device)."""
    root = runs["root"]
    workdir = tmp_path / "moved"
    shutil.copytree(root / "one", workdir)
    procs = start_job(workdir, 5000)  # long enough to be killed in the middle
    deadline = time.time() + TIMEOUT
    while not (workdir / "checkpoints" / "300").is_dir():
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    code, _, stderr = finish(procs[:1])[0]
    procs[1].wait()
    assert time.time() - killed < 60  # heartbeat timeout 5 s, plus JAX's polling
    assert code == 1
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("genflow: error: the job lost process 1"), stderr[-2000:]
    assert "rerun every process" in message and "Traceback" not in stderr
    assert "stack trace" not in stderr  # JAX's abort is summarised, not dumped
    kept = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept >= 300 and f"step {kept}" in message

    logs = train_job(workdir, kept + 100)
    assert f"resuming from step {kept}" in logs[0]
    # The other way round: 2 x 2 devices, then 1 device, for the same steps.
    back = tmp_path / "back"
    shutil.copytree(root / "job", back)
    train(back, kept + 100)
    assert_states_close(state_of(workdir), state_of(back), rtol=5e-4)


def test_samples_do_not_depend_on_the_device_count(runs, tmp_path):
    """A checkpoint written by 2 processes x 2 devices, sampled on 1 and on 4 devices."""
    job = runs["root"] / "job"
    drawn = []
    for devices in (1, 4):
        out = tmp_path / f"s{devices}"
        done = genflow("sample", "--workdir", str(job), "--num", "512", "--steps", "20",
                       "--out", str(out), devices=devices)
        assert done.returncode == 0, done.stderr[-2000:]
        drawn.append(np.load(f"{out}.npz")["samples"])
    np.testing.assert_allclose(drawn[1], drawn[0], rtol=0,
                               atol=1e-5 * float(np.abs(drawn[0]).max()))
    assert np.abs(drawn[0]).max() > 0.5  # real samples of the checkerboard, not zeros


def test_bad_job_settings_are_one_line_and_exit_2(runs, tmp_path):
    workdir = runs["root"] / "one"
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    # A global batch the device count does not divide: refused before anything is written.
    odd = tmp_path / "odd"
    done = genflow(*train_args(odd, 300, "--set", "data.batch_size=66"), devices=4)
    assert done.returncode == 2 and not (odd / "config.json").exists()
    assert done.stderr.strip().splitlines() == [
        "genflow: error: data.batch_size=66 does not split evenly over 4 devices; use a multiple "
        "of 4 (e.g. --set data.batch_size=64)."]
    # A coordinator that never answers: a clear line after the timeout, no hang.
    start, address = time.time(), f"127.0.0.1:{free_port()}"
    done = genflow(*train_args(tmp_path / "lonely", 100), "--coordinator", address,
                   "--num-processes", "2", "--process-id", "1", "--connect-timeout", "2")
    assert time.time() - start < 90
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"genflow: error: could not join the job at {address} within 2 s; start every "
        "process with the same --coordinator and --num-processes, and check that the host and "
        "port are reachable."]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
