"""Closed forms of genflow's VP schedules, written out by hand for the tests (not a test module).

VP linear: beta(t) = 0.1 + 19.9 t, log alpha = -t^2 19.9/4 - t 0.05. VP cosine: s = 0.008,
t_max = 0.9946, alpha = cos(pi/2 (t t_max + s)/(1 + s)) / cos(pi/2 s/(1 + s)). Both have
sigma = sqrt(1 - alpha^2), sigma' = -alpha alpha'/sigma and g^2 = -2 alpha'/alpha.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def coefs(name, t, xp=None):
    """alpha, sigma, alpha', sigma', g^2 of the VP paths, derived by hand.

    ``xp`` is numpy or jax.numpy; by default jax.numpy for JAX arrays (and tracers), else numpy.
    """
    if xp is None:
        xp = jnp if isinstance(t, jax.Array) else np
    if name == "linear":  # beta(t) = 0.1 + 19.9 t
        beta = 0.1 + 19.9 * t
        alpha = xp.exp(-(t**2) * 19.9 / 4 - t * 0.05)
        d_alpha, g2 = -0.5 * beta * alpha, beta
    else:
        s, t_max = 0.008, 0.9946
        phase = math.pi / 2 * (t * t_max + s) / (1 + s)
        d_phase = math.pi / 2 * t_max / (1 + s)
        alpha = xp.cos(phase) / math.cos(math.pi / 2 * s / (1 + s))
        d_alpha = -xp.tan(phase) * d_phase * alpha
        g2 = 2 * xp.tan(phase) * d_phase  # VP: g^2 = -2 alpha'/alpha
    sigma = xp.sqrt(1 - alpha**2)
    return alpha, sigma, d_alpha, -alpha * d_alpha / sigma, g2
