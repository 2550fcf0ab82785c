"""EMA profiles and post-hoc EMA against closed forms (float64: tests/conftest.py enables x64).

Truth comes from hand-written formulas: the kernel w_T(t) = (t^(g+1) - (t-1)^(g+1)) / T^(g+1)
evaluated directly (small T, no overflow), EMAs tracked step by step, and least squares on the
materialised kernel matrix (np.linalg.lstsq), never from the Gram shortcut under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.training._ema import (
    SIGMA_REL_MAX,
    ema_decay,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    power_decay,
    power_kernel,
    reconstruct,
    sigma_rel_to_gamma,
)


def hand_kernel(T, g, length):
    """w_T(t) on t = 1..length, by the textbook formula (zero after T)."""
    t = np.arange(1, length + 1, dtype=np.float64)
    w = (t ** (g + 1) - (t - 1) ** (g + 1)) / float(T) ** (g + 1)
    return np.where(t <= T, w, 0.0)


def hand_sigma_rel(g):
    return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def random_walk(steps, dim, seed):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(steps, dim)), axis=0) + 3.0


def track(traj, gammas, *, ema0):
    """Power EMAs of ``traj`` (row t-1 holds p_t), one per gamma, recursively, all steps.

    Returns an array (steps, len(gammas), dim): the EMA after every step.
    """
    steps = traj.shape[0]
    betas = np.stack([np.asarray(power_decay(jnp.arange(1, steps + 1), g)) for g in gammas], 1)
    ema = np.broadcast_to(ema0, (len(gammas), traj.shape[1])).astype(np.float64)
    out = np.empty((steps, len(gammas), traj.shape[1]))
    for i in range(steps):
        b = betas[i][:, None]
        ema = b * ema + (1.0 - b) * traj[i]
        out[i] = ema
    return out


G05, G10 = sigma_rel_to_gamma(0.05), sigma_rel_to_gamma(0.10)


# --------------------------------------------------------------------------- power EMA kernel


@pytest.mark.parametrize("gamma", [0.0, 2.5, G10, G05])
def test_power_ema_equals_closed_form_kernel(gamma):
    T = 500
    traj = random_walk(T, 3, seed=0)
    # A wild starting EMA: beta_1 = 0, so it must be forgotten exactly.
    tracked = track(traj, [gamma], ema0=np.full(3, 1e6))[:, 0]
    for step in (1, 2, 77, T):
        w = hand_kernel(step, gamma, step)
        np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-13)
        np.testing.assert_allclose(tracked[step - 1], w @ traj[:step], rtol=1e-12)
        np.testing.assert_allclose(power_kernel(step, gamma), w, rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(tracked[0], traj[0])  # first update copies the parameters


def test_power_decay_values_and_jit():
    g = 6.5
    steps = np.array([1, 2, 3, 10, 1000, 10**6])
    expected = (1.0 - 1.0 / steps) ** (g + 1)
    np.testing.assert_allclose(np.asarray(power_decay(steps, g)), expected, rtol=1e-12)
    assert float(power_decay(1, g)) == 0.0
    jitted = jax.jit(power_decay)(jnp.int32(10), g)
    np.testing.assert_allclose(float(jitted), (0.9) ** (g + 1), rtol=1e-12)
    with pytest.raises(ValueError, match="gamma"):
        power_decay(3, -1.0)


def test_power_kernel_large_step_does_not_overflow():
    # T^(g+1) = 10^(6 * 98) would overflow float64; the kernel must still sum to 1.
    g = sigma_rel_to_gamma(0.01)
    w = power_kernel(10**6, g)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-10)
    # Last weight: 1 - (1 - 1/T)^(g+1), whose first-order value is (g+1)/T.
    np.testing.assert_allclose(w[-1], (g + 1) / 1e6, rtol=1e-4)


# --------------------------------------------------------------------------- sigma_rel <-> gamma


def test_sigma_rel_gamma_round_trip():
    s = np.linspace(0.002, SIGMA_REL_MAX, 400)
    g = sigma_rel_to_gamma(s)
    np.testing.assert_allclose(hand_sigma_rel(g), s, rtol=1e-12)
    np.testing.assert_allclose(gamma_to_sigma_rel(g), s, rtol=1e-12)
    # The branch where sigma_rel decreases with gamma: gamma >= (sqrt 5 - 3)/2, decreasing in s.
    assert np.all(g >= (np.sqrt(5) - 3) / 2 - 1e-6)
    assert np.all(np.diff(g) < 0)
    gammas = np.array([0.0, 0.5, 1.0, 7.0, 16.97, 100.0, 1000.0])
    np.testing.assert_allclose(sigma_rel_to_gamma(gamma_to_sigma_rel(gammas)), gammas, rtol=1e-10,
                               atol=1e-13)


def test_edm2_sigma_rel_pairs():
    # EDM2's stored profiles: the cubic's root, checked against the formula itself.
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=5e-3)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=5e-3)
    assert hand_sigma_rel(16.97) == pytest.approx(0.05, rel=2e-4)
    assert hand_sigma_rel(6.94) == pytest.approx(0.10, rel=5e-4)
    # Both are roots of EDM2's cubic g^3 + 7 g^2 + (16 - s^-2) g + (12 - s^-2).
    for s in (0.05, 0.10):
        g, tau = sigma_rel_to_gamma(s), s**-2
        assert abs(g**3 + 7 * g**2 + (16 - tau) * g + (12 - tau)) < 1e-9 * tau * g
    # The widest profile: a double root at gamma = (sqrt 5 - 3) / 2.
    assert sigma_rel_to_gamma(SIGMA_REL_MAX) == pytest.approx((np.sqrt(5) - 3) / 2, abs=1e-6)
    assert sigma_rel_to_gamma(0.3) == pytest.approx(-1 / 3, abs=1e-12)  # sigma_rel(-1/3) = 0.3


def test_sigma_rel_out_of_range():
    for bad in (0.0, -0.1, 0.31):
        with pytest.raises(ValueError, match="sigma_rel"):
            sigma_rel_to_gamma(bad)
    with pytest.raises(ValueError, match="gamma"):
        gamma_to_sigma_rel(-1.0)


# --------------------------------------------------------------------------- warm-up decay


def test_ema_decay_constant():
    got = ema_decay(jnp.arange(5), decay=0.999)
    np.testing.assert_array_equal(np.asarray(got), np.full(5, 0.999))


@pytest.mark.parametrize("power", [2 / 3, 3 / 4, 1.0])
def test_ema_decay_warmup_against_hand_formula(power):
    decay = 0.9995
    steps = np.array([0, 1, 2, 5, 100, 10_000, 10**6])
    expected = np.minimum(decay, 1.0 - (1.0 + steps) ** (-power))
    got = np.asarray(ema_decay(steps, decay=decay, warmup_power=power))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    dense = np.asarray(ema_decay(np.arange(0, 2 * 10**6, 97), decay=decay, warmup_power=power))
    assert np.all(dense <= decay) and np.all(dense >= 0.0)
    assert np.all(np.diff(dense) >= 0.0)
    assert dense[-1] == decay  # the cap is reached
    # Traced int32 step under jit.
    f = jax.jit(lambda s: ema_decay(s, decay=decay, warmup_power=power))
    np.testing.assert_allclose(float(f(jnp.int32(5))), 1.0 - 6.0 ** (-power), rtol=1e-12)


def test_ema_decay_k_diffusion_milestones():
    # k-diffusion's documented milestones with inv_gamma = 1: power 2/3 reaches 0.999 at
    # about 31.6K steps and 0.9999 at 1M; power 3/4 reaches 0.999 at 10K.
    at = lambda s, p: float(ema_decay(s, decay=1.0, warmup_power=p))  # noqa: E731
    assert at(10**4.5 - 1, 2 / 3) == pytest.approx(0.999, abs=1e-12)
    assert at(10**6 - 1, 2 / 3) == pytest.approx(0.9999, abs=1e-12)
    assert at(10**4 - 1, 3 / 4) == pytest.approx(0.999, abs=1e-12)


def test_ema_decay_rejects_bad_arguments():
    with pytest.raises(ValueError, match="warmup_power"):
        ema_decay(3, decay=0.99, warmup_power=-0.5)
    with pytest.raises(ValueError, match="decay"):
        ema_decay(3, decay=1.5)


# --------------------------------------------------------------------------- post-hoc EMA

T_TOTAL = 1000
SNAP_EVERY = 50


@pytest.fixture(scope="module")
def run():
    """A 1000-step random walk with EMAs at sigma_rel 0.05, 0.10 (stored), 0.07, 0.15 (targets)
    tracked directly, and snapshots of the stored two every 50 steps."""
    traj = random_walk(T_TOTAL, 4, seed=1)
    gammas = [G05, G10, sigma_rel_to_gamma(0.07), sigma_rel_to_gamma(0.15)]
    tracked = track(traj, gammas, ema0=np.zeros(4))
    snap_steps = np.arange(SNAP_EVERY, T_TOTAL + 1, SNAP_EVERY)
    steps = np.concatenate([snap_steps, snap_steps])
    snap_gammas = np.repeat([G05, G10], len(snap_steps))
    snaps = [tracked[T - 1, 0] for T in snap_steps] + [tracked[T - 1, 1] for T in snap_steps]
    return dict(traj=traj, gammas=gammas, tracked=tracked, steps=steps,
                snap_gammas=snap_gammas, snaps=snaps)


def kernel_matrix(steps, gammas, length):
    return np.stack([hand_kernel(T, g, length) for T, g in zip(steps, gammas)], axis=1)


@pytest.mark.parametrize("which,target_step", [(0, 500), (0, T_TOTAL), (1, 50), (1, 650)])
def test_posthoc_reconstructs_a_stored_profile_exactly(run, which, target_step):
    coeffs, rel = posthoc_coefficients(run["steps"], run["snap_gammas"], target_step,
                                       run["gammas"][which])
    one_hot = np.zeros(len(run["steps"]))
    one_hot[which * (T_TOTAL // SNAP_EVERY) + target_step // SNAP_EVERY - 1] = 1.0
    np.testing.assert_allclose(coeffs, one_hot, atol=1e-10)
    assert rel < 1e-12
    recon = reconstruct(run["snaps"], coeffs)
    np.testing.assert_allclose(recon, run["tracked"][target_step - 1, which], rtol=1e-11)


# Relative kernel residuals measured for these targets (2.46e-3, 6.52e-3, 5.80e-3, 1.56e-2).
# They are set by the snapshot spacing: every stored kernel ends with a jump at its own step,
# and a combination of kernels ending every 50 steps can only approximate a target whose width
# sigma_rel * T is 42 to 150 steps. 0.07 lies between the stored 0.05 and 0.10 (interpolation,
# best fit); 0.15 is wider than both (extrapolation) and worse; at step 600 the kernels are
# narrower in steps than at 1000 while the spacing stays 50, so the fit is worse again.
RESIDUAL_BOUND = {(0.07, T_TOTAL): 4e-3, (0.07, 600): 1e-2, (0.15, T_TOTAL): 1e-2,
                  (0.15, 600): 2.5e-2}


@pytest.mark.parametrize("sigma_rel,target_step", list(RESIDUAL_BOUND))
def test_posthoc_new_profile_within_cauchy_schwarz_bound(run, sigma_rel, target_step):
    which = 2 if sigma_rel == 0.07 else 3
    gamma = run["gammas"][which]
    coeffs, rel = posthoc_coefficients(run["steps"], run["snap_gammas"], target_step, gamma)
    assert rel < RESIDUAL_BOUND[(sigma_rel, target_step)]

    # The residual is the true kernel misfit, and the fit is the least-squares optimum: both
    # checked on the materialised kernel matrix.
    A = kernel_matrix(run["steps"], run["snap_gammas"], T_TOTAL)
    w_star = hand_kernel(target_step, gamma, T_TOTAL)
    misfit = np.linalg.norm(A @ coeffs - w_star)
    np.testing.assert_allclose(rel, misfit / np.linalg.norm(w_star), rtol=1e-9)
    best, *_ = np.linalg.lstsq(A, w_star, rcond=None)
    np.testing.assert_allclose(misfit, np.linalg.norm(A @ best - w_star), rtol=1e-9)

    recon = reconstruct(run["snaps"], coeffs)
    direct = run["tracked"][target_step - 1, which]
    err = np.abs(recon - direct)
    bound = rel * np.linalg.norm(w_star) * np.linalg.norm(run["traj"], axis=0)
    assert np.all(err <= bound + 1e-10 * np.abs(direct))
    # And the bound is not vacuous: the error is of its order, not zero.
    assert np.all(err > 0)


@pytest.mark.parametrize("stored", [[G10], [G05, G10]])
@pytest.mark.parametrize("sigma_rel,target_step", [(0.07, 200), (0.15, 137), (0.25, 90)])
def test_posthoc_dense_snapshots_are_exact(stored, sigma_rel, target_step):
    # Snapshots at every step: w_{1,g}, ..., w_{T,g} are triangular (w_T ends at T with a
    # nonzero weight), so they span every kernel on 1..T and the fit is exact.
    T = 200
    traj = random_walk(T, 3, seed=2)
    gamma = sigma_rel_to_gamma(sigma_rel)
    tracked = track(traj, [*stored, gamma], ema0=np.zeros(3))
    steps = np.tile(np.arange(1, T + 1), len(stored))
    gammas = np.repeat(stored, T)
    snaps = [tracked[s - 1, j] for j in range(len(stored)) for s in range(1, T + 1)]
    coeffs, rel = posthoc_coefficients(steps, gammas, target_step, gamma)
    assert rel < 1e-12
    np.testing.assert_allclose(reconstruct(snaps, coeffs), tracked[target_step - 1, -1],
                               rtol=1e-10)


def test_posthoc_large_step_and_exponent():
    # T = 10^6 and gamma ~ 97 (sigma_rel 0.01): T^(g+1) overflows float64; the stored profile
    # must still come back one-hot with no misfit, and a new one with a finite residual.
    g01 = sigma_rel_to_gamma(0.01)
    snap_steps = np.arange(1, 11) * 100_000
    steps = np.concatenate([snap_steps, snap_steps])
    gammas = np.repeat([g01, G05], 10)
    coeffs, rel = posthoc_coefficients(steps, gammas, 700_000, g01)
    one_hot = np.zeros(20)
    one_hot[6] = 1.0
    np.testing.assert_allclose(coeffs, one_hot, atol=1e-10)
    assert rel < 1e-12
    coeffs, rel = posthoc_coefficients(steps, gammas, 10**6, sigma_rel_to_gamma(0.03))
    assert np.all(np.isfinite(coeffs)) and 0.0 < rel < 1.0


def test_posthoc_errors():
    with pytest.raises(ValueError, match="latest snapshot"):
        posthoc_coefficients([100, 200], [G05, G10], 201, G05)
    with pytest.raises(ValueError, match="at least one snapshot"):
        posthoc_coefficients([], [], 10, G05)
    with pytest.raises(ValueError, match="same length"):
        posthoc_coefficients([100, 200], [G05], 100, G05)
    with pytest.raises(ValueError, match="positive integer"):
        posthoc_coefficients([0, 200], [G05, G10], 100, G05)
    with pytest.raises(ValueError, match="gamma"):
        posthoc_coefficients([100, 200], [G05, -1.0], 100, G05)


# --------------------------------------------------------------------------- reconstruct


def test_reconstruct_pytree_dtypes():
    rng = np.random.default_rng(3)
    snaps = [
        {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(2,)), jnp.bfloat16),
         "h": rng.normal(size=(4,))}
        for _ in range(3)
    ]
    c = np.array([0.5, -0.25, 0.75])
    out = reconstruct(snaps, c)
    assert jax.tree.structure(out) == jax.tree.structure(snaps[0])
    for name in ("w", "b", "h"):
        exact = sum(ci * np.asarray(s[name], np.float64) for ci, s in zip(c, snaps))
        assert out[name].dtype == snaps[0][name].dtype
        np.testing.assert_array_equal(np.asarray(out[name]),
                                      exact.astype(np.asarray(snaps[0][name]).dtype))
    assert isinstance(out["w"], jax.Array) and isinstance(out["h"], np.ndarray)


def test_reconstruct_errors():
    a = {"w": np.ones(2)}
    with pytest.raises(ValueError, match="one coefficient per snapshot"):
        reconstruct([a, a], [1.0])
    with pytest.raises(ValueError, match="structure"):
        reconstruct([a, {"v": np.ones(2)}], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one"):
        reconstruct([], [])
    with pytest.raises(TypeError, match="floating"):
        reconstruct([{"n": np.arange(3)}], [1.0])
