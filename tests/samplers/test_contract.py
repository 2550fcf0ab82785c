"""The sampler contract: solvers x processes x prediction kinds.

Every solver x process x kind (50 cases) runs un-jitted and is checked for shape, dtype,
trajectory and exact nfe. What needs a compilation or a trace per case (jit against no-jit,
vmap over keys, float32) runs on subsets that cover each solver, both processes and every kind:
a stochastic solver compiles its random-number generator in about 2 s, so the full product
under jit would alone exceed the time budget of the suite.

The model is the exact network for Gaussian data (see _gaussian.py), so that results are also
comparable across prediction kinds. Un-jitted runs use ``jax.disable_jit()`` (real op-by-op
execution, where each model evaluation is a Python call with concrete arrays and can be counted).

The solvers of the other fields (GBM with GBMScore, stochastic interpolants with
InterpolantField) run the same contract at the end, each with the process and field it fits.
"""

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import (
    CONTRACT_STEPS,
    KEYS,
    KINDS,
    M,
    NFE_PER_STEP,
    PROCESSES,
    SOLVERS,
    STOCHASTIC,
    VAR,
    X1,
    coefs,
    gaussian_model,
    log_snr,
    nojit_run,
)
from interpolant_closed_forms import exact_fields
from genflow.processes import (
    VE,
    GeometricBrownianMotion,
    RectifiedFlow,
    StochasticInterpolant,
    SubVP,
)
from genflow.samplers import (
    AbstractSolver,
    Euler,
    FokkerPlanckHeun,
    GBMEulerMaruyama,
    GBMExponential,
    GBMScore,
    Heun,
    InterpolantEuler,
    InterpolantField,
    InterpolantHeun,
    InterpolantSDE,
    karras,
    log_snr_uniform,
    quadratic,
    sample,
    uniform,
)

MATRIX = [(s, n, k) for s in SOLVERS for n in PROCESSES for k in KINDS]


# --------------------------------------------------------------------------- full matrix
@pytest.mark.parametrize("solver_name,name,kind", MATRIX)
def test_contract_matrix(solver_name, name, kind):
    """Shape, dtype, trajectory and exact nfe for every solver x process x kind (no jit)."""
    r = nojit_run(solver_name, name, kind)
    n = CONTRACT_STEPS
    assert r["x"].shape == X1.shape and r["x_dtype"] == jnp.float64
    assert np.all(np.isfinite(r["x"]))
    # trajectory: (num_steps + 1, *x.shape), from x_init to x
    assert r["trajectory"].shape == (n + 1, *X1.shape)
    np.testing.assert_array_equal(r["trajectory"][0], X1)
    np.testing.assert_array_equal(r["trajectory"][-1], r["x"])
    assert not np.allclose(r["trajectory"][1], X1)  # it moved
    # nfe: reported == real model evaluations counted here == the solver's cost
    assert r["nfe"] == NFE_PER_STEP[solver_name] * n
    assert r["calls"].count("run") == r["nfe"], r["calls"]


# A subset for what is compiled or traced per case: each solver x process once, the prediction
# kinds spread over them. DDIM(0) and DDIM(1) share the process and kind, hence one compilation.
SUBSET = [
    ("euler", "linear", "eps"),
    ("euler", "cosine", "x0"),
    ("heun", "linear", "v"),
    ("heun", "cosine", "velocity"),
    ("ddim0", "linear", "score"),
    ("ddim1", "linear", "score"),
    ("ddim0", "cosine", "v"),
    ("ddim1", "cosine", "v"),
    ("em", "linear", "velocity"),
    ("em", "cosine", "score"),
]


# One case per solver class for the (op-by-op, hence slow) vmapped runs.
VMAP_CASES = [
    ("euler", "linear", "eps"),
    ("heun", "cosine", "velocity"),
    ("ddim0", "linear", "score"),
    ("ddim1", "cosine", "v"),
    ("em", "linear", "velocity"),
]


# --------------------------------------------------------------------------- other paths
# Every solver on sub-VP, VE and rectified flow, the prediction kind rotating. Rectified flow
# has alpha = 0, log-SNR = -inf and an infinite reverse-SDE diffusion at t = 1: only the ODE
# solvers with v or velocity models can start there, so its cases start at t = 1 - 1e-3.
OTHER_PATHS = {"subvp": SubVP(), "ve": VE(), "rf": RectifiedFlow()}
T_START_OF = {"subvp": 1.0, "ve": 1.0, "rf": 1.0 - 1e-3}
OTHER_CASES = [
    (solver_name, name, KINDS[(i + 2 * j) % len(KINDS)])
    for i, solver_name in enumerate(SOLVERS) for j, name in enumerate(OTHER_PATHS)
]


