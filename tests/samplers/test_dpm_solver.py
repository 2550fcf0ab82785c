"""Multistep DPM-Solver / DPM-Solver++ against closed forms (float64, see tests/conftest.py).

Truth comes from the exact Gaussian flow map (_gaussian.exact_flow), from a fine run on a
two-component Gaussian mixture, from DDIM (= DPM-Solver-1) and from a plain numpy re-derivation
of the multistep update written below in the paper's phi-function form (dividing by h), which
also pins down the order schedule (warm-up and lower_order_final).

Each configuration is compiled once: every grid is padded at the data end with copies of t_end
to a common length (a zero-length step leaves x and the solver's update unchanged) and the
grids are vmapped in one jitted call.
"""

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import (
    fit_order,
    KINDS,
    MIX_M,
    M,
    PROCESSES,
    VAR,
    X1,
    coefs,
    exact_flow,
    gaussian_model,
    log_snr,
    mixture_eps_model,
    t_from_log_snr,
)
from genflow.processes import VPLinear
from genflow.samplers import DDIM, sample
from genflow.samplers._dpm_solver import DPMSolverMultistep

T_START, T_END = 1.0, 1e-3
ALGORITHMS = ["dpmsolver", "dpmsolver++"]


def log_snr_grid(name, steps):
    lam = np.linspace(log_snr(name, T_START), log_snr(name, T_END), steps + 1)
    ts = t_from_log_snr(name, lam)
    ts[0], ts[-1] = T_START, T_END
    return ts


def padded(ts, n_max):
    return np.concatenate([ts, np.full(n_max + 1 - ts.shape[0], ts[-1])])


def run_grids(model, proc, solver, ts_batch, x1):
    """Solve from x1 on each row of ts_batch (one compilation per model/solver/shape)."""
    run = lambda ts: sample(model, proc, solver, key=jax.random.key(0), x_init=x1,  # noqa: E731
                            prediction="eps", ts=ts).x
    return np.asarray(jax.jit(jax.vmap(run))(jnp.asarray(ts_batch)))


# --------------------------------------------------------------------------- Gaussian orders
# Step counts per order: errors from ~1e-1 down to ~1e-5, far above round-off.
GAUSS_STEPS = {1: [20, 40, 80, 160], 2: [20, 40, 80, 160], 3: [10, 20, 40, 80]}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("order,name", [(1, "linear"), (2, "linear"), (2, "cosine"),
                                        (3, "linear")])
def test_gaussian_convergence_order(order, name, algorithm):
    """Fitted order on the log-SNR-uniform grid, exact Gaussian model, exact flow map.

    Orders 1 and 2 converge with exactly their order. Order 3 converges *faster* than 3 on
    Gaussian data (local slopes 3.3 to 4.1 over 10..80 steps: the leading h^3 term of the
    global error nearly cancels for this linear flow), so it is bounded from below here and
    its order is fitted on the (non-linear) Gaussian mixture below. For comparison, the
    reference's coefficient of the second divided difference (half of ours) gives 2.0 here.
    """
    steps = GAUSS_STEPS[order]
    solver = DPMSolverMultistep(order=order, algorithm=algorithm, lower_order_final=False)
    ts_batch = np.stack([padded(log_snr_grid(name, n), steps[-1]) for n in steps])
    xs = run_grids(gaussian_model(name, "eps"), PROCESSES[name], solver, ts_batch, X1)
    errors = np.abs(xs - exact_flow(name, X1, T_START, T_END)).max(axis=(1, 2))
    assert np.all(np.diff(errors) < 0), errors
    fitted = fit_order(steps, errors)
    print(f"fitted order dpm {algorithm}-{order} {name} gaussian: {fitted:.3f}")
    if order < 3:
        assert abs(fitted - order) < 0.3, (fitted, errors)
    else:
        assert 2.9 < fitted < 4.3, (fitted, errors)
        assert errors[-1] < 1e-4, errors


