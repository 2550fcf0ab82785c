"""A trained run: open it, sample it, train it with sample grids — the one place that glue lives.

The command line, :mod:`genflow.evaluate`, the sample grids written during training and the
scripts all go through this module::

    from genflow.run import open_run

    run = open_run("runs/demo")                       # config, method, EMA weights
    samples = run.sample(num=1000, sampler="dpm_solver++_2m", num_steps=20)
    samples.x, samples.nfe                            # in the data's units
    samples.save("runs/demo/dpm20")                   # dpm20.npz and dpm20.png

:func:`sampling` turns a config into a jit-able draw function; :class:`Run` holds the restored
weights and compiles each sampler it is asked for once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from genflow import samplers
from genflow.config import COMPUTE_DTYPES, Config, ConfigError, load_config_json, replace_sample
from genflow.plotting import class_grid, image_grid_png, scatter_png
from genflow.training import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    SAMPLES_DIR,
    Setup,
    data_shape_of,
    has_checkpoint,
    model_fn_from,
    parse_weights,
    reference_data,
    restore_run,
    source_data,
)
from genflow.training import batch_sharding, make_mesh, replicated
from genflow.training import train as _train_loop

IMAGE_RANGE = (-1.0, 1.0)  # image data sets arrive in [-1, 1]
_SNAPSHOT_IMAGES = 100
_SNAPSHOT_POINTS = 2000


class RunError(ConfigError):
    """A run directory that cannot be used as asked (no config, no checkpoint, ...)."""


# ------------------------------------------------------------------------ sampling a config
class Sampling(NamedTuple):
    """How a config's ``sample`` section draws: see :func:`sampling`.

    Attributes:
      draw: ``draw(model_fn, key, x_init) -> (samples, nfe)``, jit-able; ``x_init`` may be
        ``None`` (the process's prior is drawn with ``key``); samples are in the data's units.
      x_init: the starting points that come from data (draws of ``data.source``), else ``None``.
      labels: the class of each sample of a class-conditional model, else ``None``.
      description: e.g. ``"heun, 100 steps (uniform grid)"``.
    """

    draw: Callable[..., tuple[jax.Array, int]]
    x_init: np.ndarray | None
    labels: np.ndarray | None
    description: str


def sample_labels(config: Config, num: int) -> np.ndarray | None:
    """The class of each sample of a class-conditional model: ``sample.label``, or the classes
    in turn (``0, 1, ..., C - 1, 0, 1, ...``) when it is -1; ``None`` for other models."""
    classes = config.model.num_classes
    if not classes:
        return None
    if config.sample.label >= 0:
        return np.full(num, config.sample.label, np.int32)
    return (np.arange(num) % classes).astype(np.int32)


def sampling(config: Config) -> Sampling:
    """The draw function of ``config.sample``'s sampler, grid and guidance for the config's
    method (:meth:`genflow.methods.AbstractMethod.sample`)."""
    method, solver, grid = config.resolved
    sc, scale, classes = config.sample, config.data.scale, config.model.num_classes
    shape = (sc.num_samples, *data_shape_of(config))
    thresholding = samplers.DynamicThresholding(ratio=sc.threshold) if sc.threshold else None
    labels = sample_labels(config, sc.num_samples)
    adaptive = isinstance(solver, samplers.AbstractAdaptiveSampler)

    def draw(model_fn, key, x_init=None):
        cond = None
        if classes:
            if sc.guidance != 1.0:
                model_fn = samplers.guided(model_fn, sc.guidance, null_cond=classes)
            cond = jnp.asarray(labels)
        result = method.sample(
            model_fn, solver, key=key, x_init=x_init, shape=shape if x_init is None else None,
            num_steps=None if adaptive else sc.num_steps, grid=None if adaptive else grid,
            t_start=sc.t_start, t_end=sc.t_end, cond=cond, thresholding=thresholding,
        )
        return result.x / scale, result.nfe

    what = f"{sc.sampler} (adaptive steps)" if adaptive else (
        f"{sc.sampler}, {sc.num_steps} steps ({sc.grid} grid)")
    x_init = source_data(config, sc.num_samples, sc.seed)
    if config.data.source:
        what += f" from {config.data.source}"
    if classes:
        what += f", class {sc.label}" if sc.label >= 0 else f", classes 0-{classes - 1}"
        what += f", guidance {sc.guidance:g}"
    return Sampling(draw, x_init, labels, what)


# ------------------------------------------------------------------------ samples
def output_paths(out: str | Path) -> tuple[Path, Path]:
    """``(FILE.npz, FILE.png)`` for ``--out FILE``: the suffixes are added, never substituted
    (``runs/x/g1.25`` -> ``g1.25.npz``); a given ``.npz`` or ``.png`` suffix is kept once."""
    out = Path(out)
    if out.suffix in (".npz", ".png"):
        out = out.with_suffix("")
    return Path(f"{out}.npz"), Path(f"{out}.png")


@dataclasses.dataclass
class Samples:
    """Samples of a run, in the data's units.

    Attributes:
      x: the samples in the data's range (images clipped to ``[-1, 1]``, as the PNG shows
        them; points as drawn).
      raw: the samples as the sampler returned them (not clipped).
      nfe: network evaluations per sample batch.
      labels: classes of a class-conditional model, else ``None``.
      description: the sampler, steps and grid.
      config: the config whose ``sample`` section drew them.
      step: the checkpoint step of the weights.
    """

    x: np.ndarray
    raw: np.ndarray
    nfe: int
    labels: np.ndarray | None
    description: str
    config: Config
    step: int

    @property
    def images(self) -> bool:
        return self.config.data.images

    def save(self, out: str | Path, *, reference: np.ndarray | None = None) -> tuple[Path, Path]:
        """Write ``out.npz`` (``samples``: in the data range; ``samples_raw``: unclipped; the
        sampler settings) and ``out.png`` (an image grid, one class per row, or a scatter over
        ``reference`` points)."""
        npz, png = output_paths(out)
        npz.parent.mkdir(parents=True, exist_ok=True)
        sc = self.config.sample
        extra = {} if self.labels is None else {"labels": self.labels, "guidance": sc.guidance}
        np.savez(npz, samples=self.x, samples_raw=self.raw, nfe=self.nfe, sampler=sc.sampler,
                 solver_options=json.dumps(dict(sc.solver_options)), num_steps=sc.num_steps,
                 grid=sc.grid, step=self.step, **extra)
        self.png(png, reference=reference)
        return npz, png

    def png(self, path: str | Path, *, reference: np.ndarray | None = None,
            title: str | None = None) -> Path:
        """Write the picture: an image grid (one class per row) or a scatter over
        ``reference`` points, titled ``title`` (default: the data set and the sampler)."""
        if self.images:
            grid, nrow = class_grid(self.x, self.labels, self.config.model.num_classes)
            image_grid_png(path, grid, nrow=nrow)
        else:
            scatter_png(path, self.x, reference,
                        title=title or f"{self.config.data.name}: {self.description}")
        return Path(path)


def _in_data_range(config: Config, x: np.ndarray) -> np.ndarray:
    if config.data.images:
        lo, hi = IMAGE_RANGE
        return np.clip(x, lo, hi)
    return x


# ------------------------------------------------------------------------ a run
class Run:
    """A run's config and method, its network and one set of its weights.

    Args:
      config: the run's config.
      setup: the network's static half (:func:`genflow.training.init_train_state`).
      params: the weights (EMA or raw).
      step: the checkpoint step of ``params``.
      workdir: the run directory, if any.
      weights: ``"ema"``, ``"raw"`` or ``"sigma_rel=S"``.
    """

    def __init__(self, config: Config, setup: Setup, params: Any, *, step: int,
                 workdir: str | Path | None = None, weights: str = "ema",
                 compute_dtype: str = "float32", devices: list | None = None):
        self.config = config
        self.setup = setup
        self.params = params
        self.step = step
        self.workdir = None if workdir is None else Path(workdir)
        self.weights = weights
        self.compute_dtype = compute_dtype
        self.devices = jax.local_devices() if devices is None else list(devices)
        self._draws: dict[str, Callable] = {}

    @property
    def method(self):
        """The config's method, bound to its process."""
        return self.config.resolved.method

    @property
    def process(self):
        return self.config.process

    @property
    def model_fn(self):
        """The network with these weights as a pure ``model_fn`` (a pytree for ``jax.jit``)."""
        return model_fn_from(self.setup, self.params, compute_dtype=self.compute_dtype)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return data_shape_of(self.config)

    def with_sample(self, **changes: Any) -> Config:
        """The run's config with ``sample`` fields changed (``None`` values are left out);
        a :class:`~genflow.config.ConfigError` if they do not fit."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace_sample(self.config, **changes) if changes else self.config

    def sample(self, *, config: Config | None = None, x_init: Any = None,
               **changes: Any) -> Samples:
        """Draw samples with the run's sampler, or with ``sample`` fields changed
        (``num_samples``, ``seed``, ``sampler``, ``solver_options``, ``num_steps``, ``grid``,
        ``t_start``, ``t_end``, ``label``, ``guidance``, ``threshold``), or with ``config``
        (from :meth:`with_sample`). The draw function is compiled once per sample section."""
        config = config or self.with_sample(**changes)
        plan = sampling(config)
        mesh = sample_mesh(self.devices, config.sample.num_samples)
        key = (repr(config.sample), mesh.size)
        if key not in self._draws:
            self._draws[key] = jax.jit(
                plan.draw, out_shardings=(batch_sharding(mesh, leading=0), replicated(mesh)))
        start = plan.x_init if x_init is None else x_init
        model_fn = self.model_fn
        if mesh.size > 1:  # the weights on every device, the samples split over them
            model_fn = jax.device_put(model_fn, replicated(mesh))
            if start is not None:
                start = jax.device_put(jnp.asarray(start), batch_sharding(mesh, leading=0))
        x, nfe = self._draws[key](model_fn, jax.random.key(config.sample.seed), start)
        raw = np.asarray(jax.device_get(x))
        return Samples(_in_data_range(config, raw), raw, int(nfe), plan.labels,
                       plan.description, config, self.step)

    def reference(self, num: int, seed: int) -> np.ndarray:
        """Fresh points of a toy data set, from seeds training never uses."""
        if self.config.data.images:
            raise ValueError("reference() draws toy points; images come from the test split.")
        return reference_data(self.config, num, seed)


    # -------------------------------------------------------------- conditional generation
    def inpaint(self, x: Any, mask: np.ndarray | None, *, label: int | None = None,
                reconstruction_weight: float = 0.0, config: Config | None = None):
        """Fill in the pixels of images ``x`` where ``mask == 0`` (or colour their gray level
        when ``mask`` is ``None``) with the run's fixed-step sampler
        (:func:`genflow.samplers.inpaint`, :func:`genflow.samplers.colorize`).

        Returns:
          :class:`genflow.samplers.SampleResult` of the filled images.
        """
        config = config or self.config
        check_inpainting(config, self.workdir or "this run")
        method, solver, grid = config.resolved
        classes = config.model.num_classes
        x = jnp.asarray(x)
        cond = None
        if classes:
            cond = jnp.full((x.shape[0],), classes if label is None else label, jnp.int32)
        fn, prediction = method.sampling_model(self.model_fn)
        sc = config.sample
        common = dict(prediction=prediction, num_steps=sc.num_steps, grid=grid,
                      t_start=sc.t_start, t_end=sc.t_end, cond=cond,
                      reconstruction_weight=reconstruction_weight)
        if mask is None:
            gray = x.mean(axis=-1, keepdims=True)
            run = lambda m, key: samplers.colorize(m, self.process, solver, key=key,  # noqa: E731
                                                   gray=gray, **common)
        else:
            run = lambda m, key: samplers.inpaint(m, self.process, solver, key=key,  # noqa: E731
                                                  x_known=x, mask=mask, **common)
        return jax.jit(run)(fn, jax.random.key(sc.seed))

    def couple(self, num: int, solver: Any, *, num_steps: int, seed: int = 0,
               chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Rectified flow's reflow coupling: ``num`` prior draws ``x1`` and the data points
        ``x0`` a deterministic ``solver`` maps them to (uniform grid, ``num_steps`` steps, to
        ``sample.t_end``), in the model's space."""
        method = self.method
        if not method.coupled_pairs:
            raise RunError(f"reflow couples noise with samples of a Gaussian path; this run's "
                           f"method is {type(method).__name__}.")
        if getattr(solver, "stochastic", True) or not method.accepts(solver):
            raise RunError(f"{type(solver).__name__} is not a deterministic ODE solver of this "
                           "run; reflow needs one (heun, dpm_solver++_2m, ...).")
        shape = (min(num, chunk), *self.data_shape)
        t_end = self.config.sample.t_end

        @jax.jit
        def pairs(model_fn, key):
            x1 = self.process.prior_sample(key, shape)
            x0 = method.sample(model_fn, solver, key=key, x_init=x1, num_steps=num_steps,
                               grid=samplers.uniform, t_end=t_end).x
            return x0, x1

        keys = jax.random.split(jax.random.key(seed), -(-num // shape[0]))
        drawn = [jax.device_get(pairs(self.model_fn, k)) for k in keys]
        return (np.concatenate([d[0] for d in drawn])[:num],
                np.concatenate([d[1] for d in drawn])[:num])


def sample_mesh(devices: list, num: int) -> Mesh:
    """The devices a batch of ``num`` samples is split over: the most of ``devices`` that
    divide ``num`` (every device draws whole samples; the samples do not depend on how many,
    since JAX's random numbers do not depend on the layout)."""
    n = max(d for d in range(1, len(devices) + 1) if num % d == 0)
    return make_mesh(devices[:n])


def toy_quality(run: Run, samples: Samples, reference: np.ndarray) -> list[str]:
    """Lines that judge 2-D samples against fresh data, each figure with its floor (the same
    figure for a second fresh draw of the data): sliced W2 and, for the toy sets whose density
    is known exactly, figures that see sharpness."""
    from genflow.data import TOY_DENSITIES
    from genflow.metrics import (
        format_sharpness,
        sharpness_report,
        sliced_wasserstein2,
        sliced_wasserstein2_floor,
    )

    num, seed = len(samples.x), samples.config.sample.seed
    sw2 = sliced_wasserstein2(samples.x, reference)
    floor = sliced_wasserstein2_floor(lambda n, s: run.reference(n, s), num)
    lines = [f"sliced W2, samples vs data: {sw2:.4f}   data vs data (floor): {floor:.4f}   "
             f"ratio: {sw2 / floor:.2f}"]
    name = run.config.data.name
    if name in TOY_DENSITIES:  # sliced W2 does not see blur; these do
        report = sharpness_report(samples.x, name, reference=reference,
                                  floor_reference=run.reference(num, seed + 1))
        lines.append(format_sharpness(report))
    return lines


def check_inpainting(config: Config, where: Any = "this run") -> None:
    """A :class:`RunError` unless ``config`` is an image run on a Gaussian path sampled with a
    fixed-step solver (what :meth:`Run.inpaint` needs); checked before any compute."""
    method, solver, _ = config.resolved
    if method.field_class is not samplers.Denoiser or not config.data.images:
        raise RunError(f"{where} is not an image run on a Gaussian path (data set "
                       f"{config.data.name!r}, process {type(config.process).__name__}); "
                       "inpainting needs one.")
    if isinstance(solver, samplers.AbstractAdaptiveSampler):
        raise RunError(f"sampler {config.sample.sampler} takes adaptive steps; inpainting takes "
                       "a fixed-step sampler such as pc or dpm_solver++_2m.")


REGION_MASKS = ("top", "bottom", "left", "right", "center", "random")


def region_mask(spec: str, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """The known-pixel mask (1 = known) shaped ``(H, W, C)`` of a named region to generate:
    ``top``, ``bottom``, ``left``, ``right`` (halves), ``center`` (the middle quarter) or
    ``random`` (half of the pixels, from ``seed``)."""
    h, w, c = shape
    mask = np.ones((h, w, c), np.float32)
    if spec == "top":
        mask[: h // 2] = 0
    elif spec == "bottom":
        mask[h // 2:] = 0
    elif spec == "left":
        mask[:, : w // 2] = 0
    elif spec == "right":
        mask[:, w // 2:] = 0
    elif spec == "center":
        mask[h // 4: h - h // 4, w // 4: w - w // 4] = 0
    elif spec == "random":
        mask[np.random.default_rng(seed).random((h, w)) < 0.5] = 0
    else:
        raise ValueError(f"unknown region {spec!r}; choose one of {', '.join(REGION_MASKS)}.")
    return mask


def load_run_config(workdir: str | Path) -> Config:
    """The config of the run in ``workdir``, checked; a :class:`RunError` if there is none."""
    workdir = Path(workdir)
    if not (workdir / CONFIG_FILE).is_file():
        raise RunError(f"{workdir} is not a genflow run (no {CONFIG_FILE}); train one with "
                       "`genflow train --config FILE --workdir DIR`.")
    return load_config_json(workdir / CONFIG_FILE)


def check_trained(workdir: str | Path) -> None:
    """A :class:`RunError` unless ``workdir`` holds a finished checkpoint."""
    workdir = Path(workdir)
    if not has_checkpoint(workdir / CHECKPOINT_DIR):
        raise RunError(f"no checkpoint in {workdir / CHECKPOINT_DIR}; train first (or resume) "
                       f"with `genflow train --workdir {workdir} ...`.")


def open_run(workdir: str | Path, *, weights: str = "ema", config: Config | None = None,
             compute_dtype: str = "float32") -> Run:
    """Open the run in ``workdir`` with the weights of its latest checkpoint.

    Only the step and the requested weights are read, not the optimizer state.

    Args:
      workdir: a run directory written by ``genflow train``.
      weights: ``"ema"`` (the exponential moving average), ``"raw"``, or ``"sigma_rel=S"``
        (a post-hoc EMA written by ``genflow ema``).
      config: the run's config with changed ``sample`` settings (from
        :func:`load_run_config` and :func:`genflow.config.replace_sample`); default: the saved
        one.
      compute_dtype: the network's arithmetic when sampling: ``"float32"`` or ``"bfloat16"``
        (the sampler's own arithmetic stays in float32).
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise RunError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got "
                       f"{compute_dtype!r}.")
    try:
        parse_weights(weights)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    workdir = Path(workdir)
    config = config or load_run_config(workdir)
    check_trained(workdir)
    config, setup, step, params = restore_run(workdir, weights=weights, config=config)
    return Run(config, setup, params, step=step, workdir=workdir, weights=weights,
               compute_dtype=compute_dtype)


# ------------------------------------------------------------------------ training
class SampleGrids:
    """Writes a run's sample grid at a step: ``WORKDIR/samples/step_NNNNNNN.png``.

    A grid draws a fixed set of samples with the run's own sampler from the EMA weights: 100
    images (ten per class, one class per row, for a class-conditional model) or 2,000 points
    of 2-D data drawn over fresh data. The prior draw and the key are the same at every step,
    so the grids of one run show the same noise turning into samples as training goes on.
    """

    def __init__(self, config: Config, setup: Setup, workdir: str | Path):
        num = _SNAPSHOT_IMAGES if config.data.images else _SNAPSHOT_POINTS
        self.config = replace_sample(config, num_samples=num, label=-1)
        self.setup = setup
        self.directory = Path(workdir) / SAMPLES_DIR
        self._reference = None if config.data.images else reference_data(
            config, num, config.sample.seed)
        self._draws: dict[str, Callable] = {}  # compiled at the first grid, reused after

    def path(self, step: int) -> Path:
        return self.directory / f"step_{step:07d}.png"

    def __call__(self, step: int, ema_params: Any) -> Path:
        run = Run(self.config, self.setup, ema_params, step=step)
        run._draws = self._draws
        samples = run.sample()
        return samples.png(self.path(step), reference=self._reference,
                           title=f"{self.config.data.name}, step {step}: {samples.description}")


def train(config: Config, workdir: str | Path, *, fresh: bool = False, progress: bool = True,
          on_chunk: Callable[[int, dict], None] | None = None):
    """:func:`genflow.training.train` with the run's sample grids every ``train.sample_every``
    steps; returns ``(setup, state)``."""
    return _train_loop(config, workdir, fresh=fresh, progress=progress, on_chunk=on_chunk,
                       snapshot=lambda setup: SampleGrids(config, setup, workdir))


__all__ = ["REGION_MASKS", "Run", "RunError", "SampleGrids", "check_inpainting", "region_mask", "Samples", "Sampling", "check_trained",
           "load_run_config", "open_run", "output_paths", "sample_labels", "sample_mesh", "sampling", "toy_quality", "train"]
