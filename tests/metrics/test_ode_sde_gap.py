"""ODE–SDE gap diagnostics on a Gaussian mixture with its exact score, and on a perturbed score.

With the exact score of ``p_t`` both samplers draw from ``p_{t_end}`` and the Fokker–Planck
residual vanishes; a perturbed score (not the score of any FP solution) has a clear residual,
and its ODE and SDE samples land further apart. The mixture's marginals are written out here
(VP linear, beta 0.1..20).
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.metrics import OdeSdeGap, ode_sde_gap, residual_profile, sliced_wasserstein2
from genflow.processes import VPLinear
from genflow.samplers import EulerMaruyama, Heun

PROC = VPLinear(beta_min=0.1, beta_max=20.0)
W = np.array([0.4, 0.6])
M = np.array([[-1.0, 0.5], [1.0, -0.5]])
V = 0.05  # isotropic component variance
N = 2000
TIMES = (0.05, 0.3, 1.0)


def coefs(t):
    log_alpha = -0.25 * t**2 * 19.9 - 0.05 * t
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2 * log_alpha))


def exact_score(x, t, cond=None, offset=0.0):
    """``grad log p_t`` with ``p_t = sum_k w_k N(alpha m_k, (alpha^2 V + sigma^2) I)``."""
    alpha, sigma = coefs(t)
    var = (alpha**2 * V + sigma**2)[:, None]
    diffs = [x - alpha[:, None] * M[k] for k in range(2)]
    logits = jnp.stack([math.log(W[k]) - 0.5 * jnp.sum(d**2, -1) / var[:, 0] for k, d in
                        enumerate(diffs)], -1)
    r = jax.nn.softmax(logits, -1)
    return -(r[:, :1] * diffs[0] + r[:, 1:] * diffs[1]) / var + offset


def shifted(offset):
    """The exact score plus a constant ``offset`` (0: exact). The ODE's drift moves by
    ``-(g^2/2) offset``, the SDE's by twice that, so the two sets of samples are shifted by
    different amounts. A ``Partial`` with the offset as its array: one compilation for all."""
    return jax.tree_util.Partial(
        lambda offset, x, t, cond=None: exact_score(x, t, offset=offset), jnp.asarray(offset))


EXACT, PERTURBED = shifted([0.0, 0.0]), shifted([0.5, 0.0])
X_INIT = jax.random.normal(jax.random.key(5), (N, 2), jnp.float64)  # the prior, in float64
COMMON = dict(prediction="score", x_init=X_INIT, ode_steps=100, sde_steps=200,
              residual_times=TIMES, residual_points=64)


def data(n, seed):
    rng = np.random.default_rng(seed)
    k = rng.choice(2, n, p=W)
    return M[k] + math.sqrt(V) * rng.normal(size=(n, 2))


@functools.lru_cache(maxsize=None)
def gap(which):
    score = EXACT if which == "exact" else PERTURBED
    return ode_sde_gap(score, PROC, key=jax.random.key(0), data=data(N, 1), scale="none",
                       **COMMON)


def test_exact_score_closes_the_gap():
    g = gap("exact")
    floor = sliced_wasserstein2(data(N, 2), data(N, 3))
    assert g.ode.shape == g.sde.shape == (N, 2)
    assert np.max(g.residual_rms) < 1e-6, g.residual_rms
    # Both samplers reproduce the data within a small multiple of the sampling floor.
    assert g.sw2_ode_data < 3 * floor and g.sw2_sde_data < 3 * floor, (g, floor)
    assert g.sw2_ode_sde < 3 * floor
    assert abs(g.mmd_ode_sde) < 5e-3


def test_perturbed_score_opens_the_gap():
    exact, bad = gap("exact"), gap("perturbed")
    assert np.all(bad.residual_rms > 0.1), bad.residual_rms
    assert bad.residual_mean > 1e5 * max(exact.residual_mean, 1e-12)
    assert bad.sw2_ode_sde > 3 * exact.sw2_ode_sde, (bad.sw2_ode_sde, exact.sw2_ode_sde)
    assert bad.mmd_ode_sde > 10 * abs(exact.mmd_ode_sde)


def test_summary_is_json_ready():
    s = gap("exact").summary()
    assert set(s) >= {"sw2_ode_sde", "mmd_ode_sde", "residual_rms", "residual_mean"}
    assert len(s["residual_rms"]) == len(TIMES)
    json.dumps(s)


def test_residual_profile_matches_normalisation():
    """``scale="normalized"`` multiplies the raw RMS by sigma^3 / g^2 at each time."""
    x0 = jnp.asarray(data(N, 4))
    kw = dict(key=jax.random.key(1), prediction="score", times=TIMES, num_points=64)
    raw = residual_profile(PERTURBED, PROC, x0, scale="none", **kw)
    norm = residual_profile(PERTURBED, PROC, x0, scale="normalized", **kw)
    t = jnp.asarray(TIMES)
    _, sigma = PROC.marginal(t)
    _, g2 = PROC.sde(t)
    np.testing.assert_allclose(norm, raw * np.asarray(sigma**3 / g2), rtol=1e-10)


def test_without_data_and_bad_arguments():
    g = ode_sde_gap(EXACT, PROC, key=jax.random.key(2), **COMMON)
    assert isinstance(g, OdeSdeGap)
    assert math.isnan(g.sw2_ode_data) and math.isnan(g.mmd_sde_data)
    assert np.max(g.residual_rms) < 1e-6  # evaluated around the ODE samples
    small = dict(prediction="score", key=jax.random.key(2))
    with pytest.raises(ValueError, match="shape"):
        ode_sde_gap(exact_score, PROC, **small)
    with pytest.raises(ValueError, match="deterministic"):
        ode_sde_gap(exact_score, PROC, shape=(4, 2), ode_solver=EulerMaruyama(),
                    sde_solver=Heun(), **small)
    with pytest.raises(ValueError, match="times"):
        residual_profile(exact_score, PROC, jnp.zeros((4, 2)), key=jax.random.key(0),
                         prediction="score", times=(0.0, 0.5))
