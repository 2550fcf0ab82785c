"""Closed forms shared by the sampler tests (not a test module).

For data N(m, v) (per dimension) on a VP path x_t = alpha x0 + sigma eps, S_t = alpha^2 v + sigma^2:

* the exact noise model is eps_hat(x, t) = sigma (x - alpha m) / S and
  E[x0 | x_t] = m + alpha v (x - alpha m) / S;
* the probability-flow ODE maps x_{t1} to x_{t0} = alpha0 m + sqrt(S0 / S1) (x_{t1} - alpha1 m).

The schedule coefficients are written out here (VP linear, beta 0.1..20; VP cosine, s = 0.008,
t_max = 0.9946), independently of genflow.processes.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from genflow.processes import VPCosine, VPLinear
from genflow.samplers import (
    DDIM,
    DPMSolverMultistep,
    DPMSolverSinglestep,
    EDMHeun,
    Euler,
    EulerMaruyama,
    Heun,
    PredictorCorrector,
    sample,
)
from vp_closed_forms import coefs

PROCESSES = {"linear": VPLinear(), "cosine": VPCosine()}
KINDS = ["eps", "x0", "v", "velocity", "score"]
SOLVERS = {
    "euler": Euler(),
    "heun": Heun(),
    "ddim0": DDIM(eta=0.0),
    "ddim1": DDIM(eta=1.0),
    "em": EulerMaruyama(),
    "dpm++3m": DPMSolverMultistep(order=3, algorithm="dpmsolver++"),
    "dpm3s": DPMSolverSinglestep(order=3, algorithm="dpmsolver", variant="taylor"),
    "pc": PredictorCorrector(),
    "edm_churn": EDMHeun(s_churn=10.0),
}
STOCHASTIC = {
    "euler": False, "heun": False, "ddim0": False, "ddim1": True, "em": True,
    "dpm++3m": False, "dpm3s": False, "pc": True, "edm_churn": True,
}
NFE_PER_STEP = {
    "euler": 1, "heun": 2, "ddim0": 1, "ddim1": 1, "em": 1, "dpm++3m": 1, "dpm3s": 1, "pc": 2,
    "edm_churn": 2,
}

def fit_order(steps, errors):
    """The convergence order: minus the slope of log(error) against log(steps)."""
    slope, _ = np.polyfit(np.log(steps), np.log(errors), 1)
    return -slope


# 2-D Gaussian data, different mean and variance per dimension (v != 1: not a fixed point of VP).
M = np.array([0.8, -0.5])
VAR = np.array([0.2, 2.5])
X1 = np.array([[-1.2, 0.4], [0.3, 1.7], [2.0, -0.9]])  # starting points at t = 1


def log_snr(name, t):
    alpha, sigma, *_ = coefs(name, np.asarray(t, np.float64), np)
    return np.log(alpha) - np.log(sigma)


def t_from_log_snr(name, lam):
    """Closed-form inverse of log_snr: alpha^2 = sigmoid(2 lam)."""
    log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, np.float64))
    if name == "linear":  # 19.9/4 t^2 + 0.05 t + log_alpha = 0
        a, b, c = 19.9 / 4, 0.05, -log_alpha
        return 2 * c / (b + np.sqrt(b**2 + 4 * a * c))
    s, t_max = 0.008, 0.9946
    phase = np.arccos(np.exp(log_alpha) * math.cos(math.pi / 2 * s / (1 + s)))
    return (phase * 2 * (1 + s) / math.pi - s) / t_max


def as_kind(kind, x0_hat, eps_hat, alpha, sigma, d_alpha, d_sigma):
    """What a network of ``kind`` outputs when its (x0, eps) estimate is (x0_hat, eps_hat)."""
    return {
        "eps": eps_hat,
        "x0": x0_hat,
        "v": alpha * eps_hat - sigma * x0_hat,
        "velocity": d_alpha * x0_hat + d_sigma * eps_hat,
        "score": -eps_hat / sigma,
    }[kind]


def gaussian_model(name, kind, m=M, var=VAR, counter=None):
    """The exact network for N(m, var) data, predicting ``kind``.

    ``counter`` (a list) records each call with concrete inputs, i.e. each real evaluation
    when run under ``jax.disable_jit()``; abstract (traced) calls are recorded as ``"traced"``.
    """

    def model_fn(x, t, cond=None):
        if counter is not None:
            counter.append("traced" if isinstance(x, jax.core.Tracer) else "run")
        alpha, sigma, d_alpha, d_sigma, _ = (c[:, None] for c in coefs(name, t))
        S = alpha**2 * var + sigma**2
        eps_hat = sigma * (x - alpha * m) / S
        x0_hat = m + alpha * var * (x - alpha * m) / S
        return as_kind(kind, x0_hat, eps_hat, alpha, sigma, d_alpha, d_sigma)

    return model_fn


def exact_flow(name, x1, t1, t0, m=M, var=VAR):
    with np.errstate(divide="ignore"):  # sigma' is infinite at t = 0; only alpha, sigma are used
        a1, s1, *_ = coefs(name, t1, np)
        a0, s0, *_ = coefs(name, t0, np)
    S1, S0 = a1**2 * var + s1**2, a0**2 * var + s0**2
    return a0 * m + np.sqrt(S0 / S1) * (x1 - a1 * m)


# 1-D two-component Gaussian mixture (non-linear probability flow).
MIX_W = np.array([0.3, 0.7])
MIX_M = np.array([-1.5, 1.0])
MIX_V = np.array([0.2, 0.4])


def mixture_eps_model(name):
    """Exact eps of a 1-D two-component Gaussian mixture (as in test_order.py):
    -sigma * score of p_t = sum_k w_k N(alpha m_k, alpha^2 v_k + sigma^2)."""

    def model_fn(x, t, cond=None):
        alpha, sigma, *_ = (c[:, None] for c in coefs(name, t))
        S = alpha**2 * MIX_V + sigma**2
        resid = x - alpha * MIX_M
        log_r = jnp.log(MIX_W) - 0.5 * jnp.log(2 * math.pi * S) - 0.5 * resid**2 / S
        r = jax.nn.softmax(log_r, axis=-1)
        return sigma * jnp.sum(r * resid / S, axis=-1, keepdims=True)

    return model_fn


# --------------------------------------------------------------------------- shared runs
CONTRACT_STEPS = 3  # the fewest steps a third-order solver takes
KEYS = jax.random.split(jax.random.key(42), 2)


@functools.lru_cache(maxsize=None)
def nojit_run(solver_name, name, kind):
    """One un-jitted run (``jax.disable_jit``) of a solver x process x kind, shared by the
    contract and order tests: op-by-op execution compiles each primitive once for the whole
    session, where a jit per combination would compile the random-number generator 50 times.

    Returns the result (key KEYS[0]) with its trajectory and the log of model calls.
    """
    counter = []
    with jax.disable_jit():
        res = sample(gaussian_model(name, kind, counter=counter), PROCESSES[name],
                     SOLVERS[solver_name], key=KEYS[0], x_init=X1, prediction=kind,
                     num_steps=CONTRACT_STEPS, return_trajectory=True)
    return dict(x=np.asarray(res.x), trajectory=np.asarray(res.trajectory), nfe=res.nfe,
                calls=counter, x_dtype=res.x.dtype)
