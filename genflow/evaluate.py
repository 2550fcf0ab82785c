"""Evaluate a trained run: likelihood and sample-quality metrics, as ``genflow evaluate`` does.

This module joins a run directory (config and checkpoint, :mod:`genflow.training`) with the
samplers and :mod:`genflow.metrics`. Metrics, by name:

* ``nll``: the exact negative log-likelihood through the probability-flow ODE
  (:func:`genflow.metrics.log_likelihood`), in nats per dimension on fresh 2-D data, in bits
  per dimension (uniform dequantisation, :func:`genflow.metrics.bits_per_dim`) on the test
  split of an image data set; Gaussian paths only.
* ``sw2``, ``mmd``, ``energy``: sliced Wasserstein-2, the unbiased squared MMD with a
  multi-bandwidth RBF kernel and the energy distance between the run's samples (its own
  sampler, ``config.sample``) and held-out data, on the flattened points or pixels.
* ``sharpness`` (toy sets with an exact density: checkerboard, 8 Gaussians): the fraction of
  samples inside the data's support, the data's coverage, and the held-out data's NLL under a
  kernel density estimate of the samples (:func:`genflow.metrics.sharpness_report`), which see
  blur that sliced W2 does not.
* ``gap``: the ODE–SDE gap (Deveney et al. 2023, :func:`genflow.metrics.ode_sde_gap`): sliced
  W2 and MMD between probability-flow ODE samples (Heun, 100 steps) and reverse-SDE samples
  (Euler–Maruyama, 500 steps) from the same prior draws, each against data, and the RMS
  Fokker–Planck residual of the model at a grid of times (``genflow evaluate`` plots it).
* ``fd``, ``kid``: the Fréchet distance and the kernel distance of image features. With an
  Inception-v3 weight file (``inception=PATH``, see ``scripts/convert_fid_inception.py``)
  these are the standard FID and KID; without one, on the built-in digits, the features are
  those of a small classifier trained on the digits and the results are reported as
  ``FD_digits-mlp-d64`` and ``KD_digits-mlp-d64``, never as FID.

Every distance comes with its floor: the same distance between two independent sets of real
data of the same sizes (2-D data: two fresh draws; images: the test split against as many
train images as there are samples), so a perfect model scores about the floor, not 0.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from genflow.config import ConfigError, is_image_dataset
from genflow.metrics import (
    INCEPTION_FID_NAME,
    bits_per_dim,
    digits_feature_extractor,
    energy_distance,
    extract_features,
    frechet_distance_from_features,
    kid,
    log_likelihood,
    mmd,
    ode_sde_gap,
    sharpness_report,
    sliced_wasserstein2,
)
from genflow.data import TOY_DENSITIES
from genflow.run import load_run_config, open_run
from genflow.training import image_batches, reference_data

METRICS = ("nll", "sw2", "mmd", "energy", "sharpness", "gap", "fd", "kid")
_SAMPLE_METRICS = ("sw2", "mmd", "energy", "sharpness", "fd", "kid")
_DIGITS = ("digits", "digits16")
_NLL_BATCH = 100


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"nll,sw2"`` -> ``("nll", "sw2")``; an unknown name is a :class:`ConfigError`."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(
            f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(METRICS)} (comma-separated, e.g. nll,sw2)."
        )
    return tuple(dict.fromkeys(names))


def check_metrics(config, metrics: Sequence[str], inception: str | None) -> None:
    """Refuse, before any compute, metrics that do not apply to ``config``'s run."""
    images = is_image_dataset(config.data.name)
    gaussian_only = [m for m in metrics if m in ("nll", "gap")]
    if gaussian_only and not config.resolved.method.probability_flow:
        raise ConfigError(
            f"{', '.join(gaussian_only)} need(s) a Gaussian path (probability-flow ODE and reverse "
            f"SDE with a Gaussian prior); this run's process is "
            f"{type(config.process).__name__}. Drop them from --metrics."
        )
    if "sharpness" in metrics and config.data.name not in TOY_DENSITIES:
        raise ConfigError(f"sharpness needs a toy set whose density is known exactly "
                          f"({', '.join(TOY_DENSITIES)}); this run's data are {config.data.name}.")
    feature = [m for m in metrics if m in ("fd", "kid")]
    if feature and not images:
        raise ConfigError(f"{', '.join(feature)} compare image features; this run's data "
                          f"({config.data.name}) are points: use sw2, mmd or energy.")
    if feature and inception is None and config.data.name not in _DIGITS:
        raise ConfigError(
            f"{', '.join(feature)} on {config.data.name} need the FID Inception-v3 weights: pass "
            "--inception FILE.npz (convert pytorch-fid's weights once with "
            "scripts/convert_fid_inception.py); only the built-in digits have a fallback."
        )
    if inception is not None and not Path(inception).is_file():
        raise ConfigError(f"--inception {inception}: no such file.")


