r"""ODE–SDE gap diagnostics of a score model (Deveney et al. 2023).

A learned score ``s_theta`` defines two samplers that agree only when ``s_theta`` is the score of
densities evolving under the forward SDE: the probability-flow ODE
``dx/dt = f_t x - (g_t^2 / 2) s_theta`` and the reverse SDE
``dx = [f_t x - g_t^2 s_theta] dt + g_t dW-bar``. :func:`ode_sde_gap` runs both from the *same*
prior draws and measures how far apart their samples land (sliced W2 and multi-bandwidth RBF
MMD), how far each is from data, and the Fokker–Planck residual
(:mod:`genflow.fokker_planck`) of the model on a grid of times, which bounds the gap.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from genflow import fokker_planck
from genflow.metrics._distances import mmd, sliced_wasserstein2
from genflow.prediction import Prediction
from genflow.processes._base import AbstractGaussianPath
from genflow.samplers import AbstractSolver, EulerMaruyama, Heun, sample

DEFAULT_RESIDUAL_TIMES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)


@dataclasses.dataclass(frozen=True)
class OdeSdeGap:
    """What :func:`ode_sde_gap` measured.

    Attributes:
      sw2_ode_sde, mmd_ode_sde: sliced W2 and MMD^2 between the ODE and SDE samples.
      sw2_ode_data, sw2_sde_data, mmd_ode_data, mmd_sde_data: each sampler against ``data``
        (``nan`` without data).
      residual_times: the times ``t_j`` of the residual grid.
      residual_rms: ``sqrt(E |R(x, t_j)|^2 / d)`` at each ``t_j`` over ``x ~ p_{t_j}`` (scaled as
        ``scale`` says).
      residual_mean: the mean of ``residual_rms`` over the grid.
      ode, sde: the two sets of samples, ``(n, *d)``.
    """

    sw2_ode_sde: float
    mmd_ode_sde: float
    sw2_ode_data: float
    sw2_sde_data: float
    mmd_ode_data: float
    mmd_sde_data: float
    residual_times: np.ndarray
    residual_rms: np.ndarray
    residual_mean: float
    ode: np.ndarray
    sde: np.ndarray

    def summary(self) -> dict[str, Any]:
        """The scalars and the residual profile as a JSON-ready dict (no samples)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("ode", "sde")}
        out["residual_times"] = [float(v) for v in self.residual_times]
        out["residual_rms"] = [float(v) for v in self.residual_rms]
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


def _flat(x: Any) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(x.shape[0], -1)


def _as_argument(fn: Any) -> Any:
    """``fn`` in a form that can be passed *into* ``jax.jit``: a pytree such as
    :class:`~genflow.networks.ModelFn` or ``jax.tree_util.Partial`` as it is (its arrays are
    arguments, so new weights reuse the compilation), a plain function wrapped in a leafless
    ``Partial`` (compiled once per function)."""
    if fn is None or jax.tree.leaves(fn) != [fn]:
        return fn
    return jax.tree_util.Partial(fn)


@functools.partial(jax.jit, static_argnames=("prediction", "num_steps", "t_start", "t_end"))
def _sample(model_fn, process, solver, x_init, key, *, prediction, num_steps, t_start, t_end):
    return sample(model_fn, process, solver, key=key, x_init=x_init, prediction=prediction,
                  num_steps=num_steps, t_start=t_start, t_end=t_end).x


@functools.partial(jax.jit, static_argnames=("prediction", "num_points", "divergence",
                                             "num_probes"))
def _residual_at(model_fn, log_density_fn, process, x0, t, key, *, prediction, num_points,
                 divergence, num_probes):
    """``(raw, normalized)`` RMS residual at one time ``t``."""
    key_i, key_x, key_p = jax.random.split(key, 3)
    idx = jax.random.randint(key_i, (num_points,), 0, x0.shape[0])
    t_b = jnp.full((num_points,), t, x0.dtype)
    x_t, _ = process.sample_xt(key_x, x0[idx], t_b)
    common = dict(divergence=divergence, key=key_p, num_probes=num_probes)
    if log_density_fn is not None:
        res = fokker_planck.log_density_residual(log_density_fn, process, x_t, t_b, **common)
    else:
        score_fn = fokker_planck.score_from_prediction(model_fn, process, prediction)
        res = fokker_planck.score_residual(score_fn, process, x_t, t_b, **common)
    raw = jnp.sqrt(jnp.mean(res.reshape(num_points, -1) ** 2))
    return raw, raw * fokker_planck.residual_scale(process, t)


def residual_profile(
    model_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    x0: Array,
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str,
    times: Any = DEFAULT_RESIDUAL_TIMES,
    num_points: int = 256,
    divergence: str = "exact",
    num_probes: int = 1,
    scale: str = "normalized",
    log_density_fn: Callable[..., Array] | None = None,
) -> np.ndarray:
    """RMS Fokker–Planck residual at each of ``times``, over ``x_t`` drawn from the forward
    process of ``num_points`` points of ``x0`` (with replacement).

    Returns:
      ``(len(times),)`` array of ``sqrt(mean |R|^2 / d)``.
    """
    if scale not in fokker_planck.SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of: {', '.join(fokker_planck.SCALES)}.")
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or not np.all((times > 0) & (times <= 1)):
        raise ValueError(f"times must be a 1-D list of times in (0, 1], got {times!r}.")
    x0 = jnp.asarray(x0)
    keys = jax.random.split(key, times.shape[0])
    out = []
    for t, k in zip(times, keys):
        raw, normalized = _residual_at(
            _as_argument(model_fn), _as_argument(log_density_fn), process, x0,
            jnp.asarray(t, x0.dtype), k, prediction=Prediction.parse(prediction),
            num_points=num_points, divergence=divergence, num_probes=num_probes,
        )
        out.append(float(normalized if scale == "normalized" else raw))
    return np.array(out)