@pytest.mark.parametrize("solver_name,name,kind", OTHER_CASES)
def test_contract_on_other_paths(solver_name, name, kind):
    counter = []
    with jax.disable_jit():
        res = sample(gaussian_model(name, kind, counter=counter), OTHER_PATHS[name],
                     SOLVERS[solver_name], key=KEYS[0], x_init=X1, prediction=kind,
                     num_steps=CONTRACT_STEPS, t_start=T_START_OF[name],
                     return_trajectory=True)
    x = np.asarray(res.x)
    assert x.shape == X1.shape and res.x.dtype == jnp.float64 and np.all(np.isfinite(x))
    assert res.trajectory.shape == (CONTRACT_STEPS + 1, *X1.shape)
    assert res.nfe == NFE_PER_STEP[solver_name] * CONTRACT_STEPS == counter.count("run")


@pytest.mark.parametrize("solver_name,name,kind", VMAP_CASES)
def test_vmap_over_keys_and_determinism(solver_name, name, kind):
    """vmap over keys (K0, K0, K1): same key, same result, equal to the un-vmapped run; a
    different key changes the result exactly when the solver is stochastic (no jit)."""
    with jax.disable_jit():
        xs = jax.vmap(
            lambda k: sample(gaussian_model(name, kind), PROCESSES[name], SOLVERS[solver_name],
                             key=k, x_init=X1, prediction=kind, num_steps=CONTRACT_STEPS).x
        )(jnp.stack([KEYS[0], KEYS[0], KEYS[1]]))
    xs = np.asarray(xs)
    assert xs.shape == (3, *X1.shape)
    np.testing.assert_array_equal(xs[0], xs[1])
    unbatched = nojit_run(solver_name, name, kind)["x"]
    np.testing.assert_allclose(xs[0], unbatched, rtol=1e-12, atol=1e-12)
    if STOCHASTIC[solver_name]:
        assert np.max(np.abs(xs[2] - xs[0])) > 1e-2
    else:
        np.testing.assert_allclose(xs[2], xs[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver_name,name,kind", SUBSET + [
    ("dpm++3m", "linear", "eps"), ("dpm3s", "cosine", "x0"), ("pc", "linear", "score"),
    ("edm_churn", "cosine", "v"),
])
def test_float32_in_float32_out(solver_name, name, kind):
    """Shapes and dtypes of a float32 run with float64 times (x64 on), abstract evaluation:
    no compilation needed. Solver states keep x's dtype (a scan carry must not change it)."""
    x32 = jnp.asarray(X1, jnp.float32)

    def run(x):
        res = sample(gaussian_model(name, kind), PROCESSES[name], SOLVERS[solver_name],
                     key=KEYS[0], x_init=x, prediction=kind, num_steps=CONTRACT_STEPS,
                     return_trajectory=True, denoise_final=True)
        return res.x, res.trajectory

    x, traj = jax.eval_shape(run, x32)
    assert (x.shape, x.dtype) == (X1.shape, jnp.float32)
    assert (traj.shape, traj.dtype) == ((CONTRACT_STEPS + 1, *X1.shape), jnp.float32)


# --------------------------------------------------------------------------- jit
_TRACE_LOG = []  # calls of the model while the jitted sampler is traced
_NFE = {}


@partial(jax.jit, static_argnames=("name", "kind"))
def _jit_sample(solver, proc, key, x_init, name, kind):
    model = gaussian_model(name, kind, counter=_TRACE_LOG)
    res = sample(model, proc, solver, key=key, x_init=x_init, prediction=kind,
                 num_steps=CONTRACT_STEPS)
    _NFE["nfe"] = res.nfe  # a Python int, known at trace time
    return res.x


# One compilation per solver class (a stochastic one compiles its random-number generator, about
# 2 s); DDIM(1) reuses DDIM(0)'s. Both processes and four kinds are covered across the cases.
JIT_CASES = [
    ("euler", "linear", "eps"),
    ("heun", "cosine", "velocity"),
    ("ddim0", "cosine", "v"),
    ("ddim1", "cosine", "v"),
    ("em", "linear", "velocity"),
    ("dpm3s", "cosine", "x0"),
]


