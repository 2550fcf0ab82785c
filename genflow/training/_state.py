"""Training state and its construction from a config."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genflow.config import Config, NetworkConfig, TrainConfig
from genflow.networks import FrozenParam, ModelFn


class TrainState(NamedTuple):
    """Everything that changes during training (and is checkpointed).

    Attributes:
      step: number of optimizer steps taken.
      params: the network's trainable parameters (an ``nnx.State``).
      opt_state: optax state.
      ema: exponential moving average of ``params``.
      profiles: one power-function EMA of ``params`` per ``train.ema_profiles`` entry
        (EDM2's post-hoc EMA); ``()`` without profiles.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any
    profiles: tuple = ()


def build_model(
    config: NetworkConfig, data_shape: tuple[int, ...], *, seed: int, num_fields: int = 1
) -> nnx.Module:
    """Construct the network of ``config`` (an :class:`~genflow.config.MLPConfig`,
    :class:`~genflow.config.UNetConfig` or :class:`~genflow.config.DiTConfig`) for data of
    ``data_shape``, with ``num_fields`` outputs shaped like the data (concatenated on the last
    axis).

    A setting the network rejects for this data shape (e.g. a patch size that does not divide
    the image) is a :class:`~genflow.config.ConfigError`.

    The parameters are drawn by one XLA program compiled at optimisation level 0 (it runs
    once), instead of one compilation per parameter shape: an 8x8 U-Net starts in about 6 s
    instead of 27 s on 2 CPU cores, with the same values.
    """
    graphdef, init, _ = _initializer(config, tuple(data_shape), num_fields)
    return nnx.merge(graphdef, init(jax.random.key(seed)))


@functools.lru_cache(maxsize=32)
def _initializer(config: NetworkConfig, data_shape: tuple[int, ...], num_fields: int):
    """``(graphdef, init, draw)``: ``init(key) -> state`` compiled once per network, and
    ``draw``, the same function unjitted (for use inside another jitted program)."""
    make = functools.partial(config.build, data_shape, num_fields=num_fields)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(seed=jax.random.key(0))))  # no compute

    def draw(key):
        return nnx.split(make(seed=key))[1]

    init = jax.jit(draw, compiler_options={"xla_backend_optimization_level": 0})
    return graphdef, init, draw


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Linear warm-up to ``lr``, then constant or cosine decay to ``lr / 100`` at ``num_steps``."""
    if config.lr_decay == "constant":
        if config.warmup_steps == 0:  # optax's linear warm-up over 0 steps would stay at 0
            return optax.constant_schedule(config.lr)
        return optax.warmup_constant_schedule(0.0, config.lr, config.warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        0.0,
        config.lr,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.num_steps, config.warmup_steps + 1),
        end_value=config.lr / 100,
    )


def _weight_decay_mask(params: Any) -> Any:
    return jax.tree.map(
        lambda v: not isinstance(v, FrozenParam), params,
        is_leaf=lambda v: isinstance(v, nnx.Variable),
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then AdamW with the warm-up schedule.

    Weight decay skips :class:`~genflow.networks.FrozenParam` leaves (they get no gradient
    either, so Adam leaves them exactly where they are).
    """
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(
            learning_rate_schedule(config),
            weight_decay=config.weight_decay,
            mask=_weight_decay_mask,
        ),
    )


class Setup(NamedTuple):
    """The static parts of a run: how to rebuild the network and step the optimizer."""

    graphdef: Any
    rest: Any  # non-trainable module state (kept constant)
    optimizer: optax.GradientTransformation
    # network -> model_fn: the method's wrapper (the identity, or EDM's preconditioning)
    wrap: Callable[[Any], Any] = lambda net: net


def init_train_state(config: Config, data_shape: tuple[int, ...], *,
                     layout: Callable[[Any], Any] | None = None) -> tuple[Setup, TrainState]:
    """Build the network and optimizer and the step-0 state.

    Args:
      layout: ``layout(abstract_state) -> shardings``: create the state directly in those
        shardings, by one jitted program, so that no device ever holds more than its share
        (FSDP). ``None``: on the default device.
    """
    method = config.resolved.method
    graphdef0, init, draw = _initializer(config.model, tuple(data_shape), method.num_fields)
    if layout is not None:
        static = {}

        def make():
            model = nnx.merge(graphdef0, draw(jax.random.key(config.train.seed)))
            static["setup"], state = _fresh(config, model)
            return state

        state = jax.jit(make, out_shardings=layout(jax.eval_shape(make)))()
        setup = static["setup"]
        if jax.tree.leaves(setup.rest):  # non-trainable arrays: build them outside the trace
            setup = setup._replace(rest=init_train_state(config, data_shape)[0].rest)
        return setup, state
    return _fresh(config, nnx.merge(graphdef0, init(jax.random.key(config.train.seed))))


def _fresh(config: Config, model: nnx.Module) -> tuple[Setup, TrainState]:
    method = config.resolved.method
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(config.train)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema=jax.tree.map(jnp.copy, params),
        profiles=tuple(jax.tree.map(jnp.copy, params) for _ in config.train.ema_profiles),
    )
    return Setup(graphdef, rest, optimizer, method.wrap), state


def model_fn_from(setup: Setup, params: Any, *, compute_dtype: str | None = None) -> ModelFn:
    """The pure ``model_fn`` of the network with ``params`` (raw or EMA), wrapped as the
    method says (e.g. EDM's preconditioning); a pytree that can be passed into ``jax.jit``.
    With ``compute_dtype="bfloat16"`` the network runs in bfloat16 (its weights cast on the
    fly), while the method's wrapper and the sampler stay in the samples' dtype."""
    dtype = None if compute_dtype in (None, "float32") else compute_dtype
    return setup.wrap(ModelFn(setup.graphdef, (params, setup.rest), compute_dtype=dtype))