# --------------------------------------------------------------------------- mixture orders
MIX_STEPS = {2: [20, 40, 80, 160], 3: [20, 28, 40, 56, 80]}
MIX_REF_STEPS = 1280


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("order,variant", [(2, "midpoint"), (2, "taylor"), (3, "midpoint")])
def test_gaussian_mixture_convergence_order(order, variant, algorithm):
    """Against the same solver on 1280 steps (its error there is below 1e-7). Order 1 is
    DDIM (test_order_one_is_ddim), whose order is fitted in test_order.py."""
    steps = MIX_STEPS[order]
    solver = DPMSolverMultistep(order=order, algorithm=algorithm, variant=variant,
                                lower_order_final=False)
    grids = [padded(log_snr_grid("linear", n), MIX_REF_STEPS) for n in steps + [MIX_REF_STEPS]]
    x1 = np.linspace(-2.5, 2.5, 7)[:, None]
    xs = run_grids(mixture_eps_model("linear"), VPLinear(), solver, np.stack(grids), x1)
    errors = np.abs(xs[:-1] - xs[-1]).max(axis=(1, 2))
    assert np.all(np.diff(errors) < 0), errors
    fitted = fit_order(steps, errors)
    print(f"fitted order dpm {algorithm}-{order} {variant} linear mixture: {fitted:.3f}")
    assert abs(fitted - order) < 0.3, (fitted, errors)
    # The flow separates the modes: the reference ends near the component means.
    assert np.all(np.abs(xs[-1, :, 0][:, None] - MIX_M).min(axis=1) < 2.0)


# --------------------------------------------------------------------------- exact updates
def numpy_multistep(name, order, algorithm, lower_order_final, ts, x, variant="midpoint",
                    third=2.0):
    """The multistep method in the paper's form, in numpy, with the exact Gaussian model.

    r0 = h0 / h, r1 = h1 / h, D1_0 = (D0 - D1) / r0, D1_1 = (D1 - D2) / r1,
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1); order 2 uses
    the midpoint correction -1/2 c phi_1 D1_0 (the Taylor variant: c phi_2 D1_0), order 3
    adds c phi_2 D1 and ``third`` c phi_3 D2 with the phi functions of the respective form
    (``third = 2`` is exact, 1 is the reference implementation's coefficient).
    """
    n = len(ts) - 1
    data = algorithm == "dpmsolver++"
    hist = []  # (lambda, model output), most recent last
    for i in range(n):
        t, t_n = ts[i], ts[i + 1]
        a, s, *_ = coefs(name, t, np)
        a_n, s_n, *_ = coefs(name, t_n, np)
        S = a**2 * VAR + s**2
        d0 = M + a * VAR * (x - a * M) / S if data else s * (x - a * M) / S
        lam, lam_n = log_snr(name, t), log_snr(name, t_n)
        h = lam_n - lam
        k = min(order, i + 1)
        if lower_order_final and n < 10:
            k = min(k, n - i)
        if data:
            phi1 = math.expm1(-h)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            x_new = s_n / s * x - a_n * phi1 * d0
            if k == 2 and variant == "midpoint":
                r0 = (lam - hist[-1][0]) / h
                x_new = x_new - 0.5 * a_n * phi1 * (d0 - hist[-1][1]) / r0
            elif k == 2:
                r0 = (lam - hist[-1][0]) / h
                x_new = x_new + a_n * phi2 * (d0 - hist[-1][1]) / r0
            elif k == 3:
                r0, r1 = (lam - hist[-1][0]) / h, (hist[-1][0] - hist[-2][0]) / h
                D10 = (d0 - hist[-1][1]) / r0
                D11 = (hist[-1][1] - hist[-2][1]) / r1
                D1 = D10 + r0 / (r0 + r1) * (D10 - D11)
                D2 = (D10 - D11) / (r0 + r1)
                x_new = x_new + a_n * phi2 * D1 - third * a_n * phi3 * D2
        else:
            phi1 = math.expm1(h)
            phi2 = phi1 / h - 1.0
            phi3 = phi2 / h - 0.5
            x_new = a_n / a * x - s_n * phi1 * d0
            if k == 2 and variant == "midpoint":
                r0 = (lam - hist[-1][0]) / h
                x_new = x_new - 0.5 * s_n * phi1 * (d0 - hist[-1][1]) / r0
            elif k == 2:
                r0 = (lam - hist[-1][0]) / h
                x_new = x_new - s_n * phi2 * (d0 - hist[-1][1]) / r0
            elif k == 3:
                r0, r1 = (lam - hist[-1][0]) / h, (hist[-1][0] - hist[-2][0]) / h
                D10 = (d0 - hist[-1][1]) / r0
                D11 = (hist[-1][1] - hist[-2][1]) / r1
                D1 = D10 + r0 / (r0 + r1) * (D10 - D11)
                D2 = (D10 - D11) / (r0 + r1)
                x_new = x_new - s_n * phi2 * D1 - third * s_n * phi3 * D2
        hist.append((lam, d0))
        x = x_new
    return x


