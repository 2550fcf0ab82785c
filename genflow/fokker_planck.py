r"""The Fokker–Planck residual of a score model, and the FP-regularized denoising loss.

Deveney et al. (2023), "Closing the ODE–SDE gap in score-based diffusion models through the
Fokker–Planck equation": a learned score that does not satisfy the Fokker–Planck equation of
the forward SDE drives a probability-flow ODE and a reverse SDE to *different* distributions;
the Wasserstein-2 distance between the two is bounded by the size of the FP residual, and
penalising that residual while training closes the gap.

**The equations.** For the forward SDE ``dx = f(x, t) dt + g(t) dW`` the density obeys
``dp/dt = -div(f p) + (g^2 / 2) lap p``. Dividing by ``p`` (with ``grad p = p grad u``,
``lap p = p (lap u + |grad u|^2)``) gives the equation of the log-density ``u = log p_t``:

    du/dt = (g^2 / 2) (lap u + |grad u|^2) - <f, grad u> - div f.            (scalar FP)

Its ``x``-gradient is the equation of the score ``s = grad u`` (``lap u = div s``):

    ds/dt = grad[ (g^2 / 2) (div s + |s|^2) - <f, s> - div f ].             (score FP)

For the linear drift of a Gaussian path, ``f(x, t) = f_t x`` (``process.sde(t) = (f_t, g_t^2)``),
so ``<f, s> = f_t <x, s>`` and ``div f = f_t d`` with ``d`` the data dimension; ``div f`` is
constant in ``x`` and drops out of the score equation. The residuals computed here are

    r(x, t) = du/dt - (g^2 / 2) (lap u + |grad u|^2) + f_t <x, grad u> + f_t d       (scalar)
    R(x, t) = ds/dt - grad_x[ (g^2 / 2) (div s + |s|^2) - f_t <x, s> ]                (score)

and ``R = grad_x r`` when ``s = grad_x u``.

**Two model forms.**

* A *log-density model* ``phi(x, t)`` (a scalar network whose score is ``grad_x phi``) is only
  determined up to a time-dependent constant ``c(t)``: denoising score matching trains its
  gradient, never its normalisation. If ``phi = log p_t + c(t)`` exactly, the scalar residual
  is ``r = c'(t)``, not 0. The regularizer therefore uses the score form ``R = grad_x r``, which
  is exact (zero if and only if ``grad_x phi`` satisfies the score FP equation) and blind to
  ``c(t)``. :func:`log_density_residual` returns the scalar ``r`` as well, for a normalised
  ``phi`` (a closed form) where it must vanish too.
* A *score model* ``s(x, t)`` (any prediction kind, converted with
  :func:`genflow.prediction.to_x0_eps`: ``s = -eps_hat / sigma_t``) uses the score form
  directly. A score model need not be a gradient field; the identity
  ``grad |s|^2 = 2 J_s^T s`` holds for any field and is what ``jax.grad`` computes.

**Divergence.** ``div s`` (or ``lap phi = div grad phi``) is the trace of a Jacobian: exactly by
``jax.jacfwd`` (``d`` forward passes; low dimension), or by Hutchinson's estimator
``div s ~ (1/K) sum_k v_k^T J_s v_k`` with ``K`` Rademacher probes ``v_k`` (one forward-mode
product each), unbiased because ``E[v v^T] = I``. The probes are held fixed while
differentiating in ``x``, so ``grad_x`` of the estimate is unbiased for ``grad_x div s``.

**Scale.** Near the data the score grows like ``1 / sigma_t``, and ``R`` like
``g_t^2 / sigma_t^3``. ``scale="normalized"`` multiplies ``R`` by ``sigma_t^3 / g_t^2``, which
makes it of order one at every time for a model whose error is a fixed fraction of its
output, so a single weight means the same thing over ``[t_min, 1]`` and across processes;
``scale="none"`` is the raw residual of the paper (usable when ``t`` stays away from 0).

Only ``jax`` is imported (and genflow's jax-only modules), like :mod:`genflow.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from genflow.losses import AbstractWeighting, Uniform, denoising_loss
from genflow.prediction import Prediction, to_x0_eps
from genflow.processes._base import AbstractGaussianPath, broadcast_to_data
from genflow.time_densities import AbstractTimeDensity, UniformTime

DIVERGENCES = ("exact", "hutchinson")
SCALES = ("normalized", "none")

ScoreFn = Callable[..., Array]  # score_fn(x (n, *d), t (n,), cond) -> (n, *d)
LogDensityFn = Callable[..., Array]  # log_density_fn(x (n, *d), t (n,), cond) -> (n,)


# ----------------------------------------------------------------------------- helpers
def _check_divergence(divergence: str, key: Any, num_probes: int) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"unknown divergence {divergence!r}; choose one of: {', '.join(DIVERGENCES)}."
        )
    if divergence == "hutchinson":
        if key is None:
            raise ValueError("divergence='hutchinson' draws random probes: pass key=.")
        if not (isinstance(num_probes, int) and num_probes >= 1):
            raise ValueError(f"num_probes must be a positive int, got {num_probes!r}.")


def _single(fn: Callable, cond_one: Any) -> Callable:
    """``fn`` (batched) as a function of one example ``x: (*d)`` and a scalar ``t``."""

    def one(x, t):
        c = None if cond_one is None else jax.tree.map(lambda a: a[None], cond_one)
        return fn(x[None], t[None], c)[0]

    return one


def _trace_jacobian(field: Callable[[Array], Array], x: Array, probes: Array | None) -> Array:
    """``div field (x)``: the exact Jacobian trace (``probes is None``) or Hutchinson's
    estimate ``mean_k v_k . (J v_k)`` over ``probes: (K, *d)``."""
    if probes is None:
        flat = lambda y: field(y.reshape(x.shape)).reshape(-1)  # noqa: E731
        return jnp.trace(jax.jacfwd(flat)(x.reshape(-1)))

    def one(v):
        return jnp.sum(v * jax.jvp(field, (x,), (v,))[1])

    return jnp.mean(jax.vmap(one)(probes))


def _probes(key: PRNGKeyArray | None, n: int, shape: tuple, num_probes: int, dtype) -> Array | None:
    if key is None:
        return None
    return jax.random.rademacher(key, (n, num_probes, *shape), dtype=dtype)


def score_from_prediction(
    model_fn: Callable[..., Array], process: AbstractGaussianPath, prediction: Prediction | str
) -> ScoreFn:
    """The score ``s(x, t, cond) = -eps_hat / sigma_t`` of a network of any prediction kind."""
    kind = Prediction.parse(prediction)
    if kind is Prediction.SCORE:
        return model_fn

    def score(x, t, cond=None):
        _, eps = to_x0_eps(process, kind, model_fn(x, t, cond), x, t)
        _, sigma = process.marginal(t)
        return (-eps / broadcast_to_data(sigma, x)).astype(x.dtype)

    return score


# ----------------------------------------------------------------------------- residuals
def score_residual(
    score_fn: ScoreFn,
    process: AbstractGaussianPath,
    x: Float[Array, "n *d"],
    t: Float[Array, "n"],
    *,
    divergence: str = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    cond: Any = None,
) -> Float[Array, "n *d"]:
    """Residual ``R = ds/dt - grad_x[(g^2/2)(div s + |s|^2) - f_t <x, s>]`` of a score model.

    Zero everywhere exactly when ``s`` is the score of densities that evolve under the forward
    SDE of ``process`` (see the module notes).

    Args:
      score_fn: ``score_fn(x, t, cond) -> (n, *d)``, batched; examples must not interact
        (no batch statistics). Use :func:`score_from_prediction` for an eps/x0/v network.
      process: the Gaussian path; its ``sde(t)`` gives ``f_t`` and ``g_t^2``.
      x: points ``(n, *d)``.
      t: times ``(n,)``.
      divergence: ``"exact"`` (Jacobian trace) or ``"hutchinson"`` (needs ``key``).
      key: randomness of the Rademacher probes.
      num_probes: probes per point for Hutchinson's estimator.
      cond: per-example conditioning passed to ``score_fn`` (``None``: none).

    Returns:
      ``R`` with the shape of ``x``.
    """
    _check_divergence(divergence, key, num_probes)
    probes = _probes(key if divergence == "hutchinson" else None, x.shape[0], x.shape[1:],
                     num_probes, x.dtype)

    def one(x1, t1, c1, v1):
        s1 = _single(score_fn, c1)
        f, g2 = process.sde(t1)
        ds_dt = jax.jvp(lambda tt: s1(x1, tt), (t1,), (jnp.ones_like(t1),))[1]

        def h(y):
            s = s1(y, t1)
            div = _trace_jacobian(lambda z: s1(z, t1), y, v1)
            return 0.5 * g2 * (div + jnp.sum(s * s)) - f * jnp.sum(y * s)

        return ds_dt - jax.grad(h)(x1)

    return jax.vmap(one)(x, t, cond, probes)


def log_density_residual(
    log_density_fn: LogDensityFn,
    process: AbstractGaussianPath,
    x: Float[Array, "n *d"],
    t: Float[Array, "n"],
    *,
    divergence: str = "exact",
    key: PRNGKeyArray | None = None,
    num_probes: int = 1,
    cond: Any = None,
    gradient: bool = True,
) -> Array:
    """Residual of a scalar log-density model ``phi(x, t)`` (score ``grad_x phi``).

    With ``u = phi`` the scalar residual is
    ``r = d phi/dt - (g^2/2)(lap phi + |grad phi|^2) + f_t <x, grad phi> + f_t d``; it vanishes
    for the normalised ``log p_t`` and equals ``c'(t)`` for ``log p_t + c(t)``.
    ``gradient=True`` returns the score-form residual ``R = grad_x r`` (exact for any
    normalisation; it equals :func:`score_residual` of ``grad_x phi``), ``False`` returns ``r``.

    Args:
      log_density_fn: ``log_density_fn(x, t, cond) -> (n,)``, batched, examples independent.
      process, x, t, divergence, key, num_probes, cond: as in :func:`score_residual`
        (``lap phi`` is the divergence of ``grad phi``).
      gradient: return ``grad_x r`` (shape of ``x``) instead of ``r`` (shape ``(n,)``).
    """
    _check_divergence(divergence, key, num_probes)
    probes = _probes(key if divergence == "hutchinson" else None, x.shape[0], x.shape[1:],
                     num_probes, x.dtype)

    def one(x1, t1, c1, v1):
        phi1 = _single(lambda *a: log_density_fn(*a)[:, None], c1)
        phi = lambda y, tt: phi1(y, tt)[0]  # noqa: E731
        f, g2 = process.sde(t1)

        def r(y):
            dphi_dt = jax.jvp(lambda tt: phi(y, tt), (t1,), (jnp.ones_like(t1),))[1]
            grad = lambda z: jax.grad(phi)(z, t1)  # noqa: E731
            s = grad(y)
            lap = _trace_jacobian(grad, y, v1)
            rhs = 0.5 * g2 * (lap + jnp.sum(s * s)) - f * jnp.sum(y * s) - f * y.size
            return dphi_dt - rhs

        return jax.grad(r)(x1) if gradient else r(x1)

    return jax.vmap(one)(x, t, cond, probes)


def residual_scale(process: AbstractGaussianPath, t: Float[Array, "n"]) -> Float[Array, "n"]:
    """``sigma_t^3 / g_t^2``: the factor that makes the score residual of order one."""
    _, sigma = process.marginal(t)
    _, g2 = process.sde(t)
    return sigma**3 / g2


# ----------------------------------------------------------------------------- loss
def collocation_points(
    process: AbstractGaussianPath,
    x0: Float[Array, "b *d"],
    *,
    key: PRNGKeyArray,
    num_points: int,
    t_min: float = 1e-5,
    t_max: float = 1.0,
    cond: Any = None,
) -> tuple[Array, Array, Any]:
    """Where the residual is evaluated: ``num_points`` data points drawn from the batch with
    replacement, times ``t ~ U(t_min, t_max)``, and ``x_t`` from the forward process.

    The residual is thus weighted by the model's own training marginals ``p_t`` (where the
    score matters to both samplers), not by a box around the data.

    Returns:
      ``(x_t, t, cond)`` of the points (``cond`` gathered like ``x0``, or ``None``).
    """
    key_i, key_t, key_x = jax.random.split(key, 3)
    idx = jax.random.randint(key_i, (num_points,), 0, x0.shape[0])
    t = jax.random.uniform(key_t, (num_points,), x0.dtype, minval=t_min, maxval=t_max)
    x_t, _ = process.sample_xt(key_x, x0[idx], t)
    cond_pts = None if cond is None else jax.tree.map(lambda a: a[idx], cond)
    return x_t, t, cond_pts


def fp_penalty(
    model_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    x0: Float[Array, "b *d"],
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str = Prediction.EPS,
    num_points: int = 64,
    t_min: float = 1e-5,
    divergence: str = "exact",
    num_probes: int = 1,
    scale: str = "normalized",
    log_density_fn: LogDensityFn | None = None,
    cond: Any = None,
) -> Float[Array, ""]:
    """``E |R|^2 / d`` at :func:`collocation_points` (squared residual averaged over data
    dimensions, like the denoising loss), with ``R`` scaled by :func:`residual_scale` when
    ``scale="normalized"``.

    With ``log_density_fn`` the residual is ``grad_x`` of the scalar residual of that model
    (:func:`log_density_residual`); otherwise it is :func:`score_residual` of ``model_fn``
    read as ``prediction``.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown residual scale {scale!r}; choose one of: {', '.join(SCALES)}.")
    key_pts, key_probe = jax.random.split(key)
    x_t, t, c = collocation_points(process, x0, key=key_pts, num_points=num_points, t_min=t_min,
                                   cond=cond)
    common = dict(divergence=divergence, key=key_probe, num_probes=num_probes, cond=c)
    if log_density_fn is not None:
        res = log_density_residual(log_density_fn, process, x_t, t, **common)
    else:
        res = score_residual(score_from_prediction(model_fn, process, prediction), process,
                             x_t, t, **common)
    if scale == "normalized":
        res = broadcast_to_data(residual_scale(process, t), res) * res
    return jnp.mean(res.reshape(res.shape[0], -1) ** 2)


