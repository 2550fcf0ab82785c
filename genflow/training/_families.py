"""How a run trains and samples each kind of process: its batches, its loss and its sampler.

:func:`genflow.config.process_family` sorts processes into three families:

* **Gaussian paths** (VP, sub-VP, VE, EDM, rectified flow, Gaussian-base interpolants,
  kinetic-optimal paths): the network predicts ``train.prediction`` (eps, x0, v, velocity or
  score), trained with :func:`genflow.losses.denoising_loss` and the named weighting; every
  sampler of :mod:`genflow.samplers` draws from it.
* **Stochastic interpolants between two data sets** (:class:`~genflow.processes.StochasticInterpolant`):
  ``x0`` is drawn from ``data.name`` (``t = 0``) and ``x1`` from ``data.source`` (``t = 1``;
  ``N(0, I)`` when empty), independently. The network predicts one or two fields, joined by
  ``+`` in ``train.prediction`` and concatenated along the last axis of its output: a drift
  (``b``, or ``v`` with ``b = v + gamma' eta``) and optionally a denoiser ``eta`` or score
  ``s``. Each field has its own quadratic loss (:func:`~genflow.processes.interpolant_loss`,
  antithetic, ``t ~ U[t_min, 1 - t_min]``); the losses are summed. Samples start from fresh
  ``data.source`` draws at ``t = 1`` and follow the ODE (``interpolant_heun``,
  ``interpolant_euler``) or the SDE with diffusion ``epsilon`` (``interpolant_sde``) to
  ``t_end``.
* **Geometric Brownian motion**: data times ``data.scale`` must lie in ``[-1, 1]`` and are
  mapped onto ``[1, 2]`` by :func:`~genflow.processes.to_positive` (checked on 100,000 points
  before training). With ``train.prediction="eps"`` the network reads ``log x`` (standardised
  by the mean ``m_0 + (mu - sigma^2/2) t`` and standard deviation ``sqrt(s_0^2 + sigma^2 t)``
  of ``log x_t``, from the process's ``data_log_mean`` ``m_0`` and ``data_log_std`` ``s_0``)
  and predicts the noise ``z`` of ``log x_t = log x_0 + (mu - sigma^2/2) t + sigma sqrt(t) z``, so the
  Hyvarinen score is ``x o grad log p = -1 - eps / (sigma sqrt t)``; with ``"score"`` it
  reads ``x`` and predicts ``grad log p`` itself (the parametrisation of the GBM paper).
  ``train.weighting``: ``"uniform"`` weights the noise residual uniformly, ``"paper"`` is the
  authors' ``(sigma^2 t)^2`` on the Hyvarinen-score error
  (:func:`~genflow.processes.gbm_score_loss`); ``train.t_sampling="log_uniform"`` draws
  ``log t`` uniformly. Samplers: ``gbm_exponential`` (Dale's-law, positivity-preserving) and
  ``gbm_euler_maruyama``, on the ``uniform``, ``quadratic`` or ``log_snr`` grid (geometric in
  ``t``: uniform in the log-SNR of ``log x``); samples are mapped back by
  :func:`~genflow.processes.from_positive` and divided by ``data.scale``.

Every family multiplies training points by ``data.scale`` and divides samples by it.

**Image data sets** (``data.name`` not a toy set; :class:`~genflow.data.ImageBatches`) give
batches ``x: (b, H, W, C)`` in ``[-1, 1]`` (times ``data.scale``) and, for a class-conditional
model (``model.num_classes > 0``), their integer labels as ``cond``. Inside the jitted step
:func:`drop_labels` replaces each label by the null class ``model.num_classes`` with
probability ``train.label_dropout`` (classifier-free guidance), with a key derived from the
step's key, so a resumed run sees the same labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genflow import fokker_planck, losses, processes, samplers
from genflow.config import (
    ADAPTIVE_SAMPLERS,
    GRIDS,
    Config,
    ConfigError,
    is_image_dataset,
    make_solver,
    make_weighting,
    process_family,
    process_name,
    sampler_options,
)
from genflow.data import (
    DatasetNotPreparedError,
    ImageBatches,
    PairBatches,
    ToyBatches,
    load_pairs,
    sample_toy,
)
from genflow.processes._gbm import T_FLOOR as _GBM_T_FLOOR
from genflow.samplers._sample import _make_grid as make_sampler_grid

Batches = Callable[[int, int], dict[str, np.ndarray]]
_SOURCE_STREAM = 1  # ToyBatches stream of data.source, independent of data.name's stream 0
_GBM_CHECK_POINTS = 100_000


def image_batches(config: Config) -> ImageBatches:
    """The :class:`~genflow.data.ImageBatches` of an image ``config.data`` (nothing is read
    until a property or a batch is asked for)."""
    dc = config.data
    return ImageBatches(
        dc.name, dc.batch_size, seed=dc.seed, split=dc.split, data_dir=dc.data_dir or None,
        random_flip=dc.random_flip,
    )


def _open_image_data(config: Config) -> tuple[ImageBatches, tuple[int, int, int]]:
    """Open the image data set and read its shape; a data set that is not prepared is a
    :class:`~genflow.config.ConfigError` that says the ``genflow data prepare`` command."""
    data = image_batches(config)
    try:
        shape = data.data_shape
    except DatasetNotPreparedError as exc:
        raise ConfigError(str(exc)) from None
    return data, shape


def data_shape_of(config: Config) -> tuple[int, ...]:
    """Shape of one training example of ``config.data``: ``(d,)`` for a toy set,
    ``(H, W, C)`` for an image data set (read from its metadata; no batch is drawn).

    Raises:
      ConfigError: an image data set that is not prepared (the message gives the
        ``genflow data prepare`` command); ``digits`` and ``digits16`` build themselves.
    """
    if config.data.pairs:
        return tuple(load_pairs(config.data.pairs)[0].shape[1:])
    if is_image_dataset(config.data.name):
        return tuple(_open_image_data(config)[1])
    return tuple(ToyBatches(config.data.name, 1, config.data.seed).batch(0).shape[1:])


def drop_labels(labels: jax.Array, key: jax.Array, p: float, num_classes: int) -> jax.Array:
    """Classifier-free guidance's label dropout: each label becomes the null class
    ``num_classes`` where ``uniform(key) < p``, independently (``p = 0``: unchanged)."""
    if p == 0.0:
        return labels
    drop = jax.random.uniform(key, labels.shape) < p
    return jnp.where(drop, jnp.asarray(num_classes, labels.dtype), labels)


def num_fields(config: Config) -> int:
    """How many outputs shaped like the data the network has (two for ``"b+eta"``)."""
    if process_family(config.process) == "interpolant":
        return len(config.train.prediction.split("+"))
    return 1


def reference_data(config: Config, num: int, seed: int) -> np.ndarray:
    """Fresh points of ``data.name`` (the ``t = 0`` end) from seeds training never uses."""
    return sample_toy(config.data.name, num, seed=[2**31 - 1, seed])


def make_batches(config: Config) -> Batches:
    """``batches(step, k)``: the training batches of steps ``step .. step + k - 1`` as arrays
    with a leading axis ``k``: ``"x"`` always, ``"x1"`` (interpolant source) or ``"eps"``
    (reflow pairs) where they apply. Checks GBM data before anything is trained."""
    dc = config.data
    if dc.pairs:
        pairs = PairBatches.from_file(dc.pairs, dc.batch_size, dc.seed)
        return pairs.batches  # pairs are written in the model's space: no scaling
    if is_image_dataset(dc.name):
        return _image_batch_fn(config)
    data = ToyBatches(dc.name, dc.batch_size, dc.seed)
    family = process_family(config.process)
    if family == "gbm":
        _check_gbm_data(config)
        return lambda step, k: {
            "x": np.asarray(processes.to_positive(dc.scale * data.batches(step, k)), np.float32)
        }
    if family == "interpolant" and dc.source:
        source = ToyBatches(dc.source, dc.batch_size, dc.seed, stream=_SOURCE_STREAM)
        return lambda step, k: {
            "x": dc.scale * data.batches(step, k), "x1": dc.scale * source.batches(step, k)
        }
    return lambda step, k: {"x": dc.scale * data.batches(step, k)}


def _image_batch_fn(config: Config) -> Batches:
    dc, num_classes = config.data, config.model.num_classes
    data, _ = _open_image_data(config)
    if num_classes > 0:
        have = data.num_classes
        if have is None:
            raise ConfigError(
                f"model.num_classes={num_classes}, but data set {dc.name!r} has no labels; "
                "set model.num_classes=0."
            )
        if have > num_classes:
            raise ConfigError(
                f"data set {dc.name!r} has {have} classes but model.num_classes={num_classes}; "
                f"set model.num_classes={have}."
            )

    gbm = process_family(config.process) == "gbm"

    def batches(step, k):
        out = data.batches(step, k)
        x = out["x"] if dc.scale == 1.0 else np.float32(dc.scale) * out["x"]
        if gbm:  # images in [-1, 1] onto [1, 2]
            x = np.asarray(processes.to_positive(x), np.float32)
        if num_classes > 0:
            return {"x": x, "cond": out["label"]}
        return {"x": x}

    return batches


def _check_gbm_data(config: Config) -> None:
    dc = config.data
    x = dc.scale * sample_toy(dc.name, _GBM_CHECK_POINTS, seed=[dc.seed, 2**31 - 2])
    reach = float(np.abs(x).max())
    if reach > 1.0:
        raise ConfigError(
            f"gbm maps data in [-1, 1] onto [1, 2], but {dc.name} times data.scale={dc.scale} "
            f"reaches {reach:.3g}; set data.scale={0.99 * dc.scale / reach:.3g} or smaller."
        )


# ------------------------------------------------------------------------------- losses
def make_loss(config: Config) -> Callable[[Any, dict, jax.Array], jax.Array]:
    """``loss(model_fn, batch, key) -> scalar`` of ``config``'s process family."""
    process, tc = config.process, config.train
    family = process_family(process)
    if family == "gaussian":
        weighting = make_weighting(tc.weighting)
        log_density = config.model.output == "log_density"

        def gaussian_loss(model_fn, batch, key):
            if tc.fp_weight > 0:  # DSM + w E|R|^2 (see genflow.fokker_planck)
                return fokker_planck.fp_regularized_loss(
                    model_fn, process, batch["x"], key=key, weight=tc.fp_weight,
                    prediction=tc.prediction, weighting=weighting, t_min=tc.t_min,
                    num_points=tc.fp_points, divergence=tc.fp_divergence,
                    log_density_fn=model_fn.log_density if log_density else None,
                    cond=batch.get("cond"), eps=batch.get("eps"),
                )
            return losses.denoising_loss(
                model_fn, process, batch["x"], key=key, prediction=tc.prediction,
                weighting=weighting, t_min=tc.t_min, cond=batch.get("cond"),
                eps=batch.get("eps"),
            )

        return gaussian_loss
    if family == "interpolant":
        targets = tc.prediction.split("+")

        def interpolant_loss(model_fn, batch, key):
            x0 = batch["x"]
            key_x1, key = jax.random.split(key)
            x1 = batch.get("x1")
            if x1 is None:
                x1 = jax.random.normal(key_x1, x0.shape, x0.dtype)
            fields = split_fields(model_fn, len(targets))
            return sum(
                processes.interpolant_loss(
                    field, process, x0, x1, key=key, target=target, t_min=tc.t_min,
                    t_max=1.0 - tc.t_min, antithetic=True, cond=batch.get("cond"),
                )
                for field, target in zip(fields, targets)
            )

        return interpolant_loss

    weighting = "noise" if tc.weighting == "uniform" else "paper"

    def gbm_loss(model_fn, batch, key):
        return processes.gbm_score_loss(
            gbm_score_fn(model_fn, config), process, batch["x"], key=key, t_min=tc.t_min,
            weighting=weighting, t_sampling=tc.t_sampling, cond=batch.get("cond"),
        )

    return gbm_loss


