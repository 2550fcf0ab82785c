"""Shared checks for Gaussian-path tests (not a test module).

Every check compares a process with closed forms ``coefs(t, xp) -> (alpha_t, sigma_t)`` written
out by hand in the calling test file (``xp`` is numpy for float64 truth, or jax.numpy for
``jax.jvp``); nothing here derives a reference value from the code under test.

* :func:`evaluate`: every method of a process on a grid, one compilation per process structure.
* :func:`check_fokker_planck`: ``dVar/dt = 2 f Var + g^2`` integrated by classic RK4 in numpy.
* :func:`check_sample_xt`: moments of ``sample_xt`` within a few standard errors.
* :class:`Mixture` and :func:`check_mixture_sampling`: a 2-D Gaussian mixture with its exact
  eps model, sampled through ``genflow.samplers.sample`` with Heun and DPM-Solver++(2M).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from genflow import samplers
from genflow.processes import AbstractGaussianPath

T_GRID = np.unique(np.concatenate([np.geomspace(1e-5, 1.0, 150), np.linspace(1e-5, 1.0, 151)]))


@partial(jax.jit, static_argnames="method")
def call(proc, t, method):
    return getattr(proc, method)(t)


@jax.jit
def evaluate(proc, t, lam_ext):
    """Every method on ``t``; ``base_derivative`` and ``t_bisect`` are the AbstractGaussianPath
    defaults (autodiff, bisection), bypassing the closed forms. ``lam_ext`` is a log-SNR computed
    by the caller's closed forms, to invert."""
    lam = proc.log_snr(t)
    return dict(
        marginal=proc.marginal(t),
        derivative=proc.marginal_derivative(t),
        base_derivative=AbstractGaussianPath.marginal_derivative(proc, t),
        log_snr=lam,
        t_closed=proc.t_from_log_snr(lam),
        t_bisect=AbstractGaussianPath.t_from_log_snr(proc, lam),
        t_ext=proc.t_from_log_snr(lam_ext),
        sde=proc.sde(t),
    )


_CACHE = {}


def results(proc, coefs, t=T_GRID):
    """:func:`evaluate` as numpy arrays (memoized per process, closed form and grid)."""
    key = ("results", proc, coefs, t.tobytes())
    if key not in _CACHE:
        a, s = coefs(t, np)
        with np.errstate(divide="ignore"):
            lam = np.log(a) - np.log(s)
        _CACHE[key] = jax.tree_util.tree_map(np.asarray, evaluate(proc, t, lam))
    return _CACHE[key]


def jvp_closed(coefs, t):
    """``(alpha', sigma')`` by forward-mode autodiff of the closed forms (jax.numpy)."""
    key = ("jvp", coefs, t.tobytes())
    if key not in _CACHE:
        t_j = jnp.asarray(t)  # eager: the op compilations are shared by every closed form
        tangents = jax.jvp(lambda tt: coefs(tt, jnp), (t_j,), (jnp.ones_like(t_j),))[1]
        _CACHE[key] = tuple(np.asarray(v) for v in tangents)
    return _CACHE[key]


def check_derivatives_and_inverse(proc, coefs, t=T_GRID, rtol_t=1e-6, rtol_d=1e-9, rtol=1e-12):
    """Marginals, derivatives (jvp of closed forms and of the process), log-SNR, inverse."""
    r = results(proc, coefs, t)
    a_ref, s_ref = coefs(t, np)
    np.testing.assert_allclose(r["marginal"][0], a_ref, rtol=rtol, atol=1e-300)
    np.testing.assert_allclose(r["marginal"][1], s_ref, rtol=rtol, atol=1e-300)
    da_ref, ds_ref = (np.asarray(v) for v in jvp_closed(coefs, t))
    np.testing.assert_allclose(r["derivative"][0], da_ref, rtol=rtol_d, atol=1e-12)
    np.testing.assert_allclose(r["derivative"][1], ds_ref, rtol=rtol_d, atol=1e-12)
    np.testing.assert_allclose(r["base_derivative"][0], da_ref, rtol=rtol_d, atol=1e-12)
    np.testing.assert_allclose(r["base_derivative"][1], ds_ref, rtol=rtol_d, atol=1e-12)
    finite = (a_ref > 0) & (s_ref > 0)
    lam_ref = np.log(a_ref[finite]) - np.log(s_ref[finite])
    np.testing.assert_allclose(r["log_snr"][finite], lam_ref, rtol=1e-10, atol=1e-10)
    assert np.all(np.diff(r["log_snr"][finite]) < 0), "log-SNR must decrease strictly"
    for key in ("t_closed", "t_bisect", "t_ext"):
        np.testing.assert_allclose(r[key][finite], t[finite], rtol=rtol_t, atol=1e-15, err_msg=key)
    return r


