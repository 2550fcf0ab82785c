"""The methods beyond plain Gaussian-path denoising: stochastic interpolants between two data
sets (:class:`~genflow.methods.Interpolant`), geometric Brownian motion
(:class:`~genflow.methods.GBM`), and denoising on a fitted kinetic-optimal path.

Truth: the drift assembled from (v, eta) or (v, s) is checked against the exact conditional
expectations of a 1-D Gaussian interpolant; the GBM noise parametrisation against the residual
computed by hand from the same random draws; batches against the data streams they must come
from. Short real training runs check that every family trains and samples end to end.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow import methods
from genflow.config import (
    Config,
    ConfigError,
    DataConfig,
    MLPConfig,
    SampleConfig,
    TrainConfig,
    apply_overrides,
)
from genflow.data import ToyBatches, sample_toy
from genflow.processes import (
    GeometricBrownianMotion,
    KineticOptimalPath,
    StochasticInterpolant,
    VPLinear,
    to_positive,
)
from genflow.run import open_run
from genflow.run import train as train_run
from genflow.samplers import InterpolantField
from genflow.training import make_batches

TINY = dict(
    model=MLPConfig(hidden=16, depth=1, embed_dim=8),
    train=TrainConfig(num_steps=20, lr=1e-2, warmup_steps=2, steps_per_dispatch=10,
                      log_every=10, checkpoint_every=20),
)
SI = Config(
    process=StochasticInterpolant("linear", gamma="sqrt"),
    method=methods.Interpolant(fields="b+eta", t_min=1e-3),
    data=DataConfig(name="checkerboard", batch_size=64, source="8gaussians", scale=0.5),
    model=TINY["model"],
    train=TINY["train"],
    sample=SampleConfig(sampler="interpolant_heun", num_steps=8, num_samples=128, t_end=0.0),
)
GBM = Config(
    process=GeometricBrownianMotion(mu=1.125, sigma=1.5, data_log_mean=0.38, data_log_std=0.2),
    method=methods.GBM(t_min=1e-3),
    data=DataConfig(name="checkerboard", batch_size=64, scale=0.5),
    model=TINY["model"],
    train=TINY["train"],
    sample=SampleConfig(sampler="gbm_exponential", num_steps=8, num_samples=128),
)


def make_loss(config):
    return config.resolved.method.loss


# --------------------------------------------------------------------------- batches
def test_interpolant_batches_come_from_two_independent_streams():
    batches = make_batches(SI)(5, 3)
    target = ToyBatches("checkerboard", 64, SI.data.seed).batches(5, 3)
    source = ToyBatches("8gaussians", 64, SI.data.seed, stream=1).batches(5, 3)
    np.testing.assert_array_equal(batches["x"], 0.5 * target)
    np.testing.assert_array_equal(batches["x1"], 0.5 * source)
    # stream 1 is not stream 0 of the same seed (the pairing must be independent)
    same_seed = ToyBatches("8gaussians", 64, SI.data.seed).batches(5, 3)
    assert not np.allclose(source, same_seed)
    assert ToyBatches("8gaussians", 4, 0).batch(2).tolist() == sample_toy(
        "8gaussians", 4, seed=[0, 2]).tolist()


def test_gbm_batches_are_mapped_into_one_to_two_and_unscaled_data_are_refused():
    x = make_batches(GBM)(0, 2)["x"]
    assert x.shape == (2, 64, 2) and x.min() >= 1.0 and x.max() <= 2.0
    with pytest.raises(ConfigError, match=r"data.scale=1.0: .*reach 2.*shrink data.scale"):
        make_batches(dataclasses.replace(GBM, data=DataConfig(name="checkerboard")))


# --------------------------------------------------------------------------- losses
def test_gbm_noise_parametrisation_regresses_the_noise_of_log_x():
    """With prediction 'eps' and uniform weighting the loss is exactly mean (z - eps_theta)^2,
    z the noise of log x_t, computed here from the same draws as gbm_score_loss."""
    process = GBM.process
    x0 = jnp.asarray(to_positive(0.5 * sample_toy("checkerboard", 256, seed=1)), jnp.float64)
    net = lambda y, t, cond=None: 0.3 * y - 0.5 * t[:, None] * jnp.sin(y)  # noqa: E731
    key = jax.random.key(4)
    loss = make_loss(GBM)(net, {"x": x0}, key)
    key_t, key_z = jax.random.split(key)
    t = jax.random.uniform(key_t, (256,), jnp.float64, GBM.method.t_min, 1.0)
    x_t, z = process.sample_xt(key_z, x0, t)
    tt = t[:, None]
    y = (jnp.log(x_t) - 0.38 - (process.mu - process.sigma**2 / 2) * tt) / jnp.sqrt(
        0.2**2 + process.sigma**2 * tt)  # log x_t standardised by its marginal moments
    expected = jnp.mean((z - net(y, t)) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-10)
    # and the score it implies is the Hyvarinen score -1 - eps / (sigma sqrt t), over x
    score = GBM.resolved.method.score_fn(net)(x_t, t)
    hyv = -1.0 - net(y, t) / (process.sigma * jnp.sqrt(tt))
    np.testing.assert_allclose(score * x_t, hyv, rtol=1e-10)


def gaussian_interpolant_fields(process, m0, v0, m1, v1):
    """Exact E[. | x_t] for 1-D x0 ~ N(m0, v0), x1 ~ N(m1, v1), z independent (jointly
    Gaussian: E[Y | x] = E[Y] + Cov(Y, x_t) / Var(x_t) (x - E[x_t]))."""

    def moments(t):
        a, da, b, db = process.coefficients(t)
        g, dg = process.gamma(t), process.d_gamma(t)
        mean = a * m0 + b * m1
        var = a**2 * v0 + b**2 * v1 + g**2
        cov_di = a * da * v0 + b * db * v1  # Cov(dI/dt, x_t)
        return mean, var, da * m0 + db * m1, cov_di, g, dg

    def field(kind):
        def f(x, t, cond=None):
            mean, var, mean_di, cov_di, g, dg = (c[:, None] for c in moments(t))
            white = (x - mean) / var
            return {"v": mean_di + cov_di * white, "eta": g * white, "s": -white,
                    "b": mean_di + (cov_di + dg * g) * white}[kind]
        return f

    return {k: field(k) for k in ("b", "v", "eta", "s")}


@pytest.mark.parametrize("second", ["eta", "s"])
def test_drift_from_velocity_and_denoiser_is_exact(second):
    process = StochasticInterpolant("linear", gamma="sqrt")
    exact = gaussian_interpolant_fields(process, 0.7, 0.3, -1.0, 2.0)
    config = dataclasses.replace(SI, method=methods.Interpolant(fields=f"v+{second}"))
    method = config.resolved.method
    assert method.num_fields == 2
    net = lambda x, t, cond=None: jnp.concatenate(  # noqa: E731
        [exact["v"](x, t), exact[second](x, t)], axis=-1)
    fn, prediction = method.sampling_model(net)
    field = InterpolantField(fn, process, prediction)
    x = jnp.linspace(-3.0, 3.0, 7)[:, None]
    for t in (0.1, 0.5, 0.93):
        tb = jnp.full((7,), t)
        np.testing.assert_allclose(field.drift(x, tb), exact["b"](x, tb), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(field.score(x, tb), exact["s"](x, tb), rtol=1e-12)


def test_two_field_loss_is_the_sum_of_the_field_losses():
    from genflow.processes import interpolant_loss

    exact = gaussian_interpolant_fields(SI.process, 0.0, 1.0, 0.5, 1.0)
    net = lambda x, t, cond=None: jnp.concatenate(  # noqa: E731
        [exact["b"](x, t), exact["eta"](x, t)], axis=-1)
    x0 = jax.random.normal(jax.random.key(0), (128, 1))
    x1 = 0.5 + jax.random.normal(jax.random.key(1), (128, 1))
    key = jax.random.key(2)
    total = make_loss(SI)(net, {"x": x0, "x1": x1}, key)
    inner = jax.random.split(key)[1]
    parts = [interpolant_loss(exact[k], SI.process, x0, x1, key=inner, target=k, t_min=1e-3,
                              t_max=1 - 1e-3) for k in ("b", "eta")]
    np.testing.assert_allclose(total, sum(parts), rtol=1e-12)


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each method trained for 20 steps (tiny network), opened as for `genflow sample`."""
    ko_data = sample_toy("checkerboard", 64, seed=[9, 9])
    ko = Config(process=KineticOptimalPath.from_data(ko_data, num_points=32),
                method=methods.Denoising(prediction="velocity", t_min=1e-3),
                data=DataConfig(batch_size=64), model=TINY["model"], train=TINY["train"],
                sample=SampleConfig(num_steps=8, num_samples=128))
    runs = {}
    for name, config in (("si", SI), ("gbm", GBM), ("ko", ko)):
        workdir = tmp_path_factory.mktemp(name)
        train_run(config, workdir, progress=False)
        runs[name] = (config, workdir)
    return runs


