"""What every training method is written against.

A *method* is one way of training a network on a forward process and of sampling from it:
Gaussian-path denoising (:class:`~genflow.methods.Denoising`), stochastic interpolants between
two data sets (:class:`~genflow.methods.Interpolant`), geometric Brownian motion
(:class:`~genflow.methods.GBM`), and later consistency and few-step methods. It owns

* the fields the network predicts (:attr:`num_fields`) and what the network sees
  (:meth:`wrap`, e.g. EDM's preconditioning), used by both the loss and the sampler;
* the encoding of data into the space the process runs in (:meth:`encode`, :meth:`decode`,
  :meth:`check_data`; GBM's map onto ``[1, 2]``);
* the loss (:meth:`loss`);
* its sampling: which solvers fit it (:meth:`accepts`) and how a solver is driven
  (:meth:`sample`, through :func:`genflow.samplers.sample`);
* its compatibility checks (:meth:`check`, :meth:`check_sampling`), each a ``ValueError`` that
  says what to change.

A method is a frozen dataclass whose fields are its own options (never the whole experiment
config). Its process is bound once with :meth:`bind`; every other method reads it from
``self.process``. Fields marked ``registry=KIND`` in their metadata name an object of the
registry (a loss weighting, say): the config layer builds that object from the name, with the
method's other fields as context, before binding. Adding a method is one file, one test file
and one registry line.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
from jaxtyping import Array, PRNGKeyArray

from genflow import samplers

Batch = Mapping[str, Array]


def bound_field(default: Any = None) -> Any:
    """A method field set by :meth:`AbstractMethod.bind`, not an option of the user's."""
    return dataclasses.field(default=default, metadata={"bound": True})


def registry_field(kind: str, default: Any) -> Any:
    """A method option that names an object of the registry's ``kind`` (built before binding)."""
    return dataclasses.field(default=default, metadata={"registry": kind})


def option_names(method_cls: type) -> tuple[str, ...]:
    """The user-settable options of a method class (its fields less the bound ones)."""
    return tuple(f.name for f in dataclasses.fields(method_cls) if not f.metadata.get("bound"))


