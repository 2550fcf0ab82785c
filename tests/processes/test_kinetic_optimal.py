"""Kinetic-optimal Gaussian paths against numbers computed independently of the module.

Independent truths used here:
* two points ``+-mu`` with ``|mu|^2 = d``: ``Lambda(s) = E_z tanh(s^2 d + s sqrt(d) z)`` (Gauss-Hermite);
  from it ``Phi = int_0^{pi/2} sqrt(g)``, ``g = 1 - (1 + s^2)(1 - Lambda)``, the optimal energy
  ``(2 - 2 cos Phi) d`` and the cond-OT energy ``int 2 - (1 - Lambda((1-t)/t))/t^2 dt`` (d = 1);
* Gaussian data: ``Lambda(s) = s^2/(1 + s^2)``;
* a naive estimator ``E|E[x|y]|^2/d`` from explicit ``y = s x + eps`` with fresh random numbers;
* ``g = 1`` gives cond-OT ``(1 - t, t)``; constant ``g = c^2`` gives the chord in the plane
  ``(r cos(c theta), r sin(c theta))``, travelled at constant speed.
"""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _closed_forms import T_GRID, check_mixture_sampling, check_sample_xt
from genflow.processes import (
    KineticOptimalPath,
    RectifiedFlow,
    VPLinear,
    data_separation,
    kinetic_energy,
)

Z, WZ = np.polynomial.hermite_e.hermegauss(120)
WZ = WZ / WZ.sum()
TWO_POINTS = np.array([[1.0], [-1.0]])


def lam_two_points(s, d=1):
    s = np.atleast_1d(np.asarray(s, np.float64))
    return np.array([np.sum(WZ * np.tanh(si**2 * d + si * math.sqrt(d) * Z)) for si in s])


def phi_two_points(d=1):
    th = np.linspace(0.0, math.pi / 2, 40001)[1:-1]
    s = np.tan(th)
    g = 1.0 - (1.0 + s**2) * (1.0 - lam_two_points(s, d))
    return float(np.trapezoid(np.sqrt(np.clip(np.r_[0.0, g, 1.0], 0, 1)), np.r_[0.0, th, math.pi / 2]))


