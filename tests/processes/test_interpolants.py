"""Rectified flow and Gaussian-base stochastic interpolants against closed forms written here.

The interpolants are transcribed in the *paper's* convention (Albergo, Boffi, Vanden-Eijnden
2023): time s, base x_b ~ N(0, I) at s = 0, data at s = 1, x_s = a(s) x_b + b(s) x_d + gamma(s) z;
linear a = 1 - s, b = s; trig a = sqrt(1 - gamma^2) cos(pi s/2), b = sqrt(1 - gamma^2) sin(pi s/2);
encdec a = cos^2(pi s) [s < 1/2], b = cos^2(pi s) [s > 1/2]; gamma^2 = 0, A s(1-s), (s(1-s))^2,
sin^4(pi s). genflow's path is then alpha_t = b(1 - t), sigma_t = sqrt(a(1 - t)^2 + gamma^2(1 - t)).
"""

import functools
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
)
from genflow import samplers
from genflow.processes import GaussianInterpolant, RectifiedFlow


@functools.lru_cache(maxsize=None)  # one function per configuration: memoized checks reuse it
def paper_coefs(interpolant, gamma, A=1.0):
    def gamma2(s, xp):
        return {"zero": 0.0 * s, "sqrt": A * s * (1 - s), "quadratic": (s * (1 - s)) ** 2,
                "sin2": xp.sin(math.pi * s) ** 4}[gamma]

    def coefs(t, xp=np):
        s = 1.0 - t
        g2 = gamma2(s, xp)
        if interpolant == "linear":
            a, b = 1 - s, s
        elif interpolant == "trig":
            a = xp.sqrt(1 - g2) * xp.cos(math.pi * s / 2)
            b = xp.sqrt(1 - g2) * xp.sin(math.pi * s / 2)
        else:
            c2 = xp.cos(math.pi * s) ** 2
            a, b = xp.where(s < 0.5, c2, 0.0), xp.where(s > 0.5, c2, 0.0)
        return b, xp.sqrt(a**2 + g2)

    return coefs


CONFIGS = [("linear", g) for g in ("zero", "sqrt", "quadratic", "sin2")]
CONFIGS += [("trig", g) for g in ("zero", "sqrt", "quadratic")]
CONFIGS += [("encdec", g) for g in ("sqrt", "quadratic", "sin2")]
IDS = [f"{i}-{g}" for i, g in CONFIGS]


def rf_coefs(t, xp=np):
    return 1.0 - t, t + 0.0 * t


def t_noise(interpolant):
    return 0.5 if interpolant == "encdec" else 1.0


# --------------------------------------------------------------------------- rectified flow
def test_rf_closed_forms():
    r = check_derivatives_and_inverse(RectifiedFlow(), rf_coefs)
    np.testing.assert_allclose(r["t_closed"], T_GRID, rtol=1e-13)
    f, g2 = r["sde"]
    np.testing.assert_allclose(f[T_GRID < 1], -1 / (1 - T_GRID[T_GRID < 1]), rtol=1e-13)
    np.testing.assert_allclose(g2[T_GRID < 1], 2 * T_GRID[T_GRID < 1] / (1 - T_GRID[T_GRID < 1]),
                               rtol=1e-12)
    check_sde_generic(RectifiedFlow(), rf_coefs, mask=T_GRID < 1)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rf_ends_are_exact(dtype):
    """lambda(0) = +inf, lambda(1) = -inf without NaN, and the inverse maps them back."""
    t = jnp.asarray([0.0, 1.0], dtype)
    (a0, a1), (s0, s1) = call(RectifiedFlow(), t, "marginal")
    assert a0.dtype == dtype
    assert (float(a0), float(s0), float(a1), float(s1)) == (1.0, 0.0, 0.0, 1.0)
    lam = call(RectifiedFlow(), t, "log_snr")
    assert (float(lam[0]), float(lam[1])) == (math.inf, -math.inf)
    back = call(RectifiedFlow(), lam, "t_from_log_snr")
    assert (float(back[0]), float(back[1])) == (0.0, 1.0)
    # Velocity coefficients are finite at both ends; D = alpha sigma' - sigma alpha' = 1.
    (da, ds) = call(RectifiedFlow(), t, "marginal_derivative")
    assert np.all(np.asarray(da) == -1.0) and np.all(np.asarray(ds) == 1.0)


