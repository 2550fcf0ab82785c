"""Network parameterizations and their conversions.

A network trained on a Gaussian path ``x_t = alpha_t x_0 + sigma_t eps`` may predict any
of five quantities. Every pair is related through the hub ``(x_0, eps)``:

========== ===================================== ==============================================
kind       prediction                            back to the hub
========== ===================================== ==============================================
EPS        ``eps``                               ``x0 = (x - sigma eps) / alpha``
X0         ``x_0``                               ``eps = (x - alpha x0) / sigma``
V          ``v = alpha eps - sigma x0``          ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``
                                                 ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``
VELOCITY   ``u = alpha' x0 + sigma' eps``        ``x0 = (sigma' x - sigma u) / D``,
           (dx_t/dt along the path)              ``eps = (alpha u - alpha' x) / D``,
                                                 ``D = alpha sigma' - sigma alpha' = -alpha sigma lambda'``
SCORE      ``grad log p_t(x) = -eps / sigma``    ``eps = -sigma s``
========== ===================================== ==============================================

Two functions do every conversion: :func:`to_x0_eps` and :func:`from_x0_eps`.
A conversion between two kinds is ``from_x0_eps(p, b, *to_x0_eps(p, a, pred, x, t), x, t)``.
"""

from __future__ import annotations

import enum

from jaxtyping import Array, ArrayLike

from genflow.processes._base import AbstractGaussianPath, broadcast_to_data


class Prediction(str, enum.Enum):
    """What a network predicts. Accepts its lower-case name: ``Prediction("eps")``."""

    EPS = "eps"
    X0 = "x0"
    V = "v"
    VELOCITY = "velocity"
    SCORE = "score"

    @classmethod
    def parse(cls, value: "Prediction | str") -> "Prediction":
        """Return the member for ``value``, with an error that lists the valid names."""
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown prediction kind {value!r}; choose one of: {names}") from None


EPS = Prediction.EPS
X0 = Prediction.X0
V = Prediction.V
VELOCITY = Prediction.VELOCITY
SCORE = Prediction.SCORE


def _coefs(process: AbstractGaussianPath, t: ArrayLike, x: Array, derivative: bool = False):
    alpha, sigma = process.marginal(t)
    out = [broadcast_to_data(alpha, x), broadcast_to_data(sigma, x)]
    if derivative:
        d_alpha, d_sigma = process.marginal_derivative(t)
        out += [broadcast_to_data(d_alpha, x), broadcast_to_data(d_sigma, x)]
    return out


def to_x0_eps(
    process: AbstractGaussianPath,
    kind: Prediction | str,
    pred: Array,
    x_t: Array,
    t: ArrayLike,
) -> tuple[Array, Array]:
    """Convert a prediction of ``kind`` at ``(x_t, t)`` into ``(x0_hat, eps_hat)``.

    Args:
      process: the Gaussian path the network was trained on.
      kind: what ``pred`` is.
      pred: the network output, shaped like ``x_t``.
      x_t: the noisy input, ``(b, *data_shape)``.
      t: time, a scalar or ``(b,)``.
    """
    kind = Prediction.parse(kind)
    if kind is Prediction.VELOCITY:
        alpha, sigma, d_alpha, d_sigma = _coefs(process, t, x_t, derivative=True)
        det = alpha * d_sigma - sigma * d_alpha
        return (d_sigma * x_t - sigma * pred) / det, (alpha * pred - d_alpha * x_t) / det
    alpha, sigma = _coefs(process, t, x_t)
    if kind is Prediction.EPS:
        return (x_t - sigma * pred) / alpha, pred
    if kind is Prediction.X0:
        return pred, (x_t - alpha * pred) / sigma
    if kind is Prediction.V:
        norm = alpha**2 + sigma**2
        return (alpha * x_t - sigma * pred) / norm, (sigma * x_t + alpha * pred) / norm
    # SCORE
    eps = -sigma * pred
    return (x_t - sigma * eps) / alpha, eps


def from_x0_eps(
    process: AbstractGaussianPath,
    kind: Prediction | str,
    x0: Array,
    eps: Array,
    x_t: Array,
    t: ArrayLike,
) -> Array:
    """The prediction of ``kind`` that corresponds to ``(x0, eps)`` at ``(x_t, t)``.

    ``x_t`` is only used for its shape; the result is exact for any consistent triple.
    """
    kind = Prediction.parse(kind)
    if kind is Prediction.EPS:
        return eps
    if kind is Prediction.X0:
        return x0
    if kind is Prediction.VELOCITY:
        _, _, d_alpha, d_sigma = _coefs(process, t, x_t, derivative=True)
        return d_alpha * x0 + d_sigma * eps
    alpha, sigma = _coefs(process, t, x_t)
    if kind is Prediction.V:
        return alpha * eps - sigma * x0
    return -eps / sigma  # SCORE
