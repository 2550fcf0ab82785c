"""sample_adaptive(): the probability-flow ODE solved by diffrax with adaptive steps; and the
adaptive samplers as objects (AdaptiveODE, DPMSolverAdaptive) run through sample().

Truth comes from closed forms (_gaussian.py): for N(m, v) data the exact PF-ODE map is
x_{t0} = alpha0 m + sqrt(S0 / S1) (x_{t1} - alpha1 m), S_t = alpha_t^2 v + sigma_t^2, and its
Jacobian is diag(sqrt(S0 / S1)). The NFE formula is checked against model calls counted on
the host with jax.debug.callback, which fires once per executed evaluation, jitted or not.
"""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import PROCESSES, VAR, X1, coefs, exact_flow, gaussian_model
from genflow.samplers import (
    AbstractAdaptiveSampler,
    AdaptiveODE,
    Denoiser,
    DPMSolverAdaptive,
    DynamicThresholding,
    invert,
    sample,
    sample_dpm_adaptive,
    uniform,
)
from genflow.samplers._adaptive import sample_adaptive

T_START, T_END = 1.0, 1e-3
TOLS = np.array([1e-4, 1e-6, 1e-8, 1e-10])


def counted(model_fn, log):
    """model_fn that appends each executed evaluation's time to ``log`` (on the host)."""

    def fn(x, t, cond=None):
        jax.debug.callback(lambda t_: log.append(float(t_[0])), t)
        return model_fn(x, t, cond)

    return fn


@pytest.mark.parametrize("name", ["linear"])  # cosine: in the NFE test
def test_matches_exact_flow_and_converges_with_tolerance(name):
    """Tolerances 1e-4 .. 1e-10 in one jitted, vmapped call: the error stays within a small
    multiple of the tolerance, falls as it tightens, and the NFE grows."""
    model, proc = gaussian_model(name, "eps"), PROCESSES[name]

    @jax.jit
    def run(tol):
        res = sample_adaptive(model, proc, key=jax.random.key(0), x_init=X1, prediction="eps",
                              t_start=T_START, t_end=T_END, rtol=tol, atol=tol)
        return res.x, res.nfe

    xs, nfes = jax.vmap(run)(jnp.asarray(TOLS))
    errors = np.abs(np.asarray(xs) - exact_flow(name, X1, T_START, T_END)).max(axis=(1, 2))
    print(f"{name}: errors {errors}, nfe {np.asarray(nfes)}")
    assert np.all(errors < 20 * TOLS), errors
    assert errors[2] < 1e-6  # rtol = atol = 1e-8
    assert np.all(errors[1:] < errors[:-1] / 10), errors  # 100x tighter: >= 10x more accurate
    assert np.all(np.diff(np.asarray(nfes)) > 0), nfes
    assert np.asarray(nfes).dtype.kind == "i"


@pytest.mark.parametrize(
    "solver,dt0,tol",  # dt0: the magnitude of the first attempted step
    [("tsit5", None, 1e-7), (diffrax.Dopri5(), 0.9, 1e-8)],
    ids=["tsit5-auto-dt0", "dopri5-dt0=0.9"],
)
def test_nfe_equals_host_count_and_jit_agrees(solver, dt0, tol):
    """nfe = 1 + [dt0 is None] + 6 * attempted steps is the true number of model calls, eager and
    under jit, which also give the same samples. dt0 = 0.9 forces rejected steps, including the
    first one (the case where diffrax itself would re-evaluate the first stage)."""
    name = "cosine"
    log_eager, log_jit = [], []

    def run(log, x):
        return sample_adaptive(counted(gaussian_model(name, "eps"), log), PROCESSES[name],
                               key=jax.random.key(0), x_init=x, prediction="eps", solver=solver,
                               rtol=tol, atol=tol, dt0=dt0)

    jitted = jax.jit(lambda x: run(log_jit, x))(X1)
    jax.effects_barrier()
    if dt0 is None:  # eager vs jit once (each costs a compilation of the diffrax loop)
        eager = run(log_eager, X1)
        jax.effects_barrier()
        np.testing.assert_allclose(jitted.x, eager.x, rtol=1e-12, atol=1e-12)
        assert int(eager.nfe) == int(jitted.nfe)
    else:
        eager, log_eager = jitted, log_jit
    assert int(eager.nfe) == len(log_eager), (int(eager.nfe), len(log_eager))
    assert int(jitted.nfe) == len(log_jit) == len(log_eager)
    np.testing.assert_allclose(jitted.x, exact_flow(name, X1, T_START, T_END), atol=50 * tol)
    assert eager.trajectory is None and eager.x.shape == X1.shape
    assert abs(log_eager[0] - T_START) < 1e-15  # f0 = v(x_init, t_start) first
    extra = 1 if dt0 is None else 0
    assert (int(eager.nfe) - 1 - extra) % 6 == 0
    assert log_eager.count(T_START) == 1  # never re-evaluated, even after a rejection
    if dt0 is not None:
        # The first attempt (t_start -> t_start - dt0) is rejected: the second attempt's stages
        # restart from t_start with a smaller step, so its second stage lies above the first's.
        assert log_eager[7] > log_eager[1], log_eager[:13]