def test_rf_fokker_planck_sample_xt_and_prior():
    check_fokker_planck(RectifiedFlow(), rf_coefs, t1=0.99)
    check_sample_xt(RectifiedFlow(), rf_coefs)
    check_prior(RectifiedFlow(), 1.0)


def test_rf_is_the_linear_interpolant_without_latent_noise():
    t = np.linspace(0.0, 1.0, 11)
    got = call(GaussianInterpolant("linear", "zero"), t, "marginal")
    np.testing.assert_allclose(np.asarray(got), np.asarray(rf_coefs(t)), rtol=1e-15)
    ts = jax.tree_util.tree_structure
    assert ts(RectifiedFlow()) != ts(GaussianInterpolant("linear", "zero"))


def test_rf_mixture_sampling():
    check_mixture_sampling(RectifiedFlow(), rf_coefs, t_start=0.999, t_end=1e-3,
                           heun_steps=50, dpm_steps=100)


# --------------------------------------------------------------------------- interpolants
@pytest.mark.parametrize("interpolant,gamma", CONFIGS, ids=IDS)
def test_interpolant_closed_forms(interpolant, gamma):
    proc, coefs = GaussianInterpolant(interpolant, gamma), paper_coefs(interpolant, gamma)
    r = check_derivatives_and_inverse(proc, coefs, rtol=1e-9)
    inside = T_GRID < t_noise(interpolant)
    # The base-class bisection is at float64 round-off, not just at the 1e-6 of the check.
    np.testing.assert_allclose(r["t_bisect"][inside], T_GRID[inside], rtol=1e-11)
    check_sde_generic(proc, coefs, mask=inside, rtol=1e-7)
    if interpolant == "encdec":  # data forgotten on [1/2, 1]
        assert np.all(r["marginal"][0][~inside] == 0) and np.all(r["log_snr"][~inside] == -np.inf)
    if interpolant == "trig":  # variance preserving
        np.testing.assert_allclose(r["marginal"][0] ** 2 + r["marginal"][1] ** 2, 1.0, atol=1e-14)


def test_interpolant_non_default_a():
    for interpolant, A in [("linear", 5.0), ("trig", 3.4), ("encdec", 0.3)]:
        check_derivatives_and_inverse(GaussianInterpolant(interpolant, "sqrt", A),
                                      paper_coefs(interpolant, "sqrt", A), rtol=1e-9)


@pytest.mark.parametrize("interpolant,gamma", [("linear", "sqrt"), ("trig", "quadratic"),
                                               ("encdec", "sin2")])
def test_interpolant_fokker_planck(interpolant, gamma):
    check_fokker_planck(GaussianInterpolant(interpolant, gamma), paper_coefs(interpolant, gamma),
                        t1=0.99 * t_noise(interpolant), n=1000, rtol=1e-7)


@jax.jit
def _ends(t):  # every configuration in one compilation
    procs = [GaussianInterpolant(i, g) for i, g in CONFIGS]
    return [(p.marginal(t), p.log_snr(t), p.marginal_derivative(t)[1][0]) for p in procs]


def test_interpolant_boundary_values_and_prior():
    for (interpolant, gamma), out in zip(CONFIGS, _ends(np.array([0.0, 0.5, 1.0]))):
        (alpha, sigma), lam, ds0 = jax.tree_util.tree_map(np.asarray, out)
        assert alpha[0] == 1.0 and sigma[0] == 0.0 and alpha[2] == 0.0, (interpolant, gamma)
        np.testing.assert_allclose(sigma[2], 1.0, rtol=1e-15)
        assert lam[0] == np.inf and lam[2] == -np.inf
        # sigma'(0) = sqrt(b'(0)^2 + gamma'(0)^2); infinite for gamma = sqrt(a t (1-t)).
        b1 = {"linear": 1.0, "trig": math.pi / 2, "encdec": 0.0}[interpolant]
        g1 = {"zero": 0.0, "sqrt": math.inf, "quadratic": 1.0, "sin2": 0.0}[gamma]
        np.testing.assert_allclose(ds0, math.hypot(b1, g1), rtol=1e-14)
    enc = GaussianInterpolant("encdec", "sqrt", 0.64)  # sigma_{1/2} = gamma(1/2) = 0.8/2
    check_prior(enc, 0.4)
    check_prior(GaussianInterpolant("trig", "sqrt"), 1.0)


