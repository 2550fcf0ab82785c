"""Training state and its construction from a config."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from genflow.config import Config, ConfigError, ModelConfig, TrainConfig
from genflow.networks import MLP, DiT, FrozenParam, ModelFn, UNet
from genflow.processes import edm_precondition
from genflow.training._families import num_fields


class TrainState(NamedTuple):
    """Everything that changes during training (and is checkpointed).

    Attributes:
      step: number of optimizer steps taken.
      params: the network's trainable parameters (an ``nnx.State``).
      opt_state: optax state.
      ema: exponential moving average of ``params``.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any


def build_model(
    config: ModelConfig, data_shape: tuple[int, ...], *, seed: int, num_fields: int = 1
) -> nnx.Module:
    """Construct the network named by ``config`` for data of ``data_shape``, with
    ``num_fields`` outputs shaped like the data (concatenated on the last axis).

    ``"mlp"`` needs flat data ``(d,)``; ``"unet"`` and ``"dit"`` need images ``(H, W, C)`` and
    one field. A setting the network rejects for this data shape (e.g. a patch size that does
    not divide the image) is a :class:`~genflow.config.ConfigError`.

    The parameters are drawn by one XLA program compiled at optimisation level 0 (it runs
    once), instead of one compilation per parameter shape: an 8x8 U-Net starts in about 6 s
    instead of 27 s on 2 CPU cores, with the same values.
    """
    graphdef, init = _initializer(config, tuple(data_shape), num_fields)
    return nnx.merge(graphdef, init(jax.random.key(seed)))


@functools.lru_cache(maxsize=32)
def _initializer(config: ModelConfig, data_shape: tuple[int, ...], num_fields: int):
    """``(graphdef, init)`` with ``init(key) -> state`` compiled once per network."""
    make = functools.partial(_construct, config, data_shape, num_fields=num_fields)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make(jax.random.key(0))))  # no compute
    init = jax.jit(lambda key: nnx.split(make(key))[1],
                   compiler_options={"xla_backend_optimization_level": 0})
    return graphdef, init


def _construct(
    config: ModelConfig, data_shape: tuple[int, ...], seed: Any, *, num_fields: int
) -> nnx.Module:
    if config.name in ("unet", "dit"):
        if len(data_shape) != 3:
            raise ConfigError(
                f"model.name={config.name!r} needs images (H, W, C), got data shape {data_shape}."
            )
        if num_fields != 1:
            raise ConfigError(
                f"model.name={config.name!r} predicts one field; {num_fields} were asked for."
            )
        common = dict(
            embedding=config.embedding, embed_dim=config.embed_dim,
            num_classes=config.num_classes, rngs=nnx.Rngs(seed),
        )
        try:
            if config.name == "unet":
                return UNet(
                    data_shape, channels=config.channels,
                    channel_mult=config.channel_mult_tuple,
                    num_res_blocks=config.num_res_blocks,
                    attention_resolutions=config.attention_resolutions_tuple,
                    dropout=config.dropout, **common,
                )
            return DiT(
                data_shape, patch_size=config.patch_size, width=config.hidden,
                depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                **common,
            )
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"model ({config.name}, data shape {data_shape}): {exc}") from exc
    if config.name == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"the MLP needs flat data (d,), got data shape {data_shape}.")
        return MLP(
            data_shape[0],
            hidden=config.hidden,
            depth=config.depth,
            embedding=config.embedding,
            embed_dim=config.embed_dim,
            num_classes=config.num_classes,
            num_fields=num_fields,
            output=config.output,
            rngs=nnx.Rngs(seed),
        )
    raise ValueError(f"unknown model {config.name!r}.")


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
    # network -> model_fn: the identity, or EDM's preconditioning around the network
    wrap: Callable[[Any], Any] = lambda net: net


def uses_dropout(config: ModelConfig) -> bool:
    """Whether the network has dropout that a training step must feed a key."""
    return config.name == "unet" and config.dropout > 0.0


def init_train_state(config: Config, data_shape: tuple[int, ...]) -> tuple[Setup, TrainState]:
    """Build the network and optimizer and the step-0 state."""
    model = build_model(
        config.model, data_shape, seed=config.train.seed, num_fields=num_fields(config)
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimizer = make_optimizer(config.train)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema=jax.tree.map(jnp.copy, params),
    )
    return Setup(graphdef, rest, optimizer, make_wrap(config)), state


def make_wrap(config: Config) -> Callable[[Any], Any]:
    """How the network becomes the ``model_fn`` of the loss and the samplers."""
    if config.model.precondition == "edm":
        return functools.partial(
            edm_precondition, process=config.process, sigma_data=config.model.sigma_data
        )
    return lambda net: net


def model_fn_from(setup: Setup, params: Any) -> ModelFn:
    """The pure ``model_fn`` of the network with ``params`` (raw or EMA), preconditioned as
    the config says; a pytree that can be passed into ``jax.jit``."""
    return setup.wrap(ModelFn(setup.graphdef, (params, setup.rest)))
