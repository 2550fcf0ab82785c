"""Time grids: pure functions ``grid(process, t_start, t_end, num_steps) -> (num_steps + 1,)``.

All grids run from ``t_start`` (noisy) down to ``t_end`` and are computed in float32 or
better, whatever precision the network uses.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from genflow.processes._base import AbstractGaussianPath


def _time_dtype():
    return jnp.result_type(float)  # float64 under jax_enable_x64, else float32


def uniform(
    process: AbstractGaussianPath | None, t_start: float, t_end: float, num_steps: int
) -> Float[Array, "n+1"]:
    """Uniform in ``t``."""
    return jnp.linspace(t_start, t_end, num_steps + 1, dtype=_time_dtype())


def quadratic(
    process: AbstractGaussianPath | None, t_start: float, t_end: float, num_steps: int
) -> Float[Array, "n+1"]:
    """Uniform in ``sqrt(t)`` (DPM-Solver's ``time_quadratic``): denser near the data."""
    r = jnp.linspace(jnp.sqrt(t_start), jnp.sqrt(t_end), num_steps + 1, dtype=_time_dtype())
    # Pin the end points exactly: sqrt(t)^2 is t only to round-off.
    return (r**2).at[0].set(t_start).at[-1].set(t_end)


def log_snr_uniform(
    process: AbstractGaussianPath, t_start: float, t_end: float, num_steps: int
) -> Float[Array, "n+1"]:
    """Uniform in half log-SNR ``lambda_t`` (DPM-Solver's ``logSNR`` grid)."""
    dtype = _time_dtype()
    lam = jnp.linspace(
        process.log_snr(jnp.asarray(t_start, dtype)),
        process.log_snr(jnp.asarray(t_end, dtype)),
        num_steps + 1,
    )
    ts = process.t_from_log_snr(lam)
    # Pin the end points exactly: the inverse is exact only to round-off.
    return ts.at[0].set(t_start).at[-1].set(t_end)


def karras(
    process: AbstractGaussianPath,
    t_start: float,
    t_end: float,
    num_steps: int,
    rho: float = 7.0,
) -> Float[Array, "n+1"]:
    """Karras et al. (2022): uniform in ``s^(1/rho)`` with ``s = sigma_t / alpha_t = exp(-lambda_t)``.

    For VE and EDM paths ``s`` is the usual noise level ``sigma``; for any other Gaussian
    path the grid is placed on the equivalent noise level of the rescaled process.
    """
    dtype = _time_dtype()
    s_max = jnp.exp(-process.log_snr(jnp.asarray(t_start, dtype)))
    s_min = jnp.exp(-process.log_snr(jnp.asarray(t_end, dtype)))
    i = jnp.arange(num_steps + 1, dtype=dtype) / num_steps
    s = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    ts = process.t_from_log_snr(-jnp.log(s))
    return ts.at[0].set(t_start).at[-1].set(t_end)
