"""EDM path and preconditioning against closed forms written out here (Karras et al. 2022).

Path: alpha_t = 1, sigma_t = (0.002^(1/7) + t (80^(1/7) - 0.002^(1/7)))^7; EDM's grid
s_i = (80^(1/7) + i/(N-1) (0.002^(1/7) - 80^(1/7)))^7. Preconditioning (sigma_d = 0.5):
c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _closed_forms import (
    T_GRID,
    call,
    check_derivatives_and_inverse,
    check_fokker_planck,
    check_mixture_sampling,
    check_prior,
    check_sample_xt,
    check_sde_generic,
    results,
)
from genflow import samplers
from genflow.processes import (
    EDM,
    VPLinear,
    edm_coefficients,
    edm_loss_weight,
    edm_precondition,
)

SMIN, SMAX, RHO = 0.002, 80.0, 7.0


def coefs(t, xp=np, smin=SMIN, smax=SMAX, rho=RHO):
    lo, hi = smin ** (1 / rho), smax ** (1 / rho)
    return xp.ones_like(t), (lo + t * (hi - lo)) ** rho


def edm_grid(n):
    """EDM's own step sizes s_0 > ... > s_{N-1} (before the final 0)."""
    i = np.arange(n)
    return (SMAX ** (1 / RHO) + i / (n - 1) * (SMIN ** (1 / RHO) - SMAX ** (1 / RHO))) ** RHO


PROC = EDM()


def test_marginal_derivative_log_snr_and_inverse():
    r = check_derivatives_and_inverse(PROC, coefs, rtol=1e-11)
    np.testing.assert_allclose(r["log_snr"], -np.log(coefs(T_GRID)[1]), rtol=1e-12, atol=1e-13)


def test_non_default_hyperparameters():
    check_derivatives_and_inverse(EDM(0.01, 10.0, 3.0), lambda t, xp=np: coefs(t, xp, 0.01, 10.0, 3.0),
                                  rtol=1e-11)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_boundary_values(dtype):
    t = jnp.asarray([0.0, 1.0], dtype)
    alpha, sigma = call(PROC, t, "marginal")
    assert alpha.dtype == dtype and sigma.dtype == dtype
    assert np.all(np.asarray(alpha) == 1.0)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-13
    np.testing.assert_allclose(np.asarray(sigma, np.float64), [SMIN, SMAX], rtol=rtol)
    back = call(PROC, call(PROC, t, "log_snr"), "t_from_log_snr")
    np.testing.assert_allclose(np.asarray(back, np.float64), [0.0, 1.0], atol=1e-5)


@pytest.mark.parametrize("n", [18])
def test_uniform_grid_in_t_is_the_edm_grid(n):
    ts = samplers.uniform(PROC, 1.0, 0.0, n - 1)
    _, sigma = PROC.marginal(ts)
    np.testing.assert_allclose(np.asarray(sigma), edm_grid(n), rtol=1e-12)
    # The Karras grid (placed on exp(-lambda) = sigma) is the same grid.
    np.testing.assert_allclose(np.asarray(samplers.karras(PROC, 1.0, 0.0, n - 1)), np.asarray(ts),
                               atol=1e-13)


def test_sde_closed_form():
    f, g2 = results(PROC, coefs)["sde"]
    assert np.all(f == 0)
    lo, hi = SMIN ** (1 / RHO), SMAX ** (1 / RHO)
    root = lo + T_GRID * (hi - lo)
    np.testing.assert_allclose(g2, 2 * root**RHO * RHO * root ** (RHO - 1) * (hi - lo), rtol=1e-12)
    check_sde_generic(PROC, coefs)


def test_fokker_planck_variance_ode():
    check_fokker_planck(PROC, coefs, v0=(1e-4, 3.0), n=4000)


def test_sample_xt_moments():
    check_sample_xt(PROC, coefs)


def test_prior_is_sigma_max():
    check_prior(PROC, SMAX)


@pytest.mark.parametrize("kw", [dict(sigma_min=0.0), dict(sigma_min=100.0),
                                dict(rho=0.0), dict(rho=-7.0)])
def test_invalid_hyperparameters_raise(kw):
    with pytest.raises(ValueError, match="EDM needs"):
        EDM(**kw)


# --------------------------------------------------------------------------- preconditioning
def test_edm_coefficients_and_loss_weight():
    s = np.array([0.002, 0.1, 0.5, 1.0, 80.0])
    c_skip, c_out, c_in, c_noise = (np.asarray(c) for c in edm_coefficients(s))
    np.testing.assert_allclose(c_skip, 0.25 / (s**2 + 0.25), rtol=1e-14)
    np.testing.assert_allclose(c_out, s * 0.5 / np.sqrt(s**2 + 0.25), rtol=1e-14)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s**2 + 0.25), rtol=1e-14)
    np.testing.assert_allclose(c_noise, np.log(s) / 4, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(edm_loss_weight(s)), (s**2 + 0.25) / (0.5 * s) ** 2,
                               rtol=1e-14)
    # Unit-variance target: c_skip^2 sd^2 ... the optimal-target variance c_skip^2 s^2/c_out^2 +
    # (1 - c_skip)^2 sd^2 / c_out^2 = 1 (Karras et al., Appendix B.6).
    np.testing.assert_allclose((c_skip**2 * s**2 + (1 - c_skip) ** 2 * 0.25) / c_out**2, 1.0,
                               rtol=1e-12)


@pytest.mark.parametrize("proc", [EDM(), VPLinear()], ids=["edm", "vp"])
def test_edm_precondition_wraps_raw_fn(proc):
    """D = c_skip y + c_out F(c_in y, c_noise, cond) with y = x/alpha, s = sigma/alpha."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 2))
    t = np.array([0.05, 0.5, 1.0])
    cond = rng.normal(size=(3, 2, 2))

    def raw_fn(x_in, c_noise, c):
        return x_in * c_noise[:, None, None] + c

    got = np.asarray(jax.jit(edm_precondition(raw_fn, proc))(jnp.asarray(x), jnp.asarray(t), cond))
    if isinstance(proc, EDM):
        alpha, sigma = coefs(t)
    else:  # VP linear: log alpha = -t^2 19.9/4 - t 0.05
        alpha = np.exp(-(t**2) * 19.9 / 4 - 0.05 * t)
        sigma = np.sqrt(1 - alpha**2)
    s = (sigma / alpha)[:, None, None]
    y = x / alpha[:, None, None]
    expected = (0.25 / (s**2 + 0.25) * y
                + s * 0.5 / np.sqrt(s**2 + 0.25) * (y / np.sqrt(s**2 + 0.25) * np.log(s) / 4 + cond))
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_edm_precondition_zero_network_is_the_gaussian_posterior_mean():
    """For data N(0, sd^2 I) the optimal denoiser is c_skip y, i.e. F = 0 (Karras et al. B.6)."""
    x = np.random.default_rng(1).normal(size=(4, 3)) * 20
    t = np.linspace(0.0, 1.0, 4)
    model = edm_precondition(lambda x_in, c_noise, c: jnp.zeros_like(x_in), PROC)
    got = np.asarray(model(jnp.asarray(x), jnp.asarray(t)))
    sigma = coefs(t)[1][:, None]
    np.testing.assert_allclose(got, 0.25 / (0.25 + sigma**2) * x, rtol=1e-12)


def test_mixture_sampling_heun_and_dpm_solver():
    check_mixture_sampling(PROC, coefs, t_start=1.0, t_end=0.0, heun_steps=100, dpm_steps=100)
