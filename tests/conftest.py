"""Session-wide test settings: float64 everywhere, so closed forms can be checked tightly."""

import jax

jax.config.update("jax_enable_x64", True)
