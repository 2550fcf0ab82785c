"""Sub-VP against closed forms written out here (Song et al. 2021, score_sde's ``subVPSDE``).

B(t) = int_0^t beta = 0.1 t + 19.9 t^2 / 2, alpha_t = exp(-B/2), sigma_t = 1 - exp(-B);
SDE f = -beta/2, g^2 = beta (1 - exp(-2B)).
"""

import math

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
from genflow.processes import SubVP, VPLinear


def big_b(t, beta_min=0.1, beta_max=20.0):
    return beta_min * t + 0.5 * (beta_max - beta_min) * t**2


def coefs(t, xp=np):
    b = big_b(t)
    return xp.exp(-0.5 * b), -xp.expm1(-b)


PROC = SubVP()


def test_marginal_derivative_log_snr_and_inverse():
    r = check_derivatives_and_inverse(PROC, coefs)
    np.testing.assert_allclose(r["marginal"][1], 1 - r["marginal"][0] ** 2, rtol=1e-9)


def test_non_default_hyperparameters():
    def coefs2(t, xp=np):
        b = big_b(t, 0.5, 7.0)
        return xp.exp(-0.5 * b), -xp.expm1(-b)

    check_derivatives_and_inverse(SubVP(beta_min=0.5, beta_max=7.0), coefs2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_boundary_values(dtype):
    t = jnp.asarray([0.0, 1.0], dtype)
    (a0, a1), (s0, s1) = call(PROC, t, "marginal")
    assert a0.dtype == dtype
    assert float(a0) == 1.0 and float(s0) == 0.0
    rtol = 1e-6 if dtype == jnp.float32 else 1e-13
    np.testing.assert_allclose(float(a1), math.exp(-5.025), rtol=rtol)
    np.testing.assert_allclose(float(s1), 1 - math.exp(-10.05), rtol=rtol)
    lam = call(PROC, t, "log_snr")
    assert float(lam[0]) == math.inf
    np.testing.assert_allclose(float(lam[1]), -5.025 - math.log1p(-math.exp(-10.05)), rtol=rtol)
    # The inverse maps the ends back, +inf to 0 exactly.
    back = call(PROC, jnp.asarray([math.inf, float(lam[1])], dtype), "t_from_log_snr")
    assert float(back[0]) == 0.0
    np.testing.assert_allclose(float(back[1]), 1.0, rtol=1e-5 if dtype == jnp.float32 else 1e-12)


def test_float32_near_data_and_inverse():
    t32 = np.geomspace(1e-6, 1.0, 121).astype(np.float32)
    alpha, sigma = call(PROC, jnp.asarray(t32), "marginal")
    a_ref, s_ref = coefs(t32.astype(np.float64))
    np.testing.assert_allclose(np.asarray(sigma, np.float64), s_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(alpha, np.float64), a_ref, rtol=1e-6)
    lam32 = (np.log(a_ref) - np.log(s_ref)).astype(np.float32)
    back = np.asarray(call(PROC, jnp.asarray(lam32), "t_from_log_snr"), np.float64)
    assert back.dtype == np.float64 and np.all(np.isfinite(back))
    np.testing.assert_allclose(back, t32, rtol=2e-4)  # float32 lambda carries ~1e-7 relative


def test_sde_is_score_sde_subvp():
    f, g2 = results(PROC, coefs)["sde"]
    beta = 0.1 + 19.9 * T_GRID
    np.testing.assert_allclose(f, -beta / 2, rtol=1e-13)
    np.testing.assert_allclose(g2, beta * -np.expm1(-2 * big_b(T_GRID)), rtol=1e-12)
    check_sde_generic(PROC, coefs)
    f0, g20 = call(PROC, np.zeros(1), "sde")
    assert float(f0[0]) == -0.05 and float(g20[0]) == 0.0


def test_fokker_planck_variance_ode():
    check_fokker_planck(PROC, coefs)


def test_sample_xt_moments():
    check_sample_xt(PROC, coefs)


def test_prior():
    a1, s1 = coefs(1.0)
    check_prior(PROC, math.sqrt(a1**2 + s1**2))


@pytest.mark.parametrize("kw", [dict(beta_min=-0.1), dict(beta_min=5.0, beta_max=1.0),
                                dict(beta_min=1.0, beta_max=1.0)])
def test_invalid_hyperparameters_raise(kw):
    with pytest.raises(ValueError, match="SubVP needs"):
        SubVP(**kw)


def test_pytree_structure_differs_from_vp():
    """Same field names and count as VPLinear: a jitted function must not mix them up."""
    ts = jax.tree_util.tree_structure
    assert ts(SubVP(0.1, 20.0)) == ts(SubVP(0.3, 7.0))
    assert ts(SubVP()) != ts(VPLinear())
    assert jax.tree_util.tree_leaves(SubVP(0.1, 20.0)) == [0.1, 20.0]
    t = jnp.asarray([0.5])
    sig_sub = call(SubVP(), t, "marginal")[1]
    sig_vp = call(VPLinear(), t, "marginal")[1]
    np.testing.assert_allclose(sig_sub, coefs(np.array([0.5]))[1], rtol=1e-13)
    assert abs(float(sig_sub[0] - sig_vp[0])) > 1e-3


def test_mixture_sampling_heun_and_dpm_solver():
    check_mixture_sampling(PROC, coefs, t_start=1.0, t_end=1e-3, heun_steps=50, dpm_steps=100)
