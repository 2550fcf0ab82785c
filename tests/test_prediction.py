"""Parameterizations and their conversions, against closed forms written out here.

With ``x_t = alpha x0 + sigma eps``: EPS predicts eps, X0 predicts x0, V predicts
``alpha eps - sigma x0``, VELOCITY predicts ``dx_t/dt = alpha' x0 + sigma' eps`` and SCORE predicts
``-eps / sigma``. The schedule coefficients below are the VP closed forms, not the package's.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.prediction import (
    EPS,
    SCORE,
    V,
    VELOCITY,
    X0,
    Prediction,
    from_x0_eps,
    to_x0_eps,
)
from genflow.processes import VPCosine, VPLinear
from vp_closed_forms import coefs

KINDS = [k.value for k in Prediction]
PROCESSES = {"linear": VPLinear(), "cosine": VPCosine()}


def closed_alpha(name, t, xp=np):
    return coefs(name, t, xp)[0]


def closed_sigma(name, t, xp=np):
    return coefs(name, t, xp)[1]


def closed_coefs(name, t):
    """alpha, sigma, alpha', sigma' with hand-derived derivatives."""
    return coefs(name, np.asarray(t, np.float64))[:4]


def closed_prediction(kind, x0, eps, coefs):
    alpha, sigma, d_alpha, d_sigma = coefs
    return {
        "eps": eps,
        "x0": x0,
        "v": alpha * eps - sigma * x0,
        "velocity": d_alpha * x0 + d_sigma * eps,
        "score": -eps / sigma,
    }[kind]


# t variants: scalars near both ends, and a (b,) array across the range.
T_CASES = {
    "scalar_small": 1e-3,
    "scalar_one": 1.0,
    "array": np.array([1e-3, 0.05, 0.3, 0.71, 1.0]),
}


@functools.lru_cache(maxsize=None)
def case(name, t_case):
    """Closed-form data, and every conversion the package computes, in one jit per case."""
    t = np.asarray(T_CASES[t_case], np.float64)
    rng = np.random.default_rng(0)
    b = 5
    x0 = rng.normal(size=(b, 2, 3))
    eps = rng.normal(size=(b, 2, 3))
    coefs = [c.reshape(c.shape + (1,) * (x0.ndim - c.ndim)) for c in closed_coefs(name, t)]
    alpha, sigma = coefs[0], coefs[1]
    xt = alpha * x0 + sigma * eps
    preds = {k: closed_prediction(k, x0, eps, coefs) for k in KINDS}

    # Eager on purpose: one jit of all 25 pairs compiles for seconds; eager ops are cached.
    def package(proc, x0, eps, xt, t, preds):
        out = {}
        for k in KINDS:
            out[("from", k)] = from_x0_eps(proc, k, x0, eps, xt, t)
            out[("to", k)] = to_x0_eps(proc, k, preds[k], xt, t)
        for a in KINDS:
            for b_ in KINDS:
                pred_b = from_x0_eps(proc, b_, *to_x0_eps(proc, a, preds[a], xt, t), xt, t)
                out[("pair", a, b_)] = pred_b
                hub = to_x0_eps(proc, b_, pred_b, xt, t)
                out[("back", a, b_)] = from_x0_eps(proc, a, *hub, xt, t)
        return out

    got = jax.tree_util.tree_map(np.asarray, package(PROCESSES[name], x0, eps, xt, t, preds))
    return dict(x0=x0, eps=eps, xt=xt, t=t, preds=preds, got=got)


CASES = [(n, c) for n in PROCESSES for c in T_CASES]
CASE_IDS = [f"{n}-{c}" for n, c in CASES]


def _close(a, b, rtol=1e-10):
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("name,t_case", CASES, ids=CASE_IDS)
def test_from_x0_eps_matches_closed_form(name, t_case):
    c = case(name, t_case)
    for k in KINDS:
        assert c["got"][("from", k)].shape == c["x0"].shape
        _close(c["got"][("from", k)], c["preds"][k])


@pytest.mark.parametrize("name,t_case", CASES, ids=CASE_IDS)
def test_to_x0_eps_recovers_x0_and_eps(name, t_case):
    c = case(name, t_case)
    for k in KINDS:
        x0_hat, eps_hat = c["got"][("to", k)]
        _close(x0_hat, c["x0"])
        _close(eps_hat, c["eps"])


@pytest.mark.parametrize("name,t_case", CASES, ids=CASE_IDS)
def test_every_pair_round_trips(name, t_case):
    c = case(name, t_case)
    for a in KINDS:
        for b in KINDS:
            # a -> b gives b's closed form, and b -> a returns to a's.
            _close(c["got"][("pair", a, b)], c["preds"][b], rtol=1e-9)
            _close(c["got"][("back", a, b)], c["preds"][a], rtol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
def test_velocity_is_time_derivative_of_the_path(name):
    c = case(name, "array")
    x0, eps = jnp.asarray(c["x0"]), jnp.asarray(c["eps"])
    t = jnp.asarray(c["t"])

    def path(tt):  # t -> alpha(t) x0 + sigma(t) eps, per example
        a = closed_alpha(name, tt, jnp)[:, None, None]
        s = closed_sigma(name, tt, jnp)[:, None, None]
        return a * x0 + s * eps

    _, dxdt = jax.jvp(path, (t,), (jnp.ones_like(t),))
    _close(c["got"][("from", "velocity")], np.asarray(dxdt), rtol=1e-9)


@pytest.mark.parametrize("name", PROCESSES)
def test_score_and_v_definitions(name):
    c = case(name, "array")
    alpha = closed_alpha(name, c["t"])[:, None, None]
    sigma = closed_sigma(name, c["t"])[:, None, None]
    _close(c["got"][("from", "score")], -c["eps"] / sigma)
    _close(c["got"][("from", "v")], alpha * c["eps"] - sigma * c["x0"])
    # The score is also the Gaussian conditional score grad log N(x_t; alpha x0, sigma^2).
    _close(c["got"][("from", "score")], -(c["xt"] - alpha * c["x0"]) / sigma**2, rtol=1e-9)


def test_parse():
    assert Prediction.parse("EPS") is EPS
    assert Prediction.parse("eps") is EPS
    assert Prediction.parse("Velocity") is VELOCITY
    assert Prediction.parse(Prediction.SCORE) is SCORE
    assert Prediction("x0") is X0 and Prediction.parse("V") is V
    with pytest.raises(ValueError) as err:
        Prediction.parse("noise")
    msg = str(err.value)
    assert "noise" in msg
    for k in KINDS:
        assert k in msg


def test_string_kind_accepted_by_conversions():
    x0, eps = np.ones((2, 3)), np.full((2, 3), 0.5)
    alpha, sigma = closed_alpha("linear", 0.5), closed_sigma("linear", 0.5)
    xt = alpha * x0 + sigma * eps
    v = from_x0_eps(VPLinear(), "V", x0, eps, xt, np.float64(0.5))
    np.testing.assert_allclose(v, alpha * eps - sigma * x0, rtol=1e-12)
    with pytest.raises(ValueError, match="choose one of"):
        to_x0_eps(VPLinear(), "noise", v, xt, np.float64(0.5))