def split_fields(model_fn: Callable, count: int) -> list[Callable]:
    """The ``count`` fields of a network whose output concatenates them on the last axis."""
    if count == 1:
        return [model_fn]
    return [
        lambda x, t, cond=None, i=i: jnp.split(model_fn(x, t, cond), count, axis=-1)[i]
        for i in range(count)
    ]


def gbm_score_fn(model_fn: Callable, config: Config) -> Callable:
    """The Stein score ``grad log p_t(x)`` of a GBM network (see the module notes)."""
    process = config.process
    if config.train.prediction == "score":
        return model_fn

    def score(x, t, cond=None):
        t_b = processes.broadcast_to_data(t, x).astype(x.dtype)
        noise = process.sigma * jnp.sqrt(jnp.maximum(t_b, _GBM_T_FLOOR))
        # The network reads log x standardised by the marginal's moments of log x_t.
        mean = process.data_log_mean + (process.mu - 0.5 * process.sigma**2) * t_b
        std = jnp.sqrt(process.data_log_std**2 + process.sigma**2 * t_b)
        eps = model_fn((jnp.log(x) - mean) / std, t, cond).astype(x.dtype)
        return (-1.0 - eps / noise) / x

    return score


def interpolant_fields(model_fn: Callable, config: Config) -> tuple[Callable, Callable | None, str]:
    """``(b_fn, s_fn, s_kind)`` of an interpolant network: the drift, and the score or
    denoiser (``None`` when the network learns the drift only)."""
    process = config.process
    names = config.train.prediction.split("+")
    fields = split_fields(model_fn, len(names))
    second, s_kind = (fields[1], names[1]) if len(names) == 2 else (None, "s")
    if names[0] == "b" or second is None:
        return fields[0], second, s_kind
    v_fn = fields[0]

    def b_fn(x, t, cond=None):  # b = v + gamma' eta = v - gamma gamma' s
        rate = processes.broadcast_to_data(process.d_gamma(t), x).astype(x.dtype)
        extra = second(x, t, cond)
        if s_kind == "s":
            extra = -processes.broadcast_to_data(process.gamma(t), x).astype(x.dtype) * extra
        return v_fn(x, t, cond) + rate * extra

    return b_fn, second, s_kind