def evaluate_run(
    workdir: str | Path,
    metrics: str | Sequence[str],
    *,
    num: int | None = None,
    seed: int = 0,
    weights: str = "ema",
    compute_dtype: str = "float32",
    num_probes: int = 1,
    inception: str | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], Any] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Compute ``metrics`` for the latest checkpoint of ``workdir``.

    Args:
      workdir: a run directory written by ``genflow train``.
      metrics: names from :data:`METRICS`, as a list or comma-separated.
      num: number of samples and of held-out points (default: ``config.sample.num_samples``
        for 2-D data; for images 1000 samples against the whole test split).
      seed: seed of the samples, the reference draws and the dequantisation/probes.
      weights: ``"ema"``, ``"raw"`` or ``"sigma_rel=S"`` (a post-hoc EMA) parameters.
      compute_dtype: the network's arithmetic while sampling (``"float32"``, ``"bfloat16"``).
      num_probes: Hutchinson probes per image for ``nll`` on images (2-D data use the exact
        divergence).
      inception: path of the FID Inception-v3 weights (``.npz``); ``None``: the fallback
        features on the digits.
      cache_dir: where the fallback feature network is cached (default: ``workdir``).
      progress: called with a short message before each metric.

    Returns:
      ``(results, info)``: ``results[name]`` holds ``value``, ``unit``/``label`` and, for
      distances, ``floor``; for ``nll`` its ``std_error`` over examples. ``info`` says which
      checkpoint, how many samples, which sampler.
    """
    metrics = parse_metrics(metrics)
    config = load_run_config(workdir)
    check_metrics(config, metrics, inception)
    say = progress or (lambda message: None)
    images = is_image_dataset(config.data.name)
    if num is None:
        num = 1000 if images else config.sample.num_samples
    if num < 2:
        raise ConfigError(f"--num must be at least 2, got {num}.")

    run = open_run(workdir, weights=weights, compute_dtype=compute_dtype)
    config, model_fn = run.config, run.model_fn
    real, floor_real = _real_data(config, num, seed)
    info = {"checkpoint_step": run.step, "weights": weights, "num_reference": len(real)}
    results: dict[str, dict[str, Any]] = {}

    if "nll" in metrics:
        say("nll: probability-flow ODE likelihood")
        results["nll"] = _nll(config, model_fn, real, seed, num_probes)

    if "gap" in metrics:
        say("gap: probability-flow ODE against reverse SDE, Fokker-Planck residual")
        results["gap"] = _gap(config, model_fn, real, floor_real, num, seed)

    wanted = [m for m in metrics if m in _SAMPLE_METRICS]
    if wanted:
        sample_config = run.with_sample(num_samples=num, label=-1, seed=seed)
        say(f"drawing {num} samples with {sample_config.sample.sampler}")
        start = time.perf_counter()
        drawn = run.sample(config=sample_config)
        samples = np.asarray(drawn.x, np.float64)
        info.update(num_samples=num, sampler=drawn.description, nfe=drawn.nfe,
                    sampling_s=round(time.perf_counter() - start, 2))
        flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)  # noqa: E731
        distances = {"sw2": sliced_wasserstein2, "mmd": mmd, "energy": energy_distance}
        for name in (m for m in wanted if m in distances):
            say(f"{name}: samples vs held-out data")
            fn = distances[name]
            results[name] = {
                "value": float(fn(flat(samples), flat(real))),
                "floor": float(fn(flat(floor_real), flat(real))),
                "label": name,
            }
        if "sharpness" in wanted:  # toy sets with an exact density: what sliced W2 misses
            say("sharpness: support fraction, coverage, KDE likelihood")
            report = sharpness_report(samples, config.data.name, reference=real,
                                      floor_reference=floor_real)
            for key, (value, floor) in report.items():
                results[key] = {"value": value, "floor": floor, "label": key}
        if "fd" in wanted or "kid" in wanted:
            extractor = _feature_extractor(config, inception, cache_dir or workdir)
            say(f"features: {extractor.name}")
            f_samples, f_real, f_floor = (
                np.asarray(extract_features(extractor, jnp.asarray(a, jnp.float32)))
                for a in (samples, real, floor_real)
            )
            standard = extractor.name == INCEPTION_FID_NAME
            info["features"] = extractor.name
            if "fd" in wanted:
                results["fd"] = {
                    "value": frechet_distance_from_features(f_samples, f_real),
                    "floor": frechet_distance_from_features(f_floor, f_real),
                    "label": "FID" if standard else f"FD_{extractor.name}",
                }
            if "kid" in wanted:
                m = min(len(f_samples), len(f_real), 1000)
                mean, std = kid(f_samples, f_real, subset_size=m, seed=seed)
                floor, _ = kid(f_floor, f_real, subset_size=min(m, len(f_floor)), seed=seed)
                results["kid"] = {"value": mean, "std": std, "floor": floor,
                                  "label": "KID" if standard else f"KD_{extractor.name}"}
    return results, info


def _real_data(config, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out data and an independent real set of the same size (for the floors)."""
    if not is_image_dataset(config.data.name):
        return reference_data(config, num, seed), reference_data(config, num, seed + 1)
    def split(name: str, count: int | None) -> np.ndarray:
        probe = image_batches(dataclasses.replace(
            config, data=dataclasses.replace(config.data, split=name, batch_size=1)))
        size = probe.num_examples if count is None else min(count, probe.num_examples)
        data = dataclasses.replace(config.data, split=name, batch_size=size, random_flip=False,
                                   seed=seed)
        return image_batches(dataclasses.replace(config, data=data)).batch(0)["x"]

    # The floor set has as many images as the samples (as far as the train split allows), so
    # that the size-dependent bias of the Fréchet distance is the same on both sides.
    return split("test", None), split("train", num)


