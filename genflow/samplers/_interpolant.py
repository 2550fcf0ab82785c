r"""Generation with a stochastic interpolant between two densities (Albergo, Boffi &
Vanden-Eijnden 2023), as solvers of :func:`genflow.samplers.sample` and ``invert()``.

:class:`~genflow.processes.StochasticInterpolant` joins ``rho_0`` (data, ``t = 0``) and
``rho_1`` (another data set, or ``N(0, I)``, ``t = 1``). Its density ``rho_t`` is transported by
the drift ``b`` (``d rho/dt + div(b rho) = 0``) and, for any ``eps(t) >= 0``, by the SDEs of
the Fokker-Planck equations ``d rho/dt + div((b -+ eps s) rho) = -+ eps Laplacian rho``, with
``s = grad log rho_t``. The network predicts the fields named by the prediction
(:class:`InterpolantField`), concatenated on the last axis of its output.

* :class:`InterpolantEuler`, :class:`InterpolantHeun`: the ODE ``dx/dt = b(t, x)`` in either
  direction (``sample()`` from ``t_start`` down to ``t_end``, e.g. ``rho_1 -> rho_0``;
  ``invert()`` upwards). With ``h = t_{n+1} - t_n``: Euler ``x + h b(t_n, x)``; Heun
  (trapezoidal) ``x' = x + h b_n``, ``x + h/2 (b_n + b(t_{n+1}, x'))``. ``b`` is finite at both
  ends when learnt directly (``b = v - gamma gamma' s``), so the exact ends can be used.
* :class:`InterpolantSDE`: Euler-Maruyama of the generative SDE backwards in time
  (``rho_1 -> rho_0``): ``dx = (b - eps s) dt + sqrt(2 eps) dW_bar`` (``dt < 0``), i.e.

  .. math::

      x_{n+1} = x_n + h\, b_n + |h|\, \varepsilon_n s_n + \sqrt{2 \varepsilon_n |h|}\, \xi_n,

  fields at ``t_n``. ``s = -eta / gamma`` is ``0/0`` where the noise scale vanishes (``t = 0,
  1``; ``t = 0`` only for one-sided interpolants), so ``eps s`` is taken as ``0`` wherever
  ``eps(t) = 0`` and fields are never evaluated at ``t_end``: pass an ``epsilon(t)`` that
  vanishes at ``t_start`` (e.g. ``lambda t: t * (1 - t)``) or, with a constant ``epsilon`` and
  an ``eta`` field, start inside (``t_start = 1 - 1e-3``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from genflow.processes._base import broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractField, AbstractSolver

PREDICTIONS = ("b", "v", "b+eta", "b+s", "v+eta", "v+s")
_VANISHED = 1e-6  # a noise scale at most this counts as zero (float32 sin(pi) ~ 1e-7)


class InterpolantField(AbstractField):
    """The fields of a stochastic-interpolant network: the drift ``b`` and optionally a score.

    ``prediction`` names the network's outputs, concatenated on the last axis (``k`` fields:
    the output has ``k`` times the last dimension of ``x``): ``"b"`` (the drift), ``"v"`` (the
    velocity ``E[dI/dt | x_t]``, the drift when ``gamma = 0``), and with a second field
    ``"+eta"`` (the denoiser ``E[z | x_t]``) or ``"+s"`` (the score). The drift is
    ``b = v + gamma' eta = v - gamma gamma' s`` for a velocity network, and the score
    ``s = -eta / noise_scale`` (``gamma``, or ``beta`` for one-sided interpolants) for a denoiser.
    One network evaluation gives every field (:meth:`drift_and_score`).

    Attributes:
      process: the :class:`~genflow.processes.StochasticInterpolant`.
      prediction: one of ``PREDICTIONS``.
      names: the field names, e.g. ``("b", "eta")``.
      calls: network evaluations traced since the last :meth:`reset_calls`.
    """

    final_available = False

    def __init__(self, model_fn, process, prediction, cond=None, thresholding=None):
        if not self.fits(process):
            self._refuse(process, "a stochastic interpolant (with gamma(t), d_gamma(t) and "
                                  "noise_scale(t))")
        if not isinstance(prediction, str) or prediction not in PREDICTIONS:
            raise ValueError(f"an interpolant network predicts one of {PREDICTIONS} (fields "
                             f"concatenated on the last axis), got prediction={prediction!r}.")
        if thresholding is not None:
            raise ValueError("dynamic thresholding needs an x0 estimate, which a stochastic "
                             "interpolant does not have; pass thresholding=None.")
        super().__init__(model_fn, process, prediction, cond, None)
        self.names = tuple(prediction.split("+"))

    @classmethod
    def fits(cls, process: Any) -> bool:
        # A capability check: the interpolant's noise scale and latent-noise rate.
        return all(callable(getattr(process, name, None))
                   for name in ("gamma", "d_gamma", "noise_scale"))

    @property
    def num_fields(self) -> int:
        return len(self.names)

    @property
    def second(self) -> str | None:
        """``"eta"`` or ``"s"``: the second field, ``None`` for a drift-only network."""
        return self.names[1] if len(self.names) == 2 else None

    def output_shape(self, x: Array) -> tuple[int, ...]:
        return (*x.shape[:-1], self.num_fields * x.shape[-1])

    def output_description(self, x: Array) -> str:
        if self.num_fields == 1:
            return f"shaped like x {tuple(x.shape)}"
        return (f"of the {self.num_fields} fields {self.prediction!r} concatenated on the last "
                f"axis, shape {self.output_shape(x)} for x of shape {tuple(x.shape)}")

    def _parts(self, x: Array, t: ArrayLike) -> tuple[Array, Array, Array | None]:
        out = self.raw(x, t)
        t_b = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        if self.num_fields == 1:
            return t_b, out, None
        first, second = jnp.split(out, 2, axis=-1)
        return t_b, first, second

    def _drift(self, x, t_b, first, second) -> Array:
        if self.names[0] == "b" or second is None:
            return first
        rate = broadcast_to_data(self.process.d_gamma(t_b), x).astype(x.dtype)
        extra = second
        if self.second == "s":  # b = v - gamma gamma' s
            extra = -broadcast_to_data(self.process.gamma(t_b), x).astype(x.dtype) * extra
        return first + rate * extra  # b = v + gamma' eta

    def _score(self, x, t_b, second) -> Array:
        if second is None:
            raise ValueError(f"prediction {self.prediction!r} has no score or denoiser field; "
                             "train one of 'b+eta', 'b+s', 'v+eta', 'v+s'.")
        if self.second == "s":
            return second
        scale = broadcast_to_data(self.process.noise_scale(t_b), x).astype(x.dtype)
        return -second / scale

    def drift(self, x: Array, t: ArrayLike) -> Array:
        """``b(t, x)`` (one network evaluation)."""
        t_b, first, second = self._parts(x, t)
        return self._drift(x, t_b, first, second)

    def score(self, x: Array, t: ArrayLike) -> Array:
        """``s(t, x) = grad log rho_t(x)`` (one network evaluation); ``ValueError`` for a
        drift-only network."""
        if self.second is None:
            self._score(x, None, None)
        t_b, _, second = self._parts(x, t)
        return self._score(x, t_b, second)

    def drift_and_score(self, x: Array, t: ArrayLike) -> tuple[Array, Array]:
        """``(b, s)`` from one network evaluation."""
        if self.second is None:
            self._score(x, None, None)
        t_b, first, second = self._parts(x, t)
        return self._drift(x, t_b, first, second), self._score(x, t_b, second)

    def final(self, x: Array, t: ArrayLike) -> Array:
        raise ValueError("denoise_final is not available for a stochastic interpolant (there is "
                         "no x0 estimate); sample to t_end = 0 instead.")


class _InterpolantSolver(AbstractSolver):
    field_class = InterpolantField
    min_steps = 1


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class InterpolantEuler(_InterpolantSolver):
    """Explicit Euler on the interpolant's ODE ``dx/dt = b(t, x)``: ``x + h b(t_n, x)``.

    Either direction (``sample()`` down, ``invert()`` up). 1 NFE per step, order 1.
    """

    order = 1
    stochastic = False

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        h = (t_next - t_cur).astype(x.dtype)
        return x + h * denoise.drift(x, t_cur), state


@pytree_dataclass
@dataclasses.dataclass(frozen=True)
class InterpolantHeun(_InterpolantSolver):
    """Heun's method (explicit trapezoidal rule) on ``dx/dt = b(t, x)``:
    ``x' = x + h b_n``, ``x + h/2 (b_n + b(t_{n+1}, x'))``.

    Either direction; the drift is evaluated at both ends of every step (``b`` is finite at
    ``t = 0, 1`` when learnt directly). 2 NFE per step, order 2.
    """

    order = 2
    stochastic = False

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        h = (t_next - t_cur).astype(x.dtype)
        d = denoise.drift(x, t_cur)
        x_euler = x + h * d
        return x + 0.5 * h * (d + denoise.drift(x_euler, t_next)), state


def _concrete(value: Any) -> float | None:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    return float(arr) if arr.ndim == 0 else None


@dataclasses.dataclass(frozen=True)
class InterpolantSDE(_InterpolantSolver):
    r"""Euler-Maruyama of the interpolant's generative SDE from ``t_start`` down to ``t_end``.

    ``x_{n+1} = x_n + h b_n + |h| eps_n s_n + sqrt(2 eps_n |h|) xi_n`` with ``h = t_{n+1} - t_n
    < 0`` and the fields at ``t_n`` (module docstring): ``dx = (b - eps s) dt + sqrt(2 eps)
    dW_bar``. ``eps s`` is ``0`` wherever ``eps = 0``. 1 NFE per step (one network gives ``b``
    and the score or denoiser); strong order 1/2 (Euler-Maruyama).

    Needs a network with a score or denoiser field (``"b+eta"``, ``"b+s"``, ``"v+eta"``,
    ``"v+s"``). With a constant ``epsilon > 0`` and a denoiser, the grid must start where the
    noise scale is positive (e.g. ``t_start = 1 - 1e-3``), or ``epsilon(t)`` must vanish there.

    Attributes:
      epsilon: the diffusion, a float ``>= 0`` (data: a new value does not recompile) or a
        function ``epsilon(t) -> (b,)`` of ``t: (b,)`` (static).
    """

    epsilon: float | Callable[[Array], Array] = 1.0

    order = 0.5
    stochastic = True

    def __post_init__(self):
        if callable(self.epsilon):
            return
        value = _concrete(self.epsilon)
        if value is not None and not value >= 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}.")

    def check(self, field, ts) -> None:
        if field.second is None:
            raise ValueError(
                f"InterpolantSDE needs a score or denoiser field besides the drift; "
                f"prediction {field.prediction!r} has the drift only: train 'b+eta' (or "
                "'b+s', 'v+eta', 'v+s'), or sample with InterpolantHeun()."
            )
        if field.second != "eta" or callable(self.epsilon):
            return
        eps, t_start = _concrete(self.epsilon), _concrete(ts[0])
        if eps is None or t_start is None or not eps > 0:
            return
        if abs(float(field.process.noise_scale(jnp.asarray(t_start)))) <= _VANISHED:
            raise ValueError(
                f"s = -eta / gamma is undefined at t_start={t_start} (gamma = 0) and a constant "
                "epsilon > 0 uses it; start inside (t_start = 1 - 1e-3) or pass an epsilon(t) "
                "that vanishes there, e.g. lambda t: t * (1 - t)."
            )

    def _eps_at(self, t_b: Array) -> Array:
        e = self.epsilon(t_b) if callable(self.epsilon) else jnp.full_like(t_b, self.epsilon)
        return jnp.broadcast_to(jnp.asarray(e, t_b.dtype), t_b.shape)

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        t_b = jnp.full((x.shape[0],), t_cur, t_cur.dtype)
        h = t_next - t_cur
        b, s = denoise.drift_and_score(x, t_b)
        eps = broadcast_to_data(self._eps_at(t_b), x)
        eps_s = jnp.where(eps == 0, 0.0, eps * s).astype(x.dtype)
        noise = (jnp.sqrt(2.0 * eps * jnp.abs(h)).astype(x.dtype)
                 * jax.random.normal(key, x.shape, x.dtype))
        x_next = x + h.astype(x.dtype) * b + jnp.abs(h).astype(x.dtype) * eps_s + noise
        return x_next.astype(x.dtype), state


# epsilon is a leaf when it is a number (a new value does not recompile) and part of the tree
# structure when it is a function (functions are not arrays). One node class per solver class,
# as pytree_dataclass does.
def _sde_flatten(obj):
    if callable(obj.epsilon):
        return (), (obj.epsilon,)
    return (obj.epsilon,), ()


def _sde_flatten_with_keys(obj):
    children, aux = _sde_flatten(obj)
    return [(jax.tree_util.GetAttrKey("epsilon"), c) for c in children], aux


def _sde_unflatten(aux, children):
    obj = object.__new__(InterpolantSDE)
    object.__setattr__(obj, "epsilon", aux[0] if aux else children[0])
    return obj


jax.tree_util.register_pytree_with_keys(
    InterpolantSDE, _sde_flatten_with_keys, _sde_unflatten, _sde_flatten
)
