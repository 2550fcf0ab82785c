"""Typed experiment configs, the one registry of names, and config file / ``--set`` I/O.

* :mod:`._schema`: the sections (:class:`DataConfig`, one config class per network,
  :class:`TrainConfig`, :class:`SampleConfig`) and :class:`Config`, which checks how they fit
  and resolves every name once (:attr:`Config.resolved`).
* :mod:`._registry`: :data:`REGISTRY`, names -> classes for processes, methods, solvers, grids,
  loss weightings, time densities and networks, with option types read from the dataclass
  fields.
* :mod:`._io`: ``configs/NAME.py`` files, ``config.json`` (both formats) and ``--set``.
"""

from genflow.config._errors import ConfigError as ConfigError
from genflow.config._io import (
    MOVED as MOVED,
    apply_overrides as apply_overrides,
    config_from_dict as config_from_dict,
    config_to_dict as config_to_dict,
    load_config_file as load_config_file,
    load_config_json as load_config_json,
    network_config as network_config,
    replace_sample as replace_sample,
    save_config as save_config,
    upgrade_v1 as upgrade_v1,
)
from genflow.config._networks import (
    DiTConfig as DiTConfig,
    MLPConfig as MLPConfig,
    NetworkConfig as NetworkConfig,
    UNetConfig as UNetConfig,
)
from genflow.config._registry import REGISTRY as REGISTRY, Registry as Registry, help_list as help_list
from genflow.config._types import parse_options as parse_options, parse_value as parse_value
from genflow.config._sections import COMPUTE_DTYPES as COMPUTE_DTYPES
from genflow.config._schema import (
    Config as Config,
    DataConfig as DataConfig,
    Resolved as Resolved,
    SampleConfig as SampleConfig,
    TrainConfig as TrainConfig,
    default_method as default_method,
    is_image_dataset as is_image_dataset,
)
from genflow.methods import Denoising as Denoising, GBM as GBM, Interpolant as Interpolant

_REMOVED = {
    "ModelConfig": "genflow.config.ModelConfig is now one class per network: MLPConfig, "
    "UNetConfig or DiTConfig (model=DiTConfig(hidden=128, ...)); its precondition and "
    "sigma_data moved to the method (method=Denoising(precondition='edm', sigma_data=...)).",
    "process_family": "there are no process families any more: a method object "
    "(config.method, genflow.methods) owns what the family decided.",
    "make_solver": "build solvers by name with genflow.config.REGISTRY.build('solver', NAME, "
    "options), or use config.resolved.solver.",
}


def __getattr__(name: str):
    if name in _REMOVED:
        raise ImportError(_REMOVED[name])
    raise AttributeError(f"module 'genflow.config' has no attribute {name!r}")


__all__ = [
    "COMPUTE_DTYPES", "REGISTRY", "Config", "ConfigError", "DataConfig", "Denoising", "DiTConfig", "GBM",
    "Interpolant", "MLPConfig", "MOVED", "NetworkConfig", "Registry", "Resolved", "SampleConfig",
    "TrainConfig", "UNetConfig", "apply_overrides", "config_from_dict", "config_to_dict",
    "default_method", "help_list", "is_image_dataset", "load_config_file", "load_config_json",
    "network_config", "parse_options", "parse_value", "replace_sample", "save_config", "upgrade_v1",
]
