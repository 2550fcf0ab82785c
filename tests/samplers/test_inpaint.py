"""Inpainting and colorization by replacement: exact known pixels, exact conditionals where the
method is exact (independent coordinates), a real pull towards the conditional where it is not,
clear input errors, jit.

All models are closed forms on the VP linear path (``vp_closed_forms.coefs``): for Gaussian data
N(m, C), eps_hat(x, t) = sigma S^{-1} (x - alpha m) with S = alpha^2 C + sigma^2 I.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.processes import VPLinear
from genflow.samplers import (
    DPMSolverMultistep,
    DPMSolverSinglestep,
    Heun,
    PredictorCorrector,
    colorization_matrix,
    colorize,
    inpaint,
    log_snr_uniform,
)
from vp_closed_forms import coefs

VP = VPLinear()


def _bc(c, x):
    return c.reshape(c.shape + (1,) * (x.ndim - 1))


def independent_eps(m, var):
    """Exact eps model of data with independent entries N(m, var) (m, var broadcast against
    one example)."""

    def model_fn(x, t, cond=None):
        alpha, sigma, *_ = coefs("linear", t)
        alpha, sigma = _bc(alpha, x), _bc(sigma, x)
        return sigma * (x - alpha * m) / (alpha**2 * var + sigma**2)

    return model_fn


def within(samples, mean, var, n_se=5.0):
    """Sample mean and variance (per column) within ``n_se`` standard errors of the truth."""
    n = samples.shape[0]
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), n_se * np.sqrt(var / n))
    np.testing.assert_array_less(np.abs(samples.var(0) - var), n_se * var * np.sqrt(2.0 / n))


# --------------------------------------------------------------------------- 1. exact known pixels
IMG = (250, 4, 4, 3)  # the shape of the colorization test too (shared compilations)
RNG = np.random.default_rng(0)
X_KNOWN = RNG.normal(size=IMG)
MASK = RNG.integers(0, 2, size=IMG).astype(np.float64)
RGB_M = np.array([0.5, -0.3, 0.1])
RGB_VAR = 0.3
IMG_MODEL = independent_eps(RGB_M, RGB_VAR)
STEPS = 6

# Per pixel three coordinates: 0 and 1 correlated, N(0, [[1, rho], [rho, 1]]), and 2 independent
# of them, N(0.8, 2.5); coordinate 0 is known (drawn from its marginal N(0, 1)). Same shape as
# the images, so that the runs share their compiled random-number draws.
RHO = 0.95
GAUSS_M = np.array([0.0, 0.0, 0.8])
GAUSS_COV = np.array([[1.0, RHO, 0.0], [RHO, 1.0, 0.0], [0.0, 0.0, 2.5]])
GAUSS_MASK = np.array([1, 0, 0])
N_GAUSS = int(np.prod(IMG[:-1]))


def gaussian_eps(m, cov):
    """Exact eps model of data N(m, cov): sigma U diag(1 / (alpha^2 l + sigma^2)) U^T (x -
    alpha m) with cov = U diag(l) U^T."""
    lam, u = np.linalg.eigh(cov)

    def model_fn(x, t, cond=None):
        alpha, sigma, *_ = coefs("linear", t)
        alpha, sigma = _bc(alpha, x), _bc(sigma, x)
        z = (x - alpha * m) @ u
        return sigma * (z / (alpha**2 * lam + sigma**2)) @ u.T

    return model_fn


CASES = {  # solver, ts, image mask (None: the Gaussian data and GAUSS_MASK), nfe
    "dpm++2m": (DPMSolverMultistep(order=2, algorithm="dpmsolver++"),
                np.linspace(1.0, 1e-3, STEPS + 1), MASK, STEPS),
    "dpm3s": (DPMSolverSinglestep(order=3),
              np.linspace(1.0, 1e-3, STEPS + 1), MASK[..., :1], STEPS),  # (b, H, W, 1)
    "heun": (Heun(), np.linspace(1.0, 1e-3, STEPS + 1), MASK[0] == 1, 2 * STEPS),  # (H, W, C)
    "pc": (PredictorCorrector(), np.linspace(1.0, 1e-3, 301), None, 600),
    "dpm++2m-gauss": (DPMSolverMultistep(),
                      np.asarray(log_snr_uniform(VP, 1.0, 1e-3, 25)), None, 25),
}


RECONSTRUCTION_WEIGHT = {"dpm++2m-gauss-guided": 2.0}
CASES["dpm++2m-gauss-guided"] = CASES["dpm++2m-gauss"]


@functools.lru_cache(maxsize=None)
def run_case(name):
    """One inpainting run (shared by the tests); returns (result, ts, x_known, known)."""
    solver, ts, mask, _ = CASES[name]
    if mask is None:
        model, mask = gaussian_eps(GAUSS_M, GAUSS_COV), GAUSS_MASK
        data = np.zeros(IMG)
        data[..., 0] = np.random.default_rng(5).normal(size=IMG[:-1])
    else:
        model, data = IMG_MODEL, X_KNOWN
    known = np.broadcast_to(np.asarray(mask) == 1, data.shape)
    x_known = np.where(known, data, np.nan)  # the unknown entries are never read
    res = inpaint(model, VP, solver, key=jax.random.key(1), x_known=x_known, mask=mask,
                  prediction="eps", ts=ts, return_trajectory=True,
                  reconstruction_weight=RECONSTRUCTION_WEIGHT.get(name, 0.0))
    return res, ts, data, known


@pytest.mark.parametrize("name", ["pc", "dpm++2m", "dpm3s", "heun"])
def test_known_pixels_are_kept_bitwise(name):
    solver, _, _, nfe = CASES[name]
    res, ts, x_known, known = run_case(name)
    x = np.asarray(res.x)
    assert x.shape == x_known.shape and x.dtype == np.float64
    assert np.array_equal(x.view(np.int64)[known], x_known.view(np.int64)[known])
    assert np.all(np.isfinite(x))
    # The generated entries are neither the known data nor the prior draw left alone.
    traj = np.asarray(res.trajectory)
    assert np.all(x[~known] != x_known[~known])
    assert np.all(x[~known] != traj[0][~known])
    np.testing.assert_array_equal(traj[-1], x)
    assert res.nfe == nfe

    # Along the grid the known entries are alpha_t x_known + sigma_t eps: one eps for a
    # deterministic solver, a fresh one at every step for a stochastic solver.
    alpha, sigma, *_ = coefs("linear", ts[:-1], np)
    eps = np.stack([((traj[i] - a * x_known) / s)[known] for i, (a, s) in
                    enumerate(zip(alpha, sigma))])
    assert 0.5 < eps[0].std() < 1.5
    if solver.stochastic:
        assert np.all(np.abs(np.diff(eps, axis=0)).max(axis=1) > 0.1)
    else:
        np.testing.assert_allclose(eps, np.broadcast_to(eps[0], eps.shape), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- 2, 3. Gaussian data
def gaussian_samples(name):
    return np.asarray(run_case(name)[0].x).reshape(N_GAUSS, 3)


@pytest.mark.parametrize("name", ["dpm++2m-gauss", "pc"])
def test_independent_coordinates_get_their_exact_marginal(name):
    """Where the unknown entries are independent of the known ones, replacement is exact:
    coordinate 2 follows N(0.8, 2.5), whatever the known value."""
    x = gaussian_samples(name)
    within(x[:, 2:], GAUSS_M[2:], GAUSS_COV[2, 2:])
    slope = np.polyfit(x[:, 0], x[:, 2], 1)[0]
    assert abs(slope) < 5 * np.sqrt(GAUSS_COV[2, 2] / N_GAUSS)


@pytest.mark.parametrize("name, low", [("pc", 0.7), ("dpm++2m-gauss", 0.4)])
def test_correlated_coordinates_move_towards_the_conditional(name, low):
    """The exact conditional mean of coordinate 1 given the known coordinate 0 is rho * x_0
    (slope 0.95). Replacement is biased for correlated data (the model sees x_0 noised to
    the current time, which forgets x_0 at high noise), so the slope falls short of 0.95, but
    the generated coordinate must clearly follow the known one: the prior draw it starts from
    is independent of x_0 (slope 0)."""
    x = gaussian_samples(name)
    slope = np.polyfit(x[:, 0], x[:, 1], 1)[0]
    assert low < slope < RHO + 5 / np.sqrt(N_GAUSS)


def test_reconstruction_guidance_reaches_the_conditional():
    """With reconstruction guidance the generated coordinate follows the known one with the
    conditional's slope rho and residual variance 1 - rho^2 (within 0.1 and 25 %; plain
    replacement with the same solver: slope about 0.5), the known entries stay exact, and the
    independent coordinate 2 is untouched: its data estimate does not depend on x_0, so the
    guidance gradient there is zero."""
    res, _, data, known = run_case("dpm++2m-gauss-guided")
    x = np.asarray(res.x).reshape(N_GAUSS, 3)
    slope = np.polyfit(x[:, 0], x[:, 1], 1)[0]
    plain = gaussian_samples("dpm++2m-gauss")
    plain_slope = np.polyfit(plain[:, 0], plain[:, 1], 1)[0]
    assert abs(slope - RHO) < 0.1 < abs(plain_slope - RHO)
    residual = x[:, 1] - slope * x[:, 0]
    assert abs(residual.var() / (1 - RHO**2) - 1) < 0.25
    np.testing.assert_array_equal(np.asarray(res.x)[known], data[known])
    np.testing.assert_allclose(x[:, 2], plain[:, 2], rtol=0, atol=1e-12)
    assert res.nfe == CASES["dpm++2m-gauss"][3]


def test_negative_reconstruction_weight_is_refused():
    with pytest.raises(ValueError, match="reconstruction_weight must be >= 0"):
        inpaint(IMG_MODEL, VP, DPMSolverMultistep(), key=jax.random.key(0), x_known=X_KNOWN,
                mask=MASK, prediction="eps", num_steps=2, reconstruction_weight=-1.0)


# --------------------------------------------------------------------------- 4. colorization
def test_colorization_matrix_is_orthogonal_with_the_gray_axis_first():
    q = np.asarray(colorization_matrix(jnp.float64))
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-15)
    np.testing.assert_allclose(q[0], np.ones(3) / np.sqrt(3.0), rtol=1e-15)


def test_colorize_keeps_gray_and_samples_the_colour_conditional():
    """Channels independent with equal variance: the colour coordinates y_1, y_2 of y = x Q^T are
    independent of the gray level, so colorization is exact: y_{1,2} ~ N((m Q^T)_{1,2}, v)."""
    b, hw = IMG[0], IMG[1:3]
    gray = np.random.default_rng(7).normal(size=(b, *hw, 1))
    res = colorize(independent_eps(RGB_M, RGB_VAR), VP, DPMSolverMultistep(),
                   key=jax.random.key(8), gray=gray, prediction="eps", num_steps=25,
                   grid=log_snr_uniform, return_trajectory=True)
    x = np.asarray(res.x)
    assert x.shape == (b, *hw, 3) and np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(-1, keepdims=True), gray, rtol=0, atol=1e-12)
    assert res.trajectory.shape == (26, b, *hw, 3)
    np.testing.assert_array_equal(np.asarray(res.trajectory[-1]), x)
    q = np.asarray(colorization_matrix(jnp.float64))
    colour = (x @ q.T)[..., 1:].reshape(-1, 2)
    within(colour, (RGB_M @ q.T)[1:], np.full(2, RGB_VAR))


# --------------------------------------------------------------------------- 5. bad input
def never_called(x, t, cond=None):
    raise AssertionError("the model must not run on bad input")


def test_bad_mask_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2,\).*\(250, 4, 4, 3\)"):
        inpaint(never_called, VP, Heun(), key=jax.random.key(0), x_known=X_KNOWN,
                mask=np.ones(2), prediction="eps", num_steps=2)
    with pytest.raises(ValueError, match="does not broadcast"):  # would enlarge x_known
        inpaint(never_called, VP, Heun(), key=jax.random.key(0), x_known=X_KNOWN[:1],
                mask=MASK, prediction="eps", num_steps=2)


def test_non_binary_mask():
    with pytest.raises(ValueError, match=r"only 0 \(generate\) and 1 \(known\).*0\.5"):
        inpaint(never_called, VP, Heun(), key=jax.random.key(0), x_known=X_KNOWN,
                mask=np.where(MASK == 1, 0.5, 0.0), prediction="eps", num_steps=2)


def test_colorize_needs_one_gray_channel_and_an_rgb_model():
    with pytest.raises(ValueError, match="one channel"):
        colorize(never_called, VP, Heun(), key=jax.random.key(0), gray=np.zeros((2, 4, 4, 3)),
                 prediction="eps", num_steps=2)

    def gray_model(x, t, cond=None):  # a model of 1-channel images
        return x.mean(-1, keepdims=True)

    with pytest.raises(ValueError, match="RGB"):
        colorize(gray_model, VP, Heun(), key=jax.random.key(0), gray=np.zeros((2, 4, 4, 1)),
                 prediction="eps", num_steps=2)


# --------------------------------------------------------------------------- 6. jit
def test_jit_matches_eager_with_a_traced_mask():
    solver, ts, mask, _ = CASES["dpm++2m"]
    eager, _, data, known = run_case("dpm++2m")

    @jax.jit
    def run(key, x_known, mask):
        return inpaint(IMG_MODEL, VP, solver, key=key, x_known=x_known, mask=mask,
                       prediction="eps", ts=ts).x

    jitted = np.asarray(run(jax.random.key(1), np.where(known, data, np.nan), mask))
    np.testing.assert_allclose(jitted, np.asarray(eager.x), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(jitted[known], data[known])
