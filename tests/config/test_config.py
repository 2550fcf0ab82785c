"""Typed configs: command-line overrides, validation errors that name the key, JSON round trips."""

import dataclasses
import json
from pathlib import Path

import pytest

from genflow.config import (
    REGISTRY,
    Config,
    ConfigError,
    DataConfig,
    MLPConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config_file,
)
from genflow.config import parse_value as _parse
from genflow.processes import KineticOptimalPath, VPCosine, VPLinear

REPO = Path(__file__).resolve().parents[2]
TOY_FILE = REPO / "configs" / "toy_checkerboard_vp.py"


def roundtrip(config):
    return config_from_dict(json.loads(json.dumps(config_to_dict(config))))


# --------------------------------------------------------------------------- overrides


def test_overrides_of_each_field_type():
    base = Config()
    cfg = apply_overrides(
        base,
        [
            "train.num_steps=2_000",  # int (underscores allowed)
            "train.lr=3e-4",  # float
            "train.ema_decay=0.5",
            "train.grad_clip=2",  # an int literal for a float field
            "data.name=moons",  # str
            "sample.sampler=ddim",
            " model.hidden = 32 ",  # whitespace around key and value
        ],
    )
    assert cfg.train.num_steps == 2000 and type(cfg.train.num_steps) is int
    assert cfg.train.lr == 3e-4
    assert cfg.train.ema_decay == 0.5
    assert cfg.train.grad_clip == 2.0 and type(cfg.train.grad_clip) is float
    assert cfg.data.name == "moons"
    assert cfg.sample.sampler == "ddim"
    assert cfg.model.hidden == 32
    # Everything else is untouched.
    assert cfg == dataclasses.replace(
        base,
        train=dataclasses.replace(
            base.train, num_steps=2000, lr=3e-4, ema_decay=0.5, grad_clip=2.0
        ),
        data=dataclasses.replace(base.data, name="moons"),
        sample=dataclasses.replace(base.sample, sampler="ddim"),
        model=dataclasses.replace(base.model, hidden=32),
    )
    assert base == Config()  # the input is not modified


def test_later_override_wins():
    cfg = apply_overrides(Config(), ["train.lr=0.1", "train.lr=0.2"])
    assert cfg.train.lr == 0.2


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
    ],
)
def test_bool_parsing(raw, expected):
    # The parser on its own (data.random_flip is the one bool field a toy config cannot set).
    assert _parse(raw, bool, "x.flag") is expected


def test_bool_parsing_rejects_other_words():
    with pytest.raises(ConfigError, match=r"x\.flag"):
        _parse("maybe", bool, "x.flag")


def test_optional_parsing():
    assert _parse("none", int | None, "x.n") is None
    assert _parse("7", int | None, "x.n") == 7


def test_process_override_and_its_fields():
    cfg = apply_overrides(Config(), ["process=vp_cosine", "process.s=0.01"])
    assert cfg.process == VPCosine(s=0.01)
    assert type(cfg.process) is VPCosine
    cfg = apply_overrides(Config(), ["process.beta_max=10"])
    assert cfg.process == VPLinear(beta_min=0.1, beta_max=10.0)


@pytest.mark.parametrize(
    "override, key",
    [
        ("nosuch.field=1", "nosuch.field"),  # unknown section
        ("train.nosuch=1", "train.nosuch"),  # unknown field
        ("train.num_steps=abc", "train.num_steps"),  # not an int
        ("train.num_steps=1.5", "train.num_steps"),  # a float for an int
        ("train.lr=abc", "train.lr"),  # not a float
        ("train.lr=nan", "train.lr"),  # not finite
        ("train.num_steps=-5", "train.num_steps"),  # negative step count
        ("train.num_steps=0", "train.num_steps"),  # zero step count
        ("sample.num_steps=0", "sample.num_steps"),
        ("train.steps_per_dispatch=0", "train.steps_per_dispatch"),
        ("data.batch_size=-1", "data.batch_size"),
        ("train.ema_decay=1.0", "train.ema_decay"),
        ("data.name=mnist", "data.name"),  # unknown data set
        ("sample.sampler=rk45", "sample.sampler"),  # unknown sampler
        ("train.prediction=noise", "train.prediction"),  # unknown prediction
        ("train.lr_decay=step", "train.lr_decay"),
        ("model.embedding=learned", "model.embedding"),
        ("train.checkpoint_every=75", "train.checkpoint_every"),  # not a multiple of 50
        ("train.steps_per_dispatch=300", "train.checkpoint_every"),  # 1000 % 300 != 0
        ("process=vp_quadratic", "process"),  # unknown process
        ("process.s=0.01", "process.s"),  # VPLinear has no field s
        ("train.lr", "train.lr"),  # no '='
    ],
)
def test_bad_override_raises_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), [override])
    assert key in str(info.value)


