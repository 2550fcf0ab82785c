"""RF-Solver: convergence orders, inversion round trips and the solver contract.

Truth comes from closed forms written out here (float64): a 2-D Gaussian mixture under
rectified flow (``alpha = 1 - t``, ``sigma = t``) has the exact velocity

    v(x, t) = sum_k r_k(x, t) (eps_k - x0_k),   S_k = alpha^2 V_k + sigma^2 (per dimension),
    x0_k = m_k + alpha V_k (x - alpha m_k) / S_k,   eps_k = sigma (x - alpha m_k) / S_k,

with responsibilities r_k proportional to w_k N(x; alpha m_k, S_k). Its ODE has no closed
solution, so the reference is classic RK4 (written here) with 4096 steps, whose own error is
below 1e-12. Orders are fitted with one compilation per solver: the grids are padded with
zero-length steps (identities for every solver tested here) and vmapped.
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import KINDS, PROCESSES, X1 as X1_GAUSS, coefs, exact_flow, fit_order, gaussian_model
from genflow.processes import RectifiedFlow
from genflow.samplers import (
    Denoiser,
    Euler,
    RFSolver,
    reconstruction_error,
    round_trip,
    sample,
)

RF = RectifiedFlow()
W = np.array([0.3, 0.5, 0.2])
MEANS = np.array([[-1.5, 0.5], [1.0, 1.2], [0.5, -1.5]])
VARS = np.array([[0.2, 0.4], [0.3, 0.15], [0.5, 0.25]])
X1 = np.array([[-1.2, 0.4], [0.3, 1.7], [2.0, -0.9], [0.0, 0.0], [-0.5, -1.0], [1.5, 1.5]])


def mixture_velocity(x, t, cond=None):
    """The exact rectified-flow velocity of the mixture (a "velocity" model), ``t: (b,)``."""
    a, s = (1.0 - t)[:, None, None], t[:, None, None]
    S = a**2 * VARS + s**2
    resid = x[:, None, :] - a * MEANS
    log_r = jnp.log(W) - 0.5 * jnp.sum(jnp.log(2 * math.pi * S) + resid**2 / S, axis=-1)
    r = jax.nn.softmax(log_r, axis=-1)[..., None]
    x0 = MEANS + a * VARS * resid / S
    eps = s * resid / S
    return jnp.sum(r * (eps - x0), axis=1)


@jax.jit
def rk4(x, ts_batch):
    """Classic fourth-order Runge-Kutta on the exact mixture ODE, one run per grid row."""

    def f(y, t):
        return mixture_velocity(y, jnp.full((y.shape[0],), t))

    def body(y, times):
        a, b = times
        h = b - a
        k1 = f(y, a)
        k2 = f(y + h / 2 * k1, a + h / 2)
        k3 = f(y + h / 2 * k2, a + h / 2)
        k4 = f(y + h * k3, b)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    return jax.vmap(lambda ts: jax.lax.scan(body, x, (ts[:-1], ts[1:]))[0])(ts_batch)


def padded_grids(steps, n_max, t0, t1, at_start=False):
    """Uniform grids t0 -> t1 with ``steps`` intervals, padded with copies of t1 (of t0 with
    ``at_start``)."""
    rows = []
    for n in steps:
        ts, pad = np.linspace(t0, t1, n + 1), np.full(n_max - n, t0 if at_start else t1)
        rows.append(np.concatenate([pad, ts] if at_start else [ts, pad]))
    return np.stack(rows)


@jax.jit
def sample_grids(solver, ts_batch, x1):
    run = lambda ts: sample(mixture_velocity, RF, solver, key=jax.random.key(0),  # noqa: E731
                            x_init=x1, prediction="velocity", ts=ts).x
    return jax.vmap(run)(ts_batch)


@jax.jit
def round_trip_grids(ts_batch, ts_euler, x):
    """Round trips for RF-Solver-2 and -3 on each grid of ts_batch and Euler on ts_euler."""
    def runs(solver, grids):
        return jax.vmap(lambda ts: round_trip(mixture_velocity, RF, solver, x,
                                              prediction="velocity", ts=ts).x)(grids)
    return runs(RFSolver(order=2), ts_batch), runs(RFSolver(order=3), ts_batch), runs(
        Euler(), ts_euler)


@pytest.fixture(scope="module")
def references():
    """RK4 from X1 (t = 1) to t = 0 with 4096 and (padded) 2048 steps."""
    return np.asarray(rk4(X1, padded_grids([4096, 2048], 4096, 1.0, 0.0)))


@pytest.fixture(scope="module")
def data_points(references):
    """The mixture's data points reached from X1 by the reference flow."""
    return references[0]