@jax.jit
def _all_float32(t):  # every configuration, float32 in and out, one compilation
    procs = [GaussianInterpolant(i, g) for i, g in CONFIGS] + [RectifiedFlow()]
    return [(p.marginal(t), p.log_snr(t)) for p in procs]


def test_float32_marginals_and_log_snr():
    t32 = np.concatenate([np.geomspace(1e-6, 1.0, 61), np.linspace(0.0, 1.0, 41)]).astype(np.float32)
    t64 = t32.astype(np.float64)  # references at the float32-rounded times
    for (interpolant, gamma), ((alpha, sigma), lam) in zip(CONFIGS + [("rf", "")],
                                                           _all_float32(t32)):
        assert alpha.dtype == sigma.dtype == lam.dtype == jnp.float32
        coefs = rf_coefs if interpolant == "rf" else paper_coefs(interpolant, gamma)
        a_ref, s_ref = coefs(t64)
        np.testing.assert_allclose(np.asarray(alpha, np.float64), a_ref, rtol=2e-6, atol=2e-7)
        np.testing.assert_allclose(np.asarray(sigma, np.float64), s_ref, rtol=2e-6, atol=1e-15)
        lam = np.asarray(lam, np.float64)
        live = (t64 > 0) & (t64 < t_noise(interpolant))
        assert not np.any(np.isnan(lam)), (interpolant, gamma)
        assert np.all(lam[t64 == 0] == np.inf) and np.all(lam[t64 >= t_noise(interpolant)] == -np.inf)
        np.testing.assert_allclose(lam[live], np.log(a_ref[live] / s_ref[live]), rtol=1e-5, atol=1e-5)


def test_interpolant_sample_xt():
    check_sample_xt(GaussianInterpolant("trig", "sqrt"), paper_coefs("trig", "sqrt"))


@pytest.mark.parametrize(
    "kw",
    [dict(interpolant="cubic"), dict(gamma="brownian"), dict(interpolant="encdec", gamma="zero"),
     dict(interpolant="trig", gamma="sin2"), dict(gamma="sqrt", a=0.0),
     dict(interpolant="trig", gamma="sqrt", a=3.5)],
)
def test_invalid_interpolants_raise(kw):
    with pytest.raises(ValueError):
        GaussianInterpolant(**kw)


def test_interpolant_pytree():
    ts = jax.tree_util.tree_structure
    assert ts(GaussianInterpolant("trig", "sqrt", 1.0)) == ts(GaussianInterpolant("trig", "sqrt", 2.0))
    assert ts(GaussianInterpolant("trig", "sqrt")) != ts(GaussianInterpolant("linear", "sqrt"))
    assert jax.tree_util.tree_leaves(GaussianInterpolant("trig", "sqrt", 2.0)) == [2.0]


@pytest.mark.parametrize("interpolant,gamma,t_start", [("trig", "sqrt", 0.999),
                                                       ("encdec", "sin2", 0.499)])
def test_interpolant_mixture_sampling(interpolant, gamma, t_start):
    check_mixture_sampling(GaussianInterpolant(interpolant, gamma), paper_coefs(interpolant, gamma),
                           t_start=t_start, t_end=1e-3, heun_steps=50, dpm_steps=100)


def test_log_snr_grids_start_below_the_infinite_end():
    """lambda_1 = -inf: log-SNR grids are built from t_start < 1 (see the module notes)."""
    ts = np.asarray(samplers.log_snr_uniform(RectifiedFlow(), 0.999, 1e-3, 10))
    assert np.all(np.isfinite(ts)) and np.all(np.diff(ts) < 0)
    lam = np.log1p(-ts) - np.log(ts)
    np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 10, rtol=1e-9)