def draw(config, workdir, **sample):
    run = open_run(workdir)
    samples = run.sample(seed=0, **sample)
    return samples.x, samples.nfe, run.step


@pytest.mark.parametrize("name, sample, nfe", [
    ("si", {}, 16),
    # one network evaluation gives the drift and the denoiser (it took two before)
    ("si", {"sampler": "interpolant_sde", "solver_options": {"epsilon": 0.5}}, 8),
    ("si", {"sampler": "interpolant_euler"}, 8),
    ("gbm", {}, 8),
    # the ambient Euler-Maruyama step can leave x > 0 when steps are large: 100 steps
    ("gbm", {"sampler": "gbm_euler_maruyama", "num_steps": 100}, 100),
    ("ko", {}, 16),
])
def test_every_method_trains_and_samples(trained, name, sample, nfe):
    config, workdir = trained[name]
    x, got_nfe, step = draw(config, workdir, **sample)
    assert step == 20 and got_nfe == nfe
    assert x.shape == (128, 2) and np.all(np.isfinite(x))


def test_interpolant_sampling_starts_from_the_source_data(trained):
    """With a single step of the ODE from t = 1 to t = 1 - 1e-9 the samples are the source
    draws, in data units (the scale is undone)."""
    config, workdir = trained["si"]
    x, _, _ = draw(config, workdir, num_steps=1, sampler="interpolant_euler", t_end=0.999999999)
    source = sample_toy("8gaussians", 128, seed=[2**31 - 1, 0, 1])
    np.testing.assert_allclose(x, source, atol=1e-6)