# --------------------------------------------------------------------------- orders
@pytest.mark.parametrize("order,steps", [(2, [16, 32, 64, 128]), (3, [8, 16, 32, 64])])
def test_convergence_order_on_gaussian_mixture(order, steps, data_points):
    """Noise to data (t = 1 -> 0) with the exact velocity; error against RK4 at 4096 steps."""
    xs = np.asarray(sample_grids(RFSolver(order=order), padded_grids(steps, steps[-1], 1.0, 0.0),
                                 X1))
    errors = np.abs(xs - data_points).max(axis=(1, 2))
    assert np.all(np.diff(errors) < 0), errors
    fitted = fit_order(steps, errors)
    print(f"fitted order RF-Solver-{order}: {fitted:.3f} {errors}")
    assert abs(fitted - order) < 0.3, (fitted, errors)


def test_reference_is_converged(references):
    np.testing.assert_allclose(references[1], references[0], atol=1e-11)


# --------------------------------------------------------------------------- inversion
ROUND_TRIP_STEPS = [10, 16, 32, 64, 128]


def test_round_trip_beats_euler_and_converges(data_points):
    """Data -> noise -> data on the same grid (t = 0 .. 1) with the exact velocity.

    At NFE 20 per direction RF-Solver-2 (10 steps) reconstructs far better than Euler
    (20 steps). The reconstruction error falls at order 3 for both RF-Solvers: for the order-2
    solver the leading local errors of a step and of its reverse, ``C h^3`` and ``C (-h)^3``,
    cancel (an even-order one-step method gains an order in a round trip on the same grid);
    for order 3 they add, ``2 C h^4``. Euler's round trip stays first order.
    """
    n_max = ROUND_TRIP_STEPS[-1]
    grids = padded_grids(ROUND_TRIP_STEPS, n_max, 0.0, 1.0)
    out = round_trip_grids(grids, padded_grids([20, 40], n_max, 0.0, 1.0), data_points)
    rel2, rel3, rel_euler = ([float(reconstruction_error(data_points, x)) for x in xs]
                             for xs in out)
    rel, rel_euler = {2: np.array(rel2), 3: np.array(rel3)}, np.array(rel_euler)
    print("relative round-trip errors", rel, rel_euler)

    assert rel[2][0] < 0.1 * rel_euler[0], (rel[2][0], rel_euler[0])  # both at NFE 20
    assert 0.8 < fit_order([20, 40], rel_euler) < 1.3, rel_euler
    for order in (2, 3):
        errs = rel[order][1:]  # 16 .. 128 steps: the asymptotic range
        assert np.all(np.diff(errs) < 0), (order, errs)
        fitted = fit_order(ROUND_TRIP_STEPS[1:], errs)
        assert abs(fitted - 3.0) < 0.3, (order, fitted, errs)


def test_reconstruction_error_formula():
    x = np.array([[3.0, 0.0], [0.0, 4.0]])
    x_rec = x + np.array([[0.0, 1.0], [0.0, 0.0]])
    assert float(reconstruction_error(x, x_rec)) == pytest.approx(1.0 / 5.0)
    np.testing.assert_allclose(reconstruction_error(x, x_rec, per_sample=True), [1 / 3, 0.0])
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_error(x, x[:1])


# --------------------------------------------------------------------------- the step itself
@partial(jax.jit, static_argnames="name")
def _one_step(solver, x, t_cur, t_next, name):
    denoise = Denoiser(gaussian_model(name, "eps"), PROCESSES[name], "eps")
    return solver.step(denoise, None, x, t_cur, t_next, key=jax.random.key(0))[0]


