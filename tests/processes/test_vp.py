"""VP processes (linear and cosine) against closed forms written out here, independently.

Closed forms (Song et al. 2021; Nichol & Dhariwal 2021), t = 0 data, t = 1 noise:

* VP linear:  log alpha_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2;
* VP cosine:  alpha_t = cos(pi/2 (t t_max + s)/(1 + s)) / cos(pi/2 s/(1 + s));
* both:       sigma_t = sqrt(1 - alpha_t^2).
"""

import functools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.processes import AbstractGaussianPath, VPCosine, VPLinear

BETA_MIN, BETA_MAX = 0.1, 20.0
COS_S, COS_TMAX = 0.008, 0.9946


# --------------------------------------------------------------------------- closed forms
# Written with an array namespace ``xp`` so the same formula runs in numpy (float64 truth, no
# compilation) and in jax.numpy (for jax.jvp).
def linear_alpha(t, beta_min=BETA_MIN, beta_max=BETA_MAX, xp=np):
    return xp.exp(-(t**2) * (beta_max - beta_min) / 4 - t * beta_min / 2)


def cosine_alpha(t, s=COS_S, t_max=COS_TMAX, xp=np):
    return xp.cos(math.pi / 2 * (t * t_max + s) / (1 + s)) / math.cos(math.pi / 2 * s / (1 + s))


CLOSED_ALPHA = {"linear": linear_alpha, "cosine": cosine_alpha}
PROCESSES = {"linear": VPLinear(), "cosine": VPCosine()}
NAMES = list(PROCESSES)


def closed_marginal(name, t, xp=np):
    alpha = CLOSED_ALPHA[name](t, xp=xp)
    return alpha, xp.sqrt(1.0 - alpha**2)


@partial(jax.jit, static_argnames="name")
def closed_derivatives(name, t):
    """(alpha', sigma', f, g^2) by forward-mode autodiff of the closed forms above, with
    f = alpha'/alpha and g^2 = d sigma^2/dt - 2 f sigma^2."""
    ones = jnp.ones_like(t)
    (alpha, sigma), (d_alpha, d_sigma) = jax.jvp(
        lambda tt: closed_marginal(name, tt, xp=jnp), (t,), (ones,)
    )
    _, d_var = jax.jvp(lambda tt: 1.0 - CLOSED_ALPHA[name](tt, xp=jnp) ** 2, (t,), (ones,))
    f = d_alpha / alpha
    return d_alpha, d_sigma, f, d_var - 2 * f * sigma**2


# One jitted entry point per method, shared by every test (processes are pytree arguments).
@partial(jax.jit, static_argnames="method")
def call(proc, t, method):
    return getattr(proc, method)(t)


T_GRID = np.unique(np.concatenate([np.geomspace(1e-5, 1.0, 200), np.linspace(1e-5, 1.0, 201)]))


@jax.jit
def evaluate(proc, t, lam_ext):
    """Every method on the grid t in one compilation per process class; ``base_*`` are the
    AbstractGaussianPath defaults (autodiff, bisection, generic SDE), bypassing closed forms."""
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
        base_sde=AbstractGaussianPath.sde(proc, t),
    )


@functools.lru_cache(maxsize=None)
def results(name):
    a, s = closed_marginal(name, T_GRID)
    out = evaluate(PROCESSES[name], T_GRID, np.log(a) - np.log(s))
    return jax.tree_util.tree_map(np.asarray, out)


# --------------------------------------------------------------------------- marginals
@pytest.mark.parametrize("name", NAMES)
def test_marginal_matches_closed_form(name):
    alpha, sigma = results(name)["marginal"]
    a_ref, s_ref = closed_marginal(name, T_GRID)
    assert alpha.dtype == np.float64
    np.testing.assert_allclose(alpha, a_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigma, s_ref, rtol=1e-8, atol=0)
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=0, atol=1e-14)


