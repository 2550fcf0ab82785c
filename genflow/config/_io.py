"""Config files, ``config.json`` and ``--set`` overrides.

An experiment file ``configs/NAME.py`` defines ``get_config() -> Config``. The command line
overrides single fields with ``--set section.field=value``; every value is parsed and checked
against the field's annotated type before anything is computed::

    genflow train --config configs/toy_checkerboard_vp.py --set train.num_steps=2000
    genflow train --config ... --set process=vp_cosine --set process.s=0.01
    genflow train --config ... --set method.prediction=x0 --set model=dit

A run directory stores the resolved config as ``config.json`` (with ``"version": 2``);
:func:`config_from_dict` reads it back, and reads the first format (no version: method options
under ``train``, one flat model section, comma strings) too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from genflow.config._errors import ConfigError
from genflow.config._networks import NetworkConfig
from genflow.config._registry import REGISTRY
from genflow.config._types import check_type, field_types, parse_value
from genflow.config._schema import (
    Config,
    DataConfig,
    SampleConfig,
    TrainConfig,
    default_method,
)

VERSION = 2
SECTIONS = ("process", "method", "data", "model", "train", "sample")
_PLAIN_SECTIONS = {"data": DataConfig, "train": TrainConfig, "sample": SampleConfig}

# Keys of the first config format and where they live now. The method's options moved out of
# `train` and `model`; `model.name` chooses the network (`model=NAME`).
MOVED = {
    **{f"train.{k}": f"method.{k}" for k in (
        "prediction", "weighting", "t_min", "t_sampling", "fp_weight", "fp_points",
        "fp_divergence")},
    "model.precondition": "method.precondition",
    "model.sigma_data": "method.sigma_data",
    "model.name": "model",
}
# Option names of the first format that a method now calls otherwise.
_METHOD_RENAMES = {"interpolant": {"prediction": "fields"}}


# ------------------------------------------------------------------------ files
def load_config_file(path: str | Path) -> Config:
    """Import ``path`` (Python, run as code: only load files you trust) and call its
    ``get_config()``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"_genflow_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {path} defines no get_config() function.")
        config = module.get_config()
    except ConfigError:
        raise
    except Exception as exc:  # a user's file: report it in one line
        raise ConfigError(f"config file {path} failed to load: {type(exc).__name__}: {exc}"
                          f"{_rename_hint(exc)}") from exc
    if not isinstance(config, Config):
        raise ConfigError(f"get_config() in {path} must return genflow.config.Config.")
    return config


def _rename_hint(exc: Exception) -> str:
    text = str(exc)
    if "ModelConfig" in text:
        return (" (genflow.config.ModelConfig is now one class per network: MLPConfig, "
                "UNetConfig, DiTConfig; precondition and sigma_data moved to the method)")
    for old, new in MOVED.items():
        if old.startswith("train.") and f"'{old.split('.')[1]}'" in text:
            return (f" ({old} moved to the method: pass method=Denoising({new.split('.')[1]}=...), "
                    "or Interpolant/GBM for those processes)")
    return ""


# ------------------------------------------------------------------------ dicts
def _section_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else (
            dict(value) if isinstance(value, Mapping) else value)
    return out


def registry_value_to_json(kind: str, value: Any, context: Mapping[str, Any]) -> Any:
    """A method's registry-field value for ``config.json``: its name, or ``{"name": NAME,
    **options}`` when it has options that differ from their defaults and are not the method's
    own fields of the same name (EDM's ``sigma_data``); a name or dict passes as it is."""
    if isinstance(value, (str, Mapping)):
        return dict(value) if isinstance(value, Mapping) else value
    name = REGISTRY.name_of(kind, value)
    default = REGISTRY.fields_of(kind, REGISTRY.build(kind, name, context=context))
    options = {k: v for k, v in REGISTRY.fields_of(kind, value).items()
               if k not in context and v != default.get(k)}
    return {"name": name, **options} if options else name


def method_to_dict(method: Any) -> dict[str, Any]:
    out = {"name": REGISTRY.name_of("method", method)}
    context = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)
               if not f.metadata.get("registry")}
    for name in field_types(type(method)):
        value = getattr(method, name)
        kind = next((f.metadata.get("registry") for f in dataclasses.fields(method)
                     if f.name == name), None)
        out[name] = registry_value_to_json(kind, value, context) if kind else value
    return out


def config_to_dict(config: Config) -> dict:
    """A JSON-ready dict: ``{"version": 2, "process": {"name": ..., **fields}, ...}``."""
    return {
        "version": VERSION,
        "process": {"name": REGISTRY.name_of("process", config.process),
                    **REGISTRY.fields_of("process", config.process)},
        "method": method_to_dict(config.method),
        "data": _section_dict(config.data),
        "model": {"name": config.model.name, **_section_dict(config.model)},
        "train": _section_dict(config.train),
        "sample": _section_dict(config.sample),
    }