# ------------------------------------------------------------------------------- sampling
def make_sampling(config: Config) -> tuple[Callable, Callable, str]:
    """How ``genflow sample`` draws from a trained ``config`` with ``config.sample``'s settings.

    Returns:
      ``(initial, draw, description)``: ``initial(num, seed)`` gives the starting points that
      come from data (a stochastic interpolant's ``data.source`` draws), else ``None``;
      ``draw(model_fn, key, x_init) -> (samples, nfe)`` is jit-able (``x_init`` may be
      ``None``, then the process's prior is drawn with ``key``) and returns samples in the
      data's own units.
    """
    family = process_family(config.process)
    build = {"gaussian": _gaussian_sampling, "interpolant": _interpolant_sampling,
             "gbm": _gbm_sampling}[family]
    return build(config)


def _shape(config: Config, num: int) -> tuple[int, ...]:
    return (num, *data_shape_of(config))


def _gaussian_sampling(config: Config):
    sc, process, scale = config.sample, config.process, config.data.scale
    common = dict(prediction=config.train.prediction, t_start=sc.t_start, t_end=sc.t_end)
    thresholding = samplers.DynamicThresholding(ratio=sc.threshold) if sc.threshold else None
    if sc.sampler in ADAPTIVE_SAMPLERS:
        fn = ADAPTIVE_SAMPLERS[sc.sampler][0]
        options = sampler_options(sc.sampler, sc.solver_options)
        if thresholding is not None:
            if sc.sampler != "dpm_solver_adaptive":
                raise ConfigError(f"--threshold is not available with {sc.sampler}.")
            options["thresholding"] = thresholding
        run = lambda model_fn, key, start: fn(model_fn, process, key=key, **start,  # noqa: E731
                                              **common, **options)
        what = f"{sc.sampler} (adaptive steps)"
    else:
        solver = make_solver(sc.sampler, sc.solver_options)
        try:  # here, on concrete numbers: inside jax.jit a bad grid would only give NaN
            make_sampler_grid(process, solver, num_steps=sc.num_steps, ts=None,
                              grid=GRIDS[sc.grid], t_start=sc.t_start, t_end=sc.t_end,
                              increasing=False)
        except ValueError as exc:
            raise ConfigError(f"sample.grid={sc.grid} on process {process_name(process)}: {exc}")
        run = lambda model_fn, key, start: samplers.sample(  # noqa: E731
            model_fn, process, solver, key=key, **start, **common, num_steps=sc.num_steps,
            grid=GRIDS[sc.grid], thresholding=thresholding,
        )
        what = f"{sc.sampler}, {sc.num_steps} steps ({sc.grid} grid)"
    shape = _shape(config, sc.num_samples)
    classes = config.model.num_classes
    labels = sample_labels(config, sc.num_samples)
    if classes:
        what += f", class {sc.label}" if sc.label >= 0 else f", classes 0-{classes - 1}"
        what += f", guidance {sc.guidance:g}"

    def draw(model_fn, key, x_init=None):
        start = {"shape": shape} if x_init is None else {"x_init": x_init}
        if classes:
            if sc.guidance != 1.0:
                model_fn = samplers.guided(model_fn, sc.guidance, null_cond=classes)
            start["cond"] = jnp.asarray(labels)
        result = run(model_fn, key, start)
        return result.x / scale, result.nfe

    return (lambda num, seed: None), draw, what


