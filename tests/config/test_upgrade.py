"""Configs of the first format keep working: run directories written before methods existed
(tests/config/v1_runs: the config.json of every shipped config as the old code wrote it), the
old --set keys, and a clear message for the names that moved in config files."""

import json
from pathlib import Path

import numpy as np
import pytest

from genflow.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config_file,
    load_config_json,
)

HERE = Path(__file__).parent
REPO = HERE.parents[1]
OLD_RUNS = sorted((HERE / "v1_runs").glob("*.json"))


@pytest.mark.parametrize("path", OLD_RUNS, ids=lambda p: p.stem)
def test_an_old_run_config_reads_as_the_shipped_config(path):
    old = config_to_dict(load_config_json(path))
    new = config_to_dict(load_config_file(REPO / "configs" / f"{path.stem}.py"))
    if path.stem == "toy_checkerboard_ko":
        # The tabulated path was fitted in float32 when the file was written and is fitted in
        # float64 here (the suite runs with x64): the same table to float32 round-off of a fit.
        old_p, new_p = old.pop("process"), new.pop("process")
        assert old_p.keys() == new_p.keys()
        for key in ("phi", "theta", "slope"):
            np.testing.assert_allclose(old_p[key], new_p[key], rtol=1e-3, atol=1e-6)
    assert old == new
    saved = json.loads(path.read_text())
    assert "version" not in saved and "prediction" in saved["train"]  # really the old format
    assert old["version"] == 2


def test_old_set_keys_are_read_as_their_new_names():
    old = apply_overrides(Config(), ["process=edm", "train.prediction=x0", "train.weighting=edm",
                                     "model.precondition=edm", "model.sigma_data=1.3",
                                     "train.t_min=1e-4"])
    new = apply_overrides(Config(), ["process=edm", "method.prediction=x0", "method.weighting=edm",
                                     "method.precondition=edm", "method.sigma_data=1.3",
                                     "method.t_min=1e-4"])
    assert old == new and new.resolved.method.weighting.sigma_data == 1.3
    interp = apply_overrides(Config(), ["train.prediction=v+eta", "process=stochastic_interpolant",
                                        "sample.sampler=interpolant_heun"])
    assert interp.method.fields == "v+eta"
    digits = apply_overrides(Config(), ["data.name=digits", "model.name=dit", "model.hidden=32"])
    assert digits.model.name == "dit" and digits.model.hidden == 32


def test_a_config_file_with_the_old_names_says_what_to_rename(tmp_path):
    path = tmp_path / "old_cfg.py"
    path.write_text("from genflow.config import Config, ModelConfig\n"
                    "def get_config():\n    return Config(model=ModelConfig(hidden=8))\n")
    with pytest.raises(ConfigError, match="MLPConfig, UNetConfig or DiTConfig"):
        load_config_file(path)
    path.write_text("from genflow.config import Config, TrainConfig\n"
                    "def get_config():\n    return Config(train=TrainConfig(prediction='x0'))\n")
    with pytest.raises(ConfigError, match=r"train.prediction moved to the method"):
        load_config_file(path)


def test_a_wrong_type_inside_a_config_file_is_one_clear_error(tmp_path):
    path = tmp_path / "typed_cfg.py"
    path.write_text("from genflow.config import Config, MLPConfig\n"
                    "def get_config():\n    return Config(model=MLPConfig(hidden='big'))\n")
    with pytest.raises(ConfigError, match="model.hidden must be an int, got 'big'"):
        load_config_file(path)


def test_an_unknown_version_is_refused():
    d = config_to_dict(Config())
    with pytest.raises(ConfigError, match="version"):
        config_from_dict({**d, "version": 99})