@pytest.mark.parametrize("solver_name,name,kind", JIT_CASES)
def test_jit_matches_no_jit(solver_name, name, kind):
    solver, proc = SOLVERS[solver_name], PROCESSES[name]
    _TRACE_LOG.clear()
    _NFE.clear()
    x = _jit_sample(solver, proc, KEYS[0], X1, name, kind)
    if _TRACE_LOG:  # traced now (DDIM(1) reuses DDIM(0)'s compilation: eta is data)
        # Traced once: one abstract shape check, then the scan body once (not once per step),
        # and the reported nfe is the per-step count times the steps, not doubled.
        assert _TRACE_LOG == ["traced"] * (1 + NFE_PER_STEP[solver_name]), _TRACE_LOG
        assert _NFE["nfe"] == NFE_PER_STEP[solver_name] * CONTRACT_STEPS
    else:
        assert solver_name == "ddim1"
    ref = nojit_run(solver_name, name, kind)
    np.testing.assert_allclose(x, ref["x"], rtol=1e-9, atol=1e-12)
    x_again = _jit_sample(solver, proc, KEYS[0], X1, name, kind)
    np.testing.assert_array_equal(x, x_again)
    x_other = _jit_sample(solver, proc, KEYS[1], X1, name, kind)
    assert (np.max(np.abs(x_other - x)) > 1e-2) == STOCHASTIC[solver_name]


def test_solvers_are_distinct_pytrees():
    """Different solver classes must not share a tree structure, or a jitted function taking a
    solver argument may reuse the compilation of another solver (DDIM's eta is data)."""
    structs = {n: jax.tree_util.tree_structure(s) for n, s in SOLVERS.items()}
    assert structs["ddim0"] == structs["ddim1"]
    names = ["euler", "heun", "ddim0", "em"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert structs[a] != structs[b], (a, b)
    assert jax.tree_util.tree_leaves(SOLVERS["ddim1"]) == [1.0]


@pytest.mark.parametrize("solver_name", list(SOLVERS))
def test_denoise_final(solver_name):
    """denoise_final returns the model's x0_hat at t_end, for one more evaluation."""
    name, kind = "cosine", "v"
    counter = []
    with jax.disable_jit():
        res = sample(gaussian_model(name, kind, counter=counter), PROCESSES[name],
                     SOLVERS[solver_name], key=KEYS[0], x_init=X1, prediction=kind,
                     num_steps=CONTRACT_STEPS, denoise_final=True)
    assert res.nfe == NFE_PER_STEP[solver_name] * CONTRACT_STEPS + 1
    assert counter.count("run") == res.nfe
    x_end = nojit_run(solver_name, name, kind)["x"]  # same key, without the final denoising
    alpha, sigma, *_ = coefs(name, 1e-3, np)
    x0_hat = M + alpha * VAR * (x_end - alpha * M) / (alpha**2 * VAR + sigma**2)
    np.testing.assert_allclose(res.x, x0_hat, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- errors
class SpySolver(AbstractSolver):
    """Euler that records whether it was ever asked to step (traced or not)."""

    order = 1
    stochastic = False

    def __init__(self):
        self.steps = 0

    def step(self, denoise, state, x, t_cur, t_next, *, key):
        self.steps += 1
        return Euler().step(denoise, state, x, t_cur, t_next, key=key), state


def _bad_shape_model(x, t, cond=None):
    return x[:, :1]


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(t_start=0.5, t_end=0.5), ValueError, ["t_end", "t_start"]),
        (dict(t_start=0.5, t_end=0.7), ValueError, ["t_end", "t_start"]),
        (dict(num_steps=0), ValueError, ["num_steps"]),
        (dict(num_steps=None), ValueError, ["num_steps"]),
        (dict(num_steps=2.5), TypeError, ["num_steps"]),
        (dict(ts=np.array([1.0, 0.5, 0.5, 0.1])), ValueError, ["decrease"]),
        (dict(ts=np.array([0.1, 0.5, 1.0])), ValueError, ["decrease"]),
        (dict(ts=np.array([1.0])), ValueError, ["ts"]),
        (dict(x_init=None), ValueError, ["x_init", "shape"]),
        (dict(model=_bad_shape_model), ValueError, ["shape", "(3, 2)"]),
        (dict(solver="heun"), TypeError, ["solver"]),
        (dict(solver=Heun), TypeError, ["solver"]),
    ],
)
def test_errors_are_raised_before_compiling(kwargs, exc, words):
    counter = []
    spy = SpySolver()
    args = dict(model=gaussian_model("linear", "eps", counter=counter), solver=spy,
                x_init=X1, num_steps=4)
    args.update(kwargs)
    model, solver = args.pop("model"), args.pop("solver")
    with pytest.raises(exc) as err:
        sample(model, PROCESSES["linear"], solver, key=KEYS[0], prediction="eps", **args)
    msg = str(err.value)
    for w in words:
        assert w in msg, msg
    assert spy.steps == 0  # the scan body was never traced
    assert counter.count("run") == 0  # and the model never evaluated