@pytest.mark.parametrize("order", [2, 3])
def test_one_step_is_the_method(order):
    """One step on the exact Gaussian field (VP linear, eps model) equals the Taylor formula
    with finite differences evaluated here in numpy, in both directions of time."""
    name = "linear"

    def velocity(x, t):
        a, s, da, ds, _ = coefs(name, t, np)
        M, V = np.array([0.8, -0.5]), np.array([0.2, 2.5])
        S = a**2 * V + s**2
        return da * (M + a * V * (x - a * M) / S) + ds * s * (x - a * M) / S

    for t_cur, t_next in [(0.6, 0.35), (0.35, 0.6)]:
        h = t_next - t_cur
        k1 = velocity(X1_GAUSS, t_cur)
        k2 = velocity(X1_GAUSS + h / 2 * k1, t_cur + h / 2)
        d1 = (k2 - k1) / (h / 2)
        if order == 2:
            expected = X1_GAUSS + h * k1 + h**2 / 2 * d1
        else:
            k3 = velocity(X1_GAUSS + h * k1 + h**2 * d1, t_next)
            du = (-3 * k1 + 4 * k2 - k3) / h
            ddu = 4 * (k1 - 2 * k2 + k3) / h**2
            expected = X1_GAUSS + h * k1 + h**2 / 2 * du + h**3 / 6 * ddu
        got = _one_step(RFSolver(order=order), X1_GAUSS, t_cur, t_next, name)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_order3_down_to_t_zero_stays_finite_and_converges():
    """VP linear to t = 0 (sigma = 0, sigma' infinite): the last order-3 probe would be 0 * inf;
    that step falls back to order 2 and the solution still converges at order 3."""
    steps = [8, 16, 32]
    proc = PROCESSES["linear"]

    @jax.jit
    def run(ts_batch):
        model = gaussian_model("linear", "eps")
        return jax.vmap(lambda ts: sample(model, proc, RFSolver(order=3), key=jax.random.key(0),
                                          x_init=X1_GAUSS, prediction="eps", ts=ts).x)(ts_batch)

    xs = np.asarray(run(padded_grids(steps, steps[-1], 1.0, 0.0, at_start=True)))
    assert np.all(np.isfinite(xs))
    errors = np.abs(xs - exact_flow("linear", X1_GAUSS, 1.0, 0.0)).max(axis=(1, 2))
    # (VP's steep start makes the coarse grids pre-asymptotic: the fit exceeds 3 here.)
    assert np.all(np.diff(errors) < 0) and errors[-1] < 1e-4, errors
    assert fit_order(steps, errors) > 2.7, errors


# --------------------------------------------------------------------------- contract
CONTRACT_STEPS = 3


_TRACES = []
PATHS = {"rf": (RF, 1.0 - 1e-3)}  # alpha_1 = 0: eps/x0/score models cannot start at t = 1


@partial(jax.jit, static_argnames="order")
def _every_kind(order):
    """Trajectories for every prediction kind on rectified flow, in one program (VP paths are
    covered by the one-step test and the contract of the kinds' conversions)."""
    out = {}
    for name, (proc, t_start) in PATHS.items():
        for kind in KINDS:
            res = sample(gaussian_model(name, kind, counter=_TRACES), proc, RFSolver(order=order),
                         key=jax.random.key(0), x_init=X1_GAUSS, prediction=kind,
                         num_steps=CONTRACT_STEPS, t_start=t_start, return_trajectory=True)
            assert res.nfe == order * CONTRACT_STEPS
            out[name, kind] = res.trajectory
    return out


@pytest.mark.parametrize("order", [3])  # the kinds are the Denoiser's: one order suffices
def test_every_prediction_kind_and_path(order):
    """Every kind gives the eps run's trajectory (shape and dtype kept), each model traced
    once for the shape check and ``order`` times in the scan body; the result is close to
    the exact flow (3 steps: loose, but not arbitrary)."""
    _TRACES.clear()
    out = _every_kind(order)
    assert _TRACES == ["traced"] * (len(out) * (1 + order)), _TRACES
    for name, (_, t_start) in PATHS.items():
        kinds = [kind for n, kind in out if n == name]
        ref = np.asarray(out[name, kinds[0]])
        assert ref.shape == (CONTRACT_STEPS + 1, *X1_GAUSS.shape) and ref.dtype == np.float64
        assert np.all(np.isfinite(ref)) and not np.allclose(ref[1], X1_GAUSS)
        for kind in kinds[1:]:
            np.testing.assert_allclose(out[name, kind], ref, rtol=1e-9, atol=1e-9,
                                       err_msg=f"{name} {kind}")
        exact = exact_flow(name, X1_GAUSS, t_start, 1e-3)
        assert np.abs(ref[-1] - exact).max() < 0.3, name


def test_solver_object():
    assert RFSolver().order == 2 and not RFSolver().stochastic and RFSolver(3).nfe_per_step == 3
    # The order is static: the two solvers are different tree structures, no leaves.
    s2, s3 = (jax.tree_util.tree_structure(RFSolver(order=o)) for o in (2, 3))
    assert s2 != s3 and jax.tree_util.tree_leaves(RFSolver(order=3)) == []
    for bad in (1, 4, 2.0, True, "2"):
        with pytest.raises(ValueError, match="order 2 or 3"):
            RFSolver(order=bad)
