"""The Fokker–Planck residual against exact Gaussian-mixture scores, Hutchinson's divergence,
the regularized loss, and a few real training steps with ``train.fp_weight > 0``.

Truth comes from closed forms written here: the mixture ``p_0 = sum_k w_k N(m_k, S_k)`` has the
marginal ``p_t = sum_k w_k N(alpha_t m_k, alpha_t^2 S_k + sigma_t^2 I)`` on a Gaussian path, with
``alpha_t, sigma_t`` written out by hand for VP (linear beta) and VE.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genflow import fokker_planck as fp
from genflow import methods
from genflow.config import Config, ConfigError, DataConfig, MLPConfig, SampleConfig, TrainConfig
from genflow.losses import denoising_loss
from genflow.processes import VE, RectifiedFlow, VPLinear
from genflow.training import init_train_state, model_fn_from, train

W = np.array([0.3, 0.7])
M = np.array([[-1.5, 0.6], [1.2, -0.4]])
S = np.array([[[0.04, 0.0], [0.0, 0.09]], [[0.09, 0.03], [0.03, 0.05]]])
VP_PROC, VE_PROC = VPLinear(beta_min=0.1, beta_max=20.0), VE(sigma_min=0.01, sigma_max=10.0)
# Nested derivatives make large programs; XLA's backend optimisations only slow their compilation
# here (each runs once), so the tests compile at optimisation level 0.
_O0 = {"xla_backend_optimization_level": 0}
jit0 = functools.partial(jax.jit, compiler_options=_O0)


def vp_coefs(t):
    log_alpha = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2 * log_alpha))


def ve_coefs(t):
    return jnp.ones_like(t), 0.01 * (10.0 / 0.01) ** t


CASES = {"vp": (VP_PROC, vp_coefs), "ve": (VE_PROC, ve_coefs)}


def mixture_log_density(coefs):
    """Exact, normalised ``log p_t(x)`` of the mixture, batched: ``(n, 2), (n,) -> (n,)``."""

    def log_p(x, t, cond=None):
        alpha, sigma = coefs(t)
        a2, s2 = alpha**2, sigma**2
        terms = []
        for k in range(2):
            (s00, s01), (_, s11) = S[k]
            c00, c01, c11 = a2 * s00 + s2, a2 * s01, a2 * s11 + s2
            det = c00 * c11 - c01**2
            d0, d1 = x[:, 0] - alpha * M[k, 0], x[:, 1] - alpha * M[k, 1]
            quad = (c11 * d0**2 - 2 * c01 * d0 * d1 + c00 * d1**2) / det
            terms.append(math.log(W[k]) - math.log(2 * math.pi) - 0.5 * jnp.log(det) - 0.5 * quad)
        return jax.nn.logsumexp(jnp.stack(terms, -1), axis=-1)

    return log_p


def mixture_score(coefs):
    log_p = mixture_log_density(coefs)
    return lambda x, t, cond=None: jax.grad(lambda y: jnp.sum(log_p(y, t)))(x)


def points(coefs, n=48, seed=0):
    """Points spread over p_t at times in [0.02, 1]: a mixture draw at alpha, widened by sigma."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.02, 1.0, n)
    alpha, sigma = (np.asarray(v) for v in coefs(jnp.asarray(t)))
    k = rng.integers(0, 2, n)
    x = alpha[:, None] * M[k] + (0.3 * alpha[:, None] + 1.5 * sigma[:, None]) * rng.normal(size=(n, 2))
    return jnp.asarray(x), jnp.asarray(t)


@pytest.fixture(scope="module")
def residuals():
    """Residuals of the exact model and of a perturbed one, per process and model form
    (jitted once per case; the tests below only read them)."""
    out = {}
    for name, (proc, coefs) in CASES.items():
        x, t = points(coefs)
        log_p, score = mixture_log_density(coefs), mixture_score(coefs)
        bump = lambda x, t: 0.3 * jnp.sin(2.0 * x[:, ::-1]) * (1.0 + t[:, None])  # noqa: E731
        perturbed = lambda x, t, cond=None, s=score, b=bump: s(x, t) + b(x, t)  # noqa: E731
        log_p_pert = lambda x, t, cond=None, lp=log_p: lp(x, t) + 0.3 * jnp.sin(x[:, 0] * x[:, 1])  # noqa: E731
        out[name] = jit0(lambda x, t, proc=proc, log_p=log_p, score=score, perturbed=perturbed,
                            log_p_pert=log_p_pert: dict(
            score=fp.score_residual(score, proc, x, t),
            log_density=fp.log_density_residual(log_p, proc, x, t),
            score_perturbed=fp.score_residual(perturbed, proc, x, t),
            **({} if name == "ve" else
               {"log_density_perturbed": fp.log_density_residual(log_p_pert, proc, x, t)}),
            scale=fp.residual_scale(proc, t),
        ))(x, t)
        out[name]["t"] = np.asarray(t)
    return {k: {kk: np.asarray(vv) for kk, vv in v.items()} for k, v in out.items()}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("form", ["score", "log_density"])