def test_gradient_matches_exact_jacobian():
    """d x_{t_end} / d x_init = diag(sqrt(S0 / S1)) exactly for Gaussian data; also a check
    against central finite differences of the sampler itself."""
    name, tol = "linear", 1e-9
    model, proc = gaussian_model(name, "eps"), PROCESSES[name]
    w = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]])

    def loss(x):
        return jnp.sum(w * sample_adaptive(model, proc, key=jax.random.key(0), x_init=x,
                                           prediction="eps", rtol=tol, atol=tol).x)

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(X1)
    a1, s1, *_ = coefs(name, T_START, np)
    a0, s0, *_ = coefs(name, T_END, np)
    jac = np.sqrt((a0**2 * VAR + s0**2) / (a1**2 * VAR + s1**2))
    np.testing.assert_allclose(grad, w * jac, rtol=1e-6, atol=1e-7)
    # Finite differences along a direction, through the same compiled loss.
    d, eps = np.array([[0.3, -0.1], [0.2, 0.5], [-0.4, 0.1]]), 1e-4
    fd = (value_and_grad(X1 + eps * d)[0] - value_and_grad(X1 - eps * d)[0]) / (2 * eps)
    np.testing.assert_allclose(fd, np.sum(np.asarray(grad) * d), rtol=1e-5)


def test_prior_draw_follows_key_and_keeps_dtype():
    """x_init=None draws process.prior_sample with the key split as sample() does (float32),
    and the float32 result stays float32 and close to the exact map of that draw."""
    name, shape = "linear", (4, 2)
    model, proc = gaussian_model(name, "eps"), PROCESSES[name]
    key = jax.random.key(3)

    drawn = jax.jit(lambda: sample_adaptive(model, proc, key=key, shape=shape,
                                            prediction="eps").x)()
    x0 = proc.prior_sample(jax.random.split(key)[0], shape)
    assert drawn.dtype == jnp.float32 and x0.dtype == jnp.float32 and drawn.shape == shape
    # Another draw would be O(1) away from this exact map. The gap to it is the solver's error
    # at its default rtol = atol = 1e-5 (6.5e-5 in float64 too), which float32 round-off in the
    # step-size control moves by ~1e-5 (6.1e-5 .. 6.8e-5 across x86 ISAs): atol 5e-4 is 7 times
    # that and still far below the distance to another draw.
    exact = exact_flow(name, np.asarray(x0, np.float64), T_START, T_END)
    np.testing.assert_allclose(drawn, exact, rtol=0, atol=5e-4)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(t_start=0.5, t_end=0.5), ValueError, "t_end < t_start"),
        (dict(t_start=0.2, t_end=0.8), ValueError, "t_end < t_start"),
        (dict(t_end=-0.1), ValueError, "0 <= t_end"),
        (dict(t_start=1.5), ValueError, "t_start <= 1"),
        (dict(rtol=0.0), ValueError, "rtol"),
        (dict(atol=-1e-5), ValueError, "atol"),
        (dict(rtol=float("nan")), ValueError, "rtol"),
        (dict(solver="rk4"), ValueError, "unknown solver 'rk4'"),
        (dict(solver=diffrax.Heun()), TypeError, "Tsit5"),
        (dict(max_steps=0), ValueError, "max_steps"),
        (dict(max_steps=10.5), TypeError, "max_steps"),
        (dict(dt0=-0.1), ValueError, "dt0"),
        (dict(x_init=None), ValueError, "x_init or shape"),
    ],
)
def test_bad_inputs_raise_before_tracing(kwargs, error, match):
    log = []
    args = dict(key=jax.random.key(0), x_init=X1, prediction="eps") | kwargs
    with pytest.raises(error, match=match):
        sample_adaptive(counted(gaussian_model("linear", "eps"), log), PROCESSES["linear"],
                        **args)
    assert log == []


def test_wrong_model_output_shape_is_a_value_error():
    with pytest.raises(ValueError, match="shaped like x"):
        sample_adaptive(lambda x, t, cond=None: x[:, :1], PROCESSES["linear"],
                        key=jax.random.key(0), x_init=X1, prediction="eps")


# --------------------------------------------------------------------------- sampler objects

