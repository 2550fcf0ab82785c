"""Denoising losses against closed forms for Gaussian data.

For data x0 ~ N(m, diag(v)) and x_t = alpha x0 + sigma eps, the posterior is Gaussian:

    E[x0 | x_t]  = m + alpha v (x_t - alpha m) / (alpha^2 v + sigma^2),
    E[eps | x_t] = sigma (x_t - alpha m) / (alpha^2 v + sigma^2),
    Var(eps_d | x_t) = r_d = alpha^2 v_d / (alpha^2 v_d + sigma^2).

A target ``a x0 + b eps`` equals ``(a/alpha) x_t + (b - a sigma/alpha) eps`` given x_t, so the exact
model's residual is ``c (eps - E[eps | x_t])`` with ``c = b - a sigma / alpha`` and the minimum loss
at time t is ``c^2 mean_d r_d``; per example it is ``c^2 / D sum_d r_d Z_d^2`` with Z_d ~ N(0, 1),
whose second moment ``c^4 / D^2 ((sum r_d)^2 + 2 sum r_d^2)`` gives the Monte Carlo standard error.
Expectations over t ~ U(t_min, t_max) are computed here by Gauss-Legendre quadrature in log t.
"""

import math
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow.losses import (
    LikelihoodWeighting,
    MinSNRWeighting,
    SigmoidWeighting,
    Uniform,
    denoising_loss,
)
from genflow.prediction import Prediction
from genflow.processes import VPCosine, VPLinear
from vp_closed_forms import coefs

KINDS = [k.value for k in Prediction]
PROCESSES = {"linear": VPLinear(), "cosine": VPCosine()}
M = np.array([0.5, -1.0, 0.0, 2.0])
VAR = np.array([0.3, 1.7, 0.05, 0.8])
D = M.size
B = 20_000
X0 = M + np.sqrt(VAR) * np.random.default_rng(0).normal(size=(B, D))


# --------------------------------------------------------------------------- closed forms
def target_coefs(kind, alpha, sigma, d_alpha, d_sigma):
    """(a, b) with prediction = a x0 + b eps."""
    return {
        "eps": (0.0, 1.0),
        "x0": (1.0, 0.0),
        "v": (-sigma, alpha),
        "velocity": (d_alpha, d_sigma),
        "score": (0.0, -1.0 / sigma),
    }[kind]


def exact_model(name, kind, shift=0.0):
    """The Bayes-optimal network for N(M, VAR) data, in prediction space ``kind`` (+ a constant)."""

    def model_fn(x, t, cond=None):
        alpha, sigma, d_alpha, d_sigma, _ = (c[:, None] for c in coefs(name, t, jnp))
        denom = alpha**2 * VAR + sigma**2
        x0_hat = M + alpha * VAR * (x - alpha * M) / denom
        eps_hat = sigma * (x - alpha * M) / denom
        a, b = target_coefs(kind, alpha, sigma, d_alpha, d_sigma)
        return a * x0_hat + b * eps_hat + shift

    return model_fn


GL_U, GL_W = np.polynomial.legendre.leggauss(16)


def expected_loss(name, kind, weighting, t_min, t_max, panels=40):
    """(mean, standard error over B examples) of the exact model's per-example loss.

    Composite 16-point Gauss-Legendre in log t (40 panels): the integrands are smooth in log t.
    """
    edges = np.linspace(math.log(t_min), math.log(t_max), panels + 1)
    half = 0.5 * np.diff(edges)[:, None]
    log_t = (0.5 * (edges[1:] + edges[:-1]))[:, None] + half * GL_U
    t = np.exp(log_t).ravel()
    dt = (half * GL_W).ravel() * t / (t_max - t_min)  # weights for E over U(t_min, t_max)
    alpha, sigma, d_alpha, d_sigma, g2 = coefs(name, t)
    r = alpha[:, None] ** 2 * VAR / (alpha[:, None] ** 2 * VAR + sigma[:, None] ** 2)  # (n, D)
    if weighting == "uniform":
        a, b = target_coefs(kind, alpha, sigma, d_alpha, d_sigma)
        c2 = (b - a * sigma / alpha) ** 2
    else:  # g^2 / sigma^2 on the eps error
        c2 = g2 / sigma**2
    first = c2 * r.sum(1) / D
    second = c2**2 / D**2 * (r.sum(1) ** 2 + 2 * (r**2).sum(1))
    mean = np.sum(dt * first)
    var = np.sum(dt * second) - mean**2
    return mean, math.sqrt(var / B)


# --------------------------------------------------------------------------- package losses
WEIGHTINGS = {"uniform": Uniform(), "likelihood": LikelihoodWeighting()}
T_MIN = 1e-2  # score and velocity targets blow up like 1/sigma at t -> 0