def test_bad_process_field_value_names_the_key():
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["process=vp_cosine", "process.s=-1"])
    assert "process.s" in str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="train.checkpoint_every"):
        TrainConfig(steps_per_dispatch=30, checkpoint_every=100)
    with pytest.raises(ConfigError, match="model.embed_dim"):
        MLPConfig(embed_dim=7)
    with pytest.raises(ConfigError, match="unknown data set"):
        DataConfig(name="nope")


# --------------------------------------------------------------------------- dicts and files


def test_default_config_roundtrips_through_json():
    assert roundtrip(Config()) == Config()


def test_toy_config_file_roundtrips_through_json():
    cfg = load_config_file(TOY_FILE)
    assert isinstance(cfg, Config)
    assert cfg.process == VPLinear(beta_min=0.1, beta_max=20.0)
    assert cfg != Config()  # the file sets its own values, which must survive the round trip
    assert roundtrip(cfg) == cfg


def test_overridden_config_roundtrips_with_process_name():
    cfg = apply_overrides(Config(), ["process=vp_cosine", "process.s=0.01", "train.lr=3e-4"])
    d = config_to_dict(cfg)
    assert d["process"] == {"name": "vp_cosine", "s": 0.01, "t_max": VPCosine().t_max}
    assert roundtrip(cfg) == cfg


def test_config_from_dict_rejects_unknown_keys_and_bad_types():
    d = config_to_dict(Config())
    with pytest.raises(ConfigError, match="nosuch"):
        config_from_dict({**d, "nosuch": {}})
    with pytest.raises(ConfigError, match=r"train\.nosuch"):
        config_from_dict({**d, "train": {**d["train"], "nosuch": 1}})
    with pytest.raises(ConfigError, match=r"train\.num_steps"):
        config_from_dict({**d, "train": {**d["train"], "num_steps": "100"}})
    with pytest.raises(ConfigError, match=r"train\.num_steps"):
        config_from_dict({**d, "train": {**d["train"], "num_steps": True}})
    with pytest.raises(ConfigError, match="process"):
        config_from_dict({**d, "process": {"name": "nope"}})


def test_load_config_file_missing_path(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(missing)


def test_load_config_file_without_get_config(tmp_path):
    path = tmp_path / "empty_cfg.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config_file(path)


def test_load_config_file_that_raises(tmp_path):
    path = tmp_path / "broken_cfg.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="boom"):
        load_config_file(path)


def test_load_config_file_wrong_return_type(tmp_path):
    path = tmp_path / "dict_cfg.py"
    path.write_text("def get_config():\n    return {}\n")
    with pytest.raises(ConfigError, match="must return"):
        load_config_file(path)


# What a process that is not a Gaussian path needs besides its name (set in either order).
OTHER_FAMILIES = {
    "gbm": ["sample.sampler=gbm_exponential"],
    "stochastic_interpolant": ["train.prediction=b+eta", "sample.sampler=interpolant_heun",
                               "train.t_min=1e-3"],
}


@pytest.mark.parametrize("name", sorted(set(REGISTRY.names("process")) - {"kinetic_optimal"}))
def test_every_process_is_selectable_and_round_trips(name):
    extra = OTHER_FAMILIES.get(name, [])
    config = apply_overrides(Config(), [*extra[::-1], f"process={name}"])
    assert type(config.process) is REGISTRY.entry("process", name).target
    # and in the other order
    assert apply_overrides(Config(), [f"process={name}", *extra]) == config
    assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    if extra:  # without them the config is refused, naming what to choose
        with pytest.raises(ConfigError, match="choose one of"):
            apply_overrides(Config(), [f"process={name}"])


def test_a_fitted_process_has_no_default():
    with pytest.raises(ConfigError, match="fitted to data.*toy_checkerboard_ko"):
        apply_overrides(Config(), ["process=kinetic_optimal"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config_file(path)
    saved = config_to_dict(config)
    back = config_from_dict(json.loads(json.dumps(saved)))
    assert config_to_dict(back) == saved  # a tabulated path (KO) compares by identity
    if not isinstance(config.process, KineticOptimalPath):
        assert back == config