# --------------------------------------------------------------------------- time grids
GRIDS = {"uniform": uniform, "quadratic": quadratic, "log_snr": log_snr_uniform, "karras": karras}
N_GRID = 12


@partial(jax.jit, static_argnames="n")
def _all_grids(proc, t_start, t_end, n):  # one compilation per process class
    return {g: fn(proc, t_start, t_end, n) for g, fn in GRIDS.items()}


@pytest.mark.parametrize("t_start,t_end", [(1.0, 1e-3), (0.8, 0.02)])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_time_grids(name, t_start, t_end):
    grids = _all_grids(PROCESSES[name], t_start, t_end, N_GRID)
    for g, ts in grids.items():
        ts = np.asarray(ts)
        assert ts.shape == (N_GRID + 1,) and ts.dtype == np.float64, g
        assert ts[0] == t_start and ts[-1] == t_end, (g, ts[0], ts[-1])  # exact end points
        assert np.all(np.diff(ts) < 0), g
        # each grid is equally spaced in its own variable (closed-form lambda for the last two)
        var = {
            "uniform": ts,
            "quadratic": np.sqrt(ts),
            "log_snr": log_snr(name, ts),
            "karras": np.exp(-log_snr(name, ts)) ** (1 / 7),
        }[g]
        step = (var[-1] - var[0]) / N_GRID
        np.testing.assert_allclose(np.diff(var), np.full(N_GRID, step), rtol=1e-8, err_msg=g)



# --------------------------------------------------------------------------- gradients
GRAD_CASES = [("euler", "eps"), ("heun", "x0"), ("ddim0", "v"), ("dpm++3m", "velocity"),
              ("dpm3s", "score"), ("edm", "eps")]


@pytest.mark.parametrize("solver_name,kind", GRAD_CASES)
def test_ode_solvers_are_differentiable_in_x_init(solver_name, kind):
    """d/dx_init of <w, sample(x_init)> against a central finite difference (float64)."""
    from genflow.samplers import EDMHeun

    solver = EDMHeun() if solver_name == "edm" else SOLVERS[solver_name]
    name = "cosine"
    w = np.linspace(-1.0, 1.0, X1.size).reshape(X1.shape)

    def loss(x):
        res = sample(gaussian_model(name, kind), PROCESSES[name], solver, key=KEYS[0],
                     x_init=x, prediction=kind, num_steps=4, t_end=1e-2)
        return jnp.sum(w * res.x)

    with jax.disable_jit():
        grad = np.asarray(jax.grad(loss)(jnp.asarray(X1)))
        d = np.cos(np.arange(X1.size)).reshape(X1.shape)
        eps = 1e-6
        fd = (loss(X1 + eps * d) - loss(X1 - eps * d)) / (2 * eps)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 1e-3
    np.testing.assert_allclose(float(fd), np.sum(grad * d), rtol=1e-6)


# --------------------------------------------------------------------------- other fields
# The solvers of the processes that are not Gaussian paths, each with the process and field it
# fits: geometric Brownian motion (a score model, positive data) and a stochastic interpolant
# between two Gaussians (the exact fields of tests/interpolant_closed_forms.py, concatenated as
# the prediction names them). v + gamma' eta is infinite at t = 1 for gamma = sqrt (gamma'), so
# that case starts just inside.
GBM = GeometricBrownianMotion(mu=0.1, sigma=0.8)
SI = StochasticInterpolant("linear", "sqrt")
SI_FIELDS = exact_fields("linear", "sqrt")
X1_POSITIVE = np.exp(0.5 * X1)
# name: (solver, process, prediction, x_init, nfe per step, t_start)
FIELD_CASES = {
    "gbm_exp": (GBMExponential(), GBM, "score", X1_POSITIVE, 1, 1.0),
    "gbm_em": (GBMEulerMaruyama(), GBM, "score", X1_POSITIVE, 1, 1.0),
    "si_euler": (InterpolantEuler(), SI, "b", X1, 1, 1.0),
    "si_heun": (InterpolantHeun(), SI, "v+eta", X1, 2, 1.0 - 1e-3),
    "si_sde": (InterpolantSDE(0.5), SI, "b+s", X1, 1, 1.0),
}


