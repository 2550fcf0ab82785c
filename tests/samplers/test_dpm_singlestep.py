"""Singlestep DPM-Solver / DPM-Solver++, inversion and dynamic thresholding (float64).

Truth: the exact Gaussian flow map, a plain numpy re-derivation of every singlestep update in
the phi-function form of the papers (dividing by h, with the fractions r1, r2 of the step),
built on its own grid, and for the Gaussian mixture a 2000-step third-order multistep run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import (
    fit_order,
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
from genflow.samplers import (
    Denoiser,
    DPMSolverMultistep,
    DPMSolverSinglestep,
    DynamicThresholding,
    EulerMaruyama,
    Heun,
    invert,
    log_snr_uniform,
    quadratic,
    sample,
    sample_dpm_adaptive,
    uniform,
)
from genflow.samplers._dpm_singlestep import singlestep_orders

T_START, T_END = 1.0, 1e-3
ALGORITHMS = ["dpmsolver", "dpmsolver++"]
VARIANTS = ["midpoint", "taylor"]
GRIDS = {"log_snr": log_snr_uniform, "uniform": uniform, "quadratic": quadratic}


# --------------------------------------------------------------------------- order schedule
def test_orders_add_up_to_the_evaluations():
    examples = {(6, 3): [3, 2, 1], (7, 3): [3, 3, 1], (8, 3): [3, 3, 2], (3, 3): [2, 1],
                (5, 2): [2, 2, 1], (6, 2): [2, 2, 2], (4, 1): [1, 1, 1, 1], (2, 3): [2]}
    for (n, order), expected in examples.items():
        assert singlestep_orders(n, order) == expected, (n, order)
    for order in (1, 2, 3):
        for n in range(1, 40):
            orders = singlestep_orders(n, order)
            assert sum(orders) == n and max(orders) <= order
            assert orders == sorted(orders, reverse=True)


# --------------------------------------------------------------------------- exact updates
def reference_orders(n, order):
    """The reference's rule, written out: K steps, the remainder in lower orders at the end."""
    if order == 3:
        k = n // 3 + 1
        return [3] * (k - 2) + [2, 1] if n % 3 == 0 else [3] * (k - 1) + [n % 3]
    if order == 2:
        return [2] * (n // 2) + [1] * (n % 2)
    return [1] * n


def numpy_outer_grid(name, grid, n, order):
    """Step end points, orders and intermediate times (None: equal parts in log-SNR)."""
    orders = reference_orders(n, order)
    if grid == "log_snr":  # K steps uniform in log-SNR
        ts = t_from_log_snr(name, np.linspace(log_snr(name, T_START), log_snr(name, T_END),
                                              len(orders) + 1))
        ts[0], ts[-1] = T_START, T_END
        return ts, orders, [None] * len(orders)
    if grid == "uniform":
        full = np.linspace(T_START, T_END, n + 1)
    else:
        full = np.linspace(math.sqrt(T_START), math.sqrt(T_END), n + 1) ** 2
    return split_grid(full, orders)


def split_grid(full, orders):
    """Every point of ``full`` is an evaluation: steps end at the running sums of the orders."""
    ends = np.cumsum([0] + orders)
    return full[ends], orders, [list(full[a + 1:b]) for a, b in zip(ends[:-1], ends[1:])]


def numpy_step(name, algorithm, variant, x, s_, t_, order, r1=None, mids=None):
    """One singlestep DPM-Solver update in the papers' form with the exact Gaussian model
    (numpy). The intermediate points are ``mids`` (times), else at the log-SNR fractions
    ``r1`` (default 1/2) for order 2 and 1/3, 2/3 for order 3."""
    data = algorithm == "dpmsolver++"

    def at(t):
        a, s, *_ = coefs(name, t, np)
        return a, s, log_snr(name, t)

    def model(x, t):
        a, s, _ = at(t)
        S = a**2 * VAR + s**2
        return M + a * VAR * (x - a * M) / S if data else s * (x - a * M) / S

    def first(x, s_, t_, m):  # first-order update from s_ to t_ with output m at s_
        a_s, s_s, l_s = at(s_)
        a_t, s_t, l_t = at(t_)
        h = l_t - l_s
        if data:
            return s_t / s_s * x - a_t * math.expm1(-h) * m
        return a_t / a_s * x - s_t * math.expm1(h) * m

    a_s, s_s, l_s = at(s_)
    a_t, s_t, l_t = at(t_)
    h = l_t - l_s
    m_s = model(x, s_)
    if order == 1:
        return first(x, s_, t_, m_s)
    sign = -1.0 if data else 1.0  # expm1(sign * h) is phi_1 of the form
    phi1 = math.expm1(sign * h)
    phi2 = phi1 / h + (1.0 if data else -1.0)
    phi3 = phi2 / h - 0.5
    c_t, lin_t = (a_t, s_t / s_s) if data else (s_t, a_t / a_s)
    base = lin_t * x - c_t * phi1 * m_s
    if order == 2:
        r1 = 0.5 if r1 is None else r1
        s1 = t_from_log_snr(name, l_s + r1 * h)
        if mids is not None:
            s1 = mids[0]
            r1 = (log_snr(name, s1) - l_s) / h
        m1 = model(first(x, s_, s1, m_s), s1)
        if variant == "midpoint":
            return base - (0.5 / r1) * c_t * phi1 * (m1 - m_s)
        return base - sign * (1.0 / r1) * c_t * phi2 * (m1 - m_s)
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    s1 = t_from_log_snr(name, l_s + r1 * h)
    s2 = t_from_log_snr(name, l_s + r2 * h)
    if mids is not None:
        s1, s2 = mids
        r1, r2 = (log_snr(name, s1) - l_s) / h, (log_snr(name, s2) - l_s) / h
    m1 = model(first(x, s_, s1, m_s), s1)
    a_2, s_2, _ = at(s2)
    phi22 = math.expm1(sign * r2 * h) / (r2 * h) + (1.0 if data else -1.0)
    c_2 = a_2 if data else s_2
    x2 = first(x, s_, s2, m_s) - sign * (r2 / r1) * c_2 * phi22 * (m1 - m_s)
    m2 = model(x2, s2)
    if variant == "midpoint":
        return base - sign * (1.0 / r2) * c_t * phi2 * (m2 - m_s)
    d1_0, d1_1 = (m1 - m_s) / r1, (m2 - m_s) / r2
    D1 = (r2 * d1_0 - r1 * d1_1) / (r2 - r1)
    D2 = 2.0 * (d1_1 - d1_0) / (r2 - r1)
    return base - sign * c_t * phi2 * D1 - c_t * phi3 * D2


def numpy_singlestep(name, algorithm, variant, outer, orders, mids, x):
    for j, order in enumerate(orders):
        x = numpy_step(name, algorithm, variant, x, outer[j], outer[j + 1], order,
                       mids=mids[j])
    return x


# Every algorithm x variant on one case; the other grids, schedules and orders rotate them.
NUMPY_CASES = [
    ("linear", "log_snr", 7, 3, algorithm, variant) for algorithm in ALGORITHMS for variant in VARIANTS
] + [
    ("cosine", "uniform", 8, 3, "dpmsolver", "taylor"),
    ("linear", "quadratic", 6, 3, "dpmsolver++", "midpoint"),
    ("cosine", "log_snr", 5, 2, "dpmsolver++", "taylor"),
    ("linear", "uniform", 5, 2, "dpmsolver", "midpoint"),
    ("linear", "uniform", 4, 1, "dpmsolver++", "midpoint"),
]


@pytest.mark.parametrize("name,grid,n,order,algorithm,variant", NUMPY_CASES)
def test_matches_numpy_derivation(name, grid, n, order, algorithm, variant):
    """Every stage and the order schedule ([3, 3, 1], [3, 3, 2], [3, 2, 1], [2, 2, 1]) and the
    grid rules (log-SNR: K uniform steps split in equal log-SNR parts; other grids: every grid
    point is an evaluation, the steps end at the running sums of the orders)."""
    counter = []
    solver = DPMSolverSinglestep(order=order, algorithm=algorithm, variant=variant)
    with jax.disable_jit():
        res = sample(gaussian_model(name, "eps", counter=counter), PROCESSES[name], solver,
                     key=jax.random.key(0), x_init=X1, prediction="eps", num_steps=n,
                     grid=GRIDS[grid], t_start=T_START, t_end=T_END)
    outer, orders, mids = numpy_outer_grid(name, grid, n, order)
    expected = numpy_singlestep(name, algorithm, variant, outer, orders, mids, X1)
    np.testing.assert_allclose(np.asarray(res.x), expected, rtol=1e-11, atol=1e-11)
    assert res.nfe == n and counter.count("run") == n


def test_explicit_grid_uses_its_running_sum_points():
    """With an explicit ts of n + 1 points, every point is an evaluation and the steps end at
    ts[cumsum(orders)]."""
    ts = np.linspace(0.95, 0.01, 9)  # n = 8: orders [3, 3, 2]
    solver = DPMSolverSinglestep(order=3, algorithm="dpmsolver++", variant="taylor")
    with jax.disable_jit():
        res = sample(gaussian_model("linear", "x0"), PROCESSES["linear"], solver,
                     key=jax.random.key(0), x_init=X1, prediction="x0", ts=ts,
                     return_trajectory=True)
    expected = numpy_singlestep("linear", "dpmsolver++", "taylor", *split_grid(ts, [3, 3, 2]), X1)
    np.testing.assert_allclose(np.asarray(res.x), expected, rtol=1e-11, atol=1e-11)
    assert res.trajectory.shape == (9, *X1.shape) and res.nfe == 8


# --------------------------------------------------------------------------- convergence
@pytest.fixture(scope="module")
def mixture_reference():
    x1 = np.linspace(-2.5, 2.5, 7)[:, None]
    ref = sample(mixture_eps_model("linear"), VPLinear(), DPMSolverMultistep(order=3),
                 key=jax.random.key(0), x_init=x1, prediction="eps", num_steps=2000,
                 grid=log_snr_uniform).x
    assert np.all(np.abs(np.asarray(ref)[:, 0][:, None] - MIX_M).min(axis=1) < 2.0)
    return x1, np.asarray(ref)


# Order 3 on n = 2 (mod 3) evaluations ([3, ..., 3, 2]): a first-order last step (n = 0, 1
# mod 3) has a local error O(h^2), which would cap the global order at 2.
STEPS = {2: [40, 80, 160, 320], 3: [44, 89, 179, 359]}


# Order 3: every algorithm x variant; order 2: each algorithm with one variant (4 step counts =
# 4 compilations per case). The quadratic and uniform grids are covered by the exact-update
# tests above (the uniform-in-t grid takes very large log-SNR steps near the data: its
# asymptotic regime starts beyond a few hundred steps).
ORDER_CASES = [(3, "log_snr", a, v) for a in ALGORITHMS for v in VARIANTS] + [
    (2, "log_snr", "dpmsolver", "midpoint"),
    (2, "log_snr", "dpmsolver++", "taylor"),
]


@pytest.mark.parametrize("order,grid,algorithm,variant", ORDER_CASES)
def test_gaussian_mixture_convergence_order(order, grid, algorithm, variant, mixture_reference):
    x1, ref = mixture_reference
    solver = DPMSolverSinglestep(order=order, algorithm=algorithm, variant=variant)
    errors = []
    for n in STEPS[order]:
        # One compilation per grid (eager grid construction would compile op by op per shape).
        x = jax.jit(lambda x1: sample(  # noqa: B023
            mixture_eps_model("linear"), VPLinear(), solver, key=jax.random.key(0),
            x_init=x1, prediction="eps", num_steps=n, grid=GRIDS[grid]).x)(x1)  # noqa: B023
        errors.append(np.abs(np.asarray(x) - ref).max())
    assert np.all(np.diff(errors) < 0), errors
    fitted = fit_order(STEPS[order], errors)
    print(f"fitted order singlestep {algorithm}-{order} {variant} {grid} mixture: {fitted:.3f}")
    assert abs(fitted - order) < 0.3, (fitted, errors)


# --------------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(ValueError, match="order"):
        DPMSolverSinglestep(order=4)
    with pytest.raises(ValueError, match="variant"):
        DPMSolverSinglestep(variant="rk4")
    model = gaussian_model("linear", "eps")
    with pytest.raises(ValueError, match="num_steps >= 3"):
        sample(model, VPLinear(), DPMSolverSinglestep(order=3), key=jax.random.key(0),
               x_init=X1, prediction="eps", num_steps=2)
    with pytest.raises(ValueError, match="num_steps >= 3"):
        sample(model, VPLinear(), DPMSolverMultistep(order=3), key=jax.random.key(0),
               x_init=X1, prediction="eps", ts=np.array([1.0, 0.5, 1e-3]))
    with pytest.raises(ValueError, match="t_end > 0"):
        sample(model, VPLinear(), DPMSolverSinglestep(order=2), key=jax.random.key(0),
               x_init=X1, prediction="eps", num_steps=4, t_end=0.0, grid=log_snr_uniform)
    # On a grid of plain points a step may end at t = 0: its limit alpha_0 x0_hat is taken.
    with jax.disable_jit():
        x = sample(model, VPLinear(), DPMSolverSinglestep(order=2), key=jax.random.key(0),
                   x_init=X1, prediction="eps", num_steps=4, t_end=0.0).x
    assert np.all(np.isfinite(np.asarray(x)))


# --------------------------------------------------------------------------- adaptive
def numpy_adaptive(name, algorithm, variant, order, x, rtol, atol, h_init=0.05, theta=0.9,
                   t_err=1e-5):
    """The paper's Algorithm 4 (adaptive step size in log-SNR), in numpy."""
    s_, lam_end = T_START, log_snr(name, T_END)
    h, x_prev, attempts = h_init, x, 0
    while abs(s_ - T_END) > t_err:
        t_ = t_from_log_snr(name, log_snr(name, s_) + h)
        if order == 2:
            low = numpy_step(name, algorithm, variant, x, s_, t_, 1)
            high = numpy_step(name, algorithm, variant, x, s_, t_, 2)
        else:
            low = numpy_step(name, algorithm, variant, x, s_, t_, 2, r1=1.0 / 3.0)
            high = numpy_step(name, algorithm, variant, x, s_, t_, 3)
        delta = np.maximum(atol, rtol * np.maximum(np.abs(low), np.abs(x_prev)))
        err = np.sqrt(np.mean(((high - low) / delta) ** 2, axis=1)).max()
        if err <= 1.0:
            x, x_prev, s_ = high, low, t_
        h = min(theta * h * err ** (-1.0 / order), lam_end - log_snr(name, s_))
        attempts += 1
    return x, order * attempts


@pytest.mark.parametrize("order,algorithm,variant", [
    (2, "dpmsolver", "midpoint"), (2, "dpmsolver++", "taylor"),
    (3, "dpmsolver++", "midpoint"), (3, "dpmsolver", "taylor"),
])
def test_adaptive_matches_numpy_algorithm(order, algorithm, variant):
    """Same accepted and rejected steps, same result and NFE (== real model evaluations) as
    the algorithm written out in numpy; the result is close to the exact flow map."""
    name, rtol, atol = "linear", 0.01, 0.002
    counter = []
    with jax.disable_jit():
        res = sample_dpm_adaptive(gaussian_model(name, "eps", counter=counter),
                                  PROCESSES[name], key=jax.random.key(0), x_init=X1,
                                  prediction="eps", order=order, algorithm=algorithm,
                                  variant=variant, rtol=rtol, atol=atol)
    expected, nfe = numpy_adaptive(name, algorithm, variant, order, X1, rtol, atol)
    np.testing.assert_allclose(np.asarray(res.x), expected, rtol=1e-9, atol=1e-9)
    assert int(res.nfe) == nfe == counter.count("run")
    exact = exact_flow(name, X1, T_START, T_END)
    assert np.abs(np.asarray(res.x) - exact).max() < 0.05


def test_adaptive_error_falls_with_the_tolerance():
    name = "cosine"
    run = jax.jit(lambda x, tol: sample_dpm_adaptive(
        gaussian_model(name, "x0"), PROCESSES[name], key=jax.random.key(0), x_init=x,
        prediction="x0", order=3, rtol=tol, atol=tol / 5))
    exact = exact_flow(name, X1, T_START, T_END)
    errors, nfes = [], []
    for tol in (1e-2, 1e-3, 1e-4):
        res = run(X1, tol)
        errors.append(np.abs(np.asarray(res.x) - exact).max())
        nfes.append(int(res.nfe))
    assert np.all(np.diff(errors) < 0) and np.all(np.diff(nfes) > 0), (errors, nfes)
    assert errors[-1] < 1e-4, errors


def test_adaptive_bad_input_and_step_limit():
    model = gaussian_model("linear", "eps")
    kw = dict(key=jax.random.key(0), x_init=X1, prediction="eps")
    with pytest.raises(ValueError, match="order"):
        sample_dpm_adaptive(model, VPLinear(), order=1, **kw)
    with pytest.raises(ValueError, match="finite at both ends"):
        sample_dpm_adaptive(model, VPLinear(), t_end=0.0, **kw)
    with pytest.raises(ValueError, match="rtol"):
        sample_dpm_adaptive(model, VPLinear(), rtol=-1.0, **kw)
    with jax.disable_jit():
        res = sample_dpm_adaptive(model, VPLinear(), max_steps=3, rtol=1e-4, atol=1e-5, **kw)
    assert np.all(np.isnan(np.asarray(res.x))) and int(res.nfe) == 9


# --------------------------------------------------------------------------- inversion
X0 = np.array([[0.5, -1.0], [1.1, 2.0], [0.9, -3.1]])
T_DATA = 1e-3


@pytest.mark.parametrize("solver,order,steps", [
    (DPMSolverMultistep(order=2, algorithm="dpmsolver++", lower_order_final=False), 2,
     [20, 40, 80, 160]),
    (DPMSolverSinglestep(order=3, algorithm="dpmsolver", variant="taylor"), 3, [23, 47, 95]),
    (Heun(), 2, [20, 40, 80]),
])
def test_invert_follows_the_exact_flow(solver, order, steps):
    """invert() from t = 1e-3 to 1 against the exact Gaussian flow map, at the solver's order;
    then sampling back from those latents reconstructs the data ever better."""
    name = "cosine"
    model = gaussian_model(name, "eps")
    exact = exact_flow(name, X0, T_DATA, 1.0)
    errors, round_trip = [], []
    nfe = {}

    def round_trip_run(x0, n):
        z = invert(model, PROCESSES[name], solver, x=x0, prediction="eps", num_steps=n,
                   grid=log_snr_uniform, t_start=T_DATA, t_end=1.0)
        nfe[n] = z.nfe
        back = sample(model, PROCESSES[name], solver, key=jax.random.key(0), x_init=z.x,
                      prediction="eps", num_steps=n, grid=log_snr_uniform,
                      t_start=1.0, t_end=T_DATA).x
        return z.x, back

    for n in steps:
        z, back = jax.jit(round_trip_run, static_argnums=1)(X0, n)
        assert nfe[n] == n * (2 if isinstance(solver, Heun) else 1)
        errors.append(np.abs(np.asarray(z) - exact).max())
        round_trip.append(np.abs(np.asarray(back) - X0).max())
    fitted = fit_order(steps, errors)
    print(f"fitted inversion order {type(solver).__name__}: {fitted:.3f}")
    assert abs(fitted - order) < 0.3, (fitted, errors)
    assert np.all(np.diff(round_trip) < 0) and round_trip[-1] < 1e-3, round_trip


def test_invert_rejects_stochastic_solvers_and_wrong_direction():
    model = gaussian_model("linear", "eps")
    with pytest.raises(ValueError, match="deterministic"):
        invert(model, VPLinear(), EulerMaruyama(), x=X0, prediction="eps", num_steps=4)
    with pytest.raises(ValueError, match="t_start < t_end"):
        invert(model, VPLinear(), Heun(), x=X0, prediction="eps", num_steps=4,
               t_start=1.0, t_end=1e-3)
    with pytest.raises(ValueError, match="increase"):
        invert(model, VPLinear(), Heun(), x=X0, prediction="eps", ts=np.array([0.9, 0.1]))


# --------------------------------------------------------------------------- thresholding
def test_dynamic_thresholding_values():
    x = np.stack([np.linspace(-0.9, 0.9, 200),          # in range: unchanged
                  np.linspace(-3.0, 3.0, 200)])         # scaled to [-1, 1]
    out = np.asarray(DynamicThresholding(ratio=0.9)(jnp.asarray(x)))
    np.testing.assert_allclose(out[0], x[0], rtol=0, atol=1e-15)
    s = np.quantile(np.abs(x[1]), 0.9)
    np.testing.assert_allclose(out[1], np.clip(x[1], -s, s) / s, rtol=1e-12)
    assert np.abs(out[1]).max() == pytest.approx(1.0)
    out2 = np.asarray(DynamicThresholding(ratio=0.9, max_value=2.0)(jnp.asarray(x)))
    np.testing.assert_allclose(out2[1], 2.0 * np.clip(x[1], -s, s) / s, rtol=1e-12)
    with pytest.raises(ValueError, match="0..1 scale.*0.995"):
        DynamicThresholding(ratio=99.5)


def test_thresholding_in_the_denoiser_keeps_the_pair_consistent():
    """x0_hat is corrected and eps_hat recomputed, so that x = alpha x0_hat + sigma eps_hat."""
    proc = VPLinear()
    far = gaussian_model("linear", "eps", m=np.array([4.0, -3.0]))  # x0_hat far outside [-1, 1]
    den = Denoiser(far, proc, "eps", thresholding=DynamicThresholding(ratio=0.995))
    t = 0.3
    x0, eps = den(jnp.asarray(X1), t)
    assert np.abs(np.asarray(x0)).max() <= 1.0 + 1e-12
    alpha, sigma = proc.marginal(t)
    np.testing.assert_allclose(alpha * x0 + sigma * eps, X1, rtol=1e-12, atol=1e-12)
    x = sample(far, proc, DPMSolverMultistep(order=2), key=jax.random.key(0), x_init=X1,
               prediction="eps", num_steps=10, thresholding=DynamicThresholding(),
               denoise_final=True).x
    assert np.abs(np.asarray(x)).max() <= 1.0 + 1e-12


def test_a_grid_that_collapses_on_the_process_is_an_error():
    """Rectified flow has log-SNR = -inf at t = 1: a log-SNR grid from there collapses."""
    from genflow.processes import RectifiedFlow

    velocity = lambda x, t, cond=None: -x  # noqa: E731
    with pytest.raises(ValueError, match="strictly monotone.*t_start=1 - 1e-3"):
        sample(velocity, RectifiedFlow(), Heun(), key=jax.random.key(0), x_init=X1,
               prediction="velocity", num_steps=4, grid=log_snr_uniform)
    x = sample(velocity, RectifiedFlow(), Heun(), key=jax.random.key(0), x_init=X1,
               prediction="velocity", num_steps=4, grid=log_snr_uniform, t_start=1 - 1e-3).x
    assert np.all(np.isfinite(np.asarray(x)))