def test_marginal_non_default_hyperparameters():
    lam = np.zeros_like(T_GRID)
    got = evaluate(VPLinear(beta_min=0.5, beta_max=7.0), T_GRID, lam)["marginal"][0]
    np.testing.assert_allclose(got, linear_alpha(T_GRID, 0.5, 7.0), rtol=1e-12)
    got = evaluate(VPCosine(s=0.02, t_max=0.9), T_GRID, lam)["marginal"][0]
    np.testing.assert_allclose(got, cosine_alpha(T_GRID, 0.02, 0.9), rtol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", NAMES)
def test_boundary_values(name, dtype):
    t = jnp.asarray([0.0, 1.0], dtype)
    (alpha0, alpha1), (sigma0, sigma1) = call(PROCESSES[name], t, "marginal")
    assert alpha0.dtype == dtype
    assert float(alpha0) == 1.0
    assert float(sigma0) == 0.0
    a1_ref = float(CLOSED_ALPHA[name](1.0))  # 6.57e-3 (linear), 8.42e-3 (cosine)
    assert 0 < a1_ref < 1e-2
    np.testing.assert_allclose(float(alpha1), a1_ref, rtol=1e-4 if dtype == jnp.float32 else 1e-12)
    np.testing.assert_allclose(float(sigma1), math.sqrt(1 - a1_ref**2), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_float32_marginal_is_accurate_near_data(name):
    """In float32, sigma_t must stay accurate for small t (eps and the score divide by it)."""
    t32 = np.geomspace(1e-6, 1.0, 121).astype(np.float32)
    alpha, sigma = call(PROCESSES[name], jnp.asarray(t32), "marginal")
    assert sigma.dtype == jnp.float32
    # Reference at the float32-rounded times, in float64.
    a_ref, s_ref = closed_marginal(name, t32.astype(np.float64))
    np.testing.assert_allclose(np.asarray(sigma, np.float64), s_ref, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(alpha, np.float64), a_ref, rtol=1e-4)


# --------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("name", NAMES)
def test_marginal_derivative_matches_jvp_of_closed_form(name):
    r = results(name)
    d_alpha, d_sigma = r["derivative"]
    ref_a, ref_s, _, _ = closed_derivatives(name, T_GRID)
    np.testing.assert_allclose(d_alpha, ref_a, rtol=1e-10)
    np.testing.assert_allclose(d_sigma, ref_s, rtol=1e-7)
    # The base-class default (autodiff of the process's own marginal) agrees as well.
    base_a, base_s = r["base_derivative"]
    np.testing.assert_allclose(d_alpha, base_a, rtol=1e-10)
    np.testing.assert_allclose(d_sigma, base_s, rtol=1e-7)


# --------------------------------------------------------------------------- log-SNR
@pytest.mark.parametrize("name", NAMES)
def test_log_snr_closed_form_and_strictly_decreasing(name):
    lam = results(name)["log_snr"]
    a, s = closed_marginal(name, T_GRID)
    np.testing.assert_allclose(lam, np.log(a) - np.log(s), rtol=1e-9, atol=1e-9)
    assert np.all(np.diff(lam) < 0)  # T_GRID is sorted, 1e-5 .. 1


@pytest.mark.parametrize("name", NAMES)
def test_t_from_log_snr_inverts_log_snr(name):
    r = results(name)
    np.testing.assert_allclose(r["t_closed"], T_GRID, rtol=1e-6, atol=0)
    # The base-class monotone bisection agrees with the closed-form inverse.
    np.testing.assert_allclose(r["t_bisect"], T_GRID, rtol=1e-6, atol=0)
    np.testing.assert_allclose(r["t_closed"], r["t_bisect"], rtol=1e-6, atol=0)
    # And inverting lambda values computed by the closed forms, not by the process.
    np.testing.assert_allclose(r["t_ext"], T_GRID, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- forward SDE
def test_sde_linear_is_beta():
    f, g2 = results("linear")["sde"]
    beta = BETA_MIN + T_GRID * (BETA_MAX - BETA_MIN)
    np.testing.assert_allclose(f, -beta / 2, rtol=1e-13)
    np.testing.assert_allclose(g2, beta, rtol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_sde_matches_generic_formula(name):
    r = results(name)
    f, g2 = r["sde"]
    _, _, f_ref, g2_ref = closed_derivatives(name, T_GRID)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9)
    np.testing.assert_allclose(g2, g2_ref, rtol=1e-7)
    f_base, g2_base = r["base_sde"]
    np.testing.assert_allclose(f, f_base, rtol=1e-9)
    np.testing.assert_allclose(g2, g2_base, rtol=1e-7)
    # For a VP path d(alpha^2 + sigma^2)/dt = 0, so g^2 = -2 f > 0.
    np.testing.assert_allclose(g2, -2 * f, rtol=1e-7)
    assert np.all(np.asarray(g2) > 0)


@pytest.mark.parametrize("name", NAMES)
def test_sde_finite_at_t0(name):
    """At t = 0 (sigma = 0) g^2 has the finite limit d sigma^2/dt = -2 alpha alpha' = -2 f."""
    f, g2 = call(PROCESSES[name], np.zeros(1), "sde")
    if name == "linear":
        f_ref = -BETA_MIN / 2
    else:  # f = alpha'/alpha = -tan(phase) phase'
        f_ref = -math.tan(math.pi / 2 * COS_S / (1 + COS_S)) * math.pi / 2 * COS_TMAX / (1 + COS_S)
    np.testing.assert_allclose(f, f_ref, rtol=1e-12)
    np.testing.assert_allclose(g2, -2 * f_ref, rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_fokker_planck_variance_ode(name):
    """d Var/dt = 2 f Var + g^2 from Var(0) = v0 gives alpha_t^2 v0 + sigma_t^2 (classic RK4).

    Integrated from t = 0 for v0 = 0.3 and v0 = 3 at once (the ODE is linear in Var).
    """
    v0 = np.array([0.3, 3.0])
    n = 2000  # RK4 steps on [0, 1]; h = 5e-4
    h = 1.0 / n
    t_half = np.linspace(0.0, 1.0, 2 * n + 1)
    f_all, g2_all = (np.asarray(a) for a in call(PROCESSES[name], t_half, "sde"))
    assert np.all(np.isfinite(f_all)) and np.all(np.isfinite(g2_all))

    def rhs(i, var):  # f, g^2 at t = i h / 2
        return 2 * f_all[i] * var + g2_all[i]

    var, got = v0, {}
    for k in range(n):
        i = 2 * k
        k1 = rhs(i, var)
        k2 = rhs(i + 1, var + 0.5 * h * k1)
        k3 = rhs(i + 1, var + 0.5 * h * k2)
        k4 = rhs(i + 2, var + h * k3)
        var = var + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        got[k + 1] = var
    for t in [0.3, 0.7, 1.0]:
        a, s = closed_marginal(name, t)
        np.testing.assert_allclose(got[round(t * n)], a**2 * v0 + s**2, rtol=1e-8)


# --------------------------------------------------------------------------- sample_xt
def sample_xt(proc, key, x0, t):  # eager: the normal draw compiles once per shape, for both
    return proc.sample_xt(key, x0, t)


@pytest.mark.parametrize("name", NAMES)
def test_sample_xt_moments(name):
    n_per, ts = 20_000, np.array([0.05, 0.4, 0.9])
    t = np.repeat(ts, n_per)
    x0_row = np.array([1.5, -0.7])
    x0 = np.broadcast_to(x0_row, (t.shape[0], 2))
    xt, eps = (np.asarray(a) for a in sample_xt(PROCESSES[name], jax.random.key(0), x0, t))
    assert xt.shape == x0.shape and eps.shape == x0.shape
    a_all, s_all = closed_marginal(name, t)
    # The returned noise is the one that made x_t.
    made = a_all[:, None] * x0 + s_all[:, None] * eps
    np.testing.assert_allclose(xt, made, rtol=1e-12, atol=1e-12)
    for i, ti in enumerate(ts):
        block = xt[i * n_per : (i + 1) * n_per]
        a, s = closed_marginal(name, ti)
        mean, var = block.mean(0), block.var(0, ddof=1)
        se_mean = s / math.sqrt(n_per)
        se_var = s**2 * math.sqrt(2.0 / (n_per - 1))
        assert np.all(np.abs(mean - a * x0_row) < 5 * se_mean), (ti, mean)
        assert np.all(np.abs(var - s**2) < 5 * se_var), (ti, var)


@pytest.mark.parametrize("name", NAMES)
def test_sample_xt_scalar_t_and_float32(name):
    """A scalar t broadcasts; float32 data stay float32 (abstract evaluation, no compilation)."""
    x0 = jax.ShapeDtypeStruct((3, 4), jnp.float32)
    xt, eps = jax.eval_shape(lambda x: PROCESSES[name].sample_xt(jax.random.key(1), x, 0.5), x0)
    assert (xt.shape, xt.dtype) == ((3, 4), jnp.float32)
    assert (eps.shape, eps.dtype) == ((3, 4), jnp.float32)


@pytest.mark.parametrize("name", NAMES)
def test_prior_sample_is_standard_normal(name):
    x = np.asarray(PROCESSES[name].prior_sample(jax.random.key(2), (40_000,), jnp.float64))
    n = x.shape[0]
    assert x.dtype == np.float64
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert abs(x.var() - 1.0) < 5 * math.sqrt(2 / n)


# --------------------------------------------------------------------------- pytrees
def test_process_is_a_pytree_and_does_not_retrace():
    traces = []

    @jax.jit
    def alpha_at(proc, t):
        traces.append(1)
        return proc.marginal(t)[0]

    t = jnp.asarray(0.5, jnp.float64)
    out_a = alpha_at(VPLinear(0.1, 20.0), t)
    out_b = alpha_at(VPLinear(0.1, 10.0), t)
    out_c = alpha_at(VPLinear(0.3, 10.0), t)
    assert len(traces) == 1
    np.testing.assert_allclose(out_a, linear_alpha(0.5, 0.1, 20.0), rtol=1e-12)
    np.testing.assert_allclose(out_b, linear_alpha(0.5, 0.1, 10.0), rtol=1e-12)
    np.testing.assert_allclose(out_c, linear_alpha(0.5, 0.3, 10.0), rtol=1e-12)

    out_d = alpha_at(VPCosine(0.008, 0.9946), t)
    out_e = alpha_at(VPCosine(0.02, 0.9), t)
    assert len(traces) == 2  # one new structure, then no retrace for new numbers
    np.testing.assert_allclose(out_d, cosine_alpha(0.5), rtol=1e-12)
    np.testing.assert_allclose(out_e, cosine_alpha(0.5, 0.02, 0.9), rtol=1e-12)

    assert jax.tree_util.tree_leaves(VPLinear(0.1, 20.0)) == [0.1, 20.0]
    assert jax.tree_util.tree_leaves(VPCosine(0.008, 0.9946)) == [0.008, 0.9946]


def test_different_processes_have_different_tree_structures():
    """Same structure for new numbers (no recompilation), a different one for another class.

    Were VPLinear and VPCosine structurally equal, a jitted function taking a process could reuse
    the compilation traced for the other class and silently use the wrong schedule.
    """
    ts = jax.tree_util.tree_structure
    assert ts(VPLinear(0.1, 20.0)) == ts(VPLinear(0.3, 7.0))
    assert ts(VPCosine()) == ts(VPCosine(0.02, 0.9))
    assert ts(VPLinear()) != ts(VPCosine())


@pytest.mark.parametrize(
    "make",
    [
        lambda: VPLinear(beta_min=-0.1, beta_max=20.0),
        lambda: VPLinear(beta_min=5.0, beta_max=1.0),
        lambda: VPLinear(beta_min=1.0, beta_max=1.0),
        lambda: VPCosine(s=0.0),
        lambda: VPCosine(s=-0.01),
        lambda: VPCosine(t_max=1.0),
        lambda: VPCosine(t_max=0.0),
        lambda: VPCosine(t_max=1.5),
    ],
)
def test_invalid_hyperparameters_raise(make):
    with pytest.raises(ValueError, match="VP(Linear|Cosine) needs"):
        make()


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_prior_log_prob_is_the_standard_normal_density(name):
    # VP: alpha_1^2 + sigma_1^2 = 1, so the prior is N(0, I); log-density summed over (2, 3).
    x = np.random.default_rng(0).normal(size=(4, 2, 3))
    expected = -0.5 * np.sum(x**2, axis=(1, 2)) - 6 * 0.5 * np.log(2 * np.pi)
    got = np.asarray({"linear": VPLinear(), "cosine": VPCosine()}[name].prior_log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