def test_exact_mixture_has_zero_residual(residuals, name, form):
    r = residuals[name][form]
    assert r.dtype == np.float64
    assert np.all(np.isfinite(r))
    assert np.max(np.abs(r)) < 1e-6, (name, form, np.max(np.abs(r)))


def test_normalisation_drops_out_of_the_score_form():
    """For log p_t + 5 t^2 the scalar residual is c'(t) = 10 t (so that of the normalised log p_t
    is 0, with the drift's divergence term f_t d), and the score form is still 0."""
    log_p = mixture_log_density(vp_coefs)
    shifted = lambda x, t, c=None: log_p(x, t) + 5 * t**2  # noqa: E731
    x, t = points(vp_coefs, n=6, seed=1)
    both = jit0(lambda x, t: (fp.log_density_residual(shifted, VP_PROC, x, t),
                              fp.log_density_residual(shifted, VP_PROC, x, t, gradient=False)))
    grad_form, scalar = (np.asarray(v) for v in both(x, t))
    assert np.max(np.abs(grad_form)) < 1e-6
    np.testing.assert_allclose(scalar, 10.0 * np.asarray(t), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, form", [("vp", "score_perturbed"), ("ve", "score_perturbed"),
                                        ("vp", "log_density_perturbed")])
def test_perturbed_model_has_clear_residual(residuals, name, form):
    r = residuals[name][form]
    scaled = np.abs(r) * residuals[name]["scale"][:, None]
    # The perturbation is O(0.3) in the score: the residual is of that order, far above 1e-6.
    assert np.median(np.linalg.norm(r, axis=-1)) > 0.05, (name, form)
    assert np.max(scaled) > 1e-3


def test_score_and_log_density_forms_agree():
    """The score-form residual of grad phi equals grad_x of phi's scalar residual, also for
    a phi that is not a log-density of anything."""
    proc = VP_PROC
    phi = lambda x, t, c=None: jnp.sin(x[:, 0]) * jnp.cos(t * x[:, 1]) - 0.5 * (1 + t) * jnp.sum(x**2, -1)  # noqa: E731
    score = lambda x, t, c=None: jax.grad(lambda y: jnp.sum(phi(y, t)))(x)  # noqa: E731
    x, t = points(vp_coefs, n=8, seed=3)
    a, b = jit0(lambda x, t: (fp.score_residual(score, proc, x, t),
                              fp.log_density_residual(phi, proc, x, t)))(x, t)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(np.asarray(a))) > 0.1


def test_hutchinson_is_unbiased():
    """Mean of many single-probe Hutchinson residuals = the exact residual, within 5 standard
    errors, for a field whose Jacobian is not symmetric (so the estimate is really random)."""
    proc = VP_PROC

    def field(x, t, c=None):
        a = jnp.stack([jnp.sin(x[:, 1]) * x[:, 0] ** 2, jnp.cos(x[:, 0] * x[:, 1]) + x[:, 1] ** 3],
                      -1)
        return a * (1.0 + t[:, None]) - x

    x0, t0 = points(vp_coefs, n=4, seed=5)
    reps = 4000
    x, t = jnp.repeat(x0, reps, 0), jnp.repeat(t0, reps)
    run = jit0(lambda key: (fp.score_residual(field, proc, x0, t0),
                               fp.score_residual(field, proc, x, t, divergence="hutchinson",
                                                 key=key, num_probes=1)))
    exact, est = (np.asarray(v) for v in run(jax.random.key(0)))
    est = est.reshape(4, reps, 2)
    mean, se = est.mean(1), est.std(1, ddof=1) / math.sqrt(reps)
    assert np.all(se > 1e-4), "the estimate should be random for this field"
    assert np.all(np.abs(mean - exact) < 5 * se + 1e-9), (mean, exact, se)


def test_bad_arguments_are_value_errors():
    x, t = jnp.zeros((2, 2)), jnp.full((2,), 0.5)
    with pytest.raises(ValueError, match="divergence"):
        fp.score_residual(lambda x, t, c=None: x, VP_PROC, x, t, divergence="trace")
    with pytest.raises(ValueError, match="key="):
        fp.score_residual(lambda x, t, c=None: x, VP_PROC, x, t, divergence="hutchinson")
    with pytest.raises(ValueError, match="scale"):
        fp.fp_penalty(lambda x, t, c=None: x, VP_PROC, x, key=jax.random.key(0), scale="raw")


