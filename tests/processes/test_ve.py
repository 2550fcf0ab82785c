"""VE against closed forms written out here (Song et al. 2021, score_sde's ``VESDE``).

alpha_t = 1, sigma_t = 0.01 * 5000^t (sigma_min = 0.01, sigma_max = 50), f = 0,
g^2 = d sigma^2/dt = 2 log(5000) sigma_t^2, prior N(0, 50^2).
"""

import math

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
from genflow.processes import VE

LOG_R = math.log(50.0 / 0.01)


def coefs(t, xp=np):
    return xp.ones_like(t), 0.01 * xp.exp(LOG_R * t)


PROC = VE()


def test_marginal_derivative_log_snr_and_inverse():
    r = check_derivatives_and_inverse(PROC, coefs)
    # Linear in t (finite at t = 0 too: see test_boundary_values).
    lam_ref = -math.log(0.01) - LOG_R * T_GRID
    np.testing.assert_allclose(r["log_snr"], lam_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(r["t_closed"], T_GRID, rtol=1e-12, atol=1e-15)


def test_non_default_hyperparameters():
    def coefs2(t, xp=np):
        return xp.ones_like(t), 0.1 * xp.exp(math.log(20.0) * t)

    check_derivatives_and_inverse(VE(sigma_min=0.1, sigma_max=2.0), coefs2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_boundary_values(dtype):
    t = jnp.asarray([0.0, 1.0], dtype)
    alpha, sigma = call(PROC, t, "marginal")
    assert alpha.dtype == dtype and sigma.dtype == dtype
    assert np.all(np.asarray(alpha) == 1.0)
    # float32: sigma_1 = 0.01 exp(float32(log 5000)); rounding the argument 8.52 costs 3.5e-7
    # relative on every machine, exp and the product at most ~3 ulp more (3.6e-7): within 1e-6.
    rtol = 1e-6 if dtype == jnp.float32 else 1e-14
    np.testing.assert_allclose(np.asarray(sigma, np.float64), [0.01, 50.0], rtol=rtol)
    lam = call(PROC, t, "log_snr")
    assert lam.dtype == dtype
    np.testing.assert_allclose(np.asarray(lam, np.float64), [-math.log(0.01), -math.log(50.0)],
                               rtol=rtol)
    back = call(PROC, lam, "t_from_log_snr")
    np.testing.assert_allclose(np.asarray(back, np.float64), [0.0, 1.0], atol=1e-6)


def test_sde_closed_form():
    f, g2 = results(PROC, coefs)["sde"]
    assert np.all(f == 0)
    np.testing.assert_allclose(g2, 2 * LOG_R * (0.01 * np.exp(LOG_R * T_GRID)) ** 2, rtol=1e-13)
    check_sde_generic(PROC, coefs)


def test_fokker_planck_variance_ode():
    # The variance grows from v0 + sigma_min^2 to v0 + sigma_max^2 (a factor 2.5e7 for v0 = 1e-4).
    check_fokker_planck(PROC, coefs, v0=(1e-4, 3.0), n=4000)


def test_sample_xt_moments():
    check_sample_xt(PROC, coefs)


def test_prior_is_sigma_max():
    check_prior(PROC, 50.0)
    check_prior(VE(0.1, 7.0), 7.0)


def test_log_snr_uniform_grid_is_the_uniform_grid():
    ts = np.asarray(samplers.log_snr_uniform(PROC, 1.0, 0.0, 8))
    np.testing.assert_allclose(ts, np.linspace(1.0, 0.0, 9), atol=1e-14)


@pytest.mark.parametrize("kw", [dict(sigma_min=0.0), dict(sigma_min=-1.0),
                                dict(sigma_min=5.0, sigma_max=1.0), dict(sigma_max=0.01)])
def test_invalid_hyperparameters_raise(kw):
    with pytest.raises(ValueError, match="VE needs"):
        VE(**kw)


def test_mixture_sampling_heun_and_dpm_solver():
    check_mixture_sampling(PROC, coefs, t_start=1.0, t_end=0.0, heun_steps=100, dpm_steps=50)