def check_sde_generic(proc, coefs, mask=None, rtol=1e-8):
    """``f = alpha'/alpha`` and ``g^2 = 2 sigma sigma' - 2 f sigma^2`` from the closed forms,
    on ``T_GRID[mask]`` (all of it by default)."""
    mask = np.ones(T_GRID.shape, bool) if mask is None else mask
    r = results(proc, coefs)
    a, s = (v[mask] for v in coefs(T_GRID, np))
    da, ds = (np.asarray(v)[mask] for v in jvp_closed(coefs, T_GRID))
    f_ref = da / a
    g2_ref = 2 * s * ds - 2 * f_ref * s**2
    f, g2 = (v[mask] for v in r["sde"])
    np.testing.assert_allclose(f, f_ref, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(g2, g2_ref, rtol=rtol, atol=1e-12)
    assert np.all(g2 >= 0)
    return f, g2


def check_fokker_planck(proc, coefs, v0=(0.3, 3.0), t0=0.0, t1=1.0, n=2000, rtol=1e-8):
    """``d Var/dt = 2 f Var + g^2`` from ``Var(t0) = alpha^2 v0 + sigma^2`` by classic RK4
    (numpy, ``n`` steps) reproduces ``alpha_t^2 v0 + sigma_t^2`` at three times in ``(t0, t1]``."""
    v0 = np.asarray(v0, np.float64)
    h = (t1 - t0) / n
    t_half = np.linspace(t0, t1, 2 * n + 1)
    f_all, g2_all = (np.asarray(a) for a in call(proc, t_half, "sde"))
    assert np.all(np.isfinite(f_all)) and np.all(np.isfinite(g2_all))
    a0, s0 = coefs(np.float64(t0), np)
    var, got = a0**2 * v0 + s0**2, {}
    for k in range(n):
        i = 2 * k
        k1 = 2 * f_all[i] * var + g2_all[i]
        v = var + 0.5 * h * k1
        k2 = 2 * f_all[i + 1] * v + g2_all[i + 1]
        v = var + 0.5 * h * k2
        k3 = 2 * f_all[i + 1] * v + g2_all[i + 1]
        v = var + h * k3
        k4 = 2 * f_all[i + 2] * v + g2_all[i + 2]
        var = var + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        got[k + 1] = var
    for frac in (0.3, 0.7, 1.0):
        k = round(frac * n)
        a, s = coefs(np.float64(t0 + k * h), np)
        np.testing.assert_allclose(got[k], a**2 * v0 + s**2, rtol=rtol, err_msg=f"t={t0 + k * h}")


def check_sample_xt(proc, coefs, ts=(0.05, 0.4, 0.9), n_per=20_000):
    """``sample_xt`` returns the noise that made ``x_t``, and moments ``(alpha x0, sigma^2)``."""
    ts = np.asarray(ts)
    t = np.repeat(ts, n_per)
    x0_row = np.array([1.5, -0.7])
    x0 = np.broadcast_to(x0_row, (t.shape[0], 2))
    xt, eps = (np.asarray(v) for v in proc.sample_xt(jax.random.key(0), x0, t))
    a_all, s_all = coefs(t, np)
    np.testing.assert_allclose(xt, a_all[:, None] * x0 + s_all[:, None] * eps, rtol=1e-12, atol=1e-12)
    for i, ti in enumerate(ts):
        block = xt[i * n_per : (i + 1) * n_per]
        a, s = coefs(ti, np)
        mean, var = block.mean(0), block.var(0, ddof=1)
        assert np.all(np.abs(mean - a * x0_row) < 5 * s / math.sqrt(n_per)), (ti, mean)
        assert np.all(np.abs(var - s**2) < 5 * s**2 * math.sqrt(2.0 / (n_per - 1))), (ti, var)


def check_prior(proc, std):
    """``prior_sample`` has standard deviation ``std``; ``prior_log_prob`` is its density."""
    x = np.asarray(proc.prior_sample(jax.random.key(2), (40_000,), jnp.float64))
    n = x.shape[0]
    assert x.dtype == np.float64
    assert abs(x.mean()) < 5 * std / math.sqrt(n)
    assert abs(x.var() / std**2 - 1.0) < 5 * math.sqrt(2 / n)
    pts = np.random.default_rng(0).normal(size=(4, 2, 3)) * std
    expected = -0.5 * np.sum(pts**2, axis=(1, 2)) / std**2 - 6 * np.log(std) - 3 * np.log(2 * np.pi)
    np.testing.assert_allclose(np.asarray(proc.prior_log_prob(jnp.asarray(pts))), expected, rtol=1e-12)


# --------------------------------------------------------------------------- Gaussian mixture
class Mixture:
    """``p_0 = sum_k w_k N(m_k, S_k)`` in 2-D, well separated (means 9+ standard deviations apart).

    Its marginal on a Gaussian path is ``p_t = sum_k w_k N(alpha m_k, C_k)`` with
    ``C_k = alpha^2 S_k + sigma^2 I``, so the exact noise prediction is
    ``eps(x, t) = -sigma grad log p_t(x) = sigma sum_k r_k(x) C_k^{-1} (x - alpha m_k)``.
    """

    w = np.array([0.3, 0.7])
    m = np.array([[-1.5, 0.6], [1.2, -0.4]])
    S = np.array([[[0.04, 0.0], [0.0, 0.09]], [[0.09, 0.03], [0.03, 0.05]]])

    @classmethod
    def cov(cls, alpha, sigma):
        return alpha**2 * cls.S + sigma**2 * np.eye(2)

    @classmethod
    def eps_model(cls, coefs):
        """``model_fn(x, t, cond)`` predicting eps exactly, from closed-form ``coefs``.

        Written out per component with the explicit 2x2 inverse (elementwise, fast to compile).
        """

        def model_fn(x, t, cond=None):
            alpha, sigma = coefs(t, jnp)  # (b,)
            a2, s2 = alpha**2, sigma**2
            sols, logits = [], []
            for k in range(2):
                (s00, s01), (_, s11) = cls.S[k]
                c00, c01, c11 = a2 * s00 + s2, a2 * s01, a2 * s11 + s2
                det = c00 * c11 - c01**2
                d0, d1 = x[:, 0] - alpha * cls.m[k, 0], x[:, 1] - alpha * cls.m[k, 1]
                sol0, sol1 = (c11 * d0 - c01 * d1) / det, (c00 * d1 - c01 * d0) / det
                sols.append((sol0, sol1))
                logits.append(math.log(cls.w[k]) - 0.5 * jnp.log(det) - 0.5 * (d0 * sol0 + d1 * sol1))
            r0 = jax.nn.sigmoid(logits[0] - logits[1])
            eps0 = r0 * sols[0][0] + (1 - r0) * sols[1][0]
            eps1 = r0 * sols[0][1] + (1 - r0) * sols[1][1]
            return sigma[:, None] * jnp.stack([eps0, eps1], axis=-1)

        return model_fn

    @classmethod
    def draw(cls, alpha, sigma, n, seed=0):
        """Draw from ``p_t``: exactly ``w_k n`` points of component ``k``, in antithetic pairs
        ``(z, -z)`` (``n`` a multiple of 20); this leaves the covariance errors iid-like."""
        rng = np.random.default_rng(seed)
        k = np.repeat(np.arange(2), np.round(cls.w * n).astype(int))
        L = np.linalg.cholesky(cls.cov(alpha, sigma))
        z = rng.standard_normal((n // 2, 2))
        z = np.stack([z, -z], axis=1).reshape(n, 2)
        return alpha * cls.m[k] + np.einsum("nij,nj->ni", L[k], z)

    @classmethod
    def check(cls, x, alpha, sigma, label="", z=5.0):
        """Weights, means and covariances of ``x`` against ``p_t`` within ``z`` standard errors
        (components assigned by the nearer mean under the Mahalanobis metric of ``p_t``)."""
        x = np.asarray(x, np.float64)
        n = x.shape[0]
        assert np.all(np.isfinite(x)), label
        C = cls.cov(alpha, sigma)
        d = x[:, None, :] - alpha * cls.m
        maha = np.einsum("nki,kij,nkj->nk", d, np.linalg.inv(C), d)
        k = np.argmin(maha, axis=1)
        worst = 0.0  # the largest deviation in standard errors, for diagnostics
        for j in range(2):
            xj = x[k == j]
            nj = xj.shape[0]
            w_hat = nj / n
            assert abs(w_hat - cls.w[j]) < z * math.sqrt(cls.w[j] * (1 - cls.w[j]) / n), (label, j, w_hat)
            mean, Cj = xj.mean(0), C[j]
            se_mean = np.sqrt(np.diag(Cj) / nj)
            assert np.all(np.abs(mean - alpha * cls.m[j]) < z * se_mean), (label, j, mean)
            cov = np.cov(xj.T)
            se_cov = np.sqrt((np.outer(np.diag(Cj), np.diag(Cj)) + Cj**2) / nj)
            assert np.all(np.abs(cov - Cj) < z * se_cov), (label, j, cov, Cj)
            dev = [abs(w_hat - cls.w[j]) / math.sqrt(cls.w[j] * (1 - cls.w[j]) / n),
                   np.max(np.abs(mean - alpha * cls.m[j]) / se_mean), np.max(np.abs(cov - Cj) / se_cov)]
            worst = max(worst, *dev)
        return worst


@partial(jax.jit, static_argnames=("model_fn", "solver", "grid", "num_steps", "t_start", "t_end"))
def _run(proc, x_init, *, model_fn, solver, grid, num_steps, t_start, t_end):
    return samplers.sample(
        model_fn, proc, solver, key=jax.random.key(0), x_init=x_init, prediction="eps",
        num_steps=num_steps, grid=grid, t_start=t_start, t_end=t_end,
    ).x


def check_mixture_sampling(proc, coefs, *, t_start, t_end, heun_steps, dpm_steps,
                           dpm_grid=samplers.log_snr_uniform, n=20_000):
    """Sample the mixture from an exact draw of ``p_{t_start}`` with the exact eps model
    through Heun (uniform grid) and DPM-Solver++(2M) (``dpm_grid``); both must reproduce
    ``p_{t_end}`` within sampling error."""
    a0, s0 = coefs(np.float64(t_start), np)
    x_init = jnp.asarray(Mixture.draw(a0, s0, n))
    a1, s1 = coefs(np.float64(t_end), np)
    model_fn = Mixture.eps_model(coefs)
    runs = [
        ("heun", samplers.Heun(), samplers.uniform, heun_steps),
        ("dpm++2m", samplers.DPMSolverMultistep(order=2), dpm_grid, dpm_steps),
    ]
    for label, solver, grid, steps in runs:
        x = _run(proc, x_init, model_fn=model_fn, solver=solver, grid=grid, num_steps=steps,
                 t_start=float(t_start), t_end=float(t_end))
        Mixture.check(x, a1, s1, label=label)
