"""Classifier-free guidance: the formula, its conventions, one batched call, guided sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _gaussian import PROCESSES, X1, exact_flow, gaussian_model
from genflow.samplers import Heun, sample
from genflow.samplers._guidance import guided
from vp_closed_forms import coefs

W = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]])  # per-class weights; class 2 is "null"
NULL = 2
LABELS = np.array([0, 1, 0])
T = np.array([0.3, 0.7, 0.9])


def toy_model(calls=None):
    """f(x, t, c) = W[c] * x + t: known outputs per class."""

    def model_fn(x, t, cond):
        if calls is not None:
            calls.append(x.shape[0])
        return jnp.asarray(W)[cond] * x + t[:, None]

    return model_fn


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guided_output_is_the_formula(scale):
    calls = []
    out = np.asarray(guided(toy_model(calls), scale, NULL)(X1, T, LABELS))
    f_cond = W[LABELS] * X1 + T[:, None]
    f_null = W[NULL] * X1 + T[:, None]
    w = scale - 1.0  # Ho & Salimans' strength
    np.testing.assert_allclose(out, (1 + w) * f_cond - w * f_null, rtol=1e-14, atol=1e-14)
    assert calls == [2 * X1.shape[0]]  # one batched network call
    if scale == 1.0:
        np.testing.assert_array_equal(out, f_cond)
    if scale == 0.0:
        np.testing.assert_array_equal(out, f_null)


def test_pytree_condition_and_missing_condition():
    def model_fn(x, t, cond):
        return x * cond["gain"][:, None] + cond["shift"]

    cond = {"gain": jnp.array([2.0, 3.0, 4.0]), "shift": jnp.ones((3, 2))}
    null = {"gain": 1.0, "shift": 0.0}
    out = guided(model_fn, 3.0, null)(X1, T, cond)
    expected = 3.0 * (X1 * np.array([2.0, 3.0, 4.0])[:, None] + 1.0) - 2.0 * X1
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-14)
    with pytest.raises(ValueError, match="cond"):
        guided(model_fn, 3.0, null)(X1, T)


MEANS = np.array([[0.8, -0.5], [-1.0, 1.2], [0.0, 0.0]])  # class means; row 2 is the null model
VAR = np.array([0.2, 2.5])


def class_eps_model(name):
    """Exact eps for class-conditional data N(MEANS[c], VAR) on a VP path."""

    def model_fn(x, t, cond):
        alpha, sigma, *_ = (c[:, None] for c in coefs(name, t))
        m = jnp.asarray(MEANS)[cond]
        return sigma * (x - alpha * m) / (alpha**2 * VAR + sigma**2)

    return model_fn


def test_guided_sampling_of_gaussian_classes():
    """eps is affine in the class mean at fixed variance, so guiding N(m_c, v) against the null
    N(m_0, v) at scale s is exactly the model of N(s m_c + (1 - s) m_0, v): guided Heun sampling
    equals unguided Heun on that Gaussian, and approaches its exact flow map. nfe counts one
    per guided evaluation."""
    name, scale, n_steps = "linear", 3.0, 32
    labels = np.array([0, 1, 1])
    m_g = scale * MEANS[labels] + (1 - scale) * MEANS[NULL]  # (3, 2): one mean per row
    nfe = {}

    @jax.jit
    def run(x1):
        res = sample(guided(class_eps_model(name), scale, NULL), PROCESSES[name], Heun(),
                     key=jax.random.key(0), x_init=x1, prediction="eps", num_steps=n_steps,
                     cond=labels)
        ref = sample(gaussian_model(name, "eps", m=m_g, var=VAR), PROCESSES[name], Heun(),
                     key=jax.random.key(0), x_init=x1, prediction="eps", num_steps=n_steps)
        nfe["guided"] = res.nfe
        return res.x, ref.x

    got, ref = (np.asarray(a) for a in run(X1))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    exact = exact_flow(name, X1, 1.0, 1e-3, m=m_g, var=VAR)
    np.testing.assert_allclose(got, exact, atol=2e-2)
    assert np.abs(got - exact_flow(name, X1, 1.0, 1e-3, m=MEANS[labels], var=VAR)).max() > 1.0
    assert nfe["guided"] == 2 * n_steps
