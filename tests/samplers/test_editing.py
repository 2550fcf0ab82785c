"""Editing by inversion (``edit``) and the attention-value sharing of RF-Edit.

Truth for editing: class-conditional 2-D Gaussian data, class c ~ N(m_c, diag V_c), under
rectified flow (alpha = 1 - t, sigma = t). The exact conditional velocity is

    v(x, t | c) = eps_hat - x0_hat,   S = alpha^2 V_c + sigma^2,
    x0_hat = m_c + alpha V_c (x - alpha m_c) / S,   eps_hat = sigma (x - alpha m_c) / S,

and the probability flow of a Gaussian is affine: x_t = alpha_t m + sqrt(S_t / S_s)(x_s - alpha_s m).
From t = 0 (S = V_a) to t = 1 (S = 1) under class a the latent is z = V_a^{-1/2} (x - m_a); back
to t = 0 under class b, x' = m_b + V_b^{1/2} z. So editing a -> b is the elementwise affine map
x -> m_b + sqrt(V_b / V_a) (x - m_a), up to the solver's error.

Truth for value sharing: a value-capable model written here whose "values" are its input time
and label, so that which record a regeneration step received can be read off the result; and a
tiny DiT for the real hook.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from genflow.networks import DiT, as_model_fn, as_value_model_fn
from genflow.processes import RectifiedFlow
from genflow.samplers import (
    EulerMaruyama,
    Heun,
    RFSolver,
    edit,
    invert,
    round_trip,
    sample,
    supports_value_injection,
)

RF = RectifiedFlow()
M_C = np.array([[-2.0, 1.0], [2.0, -0.5]])
V_C = np.array([[0.3, 0.8], [0.6, 0.2]])
RNG = np.random.default_rng(0)
X_A = M_C[0] + np.sqrt(V_C[0]) * RNG.standard_normal((16, 2))  # class-0 points
SRC, TGT = np.zeros(16, np.int32), np.ones(16, np.int32)


def class_velocity(x, t, label):
    """Exact velocity of class ``label`` (an array (b,), exact 0./1. floats allowed)."""
    lab = jnp.asarray(label, x.dtype)[:, None]
    m = M_C[0] + lab * (M_C[1] - M_C[0])
    v = V_C[0] + lab * (V_C[1] - V_C[0])
    a, s = (1.0 - t)[:, None], t[:, None]
    S = a**2 * v + s**2
    resid = x - a * m
    return s * resid / S - (m + a * v * resid / S)


def velocity_model(x, t, cond):
    return class_velocity(x, t, cond)


def value_model(x, t, cond, *, values=None, return_values=False):
    """A value-capable model whose values are (time, label), each (b, 1).

    Injected labels replace ``cond``; an injected time adds ``10 (t_injected - t)`` to the
    output, so a record from another time shows up in the result."""
    own = (jnp.broadcast_to(t[:, None], (x.shape[0], 1)),
           jnp.asarray(cond, x.dtype)[:, None])
    label, penalty = cond, 0.0
    if values is not None:
        if values[1] is not None:
            label = values[1][:, 0]
        if values[0] is not None:
            penalty = 10.0 * (values[0] - t[:, None])
    out = class_velocity(x, t, label) + penalty
    return (out, own) if return_values else out


value_model.supports_value_injection = True


def affine_edit(x, a, b):
    return M_C[b] + np.sqrt(V_C[b] / V_C[a]) * (x - M_C[a])


def log_density(x, c):
    return -0.5 * np.sum((x - M_C[c]) ** 2 / V_C[c] + np.log(V_C[c]), axis=-1)


# --------------------------------------------------------------------------- closed form
def test_edit_is_the_affine_map_between_gaussian_classes():
    """Class 0 -> class 1 with RF-Solver-2, data end t = 0, 16 and 32 steps (padded, vmapped)."""
    n_max = 32
    grids = np.stack([np.concatenate([np.linspace(0.0, 1.0, n + 1), np.ones(n_max - n)])
                      for n in (16, 32)])

    @jax.jit
    def run(ts_batch):
        def one(ts):
            res = edit(velocity_model, RF, RFSolver(), X_A, source_cond=SRC, target_cond=TGT,
                       prediction="velocity", ts=ts)
            return res.x, res.latent
        return jax.vmap(one)(ts_batch)

    xs, latents = (np.asarray(a) for a in run(grids))
    expected = affine_edit(X_A, 0, 1)
    errors = np.abs(xs - expected).max(axis=(1, 2))
    # The tolerance is the solver's: second order, so doubling the steps divides it by ~4.
    assert errors[1] < 2e-3 and errors[1] < 0.35 * errors[0], errors
    np.testing.assert_allclose(latents[1], (X_A - M_C[0]) / np.sqrt(V_C[0]), atol=2e-3)
    # The edited points belong to class 1 (and the sources to class 0).
    assert np.all(log_density(xs[1], 1) > log_density(xs[1], 0))
    assert np.all(log_density(X_A, 0) > log_density(X_A, 1))
    # Editing is not the identity: the points moved by about the distance of the means.
    assert np.abs(xs[1] - X_A).mean() > 1.0


def test_round_trip_is_edit_with_equal_conditions(runs):
    a = runs["round_trip"]
    assert a.nfe == 2 * N * 3
    assert np.abs(a.x - X_A).max() < 0.05  # a round trip, up to 5 coarse steps each way


# --------------------------------------------------------------------------- value sharing
N = 5  # steps per direction
K = 2  # shared steps in the partial case
KW = dict(prediction="velocity", num_steps=N, t_data=0.0)


@pytest.fixture(scope="module")
def runs():
    """Every value-sharing run of the tests below, in one compiled program."""

    @jax.jit
    def all_runs():
        out = {}
        for name, solver in [("rf3", RFSolver(order=3)), ("heun", Heun())]:
            ed = partial(edit, value_model, RF, solver, X_A, source_cond=SRC, target_cond=TGT,
                         **KW)
            out[name + "/plain"] = ed()
            out[name + "/times"] = ed(share_values_steps=N, share_blocks=(0,))
        ed = partial(edit, value_model, RF, RFSolver(order=3), X_A, source_cond=SRC,
                     target_cond=TGT, **KW)
        out["all"] = ed(share_values_steps=N)
        out["k"] = ed(share_values_steps=K)
        out["round_trip"] = round_trip(velocity_model, RF, RFSolver(order=3), X_A, cond=SRC,
                                       **KW)
        # The partial case by hand: invert, K steps under the source class, then the target.
        ts = jnp.linspace(0.0, 1.0, N + 1)
        run = partial(sample, velocity_model, RF, RFSolver(order=3), key=jax.random.key(0),
                      prediction="velocity")
        z = invert(velocity_model, RF, RFSolver(order=3), x=X_A, prediction="velocity", ts=ts,
                   cond=SRC).x
        down = ts[::-1]
        mid = run(x_init=z, ts=down[: K + 1], cond=SRC).x
        out["by_hand"] = (z, run(x_init=mid, ts=down[K:], cond=TGT).x)
        return out

    return all_runs()


@pytest.mark.parametrize("solver", ["rf3", "heun"])
def test_values_are_matched_by_time(solver, runs):
    """Injecting only the recorded *times* into every regeneration step changes nothing: each
    evaluation received the record made at its own time (a record from another time would add
    10 x the time difference to the velocity)."""
    plain, shared = runs[solver + "/plain"], runs[solver + "/times"]
    np.testing.assert_allclose(shared.x, plain.x, rtol=1e-10, atol=1e-10)
    assert shared.nfe == plain.nfe + 1  # the extra record at the latent
    assert np.abs(np.asarray(plain.x) - X_A).mean() > 1.0  # the plain run is an edit


def test_sharing_every_step_keeps_the_source(runs):
    """With the source's labels injected in every step, regeneration follows the source class:
    the result is the round trip (within round-off), not the edit."""
    np.testing.assert_allclose(runs["all"].x, runs["round_trip"].x, rtol=1e-10, atol=1e-10)
    assert np.abs(runs["all"].x - runs["rf3/plain"].x).max() > 1.0


def test_sharing_k_steps_is_k_source_steps_then_target(runs):
    """K = 2: exactly the first two regeneration steps follow the source class."""
    shared, plain = runs["k"], runs["rf3/plain"]
    z, expected = runs["by_hand"]
    np.testing.assert_allclose(shared.latent, z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(shared.x, expected, rtol=1e-10, atol=1e-10)
    assert np.abs(shared.x - plain.x).max() > 1e-2
    assert np.abs(shared.x - runs["all"].x).max() > 1e-2
    assert shared.nfe == plain.nfe + 1 == 2 * N * 3 + 1


# --------------------------------------------------------------------------- DiT
IMAGE = (4, 4, 1)
DIT = dict(patch_size=2, width=16, depth=1, num_heads=2, mlp_ratio=1.0, embedding="fourier",
           embed_dim=8, num_classes=3)
FAST = dict(compiler_options={"xla_backend_optimization_level": 0})


@pytest.fixture(scope="module")
def dit():
    """A tiny DiT whose arrays are all drawn at random (the zero-initialised layers would hide
    the attention): built abstractly and filled with numpy, so nothing is compiled."""
    abstract = nnx.eval_shape(lambda: DiT(IMAGE, **DIT, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(1)
    state = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype),
                         state)
    return nnx.merge(graphdef, state)


_NFE = {}


@partial(jax.jit, **FAST)
def _dit_edits(plain_fn, value_fn, x):
    """Plain editing (a ModelFn), and a ValueModelFn sharing 0 and 2 steps, in one program."""
    ed = partial(edit, process=RF, solver=RFSolver(), x_source=x, source_cond=jnp.array([0, 1]),
                 target_cond=jnp.array([2, 2]), prediction="velocity", num_steps=2, t_data=0.0)
    out = dict(plain=ed(plain_fn), k0=ed(value_fn), k2=ed(value_fn, share_values_steps=2))
    _NFE.update({name: res.nfe for name, res in out.items()})
    return {name: (res.x, res.latent) for name, res in out.items()}


def test_dit_value_sharing(dit):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, *IMAGE)), jnp.float32)
    fn = as_value_model_fn(dit)
    assert supports_value_injection(fn) and not supports_value_injection(as_model_fn(dit))
    # Its own pytree node: a jitted function never reuses a ModelFn's compilation for it.
    structure = jax.tree_util.tree_structure
    assert structure(fn) != structure(as_model_fn(dit))
    assert len(jax.tree.leaves(fn)) == len(jax.tree.leaves(as_model_fn(dit))) > 0
    out = _dit_edits(as_model_fn(dit), fn, x)
    (plain_x, plain_z), (x0, z0), (x2, z2) = out["plain"], out["k0"], out["k2"]
    # k = 0 is plain editing, through another function (the value hook): float32 edits of 8 DiT
    # evaluations each, within 6e-7 of float64 at |x| <= 4 here; XLA may fuse the two paths
    # differently, so they agree to float32 round-off (atol 1e-5), not bit for bit.
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x0, plain_x, **tol)
    np.testing.assert_allclose(z0, plain_z, **tol)
    assert _NFE["k0"] == _NFE["plain"] == 2 * 2 * 2
    nfe0, nfe2 = _NFE["k0"], _NFE["k2"]
    x2_again = _dit_edits(as_model_fn(dit), fn, x)["k2"][0]
    np.testing.assert_array_equal(x2, x2_again)  # deterministic: the same compiled program
    np.testing.assert_allclose(z2, z0, **tol)  # the inversion is unchanged (recording the values)
    assert np.abs(np.asarray(x2) - np.asarray(x0)).max() > 1e-3  # sharing changes the edit
    assert nfe2 == nfe0 + 1
    assert np.all(np.isfinite(np.asarray(x2)))


# --------------------------------------------------------------------------- errors
def test_value_sharing_needs_a_value_model(dit):
    with pytest.raises(ValueError, match="as_value_model_fn"):
        edit(as_model_fn(dit), RF, RFSolver(), jnp.zeros((1, *IMAGE)), source_cond=None,
             target_cond=None, prediction="velocity", num_steps=3, share_values_steps=1)
    with pytest.raises(ValueError, match="as_value_model_fn"):
        edit(velocity_model, RF, RFSolver(), X_A, source_cond=SRC, target_cond=TGT,
             share_values_steps=1, **KW)
    with pytest.raises(TypeError, match="value hook"):
        as_value_model_fn(nnx.eval_shape(lambda: nnx.Linear(2, 2, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(share_values_steps=N + 1), ValueError, "at most 5"),
    (dict(share_values_steps=-1), ValueError, ">= 0"),
    (dict(share_values_steps=1.0), TypeError, "int"),
    (dict(solver=EulerMaruyama()), ValueError, "deterministic"),
    (dict(share_values_steps=1, share_blocks=(2,)), ValueError, "out of range"),
])
def test_bad_arguments_raise(kwargs, exc, match):
    solver = kwargs.pop("solver", RFSolver())
    with pytest.raises(exc, match=match):
        edit(value_model, RF, solver, X_A, source_cond=SRC, target_cond=TGT, **KW, **kwargs)