@jax.jit
def _objects_and_functions(x, key):
    """Each adaptive sampler through sample() and as its function, in one compilation."""
    name = "cosine"
    model, proc = gaussian_model(name, "x0"), PROCESSES[name]
    common = dict(key=key, prediction="x0", x_init=x, t_end=1e-3)
    ode = AdaptiveODE(solver="dopri5", rtol=1e-7, atol=1e-7, max_steps=500)
    dpm = DPMSolverAdaptive(order=2, algorithm="dpmsolver", variant="taylor", h_init=0.1,
                            atol=1e-3, rtol=1e-2, theta=0.8, t_err=1e-6, max_steps=200)
    thresh = DynamicThresholding(ratio=0.9, max_value=1.5)
    by_object = [
        sample(model, proc, ode, **common),
        sample(model, proc, dpm, **common, thresholding=thresh, denoise_final=True),
        sample(model, proc, DPMSolverAdaptive(), **common),
    ]
    by_function = [
        sample_adaptive(model, proc, **common, solver="dopri5", rtol=1e-7, atol=1e-7,
                        max_steps=500),
        sample_dpm_adaptive(model, proc, **common, order=2, algorithm="dpmsolver",
                            variant="taylor", h_init=0.1, atol=1e-3, rtol=1e-2, theta=0.8,
                            t_err=1e-6, max_steps=200, thresholding=thresh, denoise_final=True),
        sample_dpm_adaptive(model, proc, **common),
    ]
    return [(r.x, r.nfe) for r in by_object], [(r.x, r.nfe) for r in by_function]


def test_adaptive_objects_dispatch_to_the_functions():
    """sample(..., AdaptiveODE(...)) is sample_adaptive(...), sample(..., DPMSolverAdaptive(...))
    is sample_dpm_adaptive(...): identical samples and NFE, options and defaults passed on."""
    objects, functions = _objects_and_functions(X1, jax.random.key(0))
    for (x_o, nfe_o), (x_f, nfe_f) in zip(objects, functions):
        np.testing.assert_array_equal(x_o, x_f)
        assert int(nfe_o) == int(nfe_f) > 0
    assert AdaptiveODE.field_class is DPMSolverAdaptive.field_class is Denoiser
    for cls in (AdaptiveODE, DPMSolverAdaptive):
        assert issubclass(cls, AbstractAdaptiveSampler) and not cls.stochastic


def test_adaptive_object_defaults_and_pytree():
    assert AdaptiveODE() == AdaptiveODE(solver="tsit5", rtol=1e-5, atol=1e-5, max_steps=4096)
    assert DPMSolverAdaptive() == DPMSolverAdaptive(
        order=3, algorithm="dpmsolver++", variant="midpoint", h_init=0.05, atol=0.0078,
        rtol=0.05, theta=0.9, t_err=1e-5, max_steps=1000)
    # Tolerances are data (no recompile), the discrete options are static.
    assert jax.tree_util.tree_leaves(AdaptiveODE(rtol=1e-3, atol=1e-4)) == [1e-3, 1e-4]
    assert jax.tree_util.tree_leaves(DPMSolverAdaptive()) == [0.05, 0.0078, 0.05, 0.9, 1e-5]
    assert (jax.tree_util.tree_structure(DPMSolverAdaptive(order=2))
            != jax.tree_util.tree_structure(DPMSolverAdaptive(order=3)))


@pytest.mark.parametrize("make,error,match", [
    (lambda: DPMSolverAdaptive(order=1), ValueError, "order"),
    (lambda: DPMSolverAdaptive(algorithm="ddim"), ValueError, "algorithm"),
    (lambda: DPMSolverAdaptive(variant="rk"), ValueError, "variant"),
    (lambda: DPMSolverAdaptive(rtol=-1.0), ValueError, "rtol"),
    (lambda: DPMSolverAdaptive(theta=1.5), ValueError, "theta"),
    (lambda: DPMSolverAdaptive(max_steps=0), ValueError, "max_steps"),
    (lambda: AdaptiveODE(solver="rk4"), ValueError, "unknown solver 'rk4'"),
    (lambda: AdaptiveODE(solver=diffrax.Heun()), TypeError, "Tsit5"),
    (lambda: AdaptiveODE(rtol=0.0), ValueError, "rtol"),
    (lambda: AdaptiveODE(max_steps=10.5), TypeError, "max_steps"),
])
def test_adaptive_objects_validate_their_options(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(num_steps=10), ValueError, "chooses its own steps.*num_steps"),
    (dict(grid=uniform), ValueError, "chooses its own steps.*grid"),
    (dict(ts=np.array([1.0, 0.5, 0.1])), ValueError, "chooses its own steps.*ts"),
    (dict(return_trajectory=True), ValueError, "no trajectory"),
    (dict(solver=AdaptiveODE(), denoise_final=True), ValueError, "denoise_final"),
    (dict(solver=AdaptiveODE(), thresholding=DynamicThresholding()), ValueError, "threshold"),
    (dict(x_init=None), ValueError, "x_init or shape"),
])
def test_adaptive_objects_refuse_grid_options(kwargs, error, match):
    log = []
    args = dict(solver=DPMSolverAdaptive(), x_init=X1) | kwargs
    with pytest.raises(error, match=match):
        sample(counted(gaussian_model("linear", "eps"), log), PROCESSES["linear"],
               args.pop("solver"), key=jax.random.key(0), prediction="eps", **args)
    assert log == []
    with pytest.raises(TypeError, match="invert"):
        invert(gaussian_model("linear", "eps"), PROCESSES["linear"], AdaptiveODE(), x=X1,
               prediction="eps", num_steps=3)
