"""Turn an nnx module into a pure ``model_fn`` that samplers and losses can call."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx
from jaxtyping import Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelFn:
    """A pure ``model_fn(x, t, cond=None)`` holding a module's graph and state.

    It is a pytree whose leaves are the module's arrays and whose static part is the
    graph definition, so it can be passed *into* ``jax.jit`` as an argument: new weights
    reuse the compiled program instead of being baked in as constants.
    """

    graphdef: Any = dataclasses.field(metadata=dict(static=True))
    states: tuple = ()

    def __call__(self, x: Array, t: Array, cond: Array | None = None) -> Array:
        module = nnx.merge(self.graphdef, *self.states)
        return module(x, t, cond)


def as_model_fn(module: nnx.Module) -> ModelFn:
    """Snapshot ``module`` into a :class:`ModelFn` (later changes to the module are not seen)."""
    graphdef, state = nnx.split(module)
    # ``nnx.split`` shares its Variable objects with ``module``; rebuild them so that later
    # assignments to the module's variables do not leak into this snapshot.
    state = jax.tree.map(lambda leaf: leaf, state)
    return ModelFn(graphdef, (state,))
