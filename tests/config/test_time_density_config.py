"""Time densities in the config: the registry kind, ``--set method.time_density=NAME``, the
training loop's loss, and ``config.json`` round trips."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow import fokker_planck, losses, methods, processes, time_densities
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
    help_list,
)
from genflow.data import ToyBatches
from genflow.training import init_train_state, make_train_chunk, model_fn_from

DENSITIES = {
    "uniform": time_densities.UniformTime,
    "log_normal": time_densities.LogNormalNoise,
    "logit_normal": time_densities.LogitNormalTime,
    "log_uniform": time_densities.LogUniformNoise,
}
TINY = Config(
    data=DataConfig(name="checkerboard", batch_size=64, seed=1),
    model=MLPConfig(hidden=16, depth=1, embedding="fourier", embed_dim=8),
    train=TrainConfig(num_steps=4, lr=1e-2, warmup_steps=0, lr_decay="constant",
                      steps_per_dispatch=1, seed=3),
)


def roundtrip(config):
    return config_from_dict(json.loads(json.dumps(config_to_dict(config))))


def test_time_density_and_new_weighting_names():
    assert REGISTRY.names("time_density") == tuple(DENSITIES)
    for name, cls in DENSITIES.items():
        obj = REGISTRY.build("time_density", name)
        assert type(obj) is cls and REGISTRY.name_of("time_density", obj) == name
        assert name in help_list("time_density")
    assert REGISTRY.option_types("time_density", "log_normal") == {"p_mean": float,
                                                                   "p_std": float}
    assert REGISTRY.build("time_density", "log_normal", {"p_mean": -1.0}).p_mean == -1.0
    with pytest.raises(ConfigError, match="p_std"):
        REGISTRY.build("time_density", "log_normal", {"p_std": -1.0})
    for name, cls in (("min_snr", losses.MinSNRWeighting), ("sigmoid", losses.SigmoidWeighting)):
        obj = REGISTRY.build("weighting", name)
        assert type(obj) is cls and REGISTRY.name_of("weighting", obj) == name


def test_default_stays_uniform_with_and_without_the_config_layer():
    assert Config().method.time_density == "uniform"
    assert Config().resolved.method.time_density == time_densities.UniformTime()
    # A method bound directly (no registry) gets the same default.
    bound = methods.Denoising(weighting=losses.Uniform()).bind(processes.VPLinear())
    assert bound.time_density == time_densities.UniformTime()
    assert config_to_dict(Config())["method"]["time_density"] == "uniform"


def test_log_normal_builds_trains_and_roundtrips():
    config = apply_overrides(TINY, ["method.time_density=log_normal",
                                    "method.weighting=min_snr"])
    method = config.resolved.method
    assert method.time_density == time_densities.LogNormalNoise()
    assert method.weighting == losses.MinSNRWeighting()
    # config.json: the names, read back to an equal config.
    saved = config_to_dict(config)["method"]
    assert (saved["time_density"], saved["weighting"]) == ("log_normal", "min_snr")
    back = roundtrip(config)
    assert back == config and back.resolved.method.time_density == method.time_density

    # The training loop's loss is denoising_loss with this density (one step, checked by hand).
    setup, state = init_train_state(config, (2,))
    chunk = make_train_chunk(config, setup)
    x = jnp.asarray(ToyBatches(config.data.name, config.data.batch_size,
                               config.data.seed).batches(0, 1))
    key = jax.random.fold_in(jax.random.key(config.train.seed), 0)
    model_fn = model_fn_from(setup, state.params)
    common = dict(key=key, prediction="eps", weighting=losses.MinSNRWeighting(),
                  t_min=method.t_min)

    @jax.jit
    def expected():
        return tuple(losses.denoising_loss(model_fn, config.process, x[0], time_density=d,
                                           **common)
                     for d in (time_densities.LogNormalNoise(), time_densities.UniformTime()))

    want, uniform = expected()
    state, metrics = chunk(state, {"x": x})
    assert np.isfinite(float(metrics["loss"]))
    np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)
    assert abs(float(want) - float(uniform)) > 1e-3 * abs(float(uniform))
    for step in range(1, 4):  # a few more steps stay finite
        state, metrics = chunk(state, {"x": jnp.asarray(ToyBatches(
            config.data.name, config.data.batch_size, config.data.seed).batches(step, 1))})
        assert np.isfinite(float(metrics["loss"]))


def test_every_density_roundtrips_and_reaches_the_fp_loss():
    for name, cls in DENSITIES.items():
        config = apply_overrides(TINY, [f"method.time_density={name}"])
        assert roundtrip(config) == config and type(config.resolved.method.time_density) is cls
        # An object in a config file is written as its name.
        obj_config = dataclasses.replace(config, method=methods.Denoising(time_density=cls()))
        assert config_to_dict(obj_config) == config_to_dict(config)
    # With the Fokker-Planck regularizer the denoising part draws from the density too.
    config = apply_overrides(TINY, ["method.time_density=logit_normal", "method.fp_weight=0.5",
                                    "method.fp_points=4"])
    method = config.resolved.method
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(32, 2)))
    net = lambda x, t, cond=None: 0.5 * x * t[:, None]  # noqa: E731
    key = jax.random.key(4)
    kw = dict(key=key, t_min=method.t_min)

    @jax.jit  # one compilation (eagerly, the residual's many small ops take seconds)
    def both():
        return method.loss(net, {"x": x0}, key), fokker_planck.fp_regularized_loss(
            net, config.process, x0, weight=0.5, num_points=4,
            time_density=time_densities.LogitNormalTime(), **kw)

    got, want = both()
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    # The penalty does not depend on the density (uniform collocation times, its own key), so
    # the two losses differ from the uniform one by their denoising parts, which do differ.
    dsm = losses.denoising_loss(net, config.process, x0,
                                time_density=time_densities.LogitNormalTime(), **kw)
    dsm_uniform = losses.denoising_loss(net, config.process, x0, **kw)
    assert abs(float(dsm) - float(dsm_uniform)) > 1e-3 * abs(float(dsm_uniform))


def test_bad_density_names_and_pairs_are_config_errors():
    with pytest.raises(ConfigError, match="unknown time_density 'lognormal'; choose one of"):
        apply_overrides(TINY, ["method.time_density=lognormal"])
    with pytest.raises(ConfigError, match="finite log-SNR"):  # lambda_1 = -inf on this path
        apply_overrides(TINY, ["process=rectified_flow", "method.time_density=log_uniform"])
    with pytest.raises(TypeError, match="time_density"):
        methods.Denoising(weighting=losses.Uniform(), time_density="log_normal").bind(
            processes.VPLinear())  # a name, not built


def test_options_of_registry_fields_are_set_and_kept_in_config_json():
    """``--set method.time_density.p_mean=-1.0`` (in either order with the name), objects with
    non-default options in a config file, and their config.json round trip."""
    for overrides in (["method.time_density=log_normal", "method.time_density.p_mean=-1.0"],
                      ["method.time_density.p_mean=-1.0", "method.time_density=log_normal"]):
        config = apply_overrides(TINY, [*overrides, "method.weighting=min_snr",
                                        "method.weighting.gamma=3"])
        method = config.resolved.method
        assert method.time_density == time_densities.LogNormalNoise(p_mean=-1.0, p_std=1.2)
        assert method.weighting == losses.MinSNRWeighting(gamma=3.0)
        saved = config_to_dict(config)["method"]
        assert saved["time_density"] == {"name": "log_normal", "p_mean": -1.0}
        back = roundtrip(config).resolved.method
        assert back.time_density == method.time_density and back.weighting == method.weighting
    # Objects in a config file: options other than the defaults are written, and survive.
    config = dataclasses.replace(TINY, method=methods.Denoising(
        weighting=losses.SigmoidWeighting(bias=0.5),
        time_density=time_densities.LogitNormalTime(mean=0.3)))
    saved = config_to_dict(config)["method"]
    assert saved["weighting"] == {"name": "sigmoid", "bias": 0.5}
    assert saved["time_density"] == {"name": "logit_normal", "mean": 0.3}
    assert roundtrip(config).resolved.method.time_density.mean == 0.3
    # Defaults and options fed from the method (EDM's sigma_data) stay a plain name.
    edm = dataclasses.replace(TINY, method=methods.Denoising(weighting="edm", sigma_data=0.7))
    assert config_to_dict(edm)["method"]["weighting"] == "edm"
    assert roundtrip(edm).resolved.method.weighting.sigma_data == 0.7
    with pytest.raises(ConfigError, match="options of weighting uniform: none"):
        apply_overrides(TINY, ["method.weighting.gamma=3"])
    with pytest.raises(ConfigError, match="method.t_min has no options"):
        apply_overrides(TINY, ["method.t_min.x=3"])
    with pytest.raises(ConfigError, match="must be a float"):
        apply_overrides(TINY, ["method.time_density=log_normal", "method.time_density.p_std=x"])
