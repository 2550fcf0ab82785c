r"""Exact log-likelihood through the probability-flow ODE, and bits per dimension.

Instantaneous change of variables
---------------------------------
A flow ``dx/dt = v(x, t)`` that transports the density ``p_t`` obeys the continuity equation
``dp_t/dt + div(p_t v) = 0``. Along one of its trajectories ``x_t`` this becomes

.. math::

    \frac{d}{dt} \log p_t(x_t) = -\operatorname{div} v(x_t, t)
    = -\operatorname{tr} \frac{\partial v}{\partial x}(x_t, t),

so, starting from a data point ``x`` at ``t_start`` and integrating up to ``t_end``,

.. math::

    \log p_{t_{start}}(x) = \log p_{t_{end}}(x_{t_{end}})
    + \int_{t_{start}}^{t_{end}} \operatorname{div} v(x_t, t)\, dt .

For a diffusion or flow model on a Gaussian path ``x_t = alpha_t x0 + sigma_t eps`` the flow is
the probability-flow ODE ``v = alpha'_t x0_hat + sigma'_t eps_hat`` (equal to
``f_t x - g_t^2 / 2 * score``), available for every prediction kind through
:class:`genflow.samplers.Denoiser`. ``p_{t_end}`` at the noise end is replaced by the process's
reference density (``process.prior_log_prob``), which is what the generative model samples from.
The state ``(x, delta)`` with ``d delta/dt = div v`` and ``delta(t_start) = 0`` is solved by a
diffrax explicit Runge--Kutta pair (Tsit5 or Dopri5) with a PID step-size controller, so the
result is accurate to the chosen tolerances. The answer is ``log p_{t_start}(x)``: the density of
the data smoothed by the path at ``t_start`` (``1e-5`` by default, as in score_sde; ``t_start = 0``
where the model is finite there, e.g. velocity-prediction flows, VE and EDM).

The divergence
--------------
* ``"exact"``: ``tr J = sum_i e_i^T J e_i`` from ``D`` Jacobian-vector products (``D`` the number
  of dimensions of one example), vectorised with ``jax.vmap`` on top of one ``jax.linearize``.
  Cost per evaluation: one forward pass plus ``D`` tangent passes; right for low-dimensional data.
* ``"hutchinson"``: ``tr J = E[e^T J e]`` for probes with ``E[e e^T] = I`` (Rademacher signs, the
  lower-variance choice, or standard normals). The probes are drawn once per call and held fixed
  along the trajectory (the integrand is then a smooth function of ``t`` that the adaptive solver
  can integrate). With ``num_probes = K`` each probe yields its own estimate
  ``L_k = log p(x_end) + int e_k^T J e_k dt``; the result is their mean, an unbiased estimate of
  the exact ODE likelihood, and its standard error ``std_k(L_k) / sqrt(K)`` (``ddof = 1``). The
  ``K`` probes share one forward pass per evaluation. The standard error is itself estimated
  from ``K`` draws: in very few dimensions Rademacher estimates take few distinct values (two in
  2-D), so with few probes they can all agree and report a spread of zero; use more probes or
  Gaussian probes there (or the exact trace, which is cheap in low dimension).

Counting evaluations
--------------------
diffrax does not count vector-field evaluations. As in
:func:`genflow.samplers.sample_adaptive`, the first stage ``f0`` is evaluated here and handed to
diffrax as the FSAL solver state, and the first step size (when ``dt0`` is ``None``) comes from
Hairer's rule with one explicit-Euler probe, so every attempted step (accepted or rejected) costs
exactly ``s - 1 = 6`` evaluations of the augmented field for Tsit5 and Dopri5::

    nfe = 1 + [dt0 is None] + 6 * num_steps

Each evaluation is one model forward pass on the batch plus its ``D`` (exact) or ``num_probes``
(Hutchinson) Jacobian-vector products.

Gradients
---------
The solve is differentiable with respect to ``x`` and to anything ``model_fn`` closes over (model
parameters), by discretise-then-optimise through diffrax's ``RecursiveCheckpointAdjoint``: the
gradient is the exact gradient of the computed (discretised) log-likelihood; step sizes are held
constant by the gradient, as diffrax does. This makes ``-mean(log_prob)`` a valid training loss
(maximum likelihood) as well as a metric. Memory grows with the number of steps only
logarithmically (recursive checkpointing). A continuous adjoint (``BacksolveAdjoint``) is not
offered: it differentiates only with respect to explicit ``args``, so parameters that a
``model_fn`` closes over would silently receive no gradient, and its backward solve is not the
exact gradient of the computed value.

Bits per dimension
------------------
Pixels ``u in {0, ..., K-1}^D`` (``K = 256`` for 8-bit images) are dequantised to
``y = u + w``, ``w ~ U[0, 1)^D``, and mapped affinely to ``x = low + (high - low) y / K``
(``x = 2 (u + w) / 256 - 1 in [-1, 1)`` by default). A model density ``p(x)`` induces on ``y`` the
density ``p(x) a^D`` with ``a = (high - low) / K``, and the discrete model
``P(u) = int_{[0,1)^D} p(low + a(u + w)) a^D dw``. By Jensen's inequality

.. math::

    -\log_2 P(u) \le -E_w\left[\log p(x) + D \log a\right] / \log 2,

so the reported bits per dimension, an upper bound on the discrete negative log-likelihood, are

.. math::

    \text{bpd} = -\frac{\log p(x) + D \log a}{D \log 2}
    = -\frac{\log p(x)}{D \log 2} + \log_2 \frac{K}{high - low},

i.e. ``+7`` for 8-bit data on ``[-1, 1]`` and ``+8`` on ``[0, 1]``. Check: a model uniform on
``[low, high)^D`` has ``log p = -D log(high - low)`` and gets exactly ``log2 K = 8`` bits. Without
dequantisation a continuous model can put unbounded density on the discrete values (negative
bits per dimension), hence :func:`dequantize`.

Example::

    import jax
    from genflow import metrics, processes

    proc = processes.VPLinear()
    ll = jax.jit(lambda x, key: metrics.log_likelihood(
        model_fn, proc, x, prediction="eps", key=key, divergence="hutchinson", num_probes=4))
    res = ll(x, jax.random.key(0))
    res.log_prob, res.std_error, res.nfe

    bpd = metrics.bits_per_dim(lambda x: ll(x, jax.random.key(1)).log_prob, images_uint8,
                               key=jax.random.key(2))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from genflow.prediction import Prediction
from genflow.processes._base import AbstractGaussianPath
from genflow.samplers._adaptive import _concrete_float, _parse_solver, solve_counting_nfe
from genflow.samplers._base import Denoiser

VelocityFn = Callable[..., Array]
"""``velocity_fn(x, t, cond) -> dx/dt`` with ``x: (b, *data_shape)`` and ``t: (b,)``."""

_DIVERGENCES = ("exact", "hutchinson")
_PROBES = ("rademacher", "gaussian")


class LikelihoodResult(NamedTuple):
    """What :func:`log_likelihood` returns.

    Attributes:
      log_prob: ``(b,)`` log-density of each example at ``t_start``, in nats (the mean over
        probes for Hutchinson).
      std_error: ``(b,)`` standard error of ``log_prob`` over the Hutchinson probes
        (``std / sqrt(num_probes)``, ``ddof = 1``); zeros for the exact trace; NaN with a single
        probe (no spread to measure).
      prior_log_prob: ``(b,)`` the reference log-density at the end point ``z``.
      z: ``(b, *data_shape)`` the examples mapped to ``t_end`` by the flow.
      nfe: evaluations of the augmented field (one model forward pass each, plus its
        Jacobian-vector products), an integer array.
      num_steps: the steps the solver attempted (accepted and rejected).
    """

    log_prob: Float[Array, " b"]
    std_error: Float[Array, " b"]
    prior_log_prob: Float[Array, " b"]
    z: Array
    nfe: Int[Array, ""]
    num_steps: Int[Array, ""]


# --------------------------------------------------------------------------- checks
def _check_options(divergence, probe, num_probes, key, rtol, atol, max_steps, t_start, t_end):
    if divergence not in _DIVERGENCES:
        raise ValueError(f"divergence must be one of {_DIVERGENCES}, got {divergence!r}.")
    if probe not in _PROBES:
        raise ValueError(f"probe must be one of {_PROBES}, got {probe!r}.")
    if isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer)) or num_probes < 1:
        raise ValueError(f"num_probes must be an integer >= 1, got {num_probes!r}.")
    if divergence == "hutchinson" and key is None:
        raise ValueError(
            "divergence='hutchinson' draws random probes: pass key=jax.random.key(...), or use "
            "divergence='exact'."
        )
    for name, value in (("rtol", rtol), ("atol", atol)):
        v = _concrete_float(value)
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {value!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}.")
    ts = (_concrete_float(t_start), _concrete_float(t_end))
    if None not in ts and not 0.0 <= ts[0] < ts[1] <= 1.0:
        raise ValueError(
            "need 0 <= t_start < t_end <= 1 (the flow runs from the data at t_start to the "
            f"noise at t_end), got t_start={t_start}, t_end={t_end}."
        )


def _check_x(x: Any) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must be a floating-point array, got dtype {x.dtype}; map integer pixels to floats "
            "with dequantize(key, pixels) first."
        )
    if x.ndim < 2:
        raise ValueError(
            f"x must be batch first, (b, *data_shape), got shape {x.shape}; for one example use "
            "x[None]."
        )
    return x


# --------------------------------------------------------------------------- densities
def marginal_log_prob(
    process: AbstractGaussianPath,
    x: Float[Array, "b *d"],
    t: ArrayLike = 1.0,
    *,
    data_std: ArrayLike = 1.0,
) -> Float[Array, " b"]:
    r"""Log-density of the Gaussian law of ``x_t`` for data ``N(0, data_std^2 I)``.

    With ``(alpha_t, sigma_t) = process.marginal(t)``, data ``x0 ~ N(0, s^2 I)`` gives
    ``x_t ~ N(0, v_t I)``, ``v_t = alpha_t^2 s^2 + sigma_t^2``, and

    .. math::

        \log N(x; 0, v_t I) = -\frac{|x|^2}{2 v_t} - \frac{D}{2} \log(2 \pi v_t).

    At ``t = 1`` with ``data_std = 1`` this is the usual prior ``N(0, (alpha_1^2 + sigma_1^2) I)``
    (``N(0, I)`` for VP, sub-VP and cond-OT); ``data_std = 0`` gives ``N(0, sigma_t^2 I)``
    (score_sde's VE prior ``N(0, sigma_max^2 I)`` at ``t = 1``). Pass it to
    :func:`log_likelihood` as ``prior_log_prob=lambda z: marginal_log_prob(proc, z, t_end,
    data_std=s)`` to end the flow at an exact reference for Gaussian data, or at a ``t_end < 1``.

    Args:
      process: the Gaussian path.
      x: ``(b, *data_shape)`` points.
      t: the time (scalar).
      data_std: per-dimension standard deviation ``s`` of the data.

    Returns:
      ``(b,)`` log-densities, summed over data dimensions.
    """
    x = jnp.asarray(x)
    dtype = jnp.result_type(x.dtype, jnp.float32)
    alpha, sigma = process.marginal(jnp.asarray(t, dtype))
    var = alpha**2 * jnp.asarray(data_std, dtype) ** 2 + sigma**2
    flat = x.reshape(x.shape[0], -1).astype(dtype)
    d = flat.shape[1]
    return -0.5 * jnp.sum(flat**2, axis=-1) / var - 0.5 * d * jnp.log(2 * jnp.pi * var)


# --------------------------------------------------------------------------- the solve
def _draw_probes(key, probe, num_probes, x) -> Array:
    shape = (num_probes, *x.shape)
    if probe == "rademacher":
        return jax.random.rademacher(key, shape, x.dtype)
    return jax.random.normal(key, shape, x.dtype)


def log_likelihood_from_velocity(
    velocity_fn: VelocityFn,
    x: Float[Array, "b *d"],
    *,
    prior_log_prob: Callable[[Array], Array],
    key: PRNGKeyArray | None = None,
    divergence: str = "exact",
    probe: str = "rademacher",
    num_probes: int = 1,
    t_start: float = 0.0,
    t_end: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str | diffrax.AbstractERK = "tsit5",
    max_steps: int = 4096,
    dt0: float | None = None,
    cond: Any = None,
) -> LikelihoodResult:
    r"""``log p_{t_start}(x)`` for any flow ``dx/dt = velocity_fn(x, t)`` with a known end density.

    The generic entry point behind :func:`log_likelihood`: it needs only the velocity field and
    the log-density it transports the data to at ``t_end``. Use it for flows that are not
    written as a prediction on a Gaussian path, e.g. the drift ``b`` of a
    :class:`genflow.processes.StochasticInterpolant` (the field integrated by
    :class:`genflow.samplers.InterpolantHeun`, finite on all of ``[0, 1]``) with a Gaussian base
    ``x1 ~ N(0, I)``: ``prior_log_prob`` is then ``log N(z; 0, I)``
    (``marginal_log_prob(processes.RectifiedFlow(), z, 1.0)``). For an interpolant between two
    data sets the end density ``rho_1`` must be known in closed form for this to be a likelihood.

    Args:
      velocity_fn: ``velocity_fn(x, t, cond) -> dx/dt`` shaped like ``x``; ``t`` has shape ``(b,)``.
        Examples must not interact (each output row depends on its own input row only), as for
        any network evaluated on a batch without batch statistics.
      x: ``(b, *data_shape)`` data at ``t_start`` (floating point).
      prior_log_prob: ``z (b, *data_shape) -> (b,)``, the log-density at ``t_end``.
      key: randomness of the Hutchinson probes (unused for the exact trace).
      divergence: ``"exact"`` or ``"hutchinson"`` (see the module notes).
      probe: ``"rademacher"`` or ``"gaussian"`` Hutchinson probes.
      num_probes: probes per example (Hutchinson); two or more give a standard error.
      t_start, t_end: ``0 <= t_start < t_end <= 1``.
      rtol, atol: tolerances of the PID step-size controller, applied to the whole state
        (the points and the accumulated divergence).
      solver: ``"tsit5"`` (default), ``"dopri5"``, or a ``diffrax.Tsit5()``/``Dopri5()`` object.
      max_steps: the most attempted steps; the solve fails with an error beyond it.
      dt0: the first step size to attempt; ``None`` chooses it by Hairer's rule (one evaluation).
      cond: passed to ``velocity_fn`` unchanged.

    Returns:
      A :class:`LikelihoodResult`.

    Raises:
      ValueError: for an unknown option, bad times or tolerances, a missing key with
        Hutchinson, non-float or unbatched ``x``, or a field not shaped like ``x``.
    """
    diffrax_solver = _parse_solver(solver)
    _check_options(divergence, probe, num_probes, key, rtol, atol, max_steps, t_start, t_end)
    if dt0 is not None:
        v = _concrete_float(dt0)
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"dt0 must be a positive step size or None, got {dt0!r}.")
    x = _check_x(x)
    batch, data_shape = x.shape[0], x.shape[1:]
    dim = math.prod(data_shape)
    t_dtype = jnp.result_type(x.dtype, jnp.float32)  # times and the log-density: float32 or better
    t0, t1 = jnp.asarray(t_start, t_dtype), jnp.asarray(t_end, t_dtype)
    rtol_a, atol_a = jnp.asarray(rtol, t_dtype), jnp.asarray(atol, t_dtype)

    out = jax.eval_shape(
        lambda x_, t_: velocity_fn(x_, t_, cond), x, jax.ShapeDtypeStruct((batch,), t_dtype)
    )
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"the velocity (model output) must be shaped like x {x.shape}, got {got}.")

    exact = divergence == "exact"
    probes = None if exact else _draw_probes(key, probe, num_probes, x)
    num_est = 1 if exact else num_probes

    def field(t, y, args):
        del args
        x_t, _ = y
        t_b = jnp.full((batch,), t, t_dtype)
        v, jvp = jax.linearize(lambda x_: velocity_fn(x_, t_b, cond).astype(x_.dtype), x_t)
        if exact:

            def diag(i):  # (J e_i)_i for every example
                e = jnp.broadcast_to(jax.nn.one_hot(i, dim, dtype=x_t.dtype).reshape(data_shape),
                                     x_t.shape)
                return jvp(e).reshape(batch, dim)[:, i]

            div = jnp.sum(jax.vmap(diag)(jnp.arange(dim)), axis=0)[None]  # (1, b)
        else:
            jvps = jax.vmap(jvp)(probes)  # (K, b, *d)
            div = jnp.sum((probes * jvps).reshape(num_est, batch, dim), axis=-1)  # (K, b)
        return v, div.astype(t_dtype)

    y0 = (x, jnp.zeros((num_est, batch), t_dtype))
    (z, delta), nfe, num_steps = solve_counting_nfe(
        field, y0, t0, t1, solver=diffrax_solver, rtol=rtol_a, atol=atol_a, dt0=dt0,
        max_steps=max_steps,
    )  # z: (b, *d), delta: (K, b)
    prior = jnp.asarray(prior_log_prob(z)).astype(t_dtype)
    if prior.shape != (batch,):
        raise ValueError(
            f"prior_log_prob must return one log-density per example, shape {(batch,)}, got "
            f"{prior.shape}; sum over the data dimensions."
        )
    estimates = prior[None] + delta  # (K, b)
    log_prob = jnp.mean(estimates, axis=0)
    if exact:
        std_error = jnp.zeros_like(log_prob)
    elif num_probes == 1:
        std_error = jnp.full_like(log_prob, jnp.nan)
    else:
        std_error = jnp.std(estimates, axis=0, ddof=1) / math.sqrt(num_probes)
    return LikelihoodResult(
        log_prob=log_prob,
        std_error=std_error,
        prior_log_prob=prior,
        z=z,
        nfe=nfe,
        num_steps=num_steps,
    )


def log_likelihood(
    model_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    x: Float[Array, "b *d"],
    *,
    prediction: Prediction | str,
    key: PRNGKeyArray | None = None,
    divergence: str = "exact",
    probe: str = "rademacher",
    num_probes: int = 1,
    t_start: float = 1e-5,
    t_end: float = 1.0,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str | diffrax.AbstractERK = "tsit5",
    max_steps: int = 4096,
    dt0: float | None = None,
    prior_log_prob: Callable[[Array], Array] | None = None,
    cond: Any = None,
) -> LikelihoodResult:
    r"""Per-example log-likelihood (nats) of a diffusion/flow model by its probability-flow ODE.

    Integrates ``dx/dt = alpha'_t x0_hat + sigma'_t eps_hat`` and
    ``d delta/dt = div_x(dx/dt)`` from the data at ``t_start`` to ``t_end`` and returns

    .. math::

        \log p_{t_{start}}(x) = \log p_{ref}(x_{t_{end}}) + \delta(t_{end}),

    with ``p_ref = process.prior_log_prob`` by default: ``N(0, (alpha_1^2 + sigma_1^2) I)`` for
    VP, sub-VP, cond-OT/rectified flow, Gaussian interpolants and kinetic-optimal paths, and
    ``N(0, sigma_max^2 I)`` for VE and EDM. Works for every :class:`AbstractGaussianPath` and
    every prediction kind. jit-able (``model_fn``, ``prediction``, ``divergence``, ``probe``,
    ``num_probes``, ``solver``, ``max_steps`` static) and differentiable with respect to the
    model's parameters, so ``-mean(log_prob)`` can be trained on.

    Where the model is singular: eps/x0/score predictions divide by ``alpha`` and cannot be
    evaluated at ``t = 1`` on paths with ``alpha_1 = 0`` (cond-OT, interpolants,
    kinetic-optimal); use ``t_end = 1 - 1e-5`` there (the reference density is then off by
    ``O(1e-5)`` nats per dimension), or a velocity model. Score and eps models are singular at
    ``t = 0`` where ``sigma_0 = 0``, hence ``t_start = 1e-5``.

    Args:
      model_fn: ``model_fn(x, t, cond) -> array like x``, ``t: (b,)``.
      process: the Gaussian path the model was trained on.
      x: ``(b, *data_shape)`` data, scaled as in training (e.g. :func:`dequantize` d images).
      prediction: what ``model_fn`` predicts (``"eps"``, ``"x0"``, ``"v"``, ``"velocity"``,
        ``"score"``).
      key: randomness of the Hutchinson probes.
      divergence: ``"exact"`` (``D`` Jacobian-vector products per evaluation) or
        ``"hutchinson"`` (``num_probes`` of them; for images).
      probe: ``"rademacher"`` (lower variance) or ``"gaussian"``.
      num_probes: Hutchinson probes per example; ``>= 2`` gives ``std_error``.
      t_start, t_end: ``0 <= t_start < t_end <= 1``.
      rtol, atol: step-size controller tolerances on the whole state.
      solver: ``"tsit5"``, ``"dopri5"`` or a diffrax ``Tsit5()``/``Dopri5()``.
      max_steps: the most attempted steps.
      dt0: first step size, or ``None`` for Hairer's rule (one extra evaluation).
      prior_log_prob: ``z -> (b,)``, the log-density at ``t_end``; defaults to
        ``process.prior_log_prob``. See :func:`marginal_log_prob`.
      cond: conditioning passed to ``model_fn``.

    Returns:
      :class:`LikelihoodResult` with ``log_prob`` (``(b,)`` nats), ``std_error``, ``nfe`` and more.

    Raises:
      ValueError: for bad options (see :func:`log_likelihood_from_velocity`) or an unknown
        prediction kind.

    Example::

        res = jax.jit(lambda x: log_likelihood(model_fn, processes.VPLinear(), x,
                                               prediction="eps"))(x)
        nll_per_dim = -res.log_prob / x[0].size
    """
    prediction = Prediction.parse(prediction)
    x = _check_x(x)
    t_b = jax.ShapeDtypeStruct((x.shape[0],), jnp.result_type(x.dtype, jnp.float32))
    out = jax.eval_shape(lambda x_, t_: model_fn(x_, t_, cond), x, t_b)
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"model_fn must return an array shaped like x {x.shape}, got {got}.")
    if prior_log_prob is None:
        prior_log_prob = process.prior_log_prob

    def velocity_fn(x_, t_, cond_):
        return Denoiser(model_fn, process, prediction, cond_).velocity(x_, t_)

    return log_likelihood_from_velocity(
        velocity_fn, x, prior_log_prob=prior_log_prob, key=key, divergence=divergence,
        probe=probe, num_probes=num_probes, t_start=t_start, t_end=t_end, rtol=rtol, atol=atol,
        solver=solver, max_steps=max_steps, dt0=dt0, cond=cond,
    )


# --------------------------------------------------------------------------- images
def _check_bins(low, high, num_bins):
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2 (256 for 8-bit data), got {num_bins!r}.")
    lo, hi = _concrete_float(low), _concrete_float(high)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"need low < high for the data range, got low={low}, high={high}.")


def _check_pixels(pixels: Any, num_bins: int) -> Array:
    pixels = jnp.asarray(pixels)
    if not jnp.issubdtype(pixels.dtype, jnp.integer):
        raise ValueError(
            f"pixels must be integers in [0, {num_bins}) (e.g. uint8 images), got dtype "
            f"{pixels.dtype}; pass the raw quantised data, before any scaling to floats."
        )
    if pixels.ndim < 2:
        raise ValueError(f"pixels must be batch first, (b, *data_shape), got shape {pixels.shape}.")
    try:
        lo, hi = int(np.min(np.asarray(pixels))), int(np.max(np.asarray(pixels)))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return pixels
    if lo < 0 or hi >= num_bins:
        raise ValueError(
            f"pixel values must lie in [0, {num_bins}), got [{lo}, {hi}]; set num_bins to the "
            "number of quantisation levels."
        )
    return pixels


def dequantize(
    key: PRNGKeyArray,
    pixels: Int[ArrayLike, "b *d"],
    *,
    low: float = -1.0,
    high: float = 1.0,
    num_bins: int = 256,
    dtype: Any = None,
) -> Float[Array, "b *d"]:
    r"""Uniform dequantisation of integer data, mapped affinely to ``[low, high)``.

    .. math::

        x = low + (high - low) \frac{u + w}{K}, \qquad w \sim U[0, 1)^D,

    ``K = num_bins``; by default ``x = 2 (u + w) / 256 - 1 in [-1, 1)``. Each level ``u`` fills
    the cell ``[low + a u, low + a (u + 1))``, ``a = (high - low) / K``.

    Args:
      key: randomness of ``w``.
      pixels: integers in ``[0, num_bins)``, ``(b, *data_shape)``.
      low, high: the data range the model was trained on.
      num_bins: quantisation levels (256 for 8-bit images).
      dtype: float dtype of the result (the default float type when ``None``).

    Returns:
      Floats shaped like ``pixels``.
    """
    _check_bins(low, high, num_bins)
    pixels = _check_pixels(pixels, num_bins)
    dtype = np.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating-point type, got {dtype}.")
    return _dequantize(key, pixels, low, high, int(num_bins), dtype)


@partial(jax.jit, static_argnames=("num_bins", "dtype"))
def _dequantize(key, pixels, low, high, num_bins, dtype):
    # One compiled program per shape instead of a dispatch (and compilation) per operation.
    w = jax.random.uniform(key, pixels.shape, dtype)
    scale = (jnp.asarray(high, dtype) - jnp.asarray(low, dtype)) / num_bins
    return (jnp.asarray(low, dtype) + scale * (pixels.astype(dtype) + w)).astype(dtype)


def log_prob_to_bits_per_dim(
    log_prob: Float[ArrayLike, "*b"],
    num_dims: int,
    *,
    low: float = -1.0,
    high: float = 1.0,
    num_bins: int = 256,
) -> Array:
    r"""Bits per dimension of dequantised data from the continuous log-density ``log p(x)``.

    .. math::

        \text{bpd} = -\frac{\log p(x) + D \log a}{D \log 2}, \qquad a = \frac{high - low}{K},

    the change-of-scale term ``D log a`` turning the density of ``x`` into that of the
    dequantised levels ``y = (x - low) / a`` (``+7`` bits for ``K = 256`` on ``[-1, 1]``, ``+8``
    on ``[0, 1]``). See the module notes for the derivation.

    Args:
      log_prob: ``log p(x)`` in nats, any shape.
      num_dims: ``D``, the number of dimensions of one example (``h * w * c``).
      low, high, num_bins: the map used by :func:`dequantize`.

    Returns:
      Bits per dimension, shaped like ``log_prob``.
    """
    _check_bins(low, high, num_bins)
    if isinstance(num_dims, bool) or not isinstance(num_dims, (int, np.integer)) or num_dims < 1:
        raise ValueError(f"num_dims must be a positive integer, got {num_dims!r}.")
    log_prob = jnp.asarray(log_prob)
    dtype = jnp.result_type(log_prob.dtype, jnp.float32)
    log_scale = jnp.log(jnp.asarray(high, dtype) - jnp.asarray(low, dtype)) - math.log(num_bins)
    return -(log_prob.astype(dtype) + num_dims * log_scale) / (num_dims * math.log(2.0))


def bits_per_dim(
    log_likelihood_fn: Callable[[Array], Any],
    pixels: Int[ArrayLike, "b *d"],
    *,
    key: PRNGKeyArray,
    num_samples: int = 1,
    low: float = -1.0,
    high: float = 1.0,
    num_bins: int = 256,
    dtype: Any = None,
) -> Float[Array, " b"]:
    r"""Per-example bits per dimension of integer data under a continuous model.

    Dequantises ``pixels`` ``num_samples`` times (:func:`dequantize`), evaluates
    ``log_likelihood_fn`` once on all the draws stacked into one batch, converts with
    :func:`log_prob_to_bits_per_dim` and averages over the draws: a Monte Carlo estimate of the
    variational bound ``E_w[-log p(x) - D log a] / (D log 2)`` on the discrete negative
    log-likelihood in bits. Report ``bpd.mean()`` over a test set.

    Args:
      log_likelihood_fn: ``x (n, *data_shape) -> (n,)`` log-densities in nats, or anything with
        a ``log_prob`` attribute (a :class:`LikelihoodResult`), e.g.
        ``lambda x: log_likelihood(model_fn, proc, x, prediction="eps")``.
      pixels: ``(b, *data_shape)`` integers in ``[0, num_bins)``.
      key: randomness of the dequantisation.
      num_samples: dequantisation draws per example.
      low, high, num_bins: the data map, as in training (``[-1, 1]``, 256 levels by default).
      dtype: float dtype of the dequantised data.

    Returns:
      ``(b,)`` bits per dimension.

    Example::

        ll = jax.jit(lambda x: log_likelihood(model_fn, proc, x, prediction="eps",
                                              key=jax.random.key(0), divergence="hutchinson"))
        bpd = bits_per_dim(ll, images_uint8, key=jax.random.key(1)).mean()
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
    _check_bins(low, high, num_bins)
    pixels = _check_pixels(pixels, num_bins)
    batch, data_shape = pixels.shape[0], pixels.shape[1:]
    stacked = jnp.concatenate([pixels] * num_samples, axis=0)
    x = dequantize(key, stacked, low=low, high=high, num_bins=num_bins, dtype=dtype)
    out = log_likelihood_fn(x)
    log_prob = jnp.asarray(getattr(out, "log_prob", out))
    if log_prob.shape != (batch * num_samples,):
        raise ValueError(
            f"log_likelihood_fn must return one log-density per example, shape "
            f"{(batch * num_samples,)}, got {log_prob.shape}."
        )
    bpd = log_prob_to_bits_per_dim(log_prob, math.prod(data_shape), low=low, high=high,
                                   num_bins=num_bins)
    return jnp.mean(bpd.reshape(num_samples, batch), axis=0)


__all__ = [
    "LikelihoodResult",
    "bits_per_dim",
    "dequantize",
    "log_likelihood",
    "log_likelihood_from_velocity",
    "log_prob_to_bits_per_dim",
    "marginal_log_prob",
]
