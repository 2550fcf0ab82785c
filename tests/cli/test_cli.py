"""End-to-end tests of the ``genflow`` command line, each in its own process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO / "configs" / "toy_checkerboard_vp.py"

# A tiny, fast run: constant learning rate so that num_steps does not change the schedule.
TINY = [
    "model.hidden=32", "model.depth=1", "model.embed_dim=16", "data.batch_size=64",
    "train.lr_decay=constant", "train.warmup_steps=10", "train.steps_per_dispatch=10",
    "train.log_every=10",
]


def genflow(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "genflow", *args], capture_output=True, text=True,
        timeout=timeout, cwd=REPO, env=env, **kwargs,
    )


def sets(*items):
    out = []
    for item in items:
        out += ["--set", item]
    return out


def assert_usage_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2 and exactly one line on stderr, naming the problem; no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("genflow: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """``genflow.cli.main`` in this process (imports are paid once), as a CompletedProcess."""
    from genflow.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_missing_config_in_a_fresh_process(tmp_path):
    proc = genflow("train", "--config", "configs/no_such_file.py", "--workdir", str(tmp_path / "run"))
    assert_usage_error(proc, "config file not found", "no_such_file.py")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--set", "train.no_such_key=3"], ["train.no_such_key"]),
        (["--set", "train.num_steps=abc"], ["train.num_steps", "int"]),
        (["--set", "train.lr=fast"], ["train.lr", "float"]),
        (["--set", "train.num_steps=-5"], ["train.num_steps", "positive"]),
        (["--set", "nosection.x=1"], ["nosection"]),
        (["--set", "data.name=mnist3d"], ["mnist3d", "checkerboard"]),
        (["--set", "process=ve_sde"], ["ve_sde", "vp_linear"]),
        (["--set", "train.num_steps"], ["KEY=VALUE"]),
    ],
    ids=[
        "unknown-key", "int-type", "float-type", "negative-steps", "unknown-section",
        "unknown-dataset", "unknown-process", "no-value",
    ],
)
def test_train_bad_input(capsys, tmp_path, args, needles):
    proc = run_main(capsys, "train", "--config", str(DEFAULT_CONFIG), "--workdir", str(tmp_path / "run"), *args)
    assert_usage_error(proc, *needles)
    assert not (tmp_path / "run").exists(), "nothing may be written before the input is valid"


def test_sample_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = genflow("sample", "--workdir", str(tmp_path / "empty"))
    assert_usage_error(proc, "empty", "genflow train")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """200 steps straight through, checkpointed at 100 and 200."""
    workdir = tmp_path_factory.mktemp("straight")
    proc = genflow(
        "train", "--config", str(DEFAULT_CONFIG), "--workdir", str(workdir), "--no-progress",
        *sets(*TINY, "train.num_steps=200", "train.checkpoint_every=100"),
    )
    assert proc.returncode == 0, proc.stderr
    return workdir


def test_sample_bad_input(capsys, trained_run):
    workdir = str(trained_run)
    assert_usage_error(run_main(capsys, "sample", "--workdir", workdir, "--sampler", "rk99"), "rk99", "heun")
    assert_usage_error(run_main(capsys, "sample", "--workdir", workdir, "--steps", "-3"), "--steps")
    assert_usage_error(run_main(capsys, "sample", "--workdir", workdir, "--steps", "x"), "--steps")
    assert_usage_error(run_main(capsys, "sample", "--workdir", workdir, "--grid", "cubic"), "cubic")
    # Sampler options: unknown (listing the known ones), badly typed, rejected by the sampler,
    # malformed; a quantile given as a percentage; too few steps for the order.
    sample = lambda *a: run_main(capsys, "sample", "--workdir", workdir, *a)  # noqa: E731
    assert_usage_error(sample("--sampler", "dpm_solver++_3m", "--option", "varient=taylor"),
                       "varient", "variant", "lower_order_final")
    assert_usage_error(sample("--sampler", "dpm_solver++_3s", "--option", "variant=rk4"), "variant")
    assert_usage_error(sample("--sampler", "edm_heun", "--option", "s_churn=lots"), "s_churn", "float")
    assert_usage_error(sample("--sampler", "dpm_solver_adaptive", "--option", "order=5"), "order")
    assert_usage_error(sample("--sampler", "ode_adaptive", "--option", "rtol=-1"), "rtol")
    assert_usage_error(sample("--sampler", "heun", "--option", "fast"), "key=value")
    assert_usage_error(sample("--threshold", "99.5"), "0..1")
    assert_usage_error(sample("--sampler", "dpm_solver++_3m", "--steps", "2"), "--steps", "at least 3")
    # A run directory without checkpoints (deleted): named, with what to do.
    bare = trained_run.parent / "bare"
    bare.mkdir(exist_ok=True)
    (bare / "config.json").write_text((trained_run / "config.json").read_text())
    assert_usage_error(run_main(capsys, "sample", "--workdir", str(bare)), "no checkpoint", "genflow train")


def test_train_writes_run_directory(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["train"]["num_steps"] == 200 and config["model"]["hidden"] == 32
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 201, 10))
    assert all(np.isfinite(r["loss"]) and r["steps_per_sec"] > 0 for r in records)
    assert sorted(int(p.name) for p in (trained_run / "checkpoints").iterdir() if p.name.isdigit()) == [100, 200]


def test_sample_writes_outputs(trained_run, tmp_path):
    out = tmp_path / "draw"
    proc = genflow(
        "sample", "--workdir", str(trained_run), "--sampler", "euler", "--steps", "7",
        "--num", "300", "--seed", "3", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr
    data = np.load(out.with_suffix(".npz"))
    assert data["samples"].shape == (300, 2) and np.all(np.isfinite(data["samples"]))
    assert int(data["nfe"]) == 7 and str(data["sampler"]) == "euler" and int(data["step"]) == 200
    assert out.with_suffix(".png").stat().st_size > 0
    assert "sliced W2" in proc.stdout and "floor" in proc.stdout
    # Beside sliced W2, figures that see blur (the checkerboard's density is known exactly).
    line = next(x for x in proc.stdout.splitlines() if x.startswith("in support"))
    support, floor = (float(v) for v in re.findall(r"in support ([\d.]+) \(floor ([\d.]+)\)", line)[0])
    assert floor == 1.0 and 0.0 <= support <= 1.0 and "coverage" in line and "KDE NLL" in line
    np.testing.assert_array_equal(data["samples_raw"], data["samples"])  # points: not clipped


def test_sample_out_keeps_the_users_name(capsys, trained_run, tmp_path):
    """--out runs/x/g1.25 writes g1.25.npz and g1.25.png (the suffix is added, never replaced);
    a given .npz suffix is not doubled."""
    for name, stem in (("g1.25", "g1.25"), ("w0.5.npz", "w0.5"), ("plain", "plain")):
        proc = run_main(capsys, "sample", "--workdir", str(trained_run), "--steps", "2",
                        "--num", "16", "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / f"{stem}.npz").is_file() and (tmp_path / f"{stem}.png").is_file()
    assert not (tmp_path / "g1.npz").exists() and not (tmp_path / "w0.npz").exists()


def test_sample_with_options_and_adaptive_samplers(capsys, trained_run, tmp_path):
    """Singlestep with an option (NFE = steps), adaptive DPM-Solver (NFE a multiple of its
    order), with the options recorded in the .npz."""
    out = tmp_path / "s"
    proc = run_main(capsys, "sample", "--workdir", str(trained_run), "--sampler", "dpm_solver++_3s",
                    "--option", "variant=taylor", "--steps", "8", "--num", "200", "--out", str(out),
                    "--threshold", "0.995")
    assert proc.returncode == 0, proc.stderr
    data = np.load(out.with_suffix(".npz"))
    assert int(data["nfe"]) == 8 and json.loads(str(data["solver_options"])) == {"variant": "taylor"}
    assert np.all(np.isfinite(data["samples"]))
    proc = run_main(capsys, "sample", "--workdir", str(trained_run), "--sampler",
                    "dpm_solver_adaptive", "--option", "order=2", "--option", "rtol=0.05",
                    "--num", "200", "--out", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    data = np.load(out.with_suffix(".npz"))
    nfe = int(data["nfe"])
    assert nfe > 0 and nfe % 2 == 0 and np.all(np.isfinite(data["samples"]))
    assert "adaptive" in proc.stdout


def _load_state(workdir: Path):
    from genflow.training import restore_train_state

    return restore_train_state(workdir)[2]


def test_resume_after_sigkill_is_bit_identical(trained_run, tmp_path):
    """Kill a long run at an arbitrary point, resume it to 200 steps: same bits as straight."""
    workdir = tmp_path / "killed"
    cmd = [
        sys.executable, "-m", "genflow", "train", "--config", str(DEFAULT_CONFIG),
        "--workdir", str(workdir), "--no-progress",
        *sets(*TINY, "train.num_steps=100000", "train.checkpoint_every=10", "train.keep_checkpoints=50"),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = workdir / "checkpoints"
    deadline = time.time() + 240
    try:
        # Wait for some finalized checkpoints, then kill while writes are still going on.
        while time.time() < deadline:
            steps = [int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
            if steps and max(steps) >= 50:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    from genflow.training import Checkpointer

    ckpt = Checkpointer(ckpt_dir, read_only=True)
    latest = ckpt.latest_step()
    ckpt.close()
    assert latest is not None and 50 <= latest < 200, latest

    proc = genflow(
        "train", "--config", str(DEFAULT_CONFIG), "--workdir", str(workdir), "--no-progress",
        *sets(*TINY, "train.num_steps=200", "train.checkpoint_every=100"),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"resuming from step {latest}" in proc.stdout

    import jax

    straight, resumed = _load_state(trained_run), _load_state(workdir)
    assert int(straight.step) == int(resumed.step) == 200
    for name in ("params", "ema", "opt_state"):
        a, b = jax.tree.leaves(getattr(straight, name)), jax.tree.leaves(getattr(resumed, name))
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_resume_refuses_a_different_model(capsys, trained_run):
    proc = run_main(
        capsys, "train", "--config", str(DEFAULT_CONFIG), "--workdir", str(trained_run),
        *sets(*TINY, "model.hidden=64", "train.num_steps=300"),
    )
    assert_usage_error(proc, "model.hidden", "--fresh")


def test_ctrl_c_keeps_the_last_checkpoint_and_resumes(tmp_path):
    """SIGINT (Ctrl-C) mid-run: exit 130 with a one-line hint, and the run resumes."""
    workdir = tmp_path / "interrupted"
    args = ["train", "--config", str(DEFAULT_CONFIG), "--workdir", str(workdir), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "genflow", *args,
         *sets(*TINY, "train.num_steps=100000", "train.checkpoint_every=20")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    ckpt_dir = workdir / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (
        ckpt_dir.exists() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    ):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err and "Traceback" not in err

    from genflow.training import Checkpointer

    ckpt = Checkpointer(ckpt_dir, read_only=True)
    latest = ckpt.latest_step()
    ckpt.close()
    # The stop request is honoured at the end of the running chunk, with a checkpoint there.
    assert f"saved a checkpoint at step {latest} " in err and latest % 10 == 0
    done = genflow(*args, *sets(*TINY, f"train.num_steps={latest + 20}", "train.checkpoint_every=20"))
    assert done.returncode == 0, done.stderr
    assert f"resuming from step {latest}" in done.stdout


def test_reflow_couples_noise_with_the_ode_and_retrains(capsys, trained_run, tmp_path):
    """The pairs are (x1 from the prior, x0 = the run's ODE solution from x1), and the new run
    trains on them; bad input is refused before any compute."""
    import jax

    from genflow import samplers
    from genflow.training import model_fn_from, restore_run

    out = tmp_path / "reflowed"
    base = ("reflow", "--workdir", str(trained_run), "--no-progress")
    assert_usage_error(run_main(capsys, *base, "--out", str(out), "--sampler", "euler_maruyama"),
                       "stochastic")
    assert_usage_error(run_main(capsys, *base, "--out", str(trained_run)), "new directory")
    assert_usage_error(run_main(capsys, *base, "--out", str(out), "--sampler", "rk4"), "rk4")
    assert not out.exists()
    proc = run_main(capsys, *base, "--out", str(out), "--pairs", "300", "--steps", "6",
                    "--set", "train.num_steps=20", "--set", "train.checkpoint_every=10")
    assert proc.returncode == 0, proc.stderr
    pairs = np.load(out / "pairs.npz")
    x0, x1 = pairs["x0"], pairs["x1"]
    assert x0.shape == x1.shape == (300, 2) and np.all(np.isfinite(x0))
    config, setup, _, params = restore_run(trained_run)
    again = samplers.sample(model_fn_from(setup, params), config.process, samplers.Heun(),
                            key=jax.random.key(0), x_init=x1, prediction="eps", num_steps=6,
                            t_end=config.sample.t_end).x
    np.testing.assert_allclose(np.asarray(again), x0, rtol=1e-4, atol=1e-4)
    assert abs(float(np.std(x1)) - 1.0) < 0.15  # the prior's draws
    new_config = json.loads((out / "config.json").read_text())
    assert new_config["data"]["pairs"] == str((out / "pairs.npz").resolve())
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 20


def test_evaluate_appends_metrics_to_the_run(capsys, trained_run, tmp_path):
    """`genflow evaluate`: the NLL by the probability-flow ODE is a cross-entropy, so it cannot
    fall below the data's entropy (uniform on 8 unit squares: log(8) / 2 nats per dimension)
    beyond its standard error; the distances come with their data-vs-data floors; the record is
    appended to metrics.jsonl after the training records."""
    import math
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = (run / "metrics.jsonl").read_text().splitlines()
    proc = run_main(capsys, "evaluate", "--workdir", str(run), "--metrics",
                    "nll,sw2,mmd,energy,sharpness,gap", "--num", "300", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines[:-1] == before
    record = json.loads(lines[-1])
    assert record["checkpoint_step"] == 200 and record["num_samples"] == 300
    nll = record["evaluate"]["nll"]
    assert nll["unit"] == "nats/dim" and nll["num_examples"] == 300
    assert 0 < nll["std_error"] < 0.2
    assert nll["value"] > math.log(8) / 2 - 3 * nll["std_error"]
    assert record["evaluate"]["support_fraction"]["floor"] == 1.0  # real points: all inside
    assert 0 <= record["evaluate"]["support_fraction"]["value"] <= 1
    for name in ("sw2", "mmd", "energy", "coverage", "kde_nll"):
        assert np.isfinite(record["evaluate"][name]["value"])
        assert np.isfinite(record["evaluate"][name]["floor"])
    assert record["evaluate"]["sw2"]["value"] > 0
    gap = record["evaluate"]["gap"]  # ODE and SDE samples from the same prior draws
    assert gap["value"] > 0 and np.isfinite(gap["sw2_ode_data"]) and np.isfinite(gap["floor"])
    assert len(gap["residual_rms"]) == len(gap["residual_times"]) == 9
    assert all(r > 0 for r in gap["residual_rms"])  # a 200-step MLP is no exact score
    assert (run / "evaluate_gap.png").stat().st_size > 0
    assert "| nll |" in proc.stdout and "floor" in proc.stdout

    evaluate = lambda *a: run_main(capsys, "evaluate", "--workdir", str(run), *a)  # noqa: E731
    assert_usage_error(evaluate("--metrics", "fid"), "fid", "nll, sw2, mmd")
    assert_usage_error(evaluate("--metrics", "fd"), "fd", "points")
    assert_usage_error(evaluate("--probes", "0"), "--probes")
    assert_usage_error(run_main(capsys, "evaluate", "--workdir", str(tmp_path / "none")),
                       "not a genflow run")
