"""Property-based fuzzing of what a user types: every mistake is one line on stderr and exit 2,
never a traceback, and nothing is computed.

Seeded (``derandomize``) and bounded, so the suite is reproducible: ``--set`` values, config
files, sampler options and whole command lines. So that a *valid* input also stops before any
compute, each command points at a place where no run can be: a ``--workdir`` that is a file
(train), a run directory without a trained model, or an ``--out`` under a file (sample).
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genflow.cli import main
from genflow.config import REGISTRY, DataConfig, SampleConfig, TrainConfig
from genflow.config._types import field_types

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "toy_checkerboard_vp.py")
FUZZ = settings(max_examples=100, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

KEYS = ([f"train.{k}" for k in field_types(TrainConfig)]
        + [f"data.{k}" for k in field_types(DataConfig)]
        + [f"sample.{k}" for k in field_types(SampleConfig)]
        + [f"model.{k}" for k in ("hidden", "depth", "embedding", "embed_dim", "num_classes")]
        + ["method.prediction", "method.weighting", "method.t_min", "method.time_density",
           "method.time_density.p_mean", "method.weighting.gamma", "process", "method",
           "model", "process.beta_max", "nonsense", "train", "train.lr.x"])
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "none", "true", "nan", "inf", "-1", "0", "1e400", "(0.05, 0.1)",
                     "1,2,2", "log_normal", "min_snr", "bfloat16", "fsdp", "x0", "vp_linear",
                     "dit", "ve", "gbm", "interpolant", "checkerboard", "cifar10", "a=b"]),
    st.text(string.printable, max_size=12),
)


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("genflow"), err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def not_a_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "a_file"
    path.write_text("not a run")
    return path


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_set_values(capsys, not_a_dir, items):
    sets = [a for key, value in items for a in ("--set", f"{key}={value}")]
    code = main(["train", "--config", CONFIG, "--workdir", str(not_a_dir), "--no-progress", *sets])
    assert code == 2
    one_error_line(capsys)


PY_VALUES = st.one_of(st.integers(-5, 10**5), st.floats(allow_nan=True), st.booleans(),
                      st.none(), st.text(string.ascii_letters, max_size=6),
                      st.lists(st.integers(-2, 5), max_size=3), st.just({"a": 1}))


@FUZZ
@given(section=st.sampled_from(["train", "data", "sample"]), data=st.data())
def test_config_files(capsys, tmp_path_factory, not_a_dir, section, data):
    cls = {"train": TrainConfig, "data": DataConfig, "sample": SampleConfig}[section]
    fields = data.draw(st.dictionaries(st.sampled_from(sorted(field_types(cls))), PY_VALUES,
                                       min_size=1, max_size=3))
    path = tmp_path_factory.mktemp("cfg") / "fuzzed.py"
    path.write_text(
        "from genflow.config import Config, DataConfig, SampleConfig, TrainConfig\n"
        f"def get_config():\n    return Config({section}={cls.__name__}(**{fields!r}))\n")
    code = main(["train", "--config", str(path), "--workdir", str(not_a_dir), "--no-progress"])
    assert code == 2
    one_error_line(capsys)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("fuzz_run") / "run"
    args = ["train", "--config", CONFIG, "--workdir", str(workdir), "--no-progress",
            "--set", "train.num_steps=10", "--set", "train.steps_per_dispatch=10",
            "--set", "train.checkpoint_every=10", "--set", "model.hidden=16",
            "--set", "data.batch_size=16"]
    assert main(args) == 0
    return workdir


@FUZZ
@given(sampler=st.sampled_from(REGISTRY.names("solver") + ("nope",)),
       options=st.lists(st.tuples(st.sampled_from(["order", "variant", "rtol", "eta", "snr",
                                                   "algorithm", "x", "lower_order_final"]),
                                  VALUES), max_size=2),
       steps=st.one_of(st.none(), st.integers(-3, 400)))
def test_sampler_options(capsys, tiny_run, not_a_dir, sampler, options, steps):
    argv = ["sample", "--workdir", str(tiny_run), "--sampler", sampler, "--num", "8",
            "--out", str(not_a_dir / "s")]
    argv += [a for k, v in options for a in ("--option", f"{k}={v}")]
    if steps is not None:
        argv += ["--steps", str(steps)]
    assert main(argv) == 2
    one_error_line(capsys)


COMMANDS = ["train", "sample", "evaluate", "inpaint", "ema", "reflow", "bogus"]
FLAGS = ["--workdir", "--config", "--set", "--sampler", "--steps", "--num", "--seed", "--option",
         "--metrics", "--weights", "--dtype", "--sigma-rel", "--out", "--mask", "--label",
         "--guidance", "--num-processes", "--process-id", "--fork", "--fresh",
         "--grid", "--threshold", "--t-start", "--step", "--pairs", "--connect-timeout"]


@FUZZ
@given(command=st.sampled_from(COMMANDS),
       rest=st.lists(st.one_of(st.sampled_from(FLAGS), VALUES), max_size=6))
def test_command_lines(capsys, tmp_path_factory, not_a_dir, command, rest):
    """Whole command lines against places that hold no run: always one line and exit 2."""
    empty = tmp_path_factory.mktemp("empty")
    argv = [command, *rest, "--workdir", str(not_a_dir if command == "train" else empty)]
    if command == "train":
        argv += ["--config", CONFIG]
    elif command == "reflow":
        argv += ["--out", str(empty / "out")]
    assert main(argv) == 2
    one_error_line(capsys)