def field_model(name, counter=None):
    """The network of a FIELD_CASES entry; records calls as gaussian_model does."""
    _, _, prediction, _, _, _ = FIELD_CASES[name]

    def model_fn(x, t, cond=None):
        if counter is not None:
            counter.append("traced" if isinstance(x, jax.core.Tracer) else "run")
        if prediction == "score":  # a smooth GBM score that depends on t
            return -(1.0 + jnp.log(x)) * (1.0 + t[:, None]) / x
        return jnp.concatenate([SI_FIELDS[f](x, t) for f in prediction.split("+")], axis=-1)

    return model_fn


def _field_run(name, key, x_init=None, counter=None, **kw):
    solver, proc, prediction, x1, _, t_start = FIELD_CASES[name]
    return sample(field_model(name, counter), proc, solver, key=key,
                  x_init=x1 if x_init is None else x_init, prediction=prediction,
                  num_steps=CONTRACT_STEPS, t_start=t_start, **kw)


@lru_cache(maxsize=None)
def field_nojit_run(name, key_index=0):
    counter = []
    with jax.disable_jit():
        res = _field_run(name, KEYS[key_index], counter=counter, return_trajectory=True)
    return dict(x=np.asarray(res.x), trajectory=np.asarray(res.trajectory), nfe=res.nfe,
                calls=counter, x_dtype=res.x.dtype)


@pytest.mark.parametrize("name", list(FIELD_CASES))
def test_field_solver_contract(name):
    """Shape, dtype, trajectory, exact nfe (= real model calls), field class, and the key
    changing the result exactly when the solver is stochastic (no jit)."""
    solver, proc, _, x1, per_step, _ = FIELD_CASES[name]
    assert solver.field_class is (GBMScore if name.startswith("gbm") else InterpolantField)
    r = field_nojit_run(name)
    n = CONTRACT_STEPS
    assert r["x"].shape == x1.shape and r["x_dtype"] == jnp.float64
    assert np.all(np.isfinite(r["x"]))
    assert r["trajectory"].shape == (n + 1, *x1.shape)
    np.testing.assert_array_equal(r["trajectory"][0], x1)
    np.testing.assert_array_equal(r["trajectory"][-1], r["x"])
    assert not np.allclose(r["trajectory"][1], x1)
    assert r["nfe"] == per_step * n
    assert r["calls"].count("run") == r["nfe"], r["calls"]
    other = field_nojit_run(name, 1)["x"]
    if solver.stochastic:
        assert np.max(np.abs(other - r["x"])) > 1e-2
    else:
        np.testing.assert_array_equal(other, r["x"])


_FIELD_TRACES = []


@partial(jax.jit, static_argnames="name")
def _jit_field_sample(solver, proc, key, x_init, name):
    res = sample(field_model(name, _FIELD_TRACES), proc, solver, key=key, x_init=x_init,
                 prediction=FIELD_CASES[name][2], num_steps=CONTRACT_STEPS,
                 t_start=FIELD_CASES[name][5])
    return res.x, res.nfe


