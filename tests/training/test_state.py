"""Training state: learning-rate schedule and optimizer against hand-written closed forms."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from genflow import methods
from genflow.config import Config, DataConfig, MLPConfig, TrainConfig
from genflow.training import (
    build_model,
    init_train_state,
    learning_rate_schedule,
    make_optimizer,
    model_fn_from,
)

LR = 2e-3


def schedule_value(cfg, step):
    return float(learning_rate_schedule(cfg)(step))


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("decay", ["constant", "cosine"])
def test_linear_warmup(decay):
    cfg = TrainConfig(lr=LR, warmup_steps=10, num_steps=110, lr_decay=decay)
    assert schedule_value(cfg, 0) == 0.0
    assert schedule_value(cfg, 3) == pytest.approx(LR * 3 / 10, rel=1e-6)
    assert schedule_value(cfg, 5) == pytest.approx(LR / 2, rel=1e-6)
    assert schedule_value(cfg, 10) == pytest.approx(LR, rel=1e-6)


def test_constant_after_warmup():
    cfg = TrainConfig(lr=LR, warmup_steps=10, num_steps=110, lr_decay="constant")
    for step in (10, 50, 110, 10_000):
        assert schedule_value(cfg, step) == pytest.approx(LR, rel=1e-6)


def test_cosine_decay_closed_form():
    w, n = 10, 110
    cfg = TrainConfig(lr=LR, warmup_steps=w, num_steps=n, lr_decay="cosine")
    end = LR / 100

    def closed(step):
        return end + (LR - end) * 0.5 * (1 + math.cos(math.pi * (step - w) / (n - w)))

    for step in (10, 35, 60, 85, 109):
        assert schedule_value(cfg, step) == pytest.approx(closed(step), rel=1e-5)
    assert schedule_value(cfg, 60) == pytest.approx((LR + end) / 2, rel=1e-6)
    assert schedule_value(cfg, n) == pytest.approx(LR / 100, rel=1e-6)
    assert schedule_value(cfg, 2 * n) == pytest.approx(LR / 100, rel=1e-6)


@pytest.mark.parametrize("decay", ["constant", "cosine"])
def test_no_warmup_starts_at_full_learning_rate(decay):
    # warmup_steps=0 means no warm-up: the very first step already uses lr.
    cfg = TrainConfig(lr=LR, warmup_steps=0, num_steps=100, lr_decay=decay)
    assert schedule_value(cfg, 0) == pytest.approx(LR, rel=1e-6)
    if decay == "cosine":
        assert schedule_value(cfg, 50) == pytest.approx((LR + LR / 100) / 2, rel=1e-6)
        assert schedule_value(cfg, 100) == pytest.approx(LR / 100, rel=1e-6)


# --------------------------------------------------------------------------- optimizer

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adamw defaults


def two_updates(opt, params, g1, g2):
    """The update of the second optimizer step (count 1, where the schedule is past warm-up)."""
    return jax.jit(_two_updates, static_argnums=0)(opt, params, g1, g2)


def _two_updates(opt, params, g1, g2):
    state = opt.init(params)
    u1, state = opt.update(g1, state, params)
    params = optax.apply_updates(params, u1)
    u2, _ = opt.update(g2, state, params)
    return params, u2


def adamw_second_update(params1, g1, g2, lr, wd):
    """AdamW's second update, written out: bias-corrected moments, then decoupled decay."""
    out = {}
    for k in params1:
        m = B1 * (1 - B1) * g1[k] + (1 - B1) * g2[k]
        v = B2 * (1 - B2) * g1[k] ** 2 + (1 - B2) * g2[k] ** 2
        m_hat, v_hat = m / (1 - B1**2), v / (1 - B2**2)
        out[k] = -lr * (m_hat / (np.sqrt(v_hat) + EPS) + wd * params1[k])
    return out


def tree_norm(tree):
    return math.sqrt(sum(float(np.sum(np.asarray(v) ** 2)) for v in tree.values()))


@pytest.fixture(scope="module")
def opt_problem():
    rng = np.random.default_rng(0)
    params = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=(5,))}
    g1 = {k: 0.01 * rng.normal(size=v.shape) for k, v in params.items()}
    g2 = {k: rng.normal(size=v.shape) for k, v in params.items()}
    return params, g1, g2


def test_adamw_update_closed_form(opt_problem):
    params, g1, g2 = opt_problem
    cfg = TrainConfig(lr=0.1, warmup_steps=1, lr_decay="constant", grad_clip=1e6, weight_decay=0.01)
    params1, u2 = two_updates(make_optimizer(cfg), params, g1, g2)
    expected = adamw_second_update(
        {k: np.asarray(v) for k, v in params1.items()}, g1, g2, 0.1, 0.01
    )
    for k in params:
        np.testing.assert_allclose(np.asarray(u2[k]), expected[k], rtol=1e-6, atol=1e-12)


def test_gradient_clipping_rescales_to_global_norm(opt_problem):
    params, g1, g2 = opt_problem
    c = 0.5
    assert tree_norm(g1) < c
    huge = {k: 1e4 * v for k, v in g2.items()}
    rescaled = {k: v * (c / tree_norm(huge)) for k, v in huge.items()}
    assert tree_norm(rescaled) == pytest.approx(c, rel=1e-12)

    cfg = TrainConfig(lr=0.1, warmup_steps=1, lr_decay="constant", grad_clip=c)
    opt = make_optimizer(cfg)
    _, u_huge = two_updates(opt, params, g1, huge)
    params1, u_rescaled = two_updates(opt, params, g1, rescaled)
    for k in params:
        np.testing.assert_allclose(
            np.asarray(u_huge[k]), np.asarray(u_rescaled[k]), rtol=1e-9, atol=1e-15
        )
    expected = adamw_second_update(
        {k: np.asarray(v) for k, v in params1.items()}, g1, rescaled, 0.1, 0.0
    )
    for k in params:
        np.testing.assert_allclose(np.asarray(u_huge[k]), expected[k], rtol=1e-6, atol=1e-12)

    # Without clipping, the huge gradient would dominate Adam's moments and the update differs.
    _, u_unclipped = two_updates(
        make_optimizer(dataclasses.replace(cfg, grad_clip=1e30)), params, g1, huge
    )
    assert (
        max(np.abs(np.asarray(u_unclipped[k]) - np.asarray(u_huge[k])).max() for k in params) > 1e-3
    )