# Eager on purpose: op-by-op dispatch reuses compiled kernels across kinds and tests (one batch
# shape), whereas each jit of a loss compiles its own random-number generator (about 1 s).
def all_kind_losses(proc, x0, key, name, weighting, shift):
    """The package's loss for the exact model of every kind, and for a shifted one (same key)."""
    out = {}
    for kind in KINDS:
        for sh in (0.0, shift):
            out[(kind, sh)] = denoising_loss(
                exact_model(name, kind, sh), proc, x0, key=key, prediction=kind,
                weighting=WEIGHTINGS[weighting], t_min=T_MIN,
            )
    return out


@pytest.mark.parametrize("weighting", list(WEIGHTINGS))
@pytest.mark.parametrize("name", list(PROCESSES))
def test_exact_model_reaches_known_minimum(name, weighting):
    shift = 0.1
    losses = all_kind_losses(PROCESSES[name], X0, jax.random.key(3), name, weighting, shift)
    for kind in KINDS:
        got = float(losses[(kind, 0.0)])
        mean, se = expected_loss(name, kind, weighting, T_MIN, 1.0)
        assert abs(got - mean) < 5 * se, (kind, got, mean, se)
        # A perturbed model is strictly worse on the same draw.
        assert float(losses[(kind, shift)]) > got, kind
        if weighting == "uniform":
            # A constant shift in prediction space adds shift^2, up to the cross term
            # 2 shift mean(residual), whose standard error is 2 shift sqrt(E[c^2 r]/(B D)).
            excess = float(losses[(kind, shift)]) - got
            se_cross = 2 * shift * math.sqrt(mean / (B * D))
            assert abs(excess - shift**2) < 5 * se_cross, (kind, excess)
    if weighting == "likelihood":
        # Every kind converts to the same eps_hat, so the weighted losses coincide.
        ref = float(losses[("eps", 0.0)])
        for kind in KINDS:
            np.testing.assert_allclose(float(losses[(kind, 0.0)]), ref, rtol=1e-9)


def test_eps_uniform_minimum_with_default_time_range():
    """E_t[alpha^2 v / (alpha^2 v + sigma^2)] per dimension, t ~ U(1e-5, 1) (the defaults)."""
    name = "linear"
    model = exact_model(name, "eps")
    got = float(denoising_loss(model, VPLinear(), X0, key=jax.random.key(4)))
    mean, se = expected_loss(name, "eps", "uniform", 1e-5, 1.0)
    assert abs(got - mean) < 5 * se, (got, mean, se)
    assert 0.2 < mean < 0.6  # the quadrature itself is sane: between min and max of r over t


# --------------------------------------------------------------------------- weights, exactly
@pytest.mark.parametrize("name", list(PROCESSES))
def test_weightings_against_recomputed_errors(name):
    """Spy on (x_t, t) that the loss feeds the model and recompute both weightings by hand."""
    proc = PROCESSES[name]
    x0 = X0
    for kind in KINDS:
        for weighting in WEIGHTINGS:
            seen = {}
            exact = exact_model(name, kind)

            def model_fn(x, t, cond=None):
                seen["x"], seen["t"] = np.asarray(x), np.asarray(t)
                return exact(x, t) + 0.2 * jnp.sin(3 * x)  # an imperfect network

            loss = float(denoising_loss(model_fn, proc, x0, key=jax.random.key(5), prediction=kind,
                                        weighting=WEIGHTINGS[weighting], t_min=0.02, t_max=0.9))
            x, t = seen["x"], seen["t"]
            assert t.shape == (B,) and np.all((t >= 0.02) & (t <= 0.9))
            alpha, sigma, d_alpha, d_sigma, g2 = (c[:, None] for c in coefs(name, t))
            eps = (x - alpha * x0) / sigma
            pred = np.asarray(model_fn(x, t))
            if weighting == "uniform":
                a, b = target_coefs(kind, alpha, sigma, d_alpha, d_sigma)
                ref = np.mean((pred - (a * x0 + b * eps)) ** 2)
            else:
                # eps_hat from the prediction: solve [alpha sigma; a b] [x0; eps] = [x; pred].
                a, b = target_coefs(kind, alpha, sigma, d_alpha, d_sigma)
                eps_hat = (alpha * pred - a * x) / (alpha * b - a * sigma)
                ref = np.mean(g2[:, 0] / sigma[:, 0] ** 2 * np.mean((eps_hat - eps) ** 2, axis=1))
            np.testing.assert_allclose(loss, ref, rtol=1e-9, err_msg=f"{kind} {weighting}")