@dataclasses.dataclass(frozen=True)
class AbstractMethod(abc.ABC):
    """One way of training and sampling. Subclasses are frozen dataclasses of their options.

    Class attributes:
      field_class: the sampler field (:class:`genflow.samplers.Denoiser` or another) that this
        method's solvers are written against; :meth:`accepts` compares with it.
      two_data_sets: the method learns a map between ``data.name`` (``t = 0``) and a second data
        set ``data.source`` at ``t = 1``.
      coupled_pairs: the method trains on coupled (data, noise) pairs (``data.pairs``, reflow).
      thresholding: the method's samples can be dynamically thresholded (an ``x0`` estimate
        exists).
      probability_flow: the network defines a Gaussian path's probability-flow ODE and reverse
        SDE (exact likelihood, the ODE-SDE gap, inpainting).
    """

    field_class: ClassVar[type] = samplers.Denoiser
    two_data_sets: ClassVar[bool] = False
    coupled_pairs: ClassVar[bool] = False
    thresholding: ClassVar[bool] = False
    probability_flow: ClassVar[bool] = False

    process: Any = bound_field()

    # ------------------------------------------------------------------ binding and checks
    def bind(self, process: Any, **context: Any) -> AbstractMethod:
        """This method on ``process``: checks that they fit (``ValueError`` if not) and returns
        a copy with ``process`` (and any other bound field named in ``context``) set."""
        bound = {f.name for f in dataclasses.fields(self) if f.metadata.get("bound")}
        unknown = set(context) - bound
        if unknown:
            raise TypeError(f"{type(self).__name__}.bind got unknown {sorted(unknown)}.")
        method = dataclasses.replace(self, process=process, **context)
        method.check_process()
        return method

    @abc.abstractmethod
    def check_process(self) -> None:
        """Raise ``ValueError`` if ``self.process`` cannot be trained with these options."""

    def check(self, *, images: bool, source: bool, pairs: bool, single_field_network: bool,
              num_classes: int = 0, scale: float = 1.0) -> None:
        """Raise ``ValueError`` where the data or network do not fit this method.

        Args:
          images: the data are images ``(H, W, C)`` (else flat points).
          source: a second data set is given for ``t = 1`` (``data.source``).
          pairs: coupled (data, noise) pairs are given (``data.pairs``).
          single_field_network: the network predicts one field only (U-Net, DiT).
          num_classes: classes of a class-conditional network (0: unconditional).
          scale: the factor training points are multiplied by.
        """
        name = type(self).__name__
        if source and not self.two_data_sets:
            raise ValueError(
                f"data.source is the t = 1 data set of a stochastic interpolant between two data "
                f"sets; method {name} starts from its process's prior: leave data.source empty."
            )
        if pairs and not self.coupled_pairs:
            raise ValueError(f"data.pairs (reflow) needs the denoising method, not {name}.")
        if single_field_network and self.num_fields > 1:
            raise ValueError(
                f"this network predicts one field; method {name} asks for {self.num_fields}."
            )

    def check_sampling(self, solver: Any, *, grid: Callable | None = None,
                       num_steps: int | None = None, t_start: float = 1.0, t_end: float = 1e-3,
                       thresholding: bool = False) -> None:
        """Raise ``ValueError`` if ``solver`` (with this grid) cannot sample this method.

        The grid is made here, on concrete numbers: inside ``jax.jit`` a grid that does not fit
        the process (a log-SNR grid from an infinite log-SNR) would only give NaN.
        """
        name = type(solver).__name__
        if not self.accepts(solver):
            raise ValueError(
                f"{name} does not sample method {type(self).__name__} (its solvers work on "
                f"{self.field_class.__name__} fields)."
            )
        if thresholding and not self.thresholding:
            raise ValueError(f"dynamic thresholding needs an x0 estimate; method "
                             f"{type(self).__name__} has none.")
        if isinstance(solver, samplers.AbstractAdaptiveSampler) or grid is None:
            return
        t_start, t_end = self.sampling_interval(solver, t_start, t_end)
        try:
            ts = solver.make_grid(grid, self.process, t_start, t_end, int(num_steps))
            ts = np.asarray(ts, np.float64)
        except AttributeError as exc:
            raise ValueError(f"grid {getattr(grid, '__name__', grid)} needs "
                             f"{exc.name or 'a method'} of the process, which "
                             f"{type(self.process).__name__} lacks; use grid uniform.") from None
        if not (np.all(np.isfinite(ts)) and np.all(np.diff(ts) < 0)):
            raise ValueError(
                f"the time grid is not finite and strictly decreasing on this process "
                f"({ts[:3]} ... {ts[-2:]}): a log-SNR or Karras grid needs a finite log-SNR at both "
                "ends; move the start inside (0, 1) (e.g. t_start=0.999) or use grid uniform."
            )
        if num_steps is not None and num_steps < solver.min_steps:
            raise ValueError(f"{name} needs at least {solver.min_steps} steps, got {num_steps}.")

    def accepts(self, solver: Any) -> bool:
        """Whether ``solver`` is written against this method's field."""
        return getattr(solver, "field_class", None) is self.field_class

    # ------------------------------------------------------------------ network and data
    @property
    def num_fields(self) -> int:
        """How many outputs shaped like the data the network has (concatenated on the last axis)."""
        return 1

    def wrap(self, net: Callable) -> Callable:
        """What the loss and the sampler call: the network itself, or a wrapper around it."""
        return net

    def encode(self, x: Any) -> Any:
        """Training points (data times ``data.scale``) in the space the process runs in."""
        return x

    def decode(self, x: Any) -> Any:
        """Inverse of :meth:`encode`, for samples."""
        return x

    def check_data(self, x: np.ndarray) -> None:
        """Raise ``ValueError`` if data points ``x`` (after ``data.scale``) cannot be encoded."""

    # ------------------------------------------------------------------ training
    @abc.abstractmethod
    def loss(self, model_fn: Callable, batch: Batch, key: PRNGKeyArray) -> Array:
        """The scalar training loss of one batch (``batch["x"]`` encoded data; ``"cond"``,
        ``"x1"``, ``"eps"`` where they apply)."""

    # ------------------------------------------------------------------ sampling
    def sampling_model(self, model_fn: Callable) -> tuple[Callable, str]:
        """``(model_fn, prediction)`` for :attr:`field_class`: what the solver's field reads."""
        return model_fn, "eps"

    def sampling_interval(self, solver: Any, t_start: float, t_end: float) -> tuple[float, float]:
        """The ends ``solver`` really uses (a method may have to start just inside ``t = 1``)."""
        return t_start, t_end

    def sample(
        self,
        model_fn: Callable,
        solver: Any,
        *,
        key: PRNGKeyArray,
        x_init: Array | None = None,
        shape: tuple[int, ...] | None = None,
        num_steps: int | None = None,
        grid: Callable | None = None,
        t_start: float = 1.0,
        t_end: float = 1e-3,
        cond: Any = None,
        thresholding: Callable | None = None,
    ) -> samplers.SampleResult:
        """Draw samples with ``solver`` and return them decoded (in the encoded data's units).

        ``x_init`` (e.g. draws of the ``t = 1`` data set) or ``shape`` (the process's prior) give
        the start; the rest is passed to :func:`genflow.samplers.sample`.
        """
        fn, prediction = self.sampling_model(model_fn)
        t_start, t_end = self.sampling_interval(solver, t_start, t_end)
        options: dict[str, Any] = dict(x_init=x_init, shape=shape, t_start=t_start, t_end=t_end,
                                       cond=cond, thresholding=thresholding)
        if not isinstance(solver, samplers.AbstractAdaptiveSampler):
            options.update(num_steps=num_steps, grid=grid or samplers.uniform)
        result = samplers.sample(fn, self.process, solver, key=key, prediction=prediction,
                                 **options)
        return result._replace(x=self.decode(result.x))


def check_time_range(name: str, t_min: float) -> None:
    if not (isinstance(t_min, (int, float)) and 0.0 <= t_min < 1.0 and math.isfinite(t_min)):
        raise ValueError(f"{name}.t_min must lie in [0, 1), got {t_min}.")


def finite_sde(process: Any, t_min: float) -> bool:
    """Whether the forward SDE ``(f_t, g_t^2)`` is finite with ``g^2 > 0`` on ``[t_min, 1]``."""
    f, g2 = process.sde(np.array([max(t_min, 1e-6), 0.5, 1.0]))
    return bool(np.all(np.isfinite(f)) and np.all(np.isfinite(g2)) and np.all(np.asarray(g2) > 0))