def _nll(config, model_fn, real: np.ndarray, seed: int, num_probes: int) -> dict[str, Any]:
    method = config.resolved.method
    process, (model_fn, prediction) = config.process, method.sampling_model(model_fn)
    alpha_1, _ = process.marginal(jnp.asarray(1.0))
    # eps/x0/score models divide by alpha, which vanishes at t = 1 on cond-OT-like paths.
    t_end = 1.0 - 1e-5 if float(alpha_1) == 0.0 and prediction != "velocity" else 1.0
    images = is_image_dataset(config.data.name)
    key = jax.random.key(seed)
    options = dict(prediction=prediction, t_end=t_end, t_start=max(method.t_min, 1e-5))
    if images:
        options.update(divergence="hutchinson", num_probes=num_probes)

    @jax.jit
    def log_prob(x, key):
        return log_likelihood(model_fn, process, x, key=key, **options).log_prob

    values = []
    size = min(_NLL_BATCH, len(real))
    for i, start in enumerate(range(0, len(real), size)):
        batch = real[start: start + size]
        count = len(batch)
        # The last batch is padded to the same shape (one compiled program); padding is dropped.
        batch = np.concatenate([batch, real[: size - count]]) if count < size else batch
        key_i = jax.random.fold_in(key, i)
        if images:
            pixels = np.rint((np.asarray(batch, np.float64) + 1.0) * 127.5).astype(np.int32)
            k_deq, k_probe = jax.random.split(key_i)
            out = bits_per_dim(lambda x: log_prob(x, k_probe), pixels, key=k_deq)
        else:
            out = -log_prob(jnp.asarray(batch), key_i) / math.prod(batch.shape[1:])
        values.append(np.asarray(out)[:count])
    values = np.concatenate(values)
    return {
        "value": float(values.mean()),
        "std_error": float(values.std(ddof=1) / math.sqrt(len(values))),
        "unit": "bits/dim" if images else "nats/dim",
        "label": "nll",
        "num_examples": len(values),
    }


def _gap(config, model_fn, real, floor_real, num: int, seed: int) -> dict[str, Any]:
    dim = math.prod(real.shape[1:])
    log_density = model_fn.log_density if config.model.log_density else None
    model_fn, prediction = config.resolved.method.sampling_model(model_fn)
    gap = ode_sde_gap(
        model_fn, config.process, key=jax.random.key(seed), prediction=prediction,
        shape=(num, *real.shape[1:]), data=jnp.asarray(real), t_start=config.sample.t_start,
        t_end=config.sample.t_end, divergence="exact" if dim <= 16 else "hutchinson",
        log_density_fn=log_density,
    )
    summary = gap.summary()
    return {
        "value": summary.pop("sw2_ode_sde"),
        "floor": float(sliced_wasserstein2(floor_real.reshape(len(floor_real), -1),
                                           real.reshape(len(real), -1))),
        "label": "gap: sw2(ODE, SDE)",
        **summary,
    }


def _feature_extractor(config, inception: str | None, cache_dir: str | Path):
    if inception is not None:
        from genflow.networks import InceptionFeatureExtractor, load_inception_weights

        return InceptionFeatureExtractor(load_inception_weights(inception))
    return digits_feature_extractor(cache_dir, dataset=config.data.name)