# --------------------------------------------------------------------------- gradients
def test_loss_is_differentiable():
    """Gradient w.r.t. the parameters of a tiny model agrees with central finite differences."""
    x0 = X0
    key = jax.random.key(6)

    def loss(theta, kind, weighting):
        exact = exact_model("linear", "eps")

        def model_fn(x, t, cond=None):  # eps_hat = theta0 * exact + theta1, seen as ``kind``
            eps_hat = theta[0] * exact(x, t) + theta[1]
            alpha, sigma, d_alpha, d_sigma, _ = (c[:, None] for c in coefs("linear", t, jnp))
            x0_hat = (x - sigma * eps_hat) / alpha
            a, b = target_coefs(kind, alpha, sigma, d_alpha, d_sigma)
            return a * x0_hat + b * eps_hat

        return denoising_loss(model_fn, VPLinear(), x0, key=key, prediction=kind,
                              weighting=WEIGHTINGS[weighting], t_min=T_MIN)

    def grads_and_fd(theta):
        out = {}
        for kind, weighting in [("x0", "likelihood")]:  # through the conversion and the weight
            f = lambda th: loss(th, kind, weighting)  # noqa: E731
            h = 1e-5
            fd = jnp.stack([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in jnp.eye(2)])
            out[(kind, weighting)] = (jax.grad(f)(theta), fd)
        return out

    theta = jnp.asarray([0.8, 0.05])
    for combo, (g, fd) in grads_and_fd(theta).items():
        assert np.all(np.isfinite(g)), combo
        assert np.all(np.abs(np.asarray(g)) > 1e-3), combo  # away from the optimum (1, 0)
        np.testing.assert_allclose(g, fd, rtol=1e-6, err_msg=str(combo))


def test_weightings_are_distinct_pytrees():
    """Different weighting classes must not share a tree structure (jit caches by structure)."""
    ts = jax.tree_util.tree_structure
    assert ts(Uniform()) != ts(LikelihoodWeighting())
    assert ts(Uniform()) == ts(Uniform())


def test_edm_weighting_closed_form():
    """EDMWeighting = (s^2 + sd^2) / (s sd)^2 * mean ||x0_hat - x0||^2 with s = sigma / alpha."""
    from genflow.losses import EDMWeighting

    name, sd = "cosine", 0.7
    seen = {}

    def model_fn(x, t, cond=None):  # an imperfect x0 network
        seen["x"], seen["t"] = np.asarray(x), np.asarray(t)
        return 0.5 * x + 0.1

    loss = float(denoising_loss(model_fn, PROCESSES[name], X0, key=jax.random.key(2),
                                prediction="x0", weighting=EDMWeighting(sigma_data=sd),
                                t_min=0.05, t_max=0.95))
    x, t = seen["x"], seen["t"]
    alpha, sigma, *_ = coefs(name, t)
    s = sigma / alpha
    ref = np.mean((s**2 + sd**2) / (s * sd) ** 2 * np.mean((0.5 * x + 0.1 - X0) ** 2, axis=1))
    np.testing.assert_allclose(loss, ref, rtol=1e-9)


def test_coupled_noise_is_used_as_given():
    """With eps given (reflow pairs), x_t = alpha x0 + sigma eps with that eps."""
    name = "linear"
    eps = np.random.default_rng(9).normal(size=X0.shape)
    seen = {}

    def model_fn(x, t, cond=None):
        seen["x"], seen["t"] = np.asarray(x), np.asarray(t)
        return jnp.zeros_like(x)

    loss = float(denoising_loss(model_fn, PROCESSES[name], X0, key=jax.random.key(1),
                                prediction="eps", eps=jnp.asarray(eps)))
    alpha, sigma, *_ = (c[:, None] for c in coefs(name, seen["t"]))
    np.testing.assert_allclose(seen["x"], alpha * X0 + sigma * eps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss, np.mean(eps**2), rtol=1e-12)


# --------------------------------------------------------------------------- Min-SNR, sigmoid
def _spied(name, kind):
    """An imperfect network of ``kind`` and a dict that records the (x_t, t) it is fed."""
    seen = {}
    exact = exact_model(name, kind)

    def model_fn(x, t, cond=None):
        seen["x"], seen["t"] = np.asarray(x), np.asarray(t)
        return exact(x, t) + 0.2 * jnp.sin(3 * x)

    return model_fn, seen