@lru_cache(maxsize=None)
def nojit_dpm(name, order, algorithm, lower_order_final, kind, n, **options):
    """One un-jitted run on a uniform-in-t grid (not log-SNR uniform: unequal steps in
    lambda exercise the ratios r0, r1), with the count of real model evaluations."""
    counter = []
    ts = np.linspace(0.9, 0.02, n + 1)
    solver = DPMSolverMultistep(order=order, algorithm=algorithm,
                                lower_order_final=lower_order_final, **options)
    with jax.disable_jit():
        res = sample(gaussian_model(name, kind, counter=counter), PROCESSES[name], solver,
                     key=jax.random.key(0), x_init=X1, prediction=kind, ts=ts)
    return ts, np.asarray(res.x), res.nfe, counter.count("run")


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("order", [2, 3])
def test_matches_numpy_derivation(order, algorithm, lower_order_final):
    """Every step (warm-up, full order, lowered final orders) equals the numpy re-derivation;
    6 steps: with lower_order_final order 3 runs as 1, 2, 3, 3, 2, 1."""
    ts, x, _, _ = nojit_dpm("cosine", order, algorithm, lower_order_final, "eps", 6)
    expected = numpy_multistep("cosine", order, algorithm, lower_order_final, ts, X1)
    np.testing.assert_allclose(x, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_taylor_variant_matches_numpy_derivation(algorithm):
    ts, x, _, _ = nojit_dpm("linear", 2, algorithm, True, "eps", 6, variant="taylor")
    expected = numpy_multistep("linear", 2, algorithm, True, ts, X1, variant="taylor")
    np.testing.assert_allclose(x, expected, rtol=1e-11, atol=1e-11)
    midpoint = nojit_dpm("linear", 2, algorithm, True, "eps", 6)[1]
    assert np.abs(midpoint - x).max() > 1e-6  # the two variants differ


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reference_coefficients_match_the_reference_form(algorithm):
    """``reference_coefficients=True`` is the reference's third-order update (phi_3 D2)."""
    ts, x, _, _ = nojit_dpm("cosine", 3, algorithm, True, "eps", 6, reference_coefficients=True)
    expected = numpy_multistep("cosine", 3, algorithm, True, ts, X1, third=1.0)
    np.testing.assert_allclose(x, expected, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reference_coefficients_converge_with_order_two(algorithm):
    """The evidence for the exact coefficient: with the reference's, third-order multistep
    converges with order 2 on the Gaussian (exact coefficient: >= 2.9, test above; the local
    slopes here fall from 2.7 at 10 steps towards 2, hence the longer grids)."""
    steps = [40, 80, 160, 320]
    solver = DPMSolverMultistep(order=3, algorithm=algorithm, lower_order_final=False,
                                reference_coefficients=True)
    ts_batch = np.stack([padded(log_snr_grid("linear", n), steps[-1]) for n in steps])
    xs = run_grids(gaussian_model("linear", "eps"), PROCESSES["linear"], solver, ts_batch, X1)
    errors = np.abs(xs - exact_flow("linear", X1, T_START, T_END)).max(axis=(1, 2))
    fitted = fit_order(steps, errors)
    print(f"fitted order dpm {algorithm}-3 reference coefficients, gaussian: {fitted:.3f}")
    assert abs(fitted - 2.0) < 0.3, (fitted, errors)


def test_lower_order_final_only_below_ten_steps():
    """The reference's rule: lowered final orders only for grids of fewer than 10 steps."""
    for n, differs in [(6, True), (9, True), (10, False), (12, False)]:
        ts = np.linspace(0.9, 0.02, n + 1)
        got = {}
        for lof in (True, False):
            got[lof] = numpy_multistep("linear", 3, "dpmsolver++", lof, ts, X1)
        assert (not np.allclose(got[True], got[False], rtol=1e-13, atol=1e-13)) == differs, n
    # ... and the solver follows it (n = 10: identical with and without).
    ts = np.linspace(0.9, 0.02, 11)
    solver = lambda lof: DPMSolverMultistep(order=3, lower_order_final=lof)  # noqa: E731
    with jax.disable_jit():
        a, b = (sample(gaussian_model("linear", "eps"), PROCESSES["linear"], solver(lof),
                       key=jax.random.key(0), x_init=X1, prediction="eps", ts=ts).x
                for lof in (True, False))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(PROCESSES))
def test_order_one_is_ddim(name, algorithm):
    """DPM-Solver-1 and DPM-Solver++-1 are both DDIM(eta=0), to round-off; also on a grid
    down to t = 0 (sigma = 0, h = inf), where the last step is alpha x0_hat."""
    run = lambda solver, ts: sample(  # noqa: E731
        gaussian_model(name, "eps"), PROCESSES[name], solver, key=jax.random.key(0),
        x_init=X1, prediction="eps", ts=ts, return_trajectory=True).trajectory
    for ts in (log_snr_grid(name, 7), np.linspace(T_START, 0.0, 6)):
        with jax.disable_jit():
            got = run(DPMSolverMultistep(order=1, algorithm=algorithm), ts)
            ref = run(DDIM(eta=0.0), ts)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_down_to_t_zero(algorithm):
    """t_end = 0 with 12 steps (lower_order_final does not apply): finite, the full-order
    steps on the way, and the last step is the limit alpha_0 x0_hat(x, t_{n-1})."""
    ts = np.linspace(T_START, 0.0, 13)
    with jax.disable_jit():
        traj = np.asarray(sample(gaussian_model("linear", "eps"), PROCESSES["linear"],
                                 DPMSolverMultistep(order=3, algorithm=algorithm),
                                 key=jax.random.key(0), x_init=X1, prediction="eps", ts=ts,
                                 return_trajectory=True).trajectory)
    assert np.all(np.isfinite(traj))
    a, s, *_ = coefs("linear", ts[-2], np)
    x0_hat = M + a * VAR * (traj[-2] - a * M) / (a**2 * VAR + s**2)
    np.testing.assert_allclose(traj[-1], x0_hat, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_nfe_is_num_steps(order):
    """Reported nfe == real model evaluations == number of steps (one per step, no extra
    evaluation at init or at the end)."""
    n = 6
    _, _, nfe, calls = nojit_dpm("linear", order, "dpmsolver++", True, "eps", n)
    assert nfe == n and calls == n, (nfe, calls)
    # Also through num_steps and the default grid (un-jitted: no compilation per order).
    with jax.disable_jit():
        res = sample(gaussian_model("linear", "eps"), PROCESSES["linear"],
                     DPMSolverMultistep(order=order), key=jax.random.key(0), x_init=X1,
                     prediction="eps", num_steps=n)
    assert res.nfe == n


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_prediction_kind_gives_the_same_answer(algorithm):
    ref = nojit_dpm("linear", 3, algorithm, True, "eps", 6)[1]
    for kind in KINDS[1:]:
        got = nojit_dpm("linear", 3, algorithm, True, kind, 6)[1]
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9, err_msg=kind)


# --------------------------------------------------------------------------- interface
def test_solver_is_a_static_pytree():
    """No leaves (the fields decide the structure of the step), so it can be a jit argument;
    different configurations have different tree structures (no shared compilation)."""
    s = DPMSolverMultistep(order=3, algorithm="dpmsolver")
    leaves, treedef = jax.tree_util.tree_flatten(s)
    assert leaves == [] and jax.tree_util.tree_unflatten(treedef, []) == s
    assert treedef != jax.tree_util.tree_structure(DPMSolverMultistep(order=2))
    assert not s.stochastic and s.min_steps == 3


@pytest.mark.parametrize("kwargs", [
    dict(order=0), dict(order=4), dict(order=2.0), dict(order=True),
    dict(algorithm="dpm-solver++"), dict(algorithm="DPMSOLVER"), dict(variant="heun"),
])
def test_invalid_configuration_raises(kwargs):
    with pytest.raises(ValueError, match="order|algorithm|variant"):
        DPMSolverMultistep(**kwargs)