def test_weight_zero_is_plain_dsm_and_weight_adds_penalty():
    proc = VP_PROC
    model = lambda x, t, c=None: -x * (1.0 + t[:, None]) + 0.1 * jnp.sin(x)  # noqa: E731
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(32, 2)))
    key = jax.random.key(4)
    kw = dict(key=key, prediction="score", t_min=0.05)

    @jit0
    def losses(x0):
        return (fp.fp_regularized_loss(model, proc, x0, weight=0.0, **kw),
                denoising_loss(model, proc, x0, **kw),
                fp.fp_regularized_loss(model, proc, x0, weight=0.5, num_points=16, **kw),
                fp.fp_penalty(model, proc, x0, key=jax.random.fold_in(key, 1),
                              prediction="score", num_points=16, t_min=0.05))

    l0, dsm, l1, pen = (float(v) for v in losses(x0))
    assert l0 == dsm
    assert pen > 0
    np.testing.assert_allclose(l1, dsm + 0.5 * pen, rtol=1e-12)


# --------------------------------------------------------------------------- training

TINY = Config(
    process=VPLinear(beta_min=0.1, beta_max=20.0),
    data=DataConfig(name="checkerboard", batch_size=32, seed=3),
    model=MLPConfig(hidden=16, depth=1, embedding="fourier", embed_dim=8),
    method=methods.Denoising(t_min=1e-3, fp_weight=1.0, fp_points=8),
    train=TrainConfig(num_steps=10, lr=1e-2, warmup_steps=3, lr_decay="constant",
                      ema_decay=0.9, steps_per_dispatch=5, log_every=5, checkpoint_every=10,
                      seed=7),
)


def test_training_steps_with_fp_weight(tmp_path, monkeypatch):
    """Ten steps of the real loop with an eps-predicting MLP, fp_weight = 1 and the exact
    divergence: finite losses and gradients, and the same first loss as a hand-written call of
    fp_regularized_loss (so the regularizer is really in the loop's loss)."""
    jit = jax.jit

    def jit_o0(fun, **kw):
        kw.setdefault("compiler_options", _O0)
        return jit(fun, **kw)

    monkeypatch.setattr(jax, "jit", jit_o0)
    records = []
    train(TINY, tmp_path, progress=False, on_chunk=lambda s, r: records.append(r))
    monkeypatch.undo()
    assert [r["step"] for r in records] == [5, 10]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in records)


def test_log_density_network_is_a_gradient_field():
    """``model.output="log_density"``: the network's output is the x-gradient of its scalar."""
    config = dataclasses.replace(
        TINY, model=dataclasses.replace(TINY.model, output="log_density"),
        method=dataclasses.replace(TINY.method, prediction="score", fp_divergence="hutchinson"),
    )
    setup, state = init_train_state(config, (2,))
    params = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                          state.params)  # the head starts at zero: move it
    model_fn = model_fn_from(setup, params)
    x, t = jnp.asarray([[0.3, -0.2], [1.0, 0.5]], jnp.float32), jnp.asarray([0.1, 0.6], jnp.float32)
    out, grad = jit0(lambda x, t: (model_fn(x, t), jax.grad(
        lambda y: jnp.sum(model_fn.log_density(y, t)))(x)))(x, t)
    assert model_fn.log_density(x, t).shape == (2,)
    np.testing.assert_allclose(np.asarray(out), np.asarray(grad), rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(np.asarray(grad))) > 1e-3


def test_fp_config_validation():
    with pytest.raises(ConfigError, match="fp_weight"):
        dataclasses.replace(TINY, process=RectifiedFlow())
    with pytest.raises(ValueError, match="fp_divergence"):
        methods.Denoising(fp_divergence="trace")
    with pytest.raises(ValueError, match="fp_weight"):
        methods.Denoising(fp_weight=-1.0)
    no_fp = dataclasses.replace(TINY, method=dataclasses.replace(TINY.method, fp_weight=0.0))
    with pytest.raises(ConfigError, match="fp_ode"):
        dataclasses.replace(no_fp, sample=SampleConfig(sampler="fp_ode"))
    dataclasses.replace(TINY, sample=SampleConfig(sampler="fp_ode"))  # trained with fp: fine
    with pytest.raises(ConfigError, match="log_density"):
        dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, output="log_density"))
