"""Abstract forward processes.

Time runs from ``t = 0`` (data) to ``t = 1`` (noise). A Gaussian path has marginals

    x_t = alpha_t * x_0 + sigma_t * eps,    eps ~ N(0, I),

and half log-SNR ``lambda_t = log(alpha_t) - log(sigma_t)``, strictly decreasing in t.
Every Gaussian path is also a forward SDE ``dx = f(t) x dt + g(t) dW`` whose
coefficients follow from the marginals:

    f(t)   = d log(alpha_t) / dt
    g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2 = -2 sigma_t^2 d lambda_t / dt.

Processes are frozen dataclasses registered as pytrees, so their hyperparameters
are data: passing a process with other numbers into a jitted function does not
recompile it.
"""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


def pytree_dataclass(cls=None, *, static: tuple[str, ...] = ()):
    """Register a frozen dataclass as a pytree: its fields are leaves, except those in ``static``.

    Leaves are data (hyperparameters that can change without a recompile); ``static`` fields
    belong to the tree structure (values that shape the computation, such as a solver's order
    or a loop count, and strings). Use as ``@pytree_dataclass`` or
    ``@pytree_dataclass(static=("order",))``.

    Used instead of ``jax.tree_util.register_dataclass``: with that, two different classes with
    the same number of fields (``VPLinear`` and ``VPCosine``, or ``Euler`` and ``Heun``) get
    PyTreeDefs that compare equal (jax 0.10), so a jitted function may reuse the compilation
    traced for the other class and silently compute with the wrong process or solver. A custom
    node compares its class. Unflattening bypasses ``__init__`` (validation is for user input;
    JAX unflattens with tracers and placeholders).
    """
    if cls is None:
        return lambda c: pytree_dataclass(c, static=static)
    names = tuple(f.name for f in dataclasses.fields(cls))
    unknown = set(static) - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)} to make static.")
    dynamic = tuple(n for n in names if n not in static)

    def flatten_with_keys(obj):
        children = [(jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in dynamic]
        return children, tuple(getattr(obj, n) for n in static)

    def flatten(obj):
        return [getattr(obj, n) for n in dynamic], tuple(getattr(obj, n) for n in static)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for n, v in zip(dynamic, children):
            object.__setattr__(obj, n, v)
        for n, v in zip(static, aux):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def as_float_array(t: ArrayLike) -> Array:
    """``t`` as an array of at least float32 precision (float64 stays float64).

    Python numbers and other weakly typed values get the default float type (float64 under
    ``jax_enable_x64``), not float32: ``process.marginal(0.5)`` is computed in float64 there.
    """
    t = jnp.asarray(t)
    if t.weak_type or not jnp.issubdtype(t.dtype, jnp.floating):
        return t.astype(jnp.result_type(float))
    return t.astype(jnp.result_type(t.dtype, jnp.float32))


def broadcast_to_data(coef: ArrayLike, x: Array) -> Array:
    """Reshape a per-example coefficient ``(b,)`` (or a scalar) to broadcast against ``x``."""
    coef = jnp.asarray(coef)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


class AbstractForwardSDE(abc.ABC):
    """A forward SDE ``dx = drift(x, t) dt + diffusion(x, t) dW`` from data (t=0) to noise (t=1)."""

    @abc.abstractmethod
    def drift(self, x: Array, t: ArrayLike) -> Array:
        """Drift ``f(x, t)``; ``t`` is a scalar or has shape ``(b,)``."""

    @abc.abstractmethod
    def diffusion(self, x: Array, t: ArrayLike) -> Array:
        """Diffusion ``g(x, t)`` (broadcast against ``x``)."""

    @abc.abstractmethod
    def sample_xt(
        self, key: PRNGKeyArray, x0: Array, t: ArrayLike
    ) -> tuple[Array, Array]:
        """Draw ``x_t ~ p(x_t | x_0)``; returns ``(x_t, noise)`` with the noise that made it."""

    @abc.abstractmethod
    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        """Draw from the reference distribution at ``t = 1``."""


class AbstractGaussianPath(AbstractForwardSDE):
    """A process with Gaussian marginals ``x_t = alpha_t x_0 + sigma_t eps``.

    Subclasses implement :meth:`marginal`; closed forms of the other methods
    are optional overrides (the defaults are exact, derived by autodiff or, for
    :meth:`t_from_log_snr`, by a monotone bisection).
    """

    @abc.abstractmethod
    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(alpha_t, sigma_t)``."""

    def marginal_derivative(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(d alpha_t / dt, d sigma_t / dt)``; by forward-mode autodiff unless overridden."""
        t = jnp.asarray(t, dtype=jnp.result_type(t, jnp.float32))
        _, tangents = jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))
        return tangents

    def log_snr(self, t: ArrayLike) -> Array:
        """Half log-SNR ``lambda_t = log alpha_t - log sigma_t``."""
        alpha, sigma = self.marginal(t)
        return jnp.log(alpha) - jnp.log(sigma)

    def t_from_log_snr(self, lam: ArrayLike) -> Array:
        """Inverse of :meth:`log_snr` on ``[0, 1]``.

        The default bisects the monotone map in 60 halvings (exact to float64
        resolution); subclasses with a closed form override it.
        """
        lam = jnp.asarray(lam, dtype=jnp.result_type(lam, jnp.float32))

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            # lambda decreases with t: if lambda(mid) > lam, the answer lies above mid.
            above = self.log_snr(mid) > lam
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 60, body, (jnp.zeros_like(lam), jnp.ones_like(lam)))
        return 0.5 * (lo + hi)

    def sde(self, t: ArrayLike) -> tuple[Array, Array]:
        """``(f_t, g_t^2)`` of the linear forward SDE ``dx = f_t x dt + g_t dW``."""
        alpha, sigma = self.marginal(t)
        d_alpha, d_sigma = self.marginal_derivative(t)
        f = d_alpha / alpha
        g2 = 2.0 * sigma * d_sigma - 2.0 * f * sigma**2
        return f, g2

    def drift(self, x: Array, t: ArrayLike) -> Array:
        f, _ = self.sde(t)
        return broadcast_to_data(f, x) * x

    def diffusion(self, x: Array, t: ArrayLike) -> Array:
        _, g2 = self.sde(t)
        return broadcast_to_data(jnp.sqrt(g2), x)

    def sample_xt(
        self, key: PRNGKeyArray, x0: Float[Array, "b *d"], t: Float[ArrayLike, "b"]
    ) -> tuple[Array, Array]:
        eps = jax.random.normal(key, x0.shape, x0.dtype)
        alpha, sigma = self.marginal(t)
        xt = broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * eps
        return xt.astype(x0.dtype), eps

    def prior_std(self) -> Array:
        """Standard deviation of the prior: ``sqrt(alpha_1^2 + sigma_1^2)``.

        This is the marginal standard deviation at ``t = 1`` for data of unit
        variance (1 for VP and rectified flow, about ``sigma_max`` for VE).
        """
        # In the widest enabled float (a Python 1.0 would be computed in float32).
        alpha, sigma = self.marginal(jnp.asarray(1.0, jnp.result_type(float)))
        return jnp.sqrt(alpha**2 + sigma**2)

    def prior_sample(self, key: PRNGKeyArray, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return (self.prior_std() * jax.random.normal(key, shape, dtype)).astype(dtype)

    def prior_log_prob(self, x: Float[Array, "b *d"]) -> Float[Array, "b"]:
        """Log-density of the prior ``N(0, prior_std^2 I)``, summed over data dimensions."""
        std = self.prior_std()
        d = x[0].size
        sq = jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=-1)
        return -0.5 * sq / std**2 - d * jnp.log(std) - 0.5 * d * jnp.log(2 * jnp.pi)