def sample_labels(config: Config, num: int) -> np.ndarray | None:
    """The class of each sample of a class-conditional model: ``sample.label``, or the classes
    in turn (``0, 1, ..., C - 1, 0, 1, ...``) when it is -1; ``None`` for other models."""
    classes = config.model.num_classes
    if not classes:
        return None
    if config.sample.label >= 0:
        return np.full(num, config.sample.label, np.int32)
    return (np.arange(num) % classes).astype(np.int32)


def _interpolant_sampling(config: Config):
    sc, dc, process = config.sample, config.data, config.process
    options = sampler_options(sc.sampler, sc.solver_options)
    sde = sc.sampler == "interpolant_sde"
    # The drift b is finite at t = 1 when it is learnt directly; v + gamma' eta is not for
    # gamma = sqrt(a t (1 - t)) (gamma' -> -inf), nor is eta / gamma in the SDE: start just
    # inside then.
    finite_start = config.train.prediction.startswith("b") and not sde
    t_start = sc.t_start if finite_start else min(sc.t_start, 1.0 - config.train.t_min)
    shape = _shape(config, sc.num_samples)

    def initial(num, seed):
        if not dc.source:
            return None
        return dc.scale * sample_toy(dc.source, num, seed=[2**31 - 1, seed, _SOURCE_STREAM])

    def draw(model_fn, key, x_init=None):
        key_init, key = jax.random.split(key)
        if x_init is None:
            x_init = jax.random.normal(key_init, shape)
        b_fn, s_fn, s_kind = interpolant_fields(model_fn, config)
        if sde:
            result = processes.interpolant_sde(
                b_fn, s_fn, process, x_init, key=key, num_steps=sc.num_steps,
                epsilon=options.get("epsilon", 1.0), s_kind=s_kind, t_start=t_start,
                t_end=sc.t_end,
            )
        else:
            method = "heun" if sc.sampler == "interpolant_heun" else "euler"
            result = processes.interpolant_ode(
                b_fn, process, x_init, num_steps=sc.num_steps, t_start=t_start,
                t_end=sc.t_end, method=method,
            )
        return result.x / dc.scale, result.nfe

    source = dc.source or "N(0, I)"
    what = f"{sc.sampler}, {sc.num_steps} steps from {source} at t = {t_start:g}"
    return initial, draw, what


def _gbm_sampling(config: Config):
    sc, process, scale = config.sample, config.process, config.data.scale
    method = "exponential" if sc.sampler == "gbm_exponential" else "euler_maruyama"
    shape = _shape(config, sc.num_samples)

    def draw(model_fn, key, x_init=None):
        start = {"shape": shape} if x_init is None else {"x_init": x_init}
        result = processes.sample_gbm(
            gbm_score_fn(model_fn, config), process, key=key, **start,
            num_steps=sc.num_steps, method=method, t_start=sc.t_start, t_end=sc.t_end,
            grid={"log_snr": "log"}.get(sc.grid, sc.grid),
        )
        return processes.from_positive(result.x) / scale, result.nfe

    return (lambda num, seed: None), draw, f"{sc.sampler}, {sc.num_steps} steps"