@pytest.mark.parametrize("name", list(FIELD_CASES))
def test_field_solver_jit_matches_no_jit(name):
    """float64: jit equals the op-by-op run to 1e-9; traced once (one abstract shape check and
    the scan body); same key, same result."""
    solver, proc, _, x1, per_step, _ = FIELD_CASES[name]
    _FIELD_TRACES.clear()
    x, nfe = _jit_field_sample(solver, proc, KEYS[0], x1, name)
    assert _FIELD_TRACES == ["traced"] * (1 + per_step), _FIELD_TRACES
    assert int(nfe) == per_step * CONTRACT_STEPS
    np.testing.assert_allclose(x, field_nojit_run(name)["x"], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(_jit_field_sample(solver, proc, KEYS[0], x1, name)[0], x)
    x_other = _jit_field_sample(solver, proc, KEYS[1], x1, name)[0]
    assert (np.max(np.abs(x_other - x)) > 1e-2) == solver.stochastic


@pytest.mark.parametrize("name", ["gbm_em", "si_heun", "si_sde"])
def test_field_solver_float32(name):
    """float32 data stay float32 (times in float64), and jit agrees with the un-jitted run to
    float32 round-off: a few dozen float32 operations per step, each within 6e-8 relative, over
    3 steps, reordered by XLA's fusion under jit, hence rtol 1e-5."""
    x32 = jnp.asarray(FIELD_CASES[name][3], jnp.float32)
    res = _field_run(name, KEYS[0], x_init=x32, return_trajectory=True)
    assert res.x.dtype == res.trajectory.dtype == jnp.float32
    jitted = jax.jit(lambda k, x: _field_run(name, k, x_init=x).x)(KEYS[0], x32)
    assert jitted.dtype == jnp.float32
    # float32 round-off of a few fused steps on O(1) values: ~6e-6 seen; 5e-5 leaves room for
    # other CPUs' fusion choices.
    np.testing.assert_allclose(jitted, res.x, rtol=5e-5, atol=1e-5)
    if not FIELD_CASES[name][0].stochastic:  # (float32 noise draws differ from float64 ones)
        np.testing.assert_allclose(res.x, field_nojit_run(name)["x"], rtol=1e-4, atol=1e-5)


def test_field_solvers_are_distinct_pytrees():
    structs = [jax.tree_util.tree_structure(c[0]) for c in FIELD_CASES.values()]
    structs += [jax.tree_util.tree_structure(s) for s in (Euler(), Heun(), FokkerPlanckHeun())]
    for i, a in enumerate(structs):
        for b in structs[i + 1:]:
            assert a != b


def test_fokker_planck_heun_is_heun():
    """A name of its own (its own pytree, checked above) with Heun's steps and cost."""
    assert issubclass(FokkerPlanckHeun, Heun) and FokkerPlanckHeun.order == 2
    name, kind = "cosine", "v"
    with jax.disable_jit():
        res = sample(gaussian_model(name, kind), PROCESSES[name], FokkerPlanckHeun(),
                     key=KEYS[0], x_init=X1, prediction=kind, num_steps=CONTRACT_STEPS)
    ref = nojit_run("heun", name, kind)
    np.testing.assert_array_equal(res.x, ref["x"])
    assert res.nfe == ref["nfe"]


def contract_score(x, t, cond=None):
    assert t.shape == (x.shape[0],) and cond == "c"
    return -1.0 / x * (1.0 + jnp.log(x))


@pytest.mark.parametrize(
    "solver, dtype", [(GBMExponential(), jnp.float32), (GBMEulerMaruyama(), jnp.float64)]
)
def test_gbm_contract_per_channel(solver, dtype):
    """GBM with per-channel coefficients broadcasting against one example (2, 3): shape and
    dtype kept, jit == no-jit, deterministic per key, exact nfe, trajectory (the former
    sample_gbm's contract test)."""
    calls = []

    def score(x, t, cond=None):
        calls.append(1)
        return contract_score(x, t, cond)

    proc = GeometricBrownianMotion(mu=jnp.array([0.1, 0.2, 0.3]), sigma=jnp.array([0.5, 0.8, 1.0]))
    shape = (5, 2, 3)

    def run(fn, p, k, **kw):  # the prior draw in dtype, with the key split as sample() splits it
        x_init = p.prior_sample(jax.random.split(k)[0], shape, dtype)
        return sample(fn, p, solver, key=k, x_init=x_init, prediction="score", num_steps=7,
                      cond="c", **kw)

    res = run(score, proc, jax.random.key(11), return_trajectory=True)
    # One abstract shape check, then the scan body traced once: 7 evaluations.
    assert len(calls) == 2 and res.nfe == 7
    assert res.x.shape == (5, 2, 3) and res.x.dtype == dtype
    assert res.trajectory.shape == (8, 5, 2, 3) and res.trajectory.dtype == dtype
    np.testing.assert_array_equal(res.trajectory[-1], res.x)
    jitted = jax.jit(lambda p, k: run(contract_score, p, k).x)
    x_jit = jitted(proc, jax.random.key(11))
    tol = 5e-5 if dtype == jnp.float32 else 1e-12  # float32: round-off of 7 steps, as above
    np.testing.assert_allclose(x_jit, res.x, rtol=tol, atol=tol)
    np.testing.assert_array_equal(jitted(proc, jax.random.key(11)), x_jit)  # same key
    assert not np.allclose(jitted(proc, jax.random.key(12)), x_jit)  # another key