def fp_regularized_loss(
    model_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    x0: Float[Array, "b *d"],
    *,
    key: PRNGKeyArray,
    weight: float = 0.0,
    prediction: Prediction | str = Prediction.EPS,
    weighting: AbstractWeighting = Uniform(),
    t_min: float = 1e-5,
    num_points: int = 64,
    divergence: str = "exact",
    num_probes: int = 1,
    scale: str = "normalized",
    log_density_fn: LogDensityFn | None = None,
    cond: Any = None,
    eps: Array | None = None,
    time_density: AbstractTimeDensity = UniformTime(),
) -> Float[Array, ""]:
    """Denoising loss plus ``weight`` times the Fokker–Planck penalty (:func:`fp_penalty`).

    The denoising part is :func:`genflow.losses.denoising_loss` with ``key`` itself, so with
    ``weight=0`` (a Python number) the result *is* the plain loss and no residual is
    computed; the collocation points and probes use ``jax.random.fold_in(key, 1)``.

    Args:
      model_fn, process, x0, prediction, weighting, t_min, cond, eps, time_density: as in
        :func:`~genflow.losses.denoising_loss` (``t_min`` is also the lower end of the
        collocation times, which stay uniform on ``[t_min, 1]`` whatever ``time_density``
        the denoising part draws from).
      key: randomness of both terms.
      weight: ``w`` in ``DSM + w E|R|^2``.
      num_points: collocation points per batch.
      divergence, num_probes: how ``div s`` is computed (:func:`score_residual`).
      scale: ``"normalized"`` or ``"none"`` (see the module notes).
      log_density_fn: the scalar model behind ``model_fn`` when it is a log-density network
        (``model_fn`` then returns ``grad_x phi`` and ``prediction`` is ``"score"``).

    Returns:
      The scalar loss.
    """
    dsm = denoising_loss(model_fn, process, x0, key=key, prediction=prediction,
                         weighting=weighting, t_min=t_min, cond=cond, eps=eps,
                         time_density=time_density)
    if isinstance(weight, (int, float)) and weight == 0:
        return dsm
    penalty = fp_penalty(
        model_fn, process, x0, key=jax.random.fold_in(key, 1), prediction=prediction,
        num_points=num_points, t_min=t_min, divergence=divergence, num_probes=num_probes,
        scale=scale, log_density_fn=log_density_fn, cond=cond,
    )
    return dsm + weight * penalty