def _build_section(cls: type, values: Mapping[str, Any], section: str) -> Any:
    hints = field_types(cls)
    for name, value in values.items():
        if name not in hints:
            raise ConfigError(f"unknown config key {section}.{name}; fields: {', '.join(hints)}.")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad {section} config: {exc}") from None


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Inverse of :func:`config_to_dict`; unknown keys are errors. A dict of the first format
    (no ``"version"``) is upgraded first."""
    if not isinstance(d, Mapping):
        raise ConfigError("a config must be a JSON object.")
    d = dict(d)
    if "version" not in d:
        d = upgrade_v1(d)
    version = d.pop("version")
    if version != VERSION:
        raise ConfigError(f"config version {version!r} is not known to this genflow (reads "
                          f"{VERSION} and the unversioned first format).")
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(sorted(unknown))}; sections: "
                          f"{', '.join(SECTIONS)}.")
    kwargs: dict[str, Any] = {}
    if "process" in d:
        fields = dict(d["process"])
        kwargs["process"] = REGISTRY.build("process", fields.pop("name", None), fields)
    if "method" in d:
        fields = dict(d["method"])
        kwargs["method"] = REGISTRY.build("method", fields.pop("name", None), fields)
    if "model" in d:
        fields = dict(d["model"])
        name = fields.pop("name", None)
        kwargs["model"] = _build_section(REGISTRY.entry("network", name).target, fields, "model")
    for section, cls in _PLAIN_SECTIONS.items():
        if section in d:
            kwargs[section] = _build_section(cls, d[section], section)
    return Config(**kwargs)


def upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict of the first format in the current one (same run, same meaning)."""
    d = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()}
    process = d.get("process", {"name": "vp_linear"})
    method_name = REGISTRY.entry("process", process.get("name")).method
    method_cls = REGISTRY.entry("method", method_name).target
    method_fields = field_types(method_cls)
    renames = _METHOD_RENAMES.get(method_name, {})
    method = {"name": method_name}
    for old, new in MOVED.items():
        section, _, key = old.partition(".")
        if not new.startswith("method.") or key not in d.get(section, {}):
            continue
        value = d[section].pop(key)
        key = renames.get(key, key)
        if key in method_fields:
            method[key] = value
    model = d.get("model", {})
    name = model.get("name", "mlp")
    network = REGISTRY.entry("network", name).target
    keep = field_types(network)
    d["model"] = {"name": name, **{k: v for k, v in model.items() if k in keep}}
    d["method"] = method
    d["version"] = VERSION
    return d


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


def load_config_json(path: str | Path) -> Config:
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}).") from None
    return config_from_dict(data)


# ------------------------------------------------------------------------ overrides
def _method_option(method_cls: type, name: str) -> str:
    """``name`` as ``method_cls`` calls it (``prediction`` is ``fields`` for interpolants)."""
    fields = field_types(method_cls)
    if name in fields:
        return name
    for renames in _METHOD_RENAMES.values():
        if renames.get(name) in fields:
            return renames[name]
    return name


