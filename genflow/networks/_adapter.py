"""Turn an nnx module into a pure ``model_fn`` that samplers and losses can call."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
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
    # e.g. "bfloat16": run the network in this dtype (see :func:`in_dtype`); None: as stored
    compute_dtype: str | None = dataclasses.field(default=None, metadata=dict(static=True))

    def _module(self) -> nnx.Module:
        states = self.states
        if self.compute_dtype is not None:
            states = cast_floating(states, self.compute_dtype)
        return nnx.merge(self.graphdef, *states)

    def __call__(self, x: Array, t: Array, cond: Array | None = None) -> Array:
        return in_dtype(self._module(), self.compute_dtype)(x, t, cond)

    def log_density(self, x: Array, t: Array, cond: Array | None = None) -> Array:
        """The module's scalar ``log_density(x, t, cond)`` (networks built with
        ``output="log_density"``, whose ``model_fn`` is its x-gradient, the score)."""
        return in_dtype(self._module(), self.compute_dtype).log_density(x, t, cond)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Every floating-point leaf of ``tree`` in ``dtype`` (integer leaves unchanged); inside
    a differentiated function the cast passes gradients back in the leaves' own dtype."""
    def cast(a):
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(cast, tree)


class in_dtype:  # noqa: N801 - used like a function
    """``fn`` evaluated in ``dtype``: ``x`` is cast to it on the way in and the output back to
    ``x``'s dtype on the way out; ``t`` and ``cond`` pass unchanged (time embeddings are
    computed in float32 and then cast, see ``to_compute_dtype``). With ``dtype=None``,
    ``fn`` itself. Mixed precision: give ``fn`` parameters cast by :func:`cast_floating`,
    keep the float32 originals for the optimizer.
    """

    def __new__(cls, fn: Any, dtype: Any):
        if dtype is None:
            return fn
        return super().__new__(cls)

    def __init__(self, fn: Any, dtype: Any):
        self.fn, self.dtype = fn, jnp.dtype(dtype)

    def __call__(self, x: Array, t: Array, cond: Array | None = None, **kwargs: Any) -> Array:
        return self.fn(x.astype(self.dtype), t, cond, **kwargs).astype(x.dtype)

    def log_density(self, x: Array, t: Array, cond: Array | None = None) -> Array:
        return self.fn.log_density(x.astype(self.dtype), t, cond).astype(x.dtype)


def as_model_fn(module: nnx.Module) -> ModelFn:
    """Snapshot ``module`` into a :class:`ModelFn` (later changes to the module are not seen)."""
    graphdef, state = nnx.split(module)
    # ``nnx.split`` shares its Variable objects with ``module``; rebuild them so that later
    # assignments to the module's variables do not leak into this snapshot.
    state = jax.tree.map(lambda leaf: leaf, state)
    return ModelFn(graphdef, (state,))


class ValueModelFn:
    """A pure model function that also exposes the network's self-attention values.

    ``fn(x, t, cond=None, *, values=None, return_values=False)``: the plain call is a
    ``model_fn``; ``return_values=True`` also returns the per-block value tensors and
    ``values=(v_0, ..., v_{L-1})`` replaces them (``None`` entries compute normally), as the
    module's own hook defines (e.g. :class:`genflow.networks.DiT`). It follows the samplers'
    :class:`genflow.samplers.ValueModelFn` protocol (``supports_value_injection = True``), which
    :func:`genflow.samplers.edit` needs for ``share_values_steps > 0``.

    Like :class:`ModelFn` it is a pytree (leaves: the module's arrays; static: the graph
    definition), registered as its own node type so that a jitted function never confuses it
    with a :class:`ModelFn` of the same module.
    """

    supports_value_injection = True

    def __init__(self, graphdef: Any, states: tuple = ()):
        self.graphdef = graphdef
        self.states = tuple(states)

    def __call__(
        self,
        x: Array,
        t: Array,
        cond: Array | None = None,
        *,
        values: Sequence[Array | None] | None = None,
        return_values: bool = False,
    ) -> Array | tuple[Array, tuple[Array, ...]]:
        module = nnx.merge(self.graphdef, *self.states)
        return module(x, t, cond, values=values, return_values=return_values)


jax.tree_util.register_pytree_with_keys(
    ValueModelFn,
    lambda fn: (((jax.tree_util.GetAttrKey("states"), fn.states),), fn.graphdef),
    lambda graphdef, children: ValueModelFn(graphdef, children[0]),
    lambda fn: ((fn.states,), fn.graphdef),
)


def as_value_model_fn(module: nnx.Module) -> ValueModelFn:
    """Snapshot a module with an attention-value hook into a :class:`ValueModelFn`.

    Raises:
      TypeError: if the module has no value hook (``supports_value_injection`` is not true).
    """
    if getattr(module, "supports_value_injection", False) is not True:
        raise TypeError(
            f"{type(module).__name__} has no attention-value hook (supports_value_injection); "
            "use a network that has one, such as genflow.networks.DiT, or edit without value "
            "sharing (share_values_steps=0) through as_model_fn(module)."
        )
    plain = as_model_fn(module)
    return ValueModelFn(plain.graphdef, plain.states)
