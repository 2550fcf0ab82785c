"""A check shared by the image-network tests: class labels condition the output."""

import jax.numpy as jnp
import numpy as np


def assert_labels_condition_the_output(apply, fn, x, t, num_labels: int, null: int) -> None:
    """On one repeated input, labels ``0 .. num_labels - 1`` give pairwise different outputs,
    and ``cond=None`` gives exactly the output of the null label ``null``."""
    x, t = jnp.broadcast_to(x[:1], x.shape), jnp.broadcast_to(t[:1], t.shape)  # same input
    y = np.asarray(apply(fn, x, t, jnp.arange(num_labels)))
    for a in range(num_labels):
        for b in range(a + 1, num_labels):
            assert np.abs(y[a] - y[b]).max() > 1e-3, (a, b)
    y_none = np.asarray(apply(fn, x, t, None))
    # Two float32 programs (cond=None and a label array trace differently) through a U-Net or a
    # DiT: each run is within 1.5e-6 * max|y| of float64 here, so they may differ by a few 1e-6
    # of the output's scale on any entry, however small the entry.
    np.testing.assert_allclose(y_none, np.broadcast_to(y[null], y.shape), rtol=1e-5,
                               atol=2e-5 * np.abs(y).max())
    assert np.abs(y_none).max() > 1e-2


def nudge(model):
    """Every parameter of ``model`` moved randomly off its initial value (the zero-initialised
    layers would otherwise hide the rest of the network), as ``(graphdef, params, rest)``."""
    from flax import nnx
    import jax

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(1)
    params = jax.tree.map(
        lambda p: jnp.asarray(np.asarray(p) + 0.2 * rng.standard_normal(p.shape).astype(p.dtype)),
        params,
    )
    return graphdef, params, rest