def test_small_gradient_is_not_clipped(opt_problem):
    params, g1, g2 = opt_problem
    small = {k: v * (0.1 / tree_norm(g2)) for k, v in g2.items()}
    cfg = TrainConfig(lr=0.1, warmup_steps=1, lr_decay="constant", grad_clip=0.5)
    _, u_clip = two_updates(make_optimizer(cfg), params, g1, small)
    _, u_free = two_updates(
        make_optimizer(dataclasses.replace(cfg, grad_clip=1e30)), params, g1, small
    )
    for k in params:
        np.testing.assert_array_equal(np.asarray(u_clip[k]), np.asarray(u_free[k]))


# --------------------------------------------------------------------------- state

TINY = Config(
    data=DataConfig(batch_size=16),
    model=MLPConfig(hidden=16, depth=1, embed_dim=8, embedding="fourier"),
    train=TrainConfig(num_steps=10, steps_per_dispatch=5, checkpoint_every=5, log_every=5),
)


@pytest.fixture(scope="module")
def tiny_state():
    return init_train_state(TINY, (2,))


def test_init_train_state(tiny_state):
    setup, state = tiny_state
    assert state.step.shape == () and state.step.dtype == jnp.int32 and int(state.step) == 0
    model = build_model(TINY.model, (2,), seed=TINY.train.seed)
    expected = nnx.state(model, nnx.Param)
    assert jax.tree.structure(state.params) == jax.tree.structure(expected)
    for a, b, e in zip(
        jax.tree.leaves(state.params), jax.tree.leaves(state.ema), jax.tree.leaves(expected)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))  # same seed, same weights
        np.testing.assert_array_equal(np.asarray(b), np.asarray(e))
        assert a is not b  # EMA has buffers of its own (the train step donates the state)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(
        setup.optimizer.init(state.params)
    )


def test_model_fn_from_matches_the_module(tiny_state):
    setup, state = tiny_state
    params = jax.tree.map(lambda p: p + 0.1, state.params)  # non-zero output layer
    model = nnx.merge(setup.graphdef, params, setup.rest)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)
    t = jnp.linspace(0.1, 0.9, 16, dtype=jnp.float32)
    y = np.asarray(model_fn_from(setup, params)(x, t))
    np.testing.assert_array_equal(y, np.asarray(model(x, t)))
    assert np.abs(y).max() > 1e-3


def test_build_model_rejects_image_shapes():
    with pytest.raises(ValueError, match="flat data"):
        build_model(TINY.model, (8, 8, 1), seed=0)


def test_weight_decay_leaves_fourier_frequencies_fixed(tiny_state):
    _, state = tiny_state
    opt = make_optimizer(dataclasses.replace(TINY.train, weight_decay=0.1, warmup_steps=1))

    @jax.jit
    def three_steps(params):
        zeros = jax.tree.map(jnp.zeros_like, params)  # what stop_gradient gives the freqs
        opt_state = opt.init(params)
        for _ in range(3):
            updates, opt_state = opt.update(zeros, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params

    params = three_steps(state.params)
    np.testing.assert_array_equal(
        np.asarray(params["time_embed"]["freqs"][...]),
        np.asarray(state.params["time_embed"]["freqs"][...]),
    )


def test_edm_preconditioned_model_fn():
    """With method.precondition='edm' the model_fn is D = c_skip y + c_out F(c_in y, log(s)/4),
    computed here from EDM's table by hand, and it can be passed into jax.jit."""
    from genflow.processes import EDM

    config = dataclasses.replace(
        TINY, process=EDM(),
        method=methods.Denoising(prediction="x0", weighting="edm", precondition="edm",
                                 sigma_data=0.8),
    )
    setup, state = init_train_state(config, (2,))
    params = jax.tree.map(lambda p: p + 0.1, state.params)
    net = nnx.merge(setup.graphdef, params, setup.rest)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 2)) * 5, jnp.float32)
    t = jnp.linspace(0.05, 0.95, 16, dtype=jnp.float32)
    sigma = np.asarray(EDM().marginal(t)[1])[:, None]  # alpha = 1 on the EDM path
    var = sigma**2 + 0.8**2
    raw = np.asarray(net(x / np.sqrt(var), jnp.asarray(0.25 * np.log(sigma[:, 0]))))
    expected = 0.8**2 / var * np.asarray(x) + sigma * 0.8 / np.sqrt(var) * raw
    got = jax.jit(lambda m, x, t: m(x, t))(model_fn_from(setup, params), x, t)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-5)


def test_edm_preconditioning_needs_x0_prediction():
    from genflow.config import ConfigError

    with pytest.raises(ValueError, match="method.prediction=x0"):
        dataclasses.replace(TINY, method=methods.Denoising(precondition="edm"))
    with pytest.raises(ConfigError, match="method.prediction=x0"):
        from genflow.config import apply_overrides

        apply_overrides(TINY, ["model.precondition=edm"])  # the first format's key
