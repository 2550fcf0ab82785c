"""Adaptive-step DPM-Solver and DPM-Solver++ (Lu et al. 2022, section 4.1 and appendix C).

Each attempted step from ``s`` to ``t`` (``lambda_t = lambda_s + h``) computes a lower- and a
higher-order singlestep update that share their model evaluations:

* order 2: DPM-Solver-1 (one evaluation at ``s``) and DPM-Solver-2 with ``r1 = 1/2``
  (one more, at the midpoint in log-SNR): 2 evaluations per attempt;
* order 3: DPM-Solver-2 with ``r1 = 1/3`` and DPM-Solver-3 with ``r1 = 1/3, r2 = 2/3``,
  which reuses the first two evaluations: 3 evaluations per attempt.

The step is accepted when the scaled error

    E = max over the batch of RMS((x_high - x_low) / delta),
    delta = max(atol, rtol * max(|x_low|, |x_prev|))

is at most 1 (``x_prev`` is the lower-order solution at the last accepted point), and the
next step size in log-SNR is ``min(theta h E^(-1/order), lambda_end - lambda_s)``, so the
last step lands on ``t_end``. The loop ends when ``|t_s - t_end| <= t_err``. These are the
rules and defaults of the paper's Algorithm 4 and of its reference implementation
(``atol = 0.0078``, ``rtol = 0.05`` suit data scaled to [-1, 1]).

The loop is a ``lax.while_loop`` over a batch that shares the step sizes (the error is a
maximum over the batch), so the NFE is data-dependent: it is returned as a traced integer,
``order`` times the number of attempted steps, and ``max_steps`` bounds the attempts. The
loop is differentiable only in forward mode (a while loop); use the fixed-grid solvers for
gradients.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from genflow.prediction import Prediction
from genflow.processes._base import AbstractGaussianPath, broadcast_to_data, pytree_dataclass
from genflow.samplers._base import AbstractAdaptiveSampler, Denoiser, ModelFn, SampleResult
from genflow.samplers._dpm_solver import check_options, exponential_coefficients
from genflow.samplers._sample import _check_model_output


def _positive_or_traced(value: Any) -> bool:
    """Whether a tolerance is finite and positive (tracers pass: a sweep under jit)."""
    if isinstance(value, jax.core.Tracer):
        return True
    value = np.asarray(value, dtype=np.float64)
    return bool(value.ndim == 0 and np.isfinite(value) and value > 0)


def _check_dpm_options(name, order, algorithm, variant, h_init, atol, rtol, theta, t_err,
                       max_steps) -> None:
    """Clear errors for the options of the adaptive DPM-Solver (before any tracing)."""
    check_options(name, order, algorithm, variant, orders=(2, 3))
    for option, value in dict(h_init=h_init, atol=atol, rtol=rtol, t_err=t_err).items():
        if isinstance(value, bool) or not _positive_or_traced(value):
            raise ValueError(f"{option} must be a finite positive number, got {value!r}.")
    if not (_positive_or_traced(theta) and (isinstance(theta, jax.core.Tracer) or theta <= 1)):
        raise ValueError(f"theta must lie in (0, 1], got {theta!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}.")


def _lower_higher(denoise, data, order, variant, x, t_s, t):
    """The (lower, higher) order updates of one attempted step from ``t_s`` to ``t``."""
    process = denoise.process

    def output(x_, t_):
        x0, eps = denoise(x_, t_)
        return x0 if data else eps

    def update(t_target, out_s, terms=()):
        co = exponential_coefficients(process, data, t_s, t_target)
        y = broadcast_to_data(co.lin, x) * x + broadcast_to_data(co.a0, x) * out_s
        for coef, d in terms:
            y = y + broadcast_to_data(coef(co), x) * d
        return y

    lam_s = process.log_snr(t_s)
    h = process.log_snr(t) - lam_s
    out_s = output(x, t_s)
    r1 = 0.5 if order == 2 else 1.0 / 3.0
    s1 = process.t_from_log_snr(lam_s + r1 * h)
    out_1 = output(update(s1, out_s), s1)
    d_1 = (out_1 - out_s) / broadcast_to_data(process.log_snr(s1) - lam_s, x)
    second = (lambda co: co.a_mid) if variant == "midpoint" else (lambda co: co.a1)
    if order == 2:
        return update(t, out_s), update(t, out_s, [(second, d_1)])

    x_low = update(t, out_s, [(second, d_1)])
    s2 = process.t_from_log_snr(lam_s + 2.0 / 3.0 * h)
    out_2 = output(update(s2, out_s, [(lambda co: co.a1, d_1)]), s2)
    dl_1, dl_2 = process.log_snr(s1) - lam_s, process.log_snr(s2) - lam_s
    d_2 = (out_2 - out_s) / broadcast_to_data(dl_2, x)
    if variant == "midpoint":
        return x_low, update(t, out_s, [(lambda co: co.a1, d_2)])
    # Quadratic through the three outputs (as in DPMSolverSinglestep's Taylor variant).
    gap = dl_2 - dl_1
    x_high = update(t, out_s, [(lambda co: (co.a2 - co.a1 * dl_1) / gap, d_2),
                               (lambda co: (co.a1 * dl_2 - co.a2) / gap, d_1)])
    return x_low, x_high


def sample_dpm_adaptive(
    model_fn: ModelFn,
    process: AbstractGaussianPath,
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str,
    x_init: Array | None = None,
    shape: tuple[int, ...] | None = None,
    order: int = 3,
    algorithm: str = "dpmsolver++",
    variant: str = "midpoint",
    t_start: float = 1.0,
    t_end: float = 1e-3,
    h_init: float = 0.05,
    atol: float = 0.0078,
    rtol: float = 0.05,
    theta: float = 0.9,
    t_err: float = 1e-5,
    max_steps: int = 1000,
    cond: Any = None,
    thresholding=None,
    denoise_final: bool = False,
) -> SampleResult:
    """Sample with the adaptive-step DPM-Solver (module docstring) from ``t_start`` to ``t_end``.

    Args:
      model_fn, process, key, prediction, x_init, shape, cond, thresholding, denoise_final:
        as in :func:`genflow.samplers.sample`.
      order: 2 or 3, the order of the higher update (and the evaluations per attempt).
      algorithm: ``"dpmsolver++"`` (data form) or ``"dpmsolver"`` (noise form).
      variant: ``"midpoint"`` or ``"taylor"``, as in :class:`DPMSolverSinglestep`.
      t_start, t_end: the interval, ``0 < t_end < t_start <= 1`` (finite log-SNR at both).
      h_init: the first step size in half log-SNR.
      atol, rtol: absolute and relative tolerances of the error estimate.
      theta: safety factor of the step-size update.
      t_err: the loop stops when ``|t_s - t_end| <= t_err``.
      max_steps: at most this many attempted steps; if ``t_end`` is not reached by then,
        ``x`` is NaN (loud, rather than a sample from the wrong time).

    Returns:
      :class:`SampleResult` with ``x`` at ``t_end``, no trajectory, and ``nfe`` (a traced
      int32 scalar: ``order`` per attempted step, plus 1 with ``denoise_final``).
    """
    _check_dpm_options("sample_dpm_adaptive", order, algorithm, variant, h_init, atol, rtol,
                       theta, t_err, max_steps)
    if not 0.0 < t_end < t_start <= 1.0:
        raise ValueError(
            f"need 0 < t_end < t_start <= 1 (the step sizes live in log-SNR, which must be "
            f"finite at both ends), got t_start={t_start}, t_end={t_end}."
        )
    if x_init is None and shape is None:
        raise ValueError("give either x_init or shape (the batch shape of the prior draw).")
    if x_init is None:
        x_init = process.prior_sample(jax.random.split(key)[0], tuple(shape))
    x_init = jnp.asarray(x_init)
    dtype = jnp.result_type(float)  # time in float32 or better
    t_start_, t_end_ = jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)
    denoise = Denoiser(model_fn, process, prediction, cond, thresholding)
    _check_model_output(denoise, x_init, t_start_)
    data = algorithm == "dpmsolver++"
    lam_end = process.log_snr(t_end_)

    def norm(v):  # RMS per sample, max over the batch
        return jnp.max(jnp.sqrt(jnp.mean(jnp.square(v.reshape(v.shape[0], -1)), axis=1)))

    def cond_fn(carry):
        _, _, t_s, _, attempts = carry
        return (jnp.abs(t_s - t_end_) > t_err) & (attempts < max_steps)

    def body_fn(carry):
        x, x_prev, t_s, h, attempts = carry
        denoise.reset_calls()  # traced once under jit, run per attempt without: count one
        lam_s = process.log_snr(t_s)
        t = process.t_from_log_snr(lam_s + h)
        x_low, x_high = _lower_higher(denoise, data, order, variant, x, t_s, t)
        delta = jnp.maximum(atol, rtol * jnp.maximum(jnp.abs(x_low), jnp.abs(x_prev)))
        err = norm((x_high - x_low) / delta)
        accept = err <= 1.0
        x = jnp.where(accept, x_high, x).astype(x.dtype)
        x_prev = jnp.where(accept, x_low, x_prev).astype(x.dtype)
        t_s = jnp.where(accept, t, t_s)
        lam_s = process.log_snr(t_s)
        # The step-size factor is rounded to float32, as the reference implementation does,
        # so that both take the same steps (it changes the results by about 1e-9 otherwise).
        safe = jnp.where(err > 0, err, 1.0)
        factor = jnp.where(err > 0, safe ** (-1.0 / order), jnp.inf).astype(jnp.float32)
        grow = theta * h * factor
        h = jnp.minimum(grow, lam_end - lam_s)
        return x, x_prev, t_s, h, attempts + 1

    carry = (x_init, x_init, t_start_, jnp.asarray(h_init, dtype), jnp.zeros((), jnp.int32))
    x, _, t_s, _, attempts = jax.lax.while_loop(cond_fn, body_fn, carry)
    per_attempt = denoise.calls
    reached = jnp.abs(t_s - t_end_) <= t_err
    x = jnp.where(reached, x, jnp.nan).astype(x.dtype)
    nfe = per_attempt * attempts
    if denoise_final:
        denoise.reset_calls()
        x = denoise(x, t_end_)[0].astype(x.dtype)
        nfe = nfe + denoise.calls
    return SampleResult(x=x, trajectory=None, nfe=nfe)


@pytree_dataclass(static=("order", "algorithm", "variant", "max_steps"))
@dataclasses.dataclass(frozen=True)
class DPMSolverAdaptive(AbstractAdaptiveSampler):
    """The adaptive-step DPM-Solver (module docstring) as an object.

    ``sample(model_fn, process, DPMSolverAdaptive(order=2), key=..., prediction=..., shape=...,
    t_start=..., t_end=..., cond=..., thresholding=..., denoise_final=...)`` is
    :func:`sample_dpm_adaptive` with these options (same numbers, same NFE: a traced integer).
    Give no ``num_steps``, ``ts`` or ``grid``; there is no trajectory.

    Attributes:
      order: 2 or 3, the order of the higher update (and the evaluations per attempt; static).
      algorithm: ``"dpmsolver++"`` (data form) or ``"dpmsolver"`` (noise form; static).
      variant: ``"midpoint"`` or ``"taylor"`` (static).
      h_init: the first step size in half log-SNR.
      atol, rtol: absolute and relative tolerances of the error estimate.
      theta: safety factor of the step-size update, in ``(0, 1]``.
      t_err: the loop stops when ``|t_s - t_end| <= t_err``.
      max_steps: at most this many attempted steps (static); ``x`` is NaN if ``t_end`` is not
        reached by then.
    """

    order: int = 3
    algorithm: str = "dpmsolver++"
    variant: str = "midpoint"
    h_init: float = 0.05
    atol: float = 0.0078
    rtol: float = 0.05
    theta: float = 0.9
    t_err: float = 1e-5
    max_steps: int = 1000

    def __post_init__(self):
        _check_dpm_options(type(self).__name__, self.order, self.algorithm, self.variant,
                           self.h_init, self.atol, self.rtol, self.theta, self.t_err,
                           self.max_steps)

    def run(self, model_fn, process, *, key, prediction, x_init, shape, t_start, t_end, cond,
            thresholding, denoise_final) -> SampleResult:
        return sample_dpm_adaptive(
            model_fn, process, key=key, prediction=prediction, x_init=x_init, shape=shape,
            order=self.order, algorithm=self.algorithm, variant=self.variant, t_start=t_start,
            t_end=t_end, h_init=self.h_init, atol=self.atol, rtol=self.rtol, theta=self.theta,
            t_err=self.t_err, max_steps=self.max_steps, cond=cond, thresholding=thresholding,
            denoise_final=denoise_final,
        )
