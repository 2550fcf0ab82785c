r"""Stochastic interpolants between two arbitrary densities (Albergo, Boffi & Vanden-Eijnden 2023).

A stochastic interpolant joins ``x0 ~ rho_0`` (data, ``t = 0``) and ``x1 ~ rho_1`` (another data
set, or Gaussian noise, ``t = 1``) by

.. math::

    x_t = I(t, x_0, x_1) + \gamma(t) z, \qquad z \sim N(0, I) \text{ independent},
    \qquad I(0) = x_0, \; I(1) = x_1, \; \gamma(0) = \gamma(1) = 0.

genflow's time is the paper's with ``s = 1 - t`` (the paper generates from ``s = 0`` to
``s = 1``; here from ``t = 1`` to ``t = 0``), so every velocity below is the paper's with the
opposite sign and the score is the same. The fields that the losses learn are

.. math::

    b(t, x) &= E[\partial_t I + \dot\gamma z \mid x_t = x]  \quad\text{(drift)}, \\
    v(t, x) &= E[\partial_t I \mid x_t = x]  \quad\text{(velocity)}, \\
    \eta(t, x) &= E[z \mid x_t = x], \qquad s(t, x) = \nabla \log \rho_t(x) = -\eta / \gamma,

so ``b = v + gamma' eta = v - gamma gamma' s``. ``rho_t`` solves the transport equation
``d rho / dt + div(b rho) = 0`` and, for any ``eps(t) >= 0``, the Fokker-Planck equations
``d rho / dt + div((b -+ eps s) rho) = -+ eps Laplacian rho``. The solvers
:class:`genflow.samplers.InterpolantEuler`, :class:`~genflow.samplers.InterpolantHeun` (the
ODE ``dx/dt = b``) and :class:`~genflow.samplers.InterpolantSDE` (the SDE with diffusion
``eps``) generate from the fields through :func:`genflow.samplers.sample`.

**One-sided** interpolants (``"one_sided_*"``) take ``x1 ~ N(0, I)`` as the base and no latent
noise (``gamma = 0``); the Gaussian base plays the part of ``z``: ``eta = E[x1 | x_t]`` and
``s = -eta / beta(t)``, with ``beta`` the coefficient of ``x1``. **Mirror**: ``I = x0`` at all
times (``x1`` is ignored: the interpolant goes from the data set to itself), so
``x_t = x0 + gamma(t) z``, ``v = 0``, and the SDE resamples ``rho_0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from genflow.processes._base import as_float_array, broadcast_to_data, pytree_dataclass
from genflow.processes._interpolants import GaussianInterpolant

_TWO_SIDED = ("linear", "trig", "encdec")
_ONE_SIDED = {"one_sided_linear": "linear", "one_sided_trig": "trig"}
INTERPOLANTS = (*_TWO_SIDED, *_ONE_SIDED, "mirror")
GAMMAS = ("sqrt", "quadratic", "sin2", "zero")
TARGETS = ("b", "v", "s", "eta")
_ATOL_ENDS = 1e-6  # |gamma(0)|, |gamma(1)| below this count as zero (float32 sin(pi) ~ 1e-7)


def _formulas(interpolant: str, gamma: str, a: Any, gamma2=None) -> GaussianInterpolant:
    """:class:`GaussianInterpolant` used only for its formulas (``_coefs``, ``_gamma2``).

    Built without its constructor, which validates a Gaussian *path* (monotone log-SNR), a
    property general interpolants do not need. ``gamma2(t) -> (gamma^2, (gamma^2)')``, when
    given, replaces the named latent noise (a user-supplied gamma).
    """
    view = object.__new__(GaussianInterpolant)
    for name, value in (("interpolant", interpolant), ("gamma", gamma), ("a", a)):
        object.__setattr__(view, name, value)
    if gamma2 is not None:
        object.__setattr__(view, "_gamma2", gamma2)
    return view


def _time_like(t: ArrayLike, x: Array) -> Array:
    """``t`` in ``x``'s precision or better (a Python float with float64 data stays float64)."""
    return jnp.asarray(t, jnp.result_type(t, x.dtype, jnp.float32))


@pytree_dataclass(static=("interpolant", "gamma_schedule", "gamma_derivative"))
@dataclasses.dataclass(frozen=True, init=False)
class StochasticInterpolant:
    r"""``x_t = I(t, x0, x1) + gamma(t) z`` (genflow's time: data ``x0`` at ``t = 0``).

    With ``c = cos(pi t/2)``, ``d = sin(pi t/2)``, ``I = alpha(t) x0 + beta(t) x1``:

    ==================== ================================ ================================
    interpolant          alpha(t)                         beta(t)
    ==================== ================================ ================================
    ``linear``           ``1 - t``                        ``t``
    ``trig``             ``sqrt(1 - gamma^2) c``          ``sqrt(1 - gamma^2) d``
    ``encdec``           ``cos^2(pi t) [t < 1/2]``        ``cos^2(pi t) [t > 1/2]``
    ``one_sided_linear`` ``1 - t``                        ``t`` (``x1 ~ N(0, I)``)
    ``one_sided_trig``   ``c``                            ``d`` (``x1 ~ N(0, I)``)
    ``mirror``           ``1``                            ``0``
    ==================== ================================ ================================

    Latent noise: ``"sqrt"``: ``sqrt(a t(1-t))``; ``"quadratic"``: ``t(1-t)``; ``"sin2"``:
    ``sin^2(pi t)``; ``"zero"``; or a callable ``gamma(t)`` with ``gamma(0) = gamma(1) = 0``
    (its derivative ``d_gamma``, or forward-mode autodiff when omitted). The formulas are
    those of :class:`GaussianInterpolant` (``trig`` is variance preserving for independent
    unit-variance ends). ``"sqrt"`` has ``gamma' = +-inf`` at the ends (finite
    ``gamma gamma'``).

    Args:
      interpolant: one of ``INTERPOLANTS`` (static).
      gamma: a name in ``GAMMAS`` or a callable; default ``"zero"`` for one-sided
        interpolants (the only choice there) and ``"sqrt"`` otherwise.
      a: the scale of ``"sqrt"`` (a pytree leaf: changing it does not recompile).
      d_gamma: the derivative of a callable ``gamma`` (keyword only).

    Raises:
      ValueError: unknown names; a callable gamma that does not vanish at ``t = 0, 1``;
        ``encdec`` or ``mirror`` without latent noise; one-sided with latent noise;
        ``trig`` with ``|gamma| >= 1`` somewhere (``sqrt(1 - gamma^2)``: ``"sin2"``,
        ``"sqrt"`` with ``a >= 4``); ``a <= 0`` with ``"sqrt"``.
    """

    interpolant: str
    gamma_schedule: Any
    gamma_derivative: Any
    a: Any

    def __init__(
        self,
        interpolant: str = "linear",
        gamma: str | Callable[[Array], Array] | None = None,
        a: float = 1.0,
        *,
        d_gamma: Callable[[Array], Array] | None = None,
    ):
        if interpolant not in INTERPOLANTS:
            raise ValueError(f"interpolant must be one of {INTERPOLANTS}, got {interpolant!r}.")
        one_sided = interpolant in _ONE_SIDED
        if gamma is None:
            gamma = "zero" if one_sided else "sqrt"
        if not callable(gamma) and gamma not in GAMMAS:
            raise ValueError(f"gamma must be one of {GAMMAS} or a callable, got {gamma!r}.")
        if d_gamma is not None and not callable(gamma):
            raise ValueError("d_gamma is the derivative of a callable gamma; omit it for named ones.")
        for name, value in (("interpolant", interpolant), ("gamma_schedule", gamma),
                            ("gamma_derivative", d_gamma), ("a", a)):
            object.__setattr__(self, name, value)
        zero = gamma == "zero"
        if callable(gamma):
            g0, g1 = (float(jnp.abs(gamma(jnp.asarray(t, jnp.float32)))) for t in (0.0, 1.0))
            if not (g0 <= _ATOL_ENDS and g1 <= _ATOL_ENDS):
                raise ValueError(
                    f"gamma must vanish at t = 0 and t = 1 (got gamma(0)={g0:.3g}, "
                    f"gamma(1)={g1:.3g}); otherwise x_t does not reach rho_0 and rho_1. Use "
                    "e.g. lambda t: jnp.sqrt(t * (1 - t)) or a named gamma."
                )
            zero = float(jnp.max(jnp.abs(gamma(jnp.linspace(0.0, 1.0, 101))))) == 0.0
        if one_sided and not zero:
            raise ValueError(
                f"interpolant={interpolant!r} uses its Gaussian base x1 as the noise and has no "
                "latent gamma; pass gamma='zero' (or omit it), or use the two-sided "
                f"{_ONE_SIDED[interpolant]!r}."
            )
        if interpolant in ("encdec", "mirror") and zero:
            raise ValueError(
                f"interpolant={interpolant!r} needs latent noise (with gamma = 0, "
                + ("x_t = 0 at t = 1/2" if interpolant == "encdec" else "x_t = x0: nothing to learn")
                + "); use gamma='sin2', 'sqrt' or 'quadratic'."
            )
        if gamma == "sqrt" and isinstance(a, (int, float)) and a <= 0:
            raise ValueError(f"gamma='sqrt' needs a > 0, got a={a}; for no noise use gamma='zero'.")
        if interpolant == "trig" and not zero:
            if gamma == "sqrt":
                too_large = isinstance(a, (int, float)) and a >= 4.0  # max gamma^2 = a/4
            else:
                too_large = gamma == "sin2" or (
                    callable(gamma) and float(jnp.max(self._gamma2(jnp.linspace(0.0, 1.0, 201))[0])) >= 1.0
                )
            if too_large:
                raise ValueError(
                    "interpolant='trig' needs |gamma(t)| < 1 (its coefficients carry "
                    "sqrt(1 - gamma^2)); use gamma='quadratic' or 'sqrt' with a < 4, or interpolant='linear'."
                )

    # ------------------------------------------------------------------ coefficients
    @property
    def one_sided(self) -> bool:
        """Whether ``x1 ~ N(0, I)`` is the noise (``gamma = 0``)."""
        return self.interpolant in _ONE_SIDED

    def _view(self) -> GaussianInterpolant:
        base = _ONE_SIDED.get(self.interpolant, self.interpolant)
        base = "linear" if base == "mirror" else base
        if callable(self.gamma_schedule):
            return _formulas(base, "zero", self.a, gamma2=self._callable_gamma2)
        return _formulas(base, self.gamma_schedule, self.a)

    def _callable_gamma2(self, t: Array) -> tuple[Array, Array]:
        g = self.gamma_schedule(t)
        return g**2, 2.0 * g * self._callable_d_gamma(t)

    def _callable_d_gamma(self, t: Array) -> Array:
        if self.gamma_derivative is not None:
            return self.gamma_derivative(t)
        return jax.jvp(self.gamma_schedule, (t,), (jnp.ones_like(t),))[1]

    def _gamma2(self, t: Array) -> tuple[Array, Array]:
        return self._view()._gamma2(t)

    def coefficients(self, t: ArrayLike) -> tuple[Array, Array, Array, Array]:
        """``(alpha, alpha', beta, beta')`` with ``I(t, x0, x1) = alpha x0 + beta x1``."""
        t = as_float_array(t)
        if self.interpolant == "mirror":
            one, zero = jnp.ones_like(t), jnp.zeros_like(t)
            return one, zero, zero, zero
        alpha, d_alpha, beta, d_beta, *_ = self._view()._coefs(t)
        return alpha, d_alpha, beta, d_beta

    def gamma(self, t: ArrayLike) -> Array:
        """Latent noise scale ``gamma(t)`` (``0`` at ``t = 0`` and ``t = 1``)."""
        t = as_float_array(t)
        if callable(self.gamma_schedule):
            return jnp.asarray(self.gamma_schedule(t), t.dtype)
        g2, _ = self._gamma2(t)
        return jnp.sqrt(g2)

    def d_gamma(self, t: ArrayLike) -> Array:
        """``gamma'(t) = (gamma^2)' / (2 gamma)``, and its limit where ``gamma = 0``.

        The limit is ``+-gamma'(0)`` (``+`` at ``t < 1/2``): ``+-inf`` for ``"sqrt"``, ``+-1``
        for ``"quadratic"``, ``0`` for ``"sin2"`` and ``"zero"``.
        """
        t = as_float_array(t)
        if callable(self.gamma_schedule):
            return jnp.asarray(self._callable_d_gamma(t), t.dtype)
        view = self._view()
        g2, dg2 = view._gamma2(t)
        vanished = g2 == 0
        ratio = 0.5 * dg2 / jnp.sqrt(jnp.where(vanished, 1.0, g2))
        limit = jnp.where(t < 0.5, 1.0, -1.0) * view._gamma_rate0()
        return jnp.where(vanished, limit, ratio)

    def noise_scale(self, t: ArrayLike) -> Array:
        """Scale of the Gaussian noise in ``x_t``: ``gamma(t)``, or ``beta(t)`` if one-sided.

        ``s = -eta / noise_scale``; it vanishes at ``t = 0`` (and ``t = 1`` if two-sided).
        """
        return self.coefficients(t)[2] if self.one_sided else self.gamma(t)

    # ------------------------------------------------------------------ the path
    def interpolate(self, t: ArrayLike, x0: Float[Array, "b *d"], x1: Float[Array, "b *d"]) -> Array:
        """``I(t, x0, x1) = alpha(t) x0 + beta(t) x1``; ``t`` scalar or ``(b,)``."""
        alpha, _, beta, _ = self.coefficients(_time_like(t, x0))
        return broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(beta, x1) * x1

    def d_interpolate(self, t: ArrayLike, x0: Float[Array, "b *d"], x1: Float[Array, "b *d"]) -> Array:
        """``dI/dt = alpha'(t) x0 + beta'(t) x1``."""
        _, d_alpha, _, d_beta = self.coefficients(_time_like(t, x0))
        return broadcast_to_data(d_alpha, x0) * x0 + broadcast_to_data(d_beta, x1) * x1

    def sample_xt(
        self, key: PRNGKeyArray, x0: Float[Array, "b *d"], x1: Float[Array, "b *d"], t: ArrayLike
    ) -> tuple[Array, Array]:
        """``x_t = I(t, x0, x1) + gamma(t) z`` with ``z ~ N(0, I)``; returns ``(x_t, z)``."""
        z = jax.random.normal(key, x0.shape, x0.dtype)
        t = _time_like(t, x0)
        xt = self.interpolate(t, x0, x1) + broadcast_to_data(self.gamma(t), x0) * z
        return xt.astype(x0.dtype), z

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw ``x1 ~ N(0, I)``: the ``t = 1`` end when no source data set is given.

        An interpolant between two data sets starts from draws of its ``t = 1`` data set
        instead (``genflow.samplers.sample(..., x_init=x1)``).
        """
        return jax.random.normal(key, shape, dtype)


# ---------------------------------------------------------------------- losses
def interpolant_loss(
    model_fn: Callable[..., Array],
    interpolant: StochasticInterpolant,
    x0: Float[Array, "b *d"],
    x1: Float[Array, "b *d"],
    *,
    key: PRNGKeyArray,
    target: str = "b",
    t_min: float = 1e-3,
    t_max: float = 1.0 - 1e-3,
    antithetic: bool = True,
    cond: Any = None,
) -> Float[Array, ""]:
    r"""Quadratic loss whose minimiser is the field ``target`` (``"b"``, ``"v"``, ``"s"``, ``"eta"``).

    With ``t ~ U(t_min, t_max)``, ``z ~ N(0, I)`` and ``x_t = I + gamma z``, the per-example loss
    is the paper's

    .. math::

        \ell = \tfrac12 |F(x_t, t)|^2 - F(x_t, t) \cdot y = \tfrac12 |F - y|^2 - \tfrac12 |y|^2,

    with ``y = dI/dt + gamma' z`` (b), ``dI/dt`` (v), ``-z / gamma`` (s), ``z`` (eta); for
    one-sided interpolants ``x1`` replaces ``z`` and ``beta`` replaces ``gamma``. Its expectation
    is minimised exactly by ``F = E[y | x_t]``. The dropped ``|y|^2/2`` carries the
    ``1/gamma^2`` variance of the score target, so the loss can be negative.

    ``antithetic=True`` (recommended by the paper for ``b`` and ``s``) also evaluates at
    ``-z`` (``x_t^- = I - gamma z``, ``y^-`` with ``-z``; one-sided: ``-x1``) and averages:
    the terms ``s(I) . z / gamma`` and ``gamma' b(I) . z``, singular at the ends, cancel. The
    model is called once on the doubled batch. Averaged over data dimensions, then examples.

    Args:
      model_fn: ``model_fn(x, t, cond) -> array like x``, ``t: (b,)``.
      interpolant: the :class:`StochasticInterpolant`.
      x0, x1: a batch of pairs (``x1 ~ N(0, I)`` for one-sided; ignored for ``mirror``).
      key: randomness for ``t`` and ``z``.
      target: which field the model learns.
      t_min, t_max: ``0 <= t_min < t_max <= 1``; ``"s"`` needs ``t_min > 0`` (and ``t_max < 1``
        two-sided), ``"b"`` with ``gamma="sqrt"`` too (``gamma' = +-inf`` there).
      antithetic: average over ``+-z``.
      cond: passed to ``model_fn``.

    Returns:
      The scalar loss.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
    if isinstance(t_min, (int, float)) and isinstance(t_max, (int, float)):
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"Need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}.")
        singular_1 = not interpolant.one_sided
        if (target == "s" or (target == "b" and interpolant.gamma_schedule == "sqrt")) and (
            t_min == 0.0 or (singular_1 and t_max == 1.0)
        ):
            raise ValueError(
                f"target={target!r} is infinite where the noise scale vanishes (t = 0"
                + (" and t = 1" if singular_1 else "")
                + f"); got t_min={t_min}, t_max={t_max}: use e.g. t_min=1e-3, t_max=1-1e-3."
            )
    if target in ("s", "eta") and not interpolant.one_sided and interpolant.gamma_schedule == "zero":
        raise ValueError(
            f"target={target!r} needs latent noise, but gamma='zero'; train 'v' (= 'b'), or use "
            "a gamma such as 'sqrt', or a one-sided interpolant with a Gaussian x1."
        )
    key_t, key_z = jax.random.split(key)
    t_dtype = jnp.result_type(x0.dtype, jnp.float32)
    t = jax.random.uniform(key_t, (x0.shape[0],), t_dtype, t_min, t_max)
    z = jax.random.normal(key_z, x0.shape, x0.dtype)
    signs = (1.0, -1.0) if antithetic else (1.0,)
    gamma = broadcast_to_data(interpolant.gamma(t), x0)
    xs, ys = [], []
    for sign in signs:
        x1_s = sign * x1 if interpolant.one_sided else x1
        z_s = sign * z
        xs.append(interpolant.interpolate(t, x0, x1_s) + gamma * z_s)
        noise = x1_s if interpolant.one_sided else z_s
        if target == "b":
            y = interpolant.d_interpolate(t, x0, x1_s) + broadcast_to_data(interpolant.d_gamma(t), x0) * z_s
        elif target == "v":
            y = interpolant.d_interpolate(t, x0, x1_s)
        elif target == "eta":
            y = noise
        else:
            y = -noise / broadcast_to_data(interpolant.noise_scale(t), x0)
        ys.append(y)
    x_all = jnp.concatenate(xs).astype(x0.dtype)
    y_all = jnp.concatenate(ys)
    t_all = jnp.concatenate([t] * len(signs))
    f = model_fn(x_all, t_all, cond)
    per = 0.5 * f**2 - f * y_all
    return jnp.mean(per)
