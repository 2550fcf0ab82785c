"""Closed forms of genflow's Gaussian paths, written out by hand for the tests (not a test module).

VP linear and cosine below; also sub-VP ("subvp"), VE with sigma from 0.01 to 50 ("ve") and
rectified flow ("rf"), each with its own formulas in ``coefs``.

VP linear: beta(t) = 0.1 + 19.9 t, log alpha = -t^2 19.9/4 - t 0.05. VP cosine: s = 0.008,
t_max = 0.9946, alpha = cos(pi/2 (t t_max + s)/(1 + s)) / cos(pi/2 s/(1 + s)). Both have
sigma = sqrt(1 - alpha^2), sigma' = -alpha alpha'/sigma and g^2 = -2 alpha'/alpha.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def coefs(name, t, xp=None):
    """alpha, sigma, alpha', sigma', g^2 of the paths, derived by hand.

    ``xp`` is numpy or jax.numpy; by default jax.numpy for JAX arrays (and tracers), else numpy.
    """
    if xp is None:
        xp = jnp if isinstance(t, jax.Array) else np
    if name == "subvp":  # alpha of VP linear, sigma = 1 - alpha^2, g^2 = beta (1 - alpha^4)
        beta = 0.1 + 19.9 * t
        alpha = xp.exp(-(t**2) * 19.9 / 4 - t * 0.05)
        d_alpha = -0.5 * beta * alpha
        return alpha, 1 - alpha**2, d_alpha, -2 * alpha * d_alpha, beta * (1 - alpha**4)
    if name == "ve":  # sigma = 0.01 (50 / 0.01)^t, alpha = 1, g^2 = d sigma^2 / dt
        log_r = math.log(50 / 0.01)
        sigma = 0.01 * xp.exp(t * log_r)
        one = xp.ones_like(sigma)
        return one, sigma, 0 * one, sigma * log_r, 2 * sigma**2 * log_r
    if name == "rf":  # alpha = 1 - t, sigma = t, f = -1/(1 - t), g^2 = 2 t + 2 t^2 / (1 - t)
        one = xp.ones_like(t)
        return 1 - t, t, -one, one, 2 * t / (1 - t)
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