@pytest.mark.parametrize("name", list(PROCESSES))
def test_min_snr_and_sigmoid_weightings_against_hand_formulas(name):
    """Min-SNR: min(alpha^2/sigma^2, gamma) mean (x0_hat - x0)^2 (Hang et al. 2023); sigmoid:
    sigmoid(b - log(alpha^2/sigma^2)) g^2/sigma^2 mean (eps_hat - eps)^2 (Kingma & Gao 2023,
    full log-SNR, -d logSNR/dt = g^2/sigma^2), with (x0_hat, eps_hat) solved by hand from
    [alpha sigma; a b] [x0; eps] = [x_t; pred]."""
    proc = PROCESSES[name]
    for kind in ("eps", "x0", "v", "velocity", "score"):
        for weighting in (MinSNRWeighting(gamma=3.0), SigmoidWeighting(bias=1.5)):
            model_fn, seen = _spied(name, kind)
            loss = float(denoising_loss(model_fn, proc, X0, key=jax.random.key(8),
                                        prediction=kind, weighting=weighting, t_min=0.02,
                                        t_max=0.98))
            x, t = seen["x"], seen["t"]
            alpha, sigma, d_alpha, d_sigma, g2 = (c[:, None] for c in coefs(name, t))
            eps = (x - alpha * X0) / sigma
            pred = np.asarray(model_fn(x, t))
            a, b = target_coefs(kind, alpha, sigma, d_alpha, d_sigma)
            eps_hat = (alpha * pred - a * x) / (alpha * b - a * sigma)
            x0_hat = (x - sigma * eps_hat) / alpha
            snr = (alpha / sigma)[:, 0] ** 2
            if isinstance(weighting, MinSNRWeighting):
                w, err = np.minimum(snr, 3.0), np.mean((x0_hat - X0) ** 2, axis=1)
            else:
                w = g2[:, 0] / sigma[:, 0] ** 2 / (1 + np.exp(-(1.5 - np.log(snr))))
                err = np.mean((eps_hat - eps) ** 2, axis=1)
            assert 0.1 < np.mean(snr < 3.0) < 0.9  # both branches of the minimum are taken
            np.testing.assert_allclose(loss, np.mean(w * err), rtol=1e-9,
                                       err_msg=f"{kind} {weighting}")


def test_min_snr_is_one_objective_for_every_prediction_kind():
    """The same exact outputs, written as eps, x0 or v (and velocity, score), give the same
    Min-SNR loss: it is computed on the x0 error through the conversion hub. The plain MSE of
    each kind differs, so the comparison can tell objectives apart."""
    proc, key = PROCESSES["cosine"], jax.random.key(12)
    for weighting in (MinSNRWeighting(), SigmoidWeighting()):
        got = {kind: float(denoising_loss(exact_model("cosine", kind), proc, X0, key=key,
                                          prediction=kind, weighting=weighting, t_min=T_MIN))
               for kind in KINDS}
        for kind in KINDS:
            np.testing.assert_allclose(got[kind], got["eps"], rtol=1e-9, err_msg=kind)
    plain = {kind: float(denoising_loss(exact_model("cosine", kind), proc, X0, key=key,
                                        prediction=kind, t_min=T_MIN))
             for kind in ("eps", "x0", "v")}
    assert abs(plain["eps"] - plain["x0"]) > 0.03 * plain["eps"]
    assert abs(plain["eps"] - plain["v"]) > 0.03 * plain["eps"]


def test_min_snr_and_sigmoid_limits():
    """gamma -> inf: min(SNR, gamma) SNR^-1 = 1 on the eps error, the plain eps loss;
    gamma -> 0: gamma times the x0 loss; bias -> inf: sigmoid -> 1, the likelihood weighting."""
    proc, key = PROCESSES["linear"], jax.random.key(13)
    def loss(kind, weighting):  # any network: here 0.5 x
        return float(denoising_loss(lambda x, t, cond=None: 0.5 * x, proc, X0, key=key,
                                    prediction=kind, weighting=weighting, t_min=T_MIN))

    np.testing.assert_allclose(loss("eps", MinSNRWeighting(gamma=1e30)), loss("eps", Uniform()),
                               rtol=1e-9)
    np.testing.assert_allclose(loss("x0", MinSNRWeighting(gamma=1e-6)),
                               1e-6 * loss("x0", Uniform()), rtol=1e-9)
    np.testing.assert_allclose(loss("v", SigmoidWeighting(bias=80.0)),
                               loss("v", LikelihoodWeighting()), rtol=1e-12)
    assert loss("v", SigmoidWeighting(bias=0.0)) < 0.9 * loss("v", SigmoidWeighting(bias=80.0))


def test_new_weightings_are_distinct_pytrees():
    from genflow.losses import EDMWeighting

    ts = jax.tree_util.tree_structure
    every = [Uniform(), LikelihoodWeighting(), EDMWeighting(), MinSNRWeighting(),
             SigmoidWeighting()]
    assert len({ts(w) for w in every}) == len(every)
    assert ts(MinSNRWeighting(1.0)) == ts(MinSNRWeighting(5.0))  # gamma is a leaf
    assert MinSNRWeighting().gamma == 5.0 and SigmoidWeighting().bias == 2.0
    with pytest.raises(ValueError, match="gamma"):
        MinSNRWeighting(gamma=0.0)
