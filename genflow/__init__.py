"""genflow: diffusion and flow generative models in JAX.

The package is layered so that the samplers can be used with nothing but JAX:
``import genflow.samplers`` (and ``processes``, ``prediction``, ``losses``) never
imports flax, optax or orbax. Import the heavier layers explicitly::

    from genflow import processes, prediction, samplers   # jax only
    from genflow import networks, training                # flax, optax, orbax
"""

__version__ = "0.1.0.dev0"