def _switch(kind: str, name: str, explicit: Mapping[str, Any], current: Any = None) -> Any:
    """A new ``kind`` object named ``name``, with the explicitly set options that it has, and
    (for networks) the current object's values of fields that both have."""
    cls = REGISTRY.entry(kind, name).target
    fields = field_types(cls)
    options = {}
    if current is not None:
        options.update({k: getattr(current, k) for k in field_types(type(current)) if k in fields})
    for key, value in explicit.items():
        key = _method_option(cls, key) if kind == "method" else key
        if key in fields:
            options[key] = value
    try:
        return REGISTRY.build(kind, name, options) if kind != "network" else cls(**options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{kind} {name}: {exc}") from None


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.field=value`` strings (``process=NAME``, ``method=NAME``, ``model=NAME``)
    in order.

    Each section is checked as it changes; the method and the whole config (which method,
    network, sampler and data fit which process) once all overrides are in, so that
    ``--set process=gbm --set method.prediction=eps`` works in either order: a new process whose
    default method differs from the current method's class switches the method, keeping the
    options set explicitly. Keys of the first config format (``train.prediction``,
    ``model.name``, ...) are read as their new names.
    """
    sections = {name: getattr(config, name) for name in SECTIONS}
    method_cls = type(config.method)
    explicit: dict[str, tuple[str, str]] = {}  # method option -> (raw value, key as given)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}.")
        key, raw = (part.strip() for part in item.split("=", 1))
        given = key
        key = MOVED.get(key, key)
        parts = key.split(".")
        if parts[0] not in sections:
            raise ConfigError(f"unknown config key {given!r}: no section {parts[0]!r}; "
                              f"sections: {', '.join(SECTIONS)}.")
        if len(parts) == 1:
            if key == "process":
                entry = REGISTRY.entry("process", raw)
                try:
                    sections["process"] = REGISTRY.build("process", raw)
                except ConfigError:
                    raise ConfigError(
                        f"process {raw} has no default settings (it is fitted to data); build it "
                        "in a config file, as configs/toy_checkerboard_ko.py does."
                    ) from None
                wanted = REGISTRY.entry("method", entry.method).target
                if wanted is not method_cls:
                    method_cls, sections["method"] = wanted, None
            elif key == "method":
                method_cls, sections["method"] = REGISTRY.entry("method", raw).target, None
            elif key == "model":
                sections["model"] = _switch("network", raw, {}, current=sections["model"])
            else:
                raise ConfigError(f"--set {given}=... replaces a whole section only for process, "
                                  "method and model; set a field instead, e.g. train.lr=1e-4.")
            continue
        if len(parts) == 3 and parts[0] == "method":  # an option of a registry field
            explicit[".".join(parts[1:])] = (raw, given)
            continue
        if len(parts) != 2:
            raise ConfigError(f"config keys look like section.field (or method.FIELD.OPTION for "
                              f"an option of a method's weighting or time density), got "
                              f"{given!r}.")
        section_name, field = parts
        if section_name == "method":  # typed and checked once the method's class is final
            explicit[field] = (raw, given)
            continue
        section = sections[section_name]
        if section_name == "process":
            name = REGISTRY.name_of("process", section)
            hints = REGISTRY.option_types("process", name)
        else:
            hints = field_types(type(section))
        if field not in hints:
            raise ConfigError(f"unknown config key {given!r}; fields of {section_name}: "
                              f"{', '.join(hints)}.")
        value = parse_value(raw, hints[field], given)
        try:
            if section_name == "process":
                current = REGISTRY.fields_of("process", section)
                section = REGISTRY.build("process", name, current | {field: value})
            else:
                check_type(value, hints[field], given)
                section = dataclasses.replace(section, **{field: value})
        except ValueError as exc:  # ConfigError included: make sure the message names the key
            if isinstance(exc, ConfigError) and given in str(exc):
                raise
            raise ConfigError(f"bad value for {given}: {exc}") from None
        sections[section_name] = section
    sections["method"] = _final_method(method_cls, sections["method"], explicit)
    return Config(**sections)


def _final_method(method_cls: type, current: Any, explicit: dict[str, tuple[str, str]]) -> Any:
    """The method of ``method_cls``: ``current`` (or the defaults) with the explicit options."""
    if not explicit:
        return current if current is not None else method_cls()
    hints = field_types(method_cls)
    values = {}
    sub_options = {k: v for k, v in explicit.items() if "." in k}
    explicit = {k: v for k, v in explicit.items() if "." not in k}
    for field, (raw, given) in explicit.items():
        name = _method_option(method_cls, field)
        if name not in hints:
            raise ConfigError(f"unknown config key {given!r}; options of method "
                              f"{REGISTRY.name_of('method', method_cls())}: {', '.join(hints)}.")
        values[name] = parse_value(raw, hints[name], given)
    kinds = {f.name: f.metadata.get("registry") for f in dataclasses.fields(method_cls)}
    for key, (raw, given) in sub_options.items():
        field, option = key.split(".", 1)
        if not kinds.get(field):
            raise ConfigError(f"unknown config key {given!r}: method.{field} has no options "
                              "(only a method's registry fields do: weighting, time_density).")
        value = values.get(field, getattr(current, field) if current is not None else
                           next(f.default for f in dataclasses.fields(method_cls)
                                if f.name == field))
        if not isinstance(value, (str, Mapping)):  # an object: its name and options
            value = {"name": REGISTRY.name_of(kinds[field], value),
                     **REGISTRY.fields_of(kinds[field], value)}
        value = {"name": value} if isinstance(value, str) else dict(value)
        types = REGISTRY.option_types(kinds[field], value["name"])
        if option not in types:
            raise ConfigError(f"unknown config key {given!r}; options of {kinds[field]} "
                              f"{value['name']}: {', '.join(types) or 'none'}.")
        value[option] = parse_value(raw, types[option], given)
        values[field] = value
    try:
        return dataclasses.replace(current, **values) if current is not None else method_cls(
            **values)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for field, (_, given) in explicit.items():
            message = message.replace(f"method.{_method_option(method_cls, field)}", given)
        if not any(given in message for _, given in explicit.values()):
            message = f"bad value for {', '.join(g for _, g in explicit.values())}: {message}"
        raise ConfigError(message) from None


def replace_sample(config: Config, **changes: Any) -> Config:
    """``config`` with some ``sample`` fields changed (checked like every config)."""
    return dataclasses.replace(config, sample=dataclasses.replace(config.sample, **changes))


def network_config(name: str, **fields: Any) -> NetworkConfig:
    """The config of the network ``name`` (``"mlp"``, ``"unet"``, ``"dit"``) with ``fields``."""
    return _switch("network", name, fields)


__all__ = ["apply_overrides", "config_from_dict", "config_to_dict", "default_method",
           "load_config_file", "load_config_json", "replace_sample",
           "save_config", "upgrade_v1"]
