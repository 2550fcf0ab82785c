"""Annotated field types and the check of a value against one (configs and --set alike)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from genflow.config._errors import ConfigError


def parse_options(text: str) -> dict[str, str]:
    """``"key=value,key=value"`` -> ``{"key": "value", ...}`` (values typed later)."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"sampler option {item!r} must look like key=value.")
        options[key.strip()] = raw.strip()
    return options


def field_types(cls: type) -> dict[str, Any]:
    """Annotated types of a dataclass's fields (less the ones a method binds itself)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)
            if not f.metadata.get("bound") and f.init}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_type(value: Any, tp: Any, key: str) -> Any:
    """Raise :class:`ConfigError` if ``value`` does not have type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                check_type(value, arg, key)
                return
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}.")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be None, got {value!r}.")
        return
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key} must be a tuple such as (1, 2, 2), got {value!r}.")
        if args and args[-1] is Ellipsis:
            for v in value:
                check_type(v, args[0], key)
        return
    if origin in (dict, Mapping) or tp in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping such as {{'order': 2}}, got {value!r}.")
        return
    if tp is list:
        if not (isinstance(value, (list, tuple, np.ndarray, jnp.ndarray))):
            raise ConfigError(f"{key} must be a list of numbers.")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise ConfigError(f"{key} must be a float, got {value!r}.")
        return
    if tp is int:
        if not _is_int(value):
            raise ConfigError(f"{key} must be an int, got {value!r}.")
        return
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}.")
        return
    if inspect.isclass(tp) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {tp.__name__}, got {type(value).__name__}.")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """Parse a command-line string as ``tp``: int, float, bool, str, a tuple of ints,
    ``Optional`` of those, or a mapping written ``key=value,key=value``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        tp = args[0]
        origin = typing.get_origin(tp)
    if tp is bool:
        low = raw.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key} must be a bool (true/false), got {raw!r}.")
    if tp is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key} must be an int, got {raw!r}.") from None
    if tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{key} must be a float, got {raw!r}.") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {raw!r}.")
        return value
    if tp is str or tp is Any:
        return raw
    if origin is tuple:
        text = raw.strip().strip("()[]")
        item = typing.get_args(tp)[0] if typing.get_args(tp) else int
        item = float if item is float else int
        try:
            return tuple(item(p) for p in text.replace(" ", "").split(",") if p)
        except ValueError:
            example = "0.05,0.1" if item is float else "1,2,2"
            raise ConfigError(f"{key} must be comma-separated {item.__name__}s such as "
                              f"{example}, got {raw!r}.") from None
    if origin in (dict, Mapping) or origin is typing.Mapping:
        return parse_options(raw)
    raise ConfigError(f"{key} cannot be set from the command line (type {tp}).")
