"""The one registry: every name builds its object once, option types come from the fields, and
the named objects' parameters come from the config (the EDM weighting's sigma_data)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow import losses, methods, processes, samplers
from genflow.config import (
    REGISTRY,
    Config,
    ConfigError,
    SampleConfig,
    apply_overrides,
    config_to_dict,
    help_list,
    load_config_file,
)
from tests.config.test_config import REPO


@pytest.mark.parametrize("kind", ["method", "solver", "grid", "weighting", "time_density", "network"])
def test_every_name_builds_and_names_itself(kind):
    for name in REGISTRY.names(kind):
        obj = REGISTRY.build(kind, name)
        if kind == "solver" and name == "fp_ode":
            assert isinstance(obj, samplers.FokkerPlanckHeun)
        assert REGISTRY.name_of(kind, obj) == name


def test_fixed_options_are_not_options_and_types_come_from_fields():
    types_ = REGISTRY.option_types("solver", "dpm_solver++_2m")
    assert "order" not in types_ and "algorithm" not in types_
    assert types_["variant"] is str and types_["lower_order_final"] is bool
    solver = REGISTRY.build("solver", "dpm_solver_3s", {"variant": "taylor"})
    assert (solver.order, solver.algorithm, solver.variant) == (3, "dpmsolver", "taylor")
    with pytest.raises(ConfigError, match="unknown option 'order'.*its options"):
        REGISTRY.build("solver", "dpm_solver++_2m", {"order": 3})
    with pytest.raises(ConfigError, match="variant"):
        REGISTRY.build("solver", "dpm_solver++_2m", {"variant": 2})
    with pytest.raises(ConfigError, match="choose one of"):
        REGISTRY.build("solver", "rk45")


def test_help_lists_come_from_the_registry():
    text = help_list("solver")
    for name in REGISTRY.names("solver"):
        assert name in text
    assert set(REGISTRY.names("grid")) == {"uniform", "log_snr", "quadratic", "karras"}


def test_the_solver_is_built_once_when_the_sample_section_is():
    sample = SampleConfig(sampler="dpm_solver++_3m", solver_options={"variant": "taylor"})
    assert sample.solver is sample.solver
    config = Config(sample=sample)
    assert config.resolved.solver is sample.solver
    assert isinstance(config.resolved.method, methods.Denoising)
    assert config.resolved.method.process is config.process


def test_solver_options_are_a_typed_mapping():
    sample = SampleConfig(sampler="ddim", solver_options="eta=0.5")  # the older string form
    assert sample.solver_options == {"eta": 0.5} and sample.solver.eta == 0.5
    config = apply_overrides(Config(), ["sample.sampler=edm_heun",
                                        "sample.solver_options=s_churn=10,s_noise=1.007"])
    assert config.sample.solver_options == {"s_churn": 10.0, "s_noise": 1.007}
    assert config_to_dict(config)["sample"]["solver_options"] == {"s_churn": 10.0,
                                                                  "s_noise": 1.007}
    with pytest.raises(ConfigError, match="unknown option 'bogus' for sampler ddim"):
        SampleConfig(sampler="ddim", solver_options={"bogus": 1})


def test_network_tuples_are_typed():
    config = apply_overrides(Config(), ["data.name=digits", "model=unet",
                                        "model.channel_mult=1,2", "model.attention_resolutions="])
    assert config.model.channel_mult == (1, 2) and config.model.attention_resolutions == ()
    assert config_to_dict(config)["model"]["channel_mult"] == [1, 2]


# ------------------------------------------------------------------ defect: EDM's sigma_data
def test_edm_weighting_takes_sigma_data_from_the_config():
    """configs/toy_checkerboard_edm.py preconditions with sigma_data = 1.16; the loss weight
    must use the same value (it used EDMWeighting's default 0.5)."""
    config = load_config_file(REPO / "configs" / "toy_checkerboard_edm.py")
    method = config.resolved.method
    assert method.weighting == losses.EDMWeighting(sigma_data=1.16)
    net = lambda x, c_noise, cond=None: jnp.tanh(x) * c_noise[:, None]  # noqa: E731
    model_fn = method.wrap(net)
    assert model_fn.sigma_data == 1.16
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(64, 2)) * 1.16, jnp.float32)
    key = jax.random.key(0)
    expected = losses.denoising_loss(model_fn, config.process, x0, key=key, prediction="x0",
                                     weighting=losses.EDMWeighting(sigma_data=1.16),
                                     t_min=method.t_min)
    wrong = losses.denoising_loss(model_fn, config.process, x0, key=key, prediction="x0",
                                  weighting=losses.EDMWeighting(), t_min=method.t_min)
    got = method.loss(model_fn, {"x": x0}, key)
    np.testing.assert_allclose(got, expected, rtol=1e-6)  # the same program: equal to round-off
    assert abs(float(got) - float(wrong)) > 1e-3 * abs(float(wrong))
    # --set takes the value from the method too, and a second, different value is refused
    other = apply_overrides(Config(), ["process=edm", "method.prediction=x0",
                                       "method.weighting=edm", "method.sigma_data=2.0"])
    assert other.resolved.method.weighting.sigma_data == 2.0
    with pytest.raises(ValueError, match="sigma_data"):  # the method refuses it when built
        Config(process=processes.EDM(), method=methods.Denoising(
            prediction="x0", weighting=losses.EDMWeighting(sigma_data=0.5), sigma_data=1.16))


def test_a_method_that_does_not_fit_the_process_says_which_does():
    with pytest.raises(ConfigError, match="Gaussian path"):
        Config(process=processes.GeometricBrownianMotion(), method=methods.Denoising(),
               sample=SampleConfig(sampler="gbm_exponential"))
    config = Config(process=processes.GeometricBrownianMotion(), method=methods.GBM(),
                    sample=SampleConfig(sampler="gbm_exponential"))
    assert dataclasses.replace(config.method, prediction="score").prediction == "score"
