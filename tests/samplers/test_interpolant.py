"""Generation with stochastic interpolants (samplers.InterpolantEuler, InterpolantHeun,
InterpolantSDE and their field InterpolantField) against the closed forms of
tests/interpolant_closed_forms.py (Gaussian ends: every field is exact).

These are the tests of the former ``processes.interpolant_ode`` / ``interpolant_sde`` with
every assertion. The SDE's two fields, given to the former function as ``b_fn`` and ``s_fn``,
are now one network whose output concatenates them (prediction ``"b+s"`` or ``"b+eta"``): one
network evaluation per step gives both, so the exact NFE of the SDE is ``num_steps`` (the
former function reported ``2 num_steps``, one per field function). Its Brownian increments are
drawn from ``sample()``'s split of the key, so the SDE's numbers differ from the former
function's for the same key (the statistical assertions do not depend on it); the ODE's are
the same.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interpolant_closed_forms import M0, M1, N, S0, S1, assert_gaussian, exact_fields, gaussian
from genflow.processes import StochasticInterpolant, VPLinear
from genflow.samplers import (
    Denoiser,
    DynamicThresholding,
    Heun,
    InterpolantEuler,
    InterpolantField,
    InterpolantHeun,
    InterpolantSDE,
    invert,
    sample,
)


def joined(*fields):
    """One network whose output concatenates ``fields`` on the last axis."""
    return lambda x, t, cond=None: jnp.concatenate([f(x, t) for f in fields], axis=-1)


# ------------------------------------------------------------------------- the field
@pytest.mark.parametrize("interpolant,gamma", [("linear", "sqrt"), ("trig", "quadratic"),
                                               ("one_sided_trig", "zero")])
def test_field_builds_drift_and_score_from_every_prediction(interpolant, gamma):
    """b = v + gamma' eta = v - gamma gamma' s, s = -eta / noise_scale, one network call."""
    one_sided = interpolant.startswith("one_sided")
    m1, s1 = (np.zeros(2), np.eye(2)) if one_sided else (M1, S1)
    proc = StochasticInterpolant(interpolant, gamma)
    f = exact_fields(interpolant, gamma, m1=m1, s1=s1)
    x = gaussian(jax.random.key(0), M1, S1, 6)
    t = jnp.array([0.03, 0.2, 0.37, 0.57, 0.8, 0.97])
    b, s = f["b"](x, t), f["s"](x, t)
    for prediction in ("b", "b+eta", "b+s", "v+eta", "v+s"):
        model = joined(*(f[name] for name in prediction.split("+")))
        field = InterpolantField(model, proc, prediction)
        np.testing.assert_allclose(field.drift(x, t), b, rtol=1e-9, atol=1e-12)
        assert field.calls == 1
        if "+" in prediction:
            got_b, got_s = field.drift_and_score(x, t)
            assert field.calls == 2  # one network evaluation for both
            np.testing.assert_allclose(got_b, b, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(got_s, s, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(field.score(x, t), s, rtol=1e-9, atol=1e-12)
    if one_sided:  # gamma = 0: the velocity is the drift
        np.testing.assert_allclose(InterpolantField(f["v"], proc, "v").drift(x, t), b,
                                   rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="no score or denoiser"):
        InterpolantField(f["b"], proc, "b").score(x, t)


# ------------------------------------------------------------------------- generation
@pytest.mark.parametrize("interpolant,gamma", [("linear", "sqrt"), ("trig", "quadratic"), ("encdec", "sin2")])
def test_ode_maps_rho1_to_rho0(interpolant, gamma):
    b = exact_fields(interpolant, gamma)["b"]
    proc = StochasticInterpolant(interpolant, gamma)
    x1 = gaussian(jax.random.key(4), M1, S1)
    out = sample(b, proc, InterpolantHeun(), key=jax.random.key(0), x_init=x1, prediction="b",
                 num_steps=100, t_start=1.0, t_end=0.0)
    assert out.nfe == 200 and out.x.shape == x1.shape and out.x.dtype == x1.dtype
    assert_gaussian(out.x, M0, S0)
    if interpolant == "linear":  # and back: forward in time the same flow returns x1 (Euler)
        back = invert(b, proc, InterpolantEuler(), x=out.x, prediction="b", num_steps=400,
                      t_start=0.0, t_end=1.0)
        assert back.nfe == 400
        np.testing.assert_allclose(back.x, x1, atol=0.05)


def test_ode_from_the_prior_of_a_one_sided_interpolant():
    """Without source data, shape= starts from prior_sample = N(0, I) at t = 1."""
    proc = StochasticInterpolant("one_sided_linear")
    b = exact_fields("one_sided_linear", "zero", m1=np.zeros(2), s1=np.eye(2))["b"]
    key = jax.random.key(11)
    out = sample(b, proc, InterpolantHeun(), key=key, shape=(N, 2), prediction="b",
                 num_steps=50, t_start=1.0, t_end=0.0, return_trajectory=True)
    np.testing.assert_array_equal(out.trajectory[0],
                                  proc.prior_sample(jax.random.split(key)[0], (N, 2)))
    assert out.x.dtype == jnp.float32
    assert_gaussian(out.x, M0, S0)


@pytest.mark.parametrize("interpolant,kind,epsilon", [
    ("linear", "s", 0.5), ("linear", "eta", lambda t: 2.0 * t * (1 - t)), ("mirror", "s", 1.0)],
    ids=["score-constant-eps", "eta-vanishing-eps", "mirror"])
def test_sde_maps_rho1_to_rho0(interpolant, kind, epsilon):
    """For ``mirror`` rho_1 = rho_0 and the SDE must keep it (a diffusion that resamples it)."""
    m1, s1 = (M0, S0) if interpolant == "mirror" else (M1, S1)
    proc = StochasticInterpolant(interpolant, "sqrt")
    fields = exact_fields(interpolant, "sqrt", m1=m1, s1=s1)
    x1 = gaussian(jax.random.key(5), m1, s1)
    out = sample(joined(fields["b"], fields[kind]), proc, InterpolantSDE(epsilon),
                 key=jax.random.key(6), x_init=x1, prediction="b+" + kind, num_steps=400,
                 t_start=1.0, t_end=0.0, return_trajectory=True)
    # One network evaluation a step gives both fields (the former b_fn and s_fn: 800 calls).
    assert out.nfe == 400 and out.trajectory.shape == (401, N, 2)
    assert bool(jnp.all(jnp.isfinite(out.x)))
    assert_gaussian(out.x, M0, S0)


def test_sde_with_the_wrong_sign_fails():
    """Negative control: b + eps s (the forward-time drift) run backwards misses rho_0."""
    proc = StochasticInterpolant("linear", "sqrt")
    fields = exact_fields("linear", "sqrt")
    x1 = gaussian(jax.random.key(5), M1, S1)
    out = sample(joined(fields["b"], lambda x, t: -fields["s"](x, t)), proc, InterpolantSDE(0.5),
                 key=jax.random.key(6), x_init=x1, prediction="b+s", num_steps=400,
                 t_start=1.0, t_end=0.0)
    with pytest.raises(AssertionError):
        assert_gaussian(out.x, M0, S0)


def test_sampling_is_deterministic_per_key_and_keeps_float32():
    proc = StochasticInterpolant("linear", "quadratic")
    x = jax.random.normal(jax.random.key(7), (64, 2), jnp.float32)

    def field(x, t, cond=None):  # a float32 network stand-in
        return -x * t[:, None].astype(x.dtype)

    both = joined(field, field)
    run = jax.jit(lambda k: sample(both, proc, InterpolantSDE(), key=k, x_init=x,
                                   prediction="b+s", num_steps=5, t_start=1.0, t_end=0.0).x)
    a1, a2, a3 = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    assert a1.dtype == jnp.float32
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, a3)
    out = sample(field, proc, InterpolantEuler(), key=jax.random.key(0), x_init=x,
                 prediction="b", num_steps=3, t_start=1.0, t_end=0.0)
    assert out.x.dtype == jnp.float32


def test_epsilon_is_data_or_structure():
    """A float epsilon is a pytree leaf (no recompile for a new value), a function is static."""
    assert jax.tree_util.tree_leaves(InterpolantSDE(0.5)) == [0.5]
    fn = lambda t: t * (1 - t)  # noqa: E731
    sde = InterpolantSDE(fn)
    assert jax.tree_util.tree_leaves(sde) == []
    again = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(sde), [])
    assert again.epsilon is fn
    assert jax.tree_util.tree_structure(InterpolantSDE(1.0)) != jax.tree_util.tree_structure(
        InterpolantEuler())
    assert InterpolantSDE.order == 0.5 and InterpolantSDE.stochastic
    assert (InterpolantEuler.order, InterpolantHeun.order) == (1, 2)
    assert not (InterpolantEuler.stochastic or InterpolantHeun.stochastic)


# ------------------------------------------------------------------------- bad input
def test_bad_input_is_rejected():
    proc = StochasticInterpolant("linear", "sqrt")
    x = jnp.zeros((4, 2))
    key = jax.random.key(0)
    two = lambda x, t, c: jnp.concatenate([x, x], axis=-1)  # noqa: E731
    one = lambda x, t, c: x  # noqa: E731
    common = dict(key=key, x_init=x, num_steps=2, t_start=1.0, t_end=0.0)
    with pytest.raises(ValueError, match="t_start = 1 - 1e-3"):
        sample(two, proc, InterpolantSDE(epsilon=1.0), prediction="b+eta", **common)
    with pytest.raises(ValueError, match="num_steps"):
        sample(one, proc, InterpolantHeun(), prediction="b", **(common | {"num_steps": 0}))
    # Inside (0, 1), or with an epsilon that vanishes at t_start, the denoiser is fine.
    sample(two, proc, InterpolantSDE(1.0), prediction="b+eta", **(common | {"t_start": 0.999}))
    sample(two, proc, InterpolantSDE(lambda t: t * (1 - t)), prediction="b+eta", **common)
    with pytest.raises(ValueError, match="needs a score or denoiser field"):
        sample(one, proc, InterpolantSDE(), prediction="b", **common)
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        InterpolantSDE(-1.0)
    with pytest.raises(ValueError, match="one of"):
        sample(one, proc, InterpolantHeun(), prediction="eps", **common)
    with pytest.raises(ValueError, match=r"2 fields 'b\+eta' concatenated.*\(4, 4\)"):
        sample(one, proc, InterpolantHeun(), prediction="b+eta", **common)
    with pytest.raises(ValueError, match="thresholding"):
        sample(one, proc, InterpolantHeun(), prediction="b", thresholding=DynamicThresholding(),
               **common)
    with pytest.raises(ValueError, match="not available"):
        sample(one, proc, InterpolantHeun(), prediction="b", denoise_final=True, **common)
    # A Gaussian-path solver names the solvers of this process, and vice versa.
    with pytest.raises(TypeError, match="InterpolantEuler, InterpolantHeun, InterpolantSDE"):
        sample(one, proc, Heun(), prediction="eps", **common)
    with pytest.raises(TypeError, match="stochastic interpolant"):
        sample(one, VPLinear(), InterpolantHeun(), prediction="b", **common)
    with pytest.raises(TypeError, match="Gaussian path"):
        Denoiser(one, proc, "eps")
    with pytest.raises(ValueError, match="deterministic"):
        invert(two, proc, InterpolantSDE(), x=x, prediction="b+s", num_steps=2)