def mixture_data(n, d, seed=0):
    """Four well separated Gaussian clusters in ``d`` dimensions, centred, ``E|x|^2 = d``."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((4, d))
    x = centres[rng.integers(0, 4, n)] + 0.5 * rng.standard_normal((n, d))
    x -= x.mean(0)
    return x * math.sqrt(d / np.mean(np.sum(x**2, axis=1)))


_PATHS = {}


def ko_path(name):
    if name not in _PATHS:
        _PATHS[name] = KineticOptimalPath.from_data(mixture_data(128, 8), num_points=256)
    return _PATHS[name]


def coefs_of(path):
    def coefs(t, xp=np):
        if xp is np:
            return tuple(np.asarray(v) for v in path.marginal(np.asarray(t, np.float64)))
        return path.marginal(t)

    return coefs


# --------------------------------------------------------------------------- separation function
def test_two_point_separation_matches_gauss_hermite():
    s = np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(lam_two_points(s), [0.20405, 0.55040, 0.93140], atol=1e-5)
    got = data_separation(TWO_POINTS, s, num_noise=4096)
    np.testing.assert_allclose(got, lam_two_points(s), atol=0.01)
    mu = np.ones((1, 4))  # |mu|^2 = d = 4
    got4 = data_separation(np.concatenate([mu, -mu]), s / 2, num_noise=2048)
    np.testing.assert_allclose(got4, lam_two_points(s / 2, d=4), atol=0.01)
    assert data_separation(TWO_POINTS, 0.0) == 0.0 and data_separation(TWO_POINTS, np.inf) == 1.0


def test_separation_of_gaussian_data_and_a_naive_estimator():
    # Many Gaussian points in 2-D: close to the population value s^2/(1 + s^2) at small s.
    x = np.random.default_rng(1).standard_normal((1024, 2))
    s = np.array([0.2, 0.5])
    np.testing.assert_allclose(data_separation(x, s, num_noise=2), s**2 / (1 + s**2), atol=0.02)
    # A clustered set: the naive E|E[x|y]|^2/d from explicit y = s x + eps, fresh noise.
    x = mixture_data(48, 3, seed=2)
    rng = np.random.default_rng(3)
    for si in (0.3, 1.0, 3.0):
        i = np.repeat(np.arange(48), 200)
        y = si * x[i] + rng.standard_normal((i.size, 3))
        logits = -0.5 * np.sum((y[:, None, :] - si * x[None]) ** 2, axis=-1)
        w = np.exp(logits - logits.max(1, keepdims=True))
        m = (w / w.sum(1, keepdims=True)) @ x
        naive = np.mean(np.sum(m**2, axis=1)) / 3
        assert abs(float(data_separation(x, si, num_noise=64)) - naive) < 0.02, si


def test_separation_tends_to_one_as_n_over_d_vanishes():
    rng = np.random.default_rng(0)
    s = np.array([0.25, 0.5, 1.0])
    dims = (2, 16, 128, 1024)
    lam = np.array([data_separation(rng.standard_normal((16, d)), s, num_noise=64) for d in dims])
    print("\nLambda(s = 0.25, 0.5, 1) for n = 16 and d =", dims, "\n", np.round(lam, 4))
    assert np.all(np.diff(lam, axis=0) > -0.01), lam  # monotone in d (up to Monte Carlo)
    assert np.all(1 - lam[-1] < 0.03) and np.all(1 - lam[-1, 1:] < 0.005), lam[-1]
    assert np.all(1 - lam[0] > 0.1), lam[0]  # far from 1 where n/sqrt(d) is large


# --------------------------------------------------------------------------- the 1-D characterisation
@pytest.mark.parametrize("c", [1.0, 0.6])
def test_constant_g_gives_the_chord(c):
    """g = c^2: phi = c theta, Phi = c pi/2; c = 1 is cond-OT exactly."""
    theta = np.linspace(0.0, math.pi / 2, 257)
    path = KineticOptimalPath.from_angle_table(theta, c * theta)
    t = np.linspace(0.0, 1.0, 401)
    big = c * math.pi / 2
    px, py = (1 - t) * math.cos(big) + t, (1 - t) * math.sin(big)  # chord from data to noise
    r, th = np.hypot(px, py), np.arctan2(py, px) / c
    alpha, sigma = (np.asarray(v) for v in path.marginal(t))
    np.testing.assert_allclose(alpha, r * np.sin(th), atol=2e-6 if c != 1 else 1e-14)
    np.testing.assert_allclose(sigma, r * np.cos(th), atol=2e-6 if c != 1 else 1e-14)
    if c == 1.0:
        np.testing.assert_allclose(alpha, 1 - t, atol=1e-14)
        np.testing.assert_allclose(sigma, t, atol=1e-14)
    # Constant speed r'^2 + r^2 c^2 theta'^2 = 2 - 2 cos Phi (central differences).
    tm, h = np.linspace(0.02, 0.98, 49), 1e-5
    a_p, s_p = (np.asarray(v) for v in path.marginal(tm + h))
    a_m, s_m = (np.asarray(v) for v in path.marginal(tm - h))
    dr = (np.hypot(a_p, s_p) - np.hypot(a_m, s_m)) / (2 * h)
    dth = (np.arctan2(a_p, s_p) - np.arctan2(a_m, s_m)) / (2 * h)
    speed = dr**2 + np.hypot(*path.marginal(tm)) ** 2 * c**2 * dth**2
    np.testing.assert_allclose(speed, 2 - 2 * math.cos(big), rtol=1e-4)


def test_two_point_path_and_energies():
    path = KineticOptimalPath.from_data(TWO_POINTS, num_points=256, num_noise=2048)
    big = phi_two_points()
    assert abs(big - 0.69126) < 2e-4 and abs(float(path.total_angle) - big) < 0.005
    key = jax.random.key(0)
    ko = float(kinetic_energy(path, 5.0 + 3.0 * TWO_POINTS, key=key, num_noise=4096, normalize=True))
    ot = float(kinetic_energy(RectifiedFlow(), TWO_POINTS, key=key, num_noise=4096))
    tt = np.linspace(1e-3, 1 - 1e-3, 100_001)
    ot_ref = np.trapezoid(2 - (1 - lam_two_points((1 - tt) / tt)) / tt**2, tt)
    assert abs(ot_ref - 0.979) < 2e-3  # 0.98240 on (0, 1)
    assert abs(ot / ot_ref - 1) < 0.04, (ot, ot_ref)
    assert abs(ko / (2 - 2 * math.cos(big)) - 1) < 0.05, (ko, 2 - 2 * math.cos(big))


def test_kinetic_energy_ordering_on_a_mixture():
    """KO <= cond-OT <= VP on one t-range [1e-3, 1 - 1e-3]; KO matches (2 - 2 cos Phi) d."""
    x = mixture_data(128, 8)
    path, key = ko_path("mix8"), jax.random.key(1)
    ke = {name: float(kinetic_energy(p, x, key=key, num_noise=8))
          for name, p in [("KO", path), ("cond-OT", RectifiedFlow()), ("VP linear", VPLinear())]}
    print("\nkinetic energy, 8-D mixture, n = 128:", {k: round(v, 3) for k, v in ke.items()})
    assert ke["KO"] < ke["cond-OT"] < ke["VP linear"], ke
    theory = (2 - 2 * math.cos(float(path.total_angle))) * 8 * (1 - 2e-3)
    assert abs(ke["KO"] / theory - 1) < 0.05, (ke["KO"], theory)


# --------------------------------------------------------------------------- the path
@jax.jit
def _evaluate(path, t):
    """Every method on ``t`` in one compilation; ``jvp`` differentiates ``marginal`` directly."""
    lam = path.log_snr(t)
    return dict(marginal=path.marginal(t), log_snr=lam, t_back=path.t_from_log_snr(lam),
                derivative=path.marginal_derivative(t), sde=path.sde(t),
                jvp=jax.jvp(path.marginal, (t,), (jnp.ones_like(t),))[1])


def test_path_basics():
    path = ko_path("mix8")
    inner = T_GRID[T_GRID < 1]
    tm, h = np.linspace(0.01, 0.99, 99), 1e-6
    t_all = np.concatenate([[0.0, 1.0], inner, tm, tm + h, tm - h])
    r = jax.tree_util.tree_map(np.asarray, _evaluate(path, t_all))
    (a, s), lam, back = r["marginal"], r["log_snr"], r["t_back"]
    assert (a[0], s[0], a[1], s[1]) == (1.0, 0.0, 0.0, 1.0)
    assert (lam[0], lam[1]) == (math.inf, -math.inf) and (back[0], back[1]) == (0.0, 1.0)
    part = slice(2, 2 + inner.size)
    np.testing.assert_allclose(lam[part], np.log(a[part]) - np.log(s[part]), rtol=1e-12, atol=1e-12)
    assert np.all(np.diff(lam[part]) < 0)
    np.testing.assert_allclose(back[part], inner, rtol=0, atol=1e-10)
    # Derivatives: against jax.jvp of the marginal and against central differences.
    m = tm.size
    mid, plus, minus = (slice(2 + inner.size + j * m, 2 + inner.size + (j + 1) * m) for j in range(3))
    for i in range(2):
        np.testing.assert_allclose(r["derivative"][i][mid], r["jvp"][i][mid], rtol=1e-12)
        fd = (r["marginal"][i][plus] - r["marginal"][i][minus]) / (2 * h)
        np.testing.assert_allclose(r["derivative"][i][mid], fd, rtol=1e-5, atol=1e-6)
    f, g2 = r["sde"]
    assert np.all(np.isfinite(f[mid])) and np.all(g2[mid] > 0)
    check_sample_xt(path, coefs_of(path))
    assert float(path.prior_std()) == 1.0


def test_float32_and_pytree():
    path = ko_path("mix8")
    t32 = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    a32, s32 = path.marginal(t32)
    a64, s64 = path.marginal(t32.astype(np.float64))
    assert a32.dtype == s32.dtype == path.log_snr(t32).dtype == jnp.float32
    np.testing.assert_allclose(a32, a64, atol=2e-6)
    np.testing.assert_allclose(s32, s64, atol=2e-6)
    assert len(jax.tree_util.tree_leaves(path)) == 3
    traces = []

    @jax.jit
    def f(p, t):
        traces.append(1)
        return p.marginal(t)

    other = KineticOptimalPath.from_angle_table(np.asarray(path.theta), 0.9 * np.asarray(path.phi))
    f(path, 0.3), f(other, 0.3)
    assert len(traces) == 1  # new table, same shapes: no recompilation


def test_mixture_sampling():
    """The 2-D mixture of _closed_forms sampled on the path of the 8-D mixture (any Gaussian path
    serves: the check is of the path's methods inside the samplers)."""
    path = ko_path("mix8")
    check_mixture_sampling(path, coefs_of(path), t_start=0.999, t_end=1e-3,
                           heun_steps=50, dpm_steps=100)


def test_float32_without_x64():
    """The default float32 mode (x64 off, as in training): table, ends, monotone, inverse."""
    code = """
import jax, jax.numpy as jnp, numpy as np
from genflow.processes import KineticOptimalPath
x = np.random.default_rng(0).standard_normal((32, 3)); x[:16] += 4.0
p = KineticOptimalPath.from_data(x, num_points=64)
t = jnp.linspace(0.0, 1.0, 201)
(a, s), lam = p.marginal(t), p.log_snr(t)
assert p.phi.dtype == a.dtype == lam.dtype == jnp.float32
assert (float(a[0]), float(s[0]), float(a[-1]), float(s[-1])) == (1.0, 0.0, 0.0, 1.0)
assert bool(jnp.all(jnp.diff(lam[1:-1]) < 0))
assert float(jnp.max(jnp.abs(p.t_from_log_snr(lam) - t))) < 2e-6
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize(
    "call",
    [lambda: data_separation(np.zeros((5, 2)), 1.0), lambda: data_separation(np.ones(5), 1.0),
     lambda: data_separation(TWO_POINTS, -1.0), lambda: data_separation(TWO_POINTS, 1.0, num_noise=3),
     lambda: KineticOptimalPath.from_angle_table([0.0, 1.0, 0.5], [0.0, 0.5, 1.0]),
     lambda: KineticOptimalPath.from_angle_table([0.0, 0.7, 1.0], [0.0, 0.5, 1.0]),
     lambda: KineticOptimalPath.from_data(TWO_POINTS, num_points=4),
     lambda: kinetic_energy(RectifiedFlow(), TWO_POINTS, key=jax.random.key(0), t_min=0.0),
     lambda: kinetic_energy(RectifiedFlow(), [[np.nan], [1.0]], key=jax.random.key(0))],
)
def test_invalid_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_fewer_than_two_points_is_a_clear_error():
    with pytest.raises(ValueError, match="n >= 2 points"):
        KineticOptimalPath.from_data(np.ones((1, 3)))
    with pytest.raises(ValueError, match="n >= 2 points"):
        data_separation(np.ones((1, 3)), np.array([1.0]))
