"""EDM's stochastic Heun sampler against closed forms for Gaussian data (see _gaussian.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import (
    PROCESSES,
    X1,
    exact_flow,
    fit_order,
    gaussian_model,
    log_snr,
    t_from_log_snr,
)
from genflow.samplers import Denoiser, sample
from genflow.samplers._edm import EDMHeun
from vp_closed_forms import coefs

T_START, T_END = 1.0, 1e-3


def padded(ts, n_max):
    """Pad a grid at the data end with copies of t_end (a zero step is the identity)."""
    return np.concatenate([ts, np.full(n_max + 1 - ts.shape[0], ts[-1])])


def log_snr_grid(name, n):
    lam = np.linspace(log_snr(name, T_START), log_snr(name, T_END), n + 1)
    ts = t_from_log_snr(name, lam)
    ts[0], ts[-1] = T_START, T_END
    return ts


@pytest.mark.parametrize("name", list(PROCESSES))
def test_churn_zero_converges_to_the_flow_map_at_order_two(name):
    """s_churn = 0 is Heun on the probability-flow ODE in s = sigma / alpha: it converges to the
    exact Gaussian flow map x_1 -> x_{t_end} at order 2 (grids uniform in log-SNR, the natural
    grids of a solver in s). Down to t_end = 0 on uniform grids it converges too, but the last
    step to s = 0 is Euler's, with an error O(s_1^2) = O(1/N) on a uniform grid for VP (sigma^2
    ~ beta_min t near 0), so only convergence (an order above 1) is asserted there. All grids in one
    jitted, vmapped run."""
    steps = [8, 16, 32, 64]
    n_max = steps[-1]
    model = gaussian_model(name, "eps")
    grids = [padded(log_snr_grid(name, n), n_max) for n in steps]
    grids += [padded(np.linspace(T_START, 0.0, n + 1), n_max) for n in steps]
    run = jax.jit(jax.vmap(lambda ts: sample(model, PROCESSES[name], EDMHeun(),
                                             key=jax.random.key(0), x_init=X1,
                                             prediction="eps", ts=ts).x))
    xs = np.asarray(run(np.stack(grids))).reshape(2, len(steps), *X1.shape)
    assert np.all(np.isfinite(xs))
    for t_end, x, (lo, hi) in zip((T_END, 0.0), xs, ((1.7, 2.3), (1.0, np.inf))):
        errors = np.abs(x - exact_flow(name, X1, T_START, t_end)).max(axis=(1, 2))
        assert np.all(np.diff(errors) < 0) and errors[-1] < 0.02, (t_end, errors)
        fitted = fit_order(steps, errors)
        print(f"fitted order edm_heun {name} t_end={t_end}: {fitted:.3f}")
        assert lo < fitted < hi, (name, t_end, fitted, errors)


def test_one_step_is_heun_in_the_noise_level():
    """One step t = 0.6 -> 0.35 without churn, against the formula in the scaled variable:
    y = x / alpha, dy/ds = eps_hat, s = sigma / alpha, computed here in closed form."""
    name, t_cur, t_next = "cosine", 0.6, 0.35
    m, var = np.array([0.8, -0.5]), np.array([0.2, 2.5])

    def eps_hat(x, t):
        a, s, *_ = coefs(name, t, np)
        return s * (x - a * m) / (a**2 * var + s**2)

    a0, s0, *_ = coefs(name, t_cur, np)
    a1, s1, *_ = coefs(name, t_next, np)
    ds = s1 / a1 - s0 / a0
    y = X1 / a0
    d0 = eps_hat(X1, t_cur)
    y_e = y + ds * d0
    expected = a1 * (y + ds / 2 * (d0 + eps_hat(a1 * y_e, t_next)))
    with jax.disable_jit():
        got = sample(gaussian_model(name, "eps"), PROCESSES[name], EDMHeun(),
                     key=jax.random.key(0), x_init=X1, prediction="eps",
                     ts=np.array([t_cur, t_next])).x
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)


def test_one_churn_step():
    """The first step of a 4-step grid with s_churn = 1 (gamma = 1/4 < sqrt 2 - 1, so N matters),
    against the algorithm evaluated here: s_hat = 1.25 s_cur mapped to t_hat by the closed-form
    inverse log-SNR, noise sqrt(s_hat^2 - s_cur^2) s_noise z in y = x / alpha, Heun in s."""
    name, s_noise = "linear", 1.1
    m, var = np.array([0.8, -0.5]), np.array([0.2, 2.5])
    ts = np.array([0.6, 0.35, 0.2, 0.1, 0.05])
    key = jax.random.key(4)
    solver = EDMHeun(s_churn=1.0, s_noise=s_noise)

    def eps_hat(x, t):
        a, s, *_ = coefs(name, t, np)
        return s * (x - a * m) / (a**2 * var + s**2)

    a0, sg0, *_ = coefs(name, ts[0], np)
    s0 = sg0 / a0
    t_hat = float(t_from_log_snr(name, -np.log(1.25 * s0)))
    a_h, sg_h, *_ = coefs(name, t_hat, np)
    s_hat = sg_h / a_h
    np.testing.assert_allclose(s_hat, 1.25 * s0, rtol=1e-12)
    z = np.asarray(jax.random.normal(key, X1.shape, X1.dtype))
    y_hat = X1 / a0 + np.sqrt(s_hat**2 - s0**2) * s_noise * z
    a1, sg1, *_ = coefs(name, ts[1], np)
    ds = sg1 / a1 - s_hat
    d0 = eps_hat(a_h * y_hat, t_hat)
    y_e = y_hat + ds * d0
    expected = a1 * (y_hat + ds / 2 * (d0 + eps_hat(a1 * y_e, ts[1])))
    with jax.disable_jit():
        denoise = Denoiser(gaussian_model(name, "eps"), PROCESSES[name], "eps")
        state = solver.init(X1, jnp.asarray(ts))
        got, _ = solver.step(denoise, state, X1, jnp.asarray(ts[0]), jnp.asarray(ts[1]), key=key)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-10, atol=1e-10)


def test_nfe_is_two_per_step():
    out = {}

    def f(x):
        r = sample(gaussian_model("linear", "eps"), PROCESSES["linear"], EDMHeun(s_churn=10.0),
                   key=jax.random.key(0), x_init=x, prediction="eps", num_steps=5)
        out["nfe"] = r.nfe
        return r.x

    jax.eval_shape(f, X1)
    assert out["nfe"] == 10
    assert EDMHeun(s_churn=10.0).stochastic and not EDMHeun().stochastic


def churn_moments(name, ts, m, var, s_churn, s_min=0.0, s_max=math.inf):
    """Mean and variance of EDMHeun's chain for N(m, var) data, from the exact marginal at ts[0].

    In y = x / alpha with noise level s = sigma / alpha the exact model is
    eps_hat = k(s) (y - m), k(s) = s / (var + s^2). With u = y - m, churn adds the variance
    s_hat^2 - s_cur^2 and the Heun step from s_hat to s_next multiplies u by
    A = 1 + ds / 2 (k(s_hat) + k(s_next) (1 + ds k(s_hat))), ds = s_next - s_hat.
    """
    n = len(ts) - 1
    a0, sg0, *_ = coefs(name, ts[0], np)
    mean_u, var_u = 0.0, (a0**2 * var + sg0**2) / a0**2 - var
    k = lambda s: s / (var + s**2)  # noqa: E731
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        a_c, sg_c, *_ = coefs(name, t_cur, np)
        s_cur = sg_c / a_c
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_min <= s_cur <= s_max else 0.0
        s_hat = s_cur
        if gamma > 0:
            t_hat = min(max(float(t_from_log_snr(name, -math.log(s_cur * (1 + gamma)))), t_cur), 1.0)
            a_h, sg_h, *_ = coefs(name, t_hat, np)
            s_hat = sg_h / a_h
            var_u += s_hat**2 - s_cur**2
        a_n, sg_n, *_ = coefs(name, t_next, np)
        s_next = sg_n / a_n
        ds = s_next - s_hat
        A = 1 + ds / 2 * (k(s_hat) + k(s_next) * (1 + ds * k(s_hat)))
        mean_u, var_u = A * mean_u, A**2 * var_u
    a_n, *_ = coefs(name, ts[-1], np)
    return a_n * (m + mean_u), a_n**2 * var_u


def test_churn_reproduces_the_marginal_moments():
    """20k samples in 1-D from the exact marginal at t = 1, 32 steps, three solvers vmapped as a
    pytree in one jitted run: no churn; churn 40 (gamma = min(40 / 32, sqrt 2 - 1), the maximum);
    churn 40 restricted to s >= 1e9 (above every level on the grid: no churn at all).

    The samples follow the scheme's exact moments (recursion above, derived here). Churn raises
    the noise level and adds exactly the missing noise, so the marginals stay those of the data
    up to the discretization bias, which is asserted to be small and to shrink with the steps:
    the churned samples match the exact mean and variance at t_end up to that bias, while they
    decorrelate from the starting points (the deterministic flow keeps correlation 1).
    """
    name, m, var, n_samples, n_steps = "linear", 1.5, 0.3, 20_000, 32
    model = gaussian_model(name, "eps", m=np.array([m]), var=np.array([var]))
    a1, s1, *_ = coefs(name, T_START, np)
    x1 = a1 * m + math.sqrt(a1**2 * var + s1**2) * np.random.default_rng(1).standard_normal(
        (n_samples, 1))
    solvers = EDMHeun(s_churn=np.array([0.0, 40.0, 40.0]), s_min=np.array([0.0, 0.0, 1e9]),
                      s_max=np.full(3, np.inf), s_noise=np.ones(3))
    ts = np.linspace(T_START, T_END, n_steps + 1)
    run = jax.jit(jax.vmap(lambda s: sample(model, PROCESSES[name], s, key=jax.random.key(2),
                                            x_init=x1, prediction="eps", ts=ts).x))
    x_flow, x_churn, x_off = np.asarray(run(solvers))[:, :, 0]
    np.testing.assert_allclose(x_off, x_flow, rtol=1e-13, atol=1e-13)

    a, s, *_ = coefs(name, T_END, np)
    mean_exact, var_exact = a * m, a**2 * var + s**2

    def check(x, target_mean, target_var, allow_mean=0.0, allow_var=0.0):
        se_mean = math.sqrt(target_var / n_samples)
        se_var = target_var * math.sqrt(2 / (n_samples - 1))
        assert abs(x.mean() - target_mean) < 5 * se_mean + allow_mean, (x.mean(), target_mean)
        assert abs(x.var(ddof=1) - target_var) < 5 * se_var + allow_var, (x.var(ddof=1),
                                                                          target_var)

    for x, churn in ((x_flow, 0.0), (x_churn, 40.0)):
        rec_mean, rec_var = churn_moments(name, ts, m, var, churn)
        check(x, rec_mean, rec_var)
        bias_mean, bias_var = rec_mean - mean_exact, rec_var - var_exact
        print(f"churn {churn}: bias at {n_steps} steps: mean {bias_mean:+.4f}, "
              f"variance {bias_var / var_exact:+.2%}")
        assert abs(bias_mean) < 0.01 and abs(bias_var) < 0.1 * var_exact
        fine = np.linspace(T_START, T_END, 4 * n_steps + 1)
        assert abs(churn_moments(name, fine, m, var, churn)[1] - var_exact) < abs(bias_var) / 3
        check(x, mean_exact, var_exact, abs(bias_mean), abs(bias_var))
    corr = lambda x: np.corrcoef(x1[:, 0], x)[0, 1]  # noqa: E731
    assert corr(x_flow) > 0.9999 and abs(corr(x_churn)) < 0.1, (corr(x_flow), corr(x_churn))