def ode_sde_gap(
    model_fn: Callable[..., Array],
    process: AbstractGaussianPath,
    *,
    key: PRNGKeyArray,
    prediction: Prediction | str,
    shape: tuple[int, ...] | None = None,
    x_init: Array | None = None,
    data: Any = None,
    ode_solver: AbstractSolver = Heun(),
    ode_steps: int = 100,
    sde_solver: AbstractSolver = EulerMaruyama(),
    sde_steps: int = 500,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    residual_times: Any = DEFAULT_RESIDUAL_TIMES,
    residual_points: int = 256,
    divergence: str = "exact",
    scale: str = "normalized",
    log_density_fn: Callable[..., Array] | None = None,
    num_projections: int = 256,
    mmd_bandwidths: Any = None,
    scale_data: float = 1.0,
) -> OdeSdeGap:
    """Sample a model with its probability-flow ODE and its reverse SDE from the same prior
    draws and compare the results with each other, with data, and with the FP residual.

    Args:
      model_fn: ``model_fn(x, t, cond) -> prediction`` of kind ``prediction``.
      process: the Gaussian path it was trained on.
      key: randomness of the prior draw, the SDE noise and the residual points.
      prediction: what ``model_fn`` predicts.
      shape: ``(n, *data_shape)`` of the prior draw (or give ``x_init``).
      x_init: the shared starting points at ``t_start``.
      data: reference points ``(m, *data_shape)`` in the model's units; without it the
        data distances are ``nan`` and the residual is evaluated around the ODE samples.
      ode_solver, ode_steps: the ODE sampler (default Heun, 100 steps on the uniform grid).
      sde_solver, sde_steps: the SDE sampler (default Euler–Maruyama, 500 steps).
      t_start, t_end: the ends of both grids.
      residual_times, residual_points, divergence, scale, log_density_fn: as in
        :func:`residual_profile`; the points are ``x_t`` of the forward process from ``data``.
      num_projections: projections of the sliced W2.
      mmd_bandwidths: widths of the RBF kernels (``None``: multiples of the median distance,
        see :func:`genflow.metrics.mmd`).
      scale_data: samples and data are divided by it before the distances (the config's
        ``data.scale``), so that the numbers are in the data's own units.

    Returns:
      :class:`OdeSdeGap`.
    """
    if sde_solver.stochastic is False or ode_solver.stochastic:
        raise ValueError("ode_solver must be deterministic and sde_solver stochastic, e.g. "
                         "Heun() and EulerMaruyama().")
    key_init, key_sde, key_res = jax.random.split(key, 3)
    if x_init is None:
        if shape is None:
            raise ValueError("give shape=(n, *data_shape) or x_init.")
        x_init = process.prior_sample(key_init, tuple(shape))
    x_init = jnp.asarray(x_init)

    def run(solver, steps, k):
        return np.asarray(_sample(_as_argument(model_fn), process, solver, x_init, k,
                                  prediction=Prediction.parse(prediction), num_steps=steps,
                                  t_start=float(t_start), t_end=float(t_end)))

    ode = run(ode_solver, ode_steps, key_sde)
    sde = run(sde_solver, sde_steps, key_sde)
    ode_u, sde_u = _flat(ode) / scale_data, _flat(sde) / scale_data
    sw = lambda a, b: sliced_wasserstein2(a, b, num_projections=num_projections)  # noqa: E731
    mm = lambda a, b: mmd(a, b, bandwidths=mmd_bandwidths)  # noqa: E731
    nan = float("nan")
    if data is not None:
        data_u = _flat(data) / scale_data
        to_data = (sw(ode_u, data_u), sw(sde_u, data_u), mm(ode_u, data_u), mm(sde_u, data_u))
        x0 = jnp.asarray(np.asarray(data), x_init.dtype)
    else:
        to_data = (nan,) * 4
        x0 = jnp.asarray(ode)
    rms = residual_profile(model_fn, process, x0, key=key_res, prediction=prediction,
                           times=residual_times, num_points=residual_points,
                           divergence=divergence, scale=scale, log_density_fn=log_density_fn)
    return OdeSdeGap(
        sw2_ode_sde=sw(ode_u, sde_u), mmd_ode_sde=mm(ode_u, sde_u),
        sw2_ode_data=to_data[0], sw2_sde_data=to_data[1],
        mmd_ode_data=to_data[2], mmd_sde_data=to_data[3],
        residual_times=np.asarray(residual_times, np.float64), residual_rms=rms,
        residual_mean=float(np.mean(rms)), ode=ode, sde=sde,
    )