def test_gbm_exponential_samples_stay_in_the_positive_image(trained):
    """The Dale's-law sampler keeps x > 0, i.e. from_positive(x) / scale > -2 (x = 1 + (y/2 + 1)/2
    for y = sample; x > 0 iff y > -6)."""
    config, workdir = trained["gbm"]
    x, _, _ = draw(config, workdir, num_steps=30)
    assert x.min() > -6.0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, needle", [
    (["train.prediction=eps"], "train.prediction='eps' is not a set of interpolant fields"),
    (["sample.sampler=heun"], "cannot sample method interpolant"),
    (["train.prediction=b", "sample.sampler=interpolant_sde"], "needs a score or denoiser"),
    (["train.prediction=v"], "does not give the drift"),
    (["train.t_min=0"], "t_min > 0"),
    (["process.gamma=zero", "process.interpolant=one_sided_linear"], "one-sided"),
    (["process.gamma=zero"], "gamma='zero' leaves no noise"),
    (["train.weighting=likelihood"], "unknown config key 'train.weighting'; options of method"),
])
def test_interpolant_config_errors(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("+", r"\+")):
        apply_overrides(SI, overrides)


def test_other_config_errors():
    with pytest.raises(ConfigError, match="data.source is the t = 1 data set"):
        Config(process=VPLinear(), data=DataConfig(source="moons"))
    with pytest.raises(ConfigError, match="train.prediction='velocity' does not fit the gbm"):
        apply_overrides(GBM, ["train.prediction=velocity"])
    with pytest.raises(ConfigError, match="callable gamma cannot be saved"):
        from genflow.config import config_to_dict

        config_to_dict(dataclasses.replace(
            SI, process=StochasticInterpolant("linear", gamma=lambda t: t * (1 - t))))
