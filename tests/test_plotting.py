"""Tests for PNG output (genflow.plotting)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from genflow.plotting import class_grid, curves_png, image_grid_png, scatter_png

_LINE = 18  # pixels per line of text above the panels


def _load(path):
    with Image.open(path) as image:
        image.load()
        return image.mode, image.size, np.asarray(image)


def _corner(seed, num, low, high):
    return np.random.default_rng(seed).uniform(low, high, size=(num, 2))


def test_single_panel_is_dark_only_where_points_are(tmp_path):
    size = 64
    # 20000 points in the top-right quarter of [-1, 1]^2: ~20 per pixel bin there.
    points = _corner(0, 20_000, 0.0, 1.0)
    out = scatter_png(tmp_path / "nested" / "dir" / "a.png", points, size=size,
                      extent=(-1, 1, -1, 1))
    assert out == tmp_path / "nested" / "dir" / "a.png" and isinstance(out, pathlib.Path)
    mode, dims, pixels = _load(out)
    assert mode == "L" and dims == (size, size)
    inner = pixels[1:-1, 1:-1]  # drop the frame
    half = size // 2 - 1
    top_right, rest = inner[:half, half:], inner.copy()
    rest[:half, half:] = 255
    assert top_right.max() < 255  # every bin there holds points
    assert np.all(rest == 255)
    frame = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    assert np.all(frame == 128)


def test_tone_mapping_values(tmp_path):
    # Extent [0, 4]^2 on 16 pixels: bins of 0.25. Ten points in x-bin 5 / y-bin 5 and one point
    # in x-bin 10 / y-bin 12. y points up, so y-bin j is row 15 - j.
    many = np.full((10, 2), 5.5 * 0.25)
    one = np.array([[10.5 * 0.25, 12.5 * 0.25]])
    out = scatter_png(tmp_path / "t.png", np.concatenate([many, one]), size=16,
                      extent=(0, 4, 0, 4))
    _, _, pixels = _load(out)
    assert pixels[10, 5] == 0  # fullest bin: black
    assert pixels[3, 10] == round(255 * (1 - 0.3))  # single point: light gray
    inner = pixels[1:-1, 1:-1].copy()
    inner[10 - 1, 5 - 1] = inner[3 - 1, 10 - 1] = 255
    assert np.all(inner == 255)


def test_two_panels_share_the_reference_extent(tmp_path):
    size = 48
    reference = _corner(1, 5000, -1.0, 0.0)  # bottom-left quarter of its own window
    samples = reference + 100.0  # far outside the reference's window
    out = scatter_png(tmp_path / "b.png", samples, reference, size=size)
    mode, dims, pixels = _load(out)
    assert mode == "L" and dims == (2 * size, size + _LINE)
    header, left, right = pixels[:_LINE], pixels[_LINE:, :size], pixels[_LINE:, size:]
    assert header.min() < 128  # the labels were drawn
    assert left[1:-1, 1:-1].min() < 255
    assert np.all(right[1:-1, 1:-1] == 255)


def test_two_panels_show_their_own_points(tmp_path):
    size = 40
    reference = _corner(2, 20_000, -1.0, 0.0)  # bottom-left quarter
    samples = _corner(3, 20_000, 0.0, 1.0)  # top-right quarter
    out = scatter_png(tmp_path / "c.png", samples, reference, size=size, extent=(-1, 1, -1, 1),
                      title="a title")
    _, dims, pixels = _load(out)
    assert dims == (2 * size, size + 2 * _LINE)
    left, right = pixels[2 * _LINE :, :size], pixels[2 * _LINE :, size:]
    h = size // 2
    assert left[h + 1 : -1, 1 : h - 1].max() < 255 and np.all(left[1 : h - 1, 1:-1] == 255)
    assert right[1 : h - 1, h + 1 : -1].max() < 255 and np.all(right[h + 1 : -1, 1:-1] == 255)


def test_scatter_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        scatter_png(tmp_path / "x.png", np.zeros((5, 3)))
    with pytest.raises(ValueError, match="xmin < xmax"):
        scatter_png(tmp_path / "x.png", np.zeros((5, 2)), extent=(1, 0, 0, 1))
    with pytest.raises(ValueError, match="size"):
        scatter_png(tmp_path / "x.png", np.zeros((5, 2)), size=4)
    assert not (tmp_path / "x.png").exists()


def test_image_grid_places_each_image_at_its_tile(tmp_path):
    n, h, w, pad, nrow = 5, 3, 4, 1, 3
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    images = np.stack([10.0 * k + 3 * i + j for k in range(n)])  # integers in [0, 50]
    out = image_grid_png(tmp_path / "g" / "grid.png", images, nrow=nrow, pad=pad,
                         value_range=(0, 255))
    mode, dims, pixels = _load(out)
    assert mode == "L" and dims == (nrow * (w + pad) + pad, 2 * (h + pad) + pad)
    mask = np.zeros(pixels.shape, bool)
    for k in range(n):
        top, left = pad + (k // nrow) * (h + pad), pad + (k % nrow) * (w + pad)
        np.testing.assert_array_equal(pixels[top : top + h, left : left + w], images[k])
        mask[top : top + h, left : left + w] = True
    assert np.all(pixels[~mask] == 255)  # padding and the unused sixth tile


def test_image_grid_rgb_value_mapping(tmp_path):
    images = np.zeros((2, 2, 2, 3))
    images[0, 0, 0] = [-1.0, 0.0, 1.0]
    images[0, 0, 1] = [-3.0, 5.0, np.nan]  # clipped; nan counts as the low end
    images[1] = 0.5
    out = image_grid_png(tmp_path / "rgb.png", images, pad=0)
    mode, dims, pixels = _load(out)
    assert mode == "RGB" and dims == (4, 2)  # default nrow = ceil(sqrt(2)) = 2
    np.testing.assert_array_equal(pixels[0, 0], [0, 128, 255])
    np.testing.assert_array_equal(pixels[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(pixels[:, 2:], np.full((2, 2, 3), 191))  # 0.75 * 255


def test_image_grid_single_channel_matches_no_channel(tmp_path):
    images = np.random.default_rng(0).uniform(-1, 1, size=(4, 5, 6))
    _, _, a = _load(image_grid_png(tmp_path / "a.png", images))
    _, _, b = _load(image_grid_png(tmp_path / "b.png", images[..., None]))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2 * 7 + 2, 2 * 8 + 2)


def test_image_grid_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="channels"):
        image_grid_png(tmp_path / "x.png", np.zeros((2, 4, 4, 2)))
    with pytest.raises(ValueError, match="at least one"):
        image_grid_png(tmp_path / "x.png", np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="lo < hi"):
        image_grid_png(tmp_path / "x.png", np.zeros((1, 4, 4)), value_range=(1, 1))
    with pytest.raises(ValueError, match="nrow"):
        image_grid_png(tmp_path / "x.png", np.zeros((1, 4, 4)), nrow=0)
    with pytest.raises(TypeError, match="pad"):
        image_grid_png(tmp_path / "x.png", np.zeros((1, 4, 4)), pad=1.5)


def test_curves_put_each_point_where_the_axes_say(tmp_path):
    """A rising and a falling line on linear axes: their end points sit at the plot area's
    corners (70..620 x 30..360 on the default 640x400 canvas), in their own colours."""
    x = np.array([0.0, 0.5, 1.0])
    out = curves_png(tmp_path / "c.png", x, {"up": 2 * x, "down": 2 - 2 * x}, title="t")
    mode, dims, pixels = _load(out)
    assert mode == "RGB" and dims == (640, 400)
    blue, red = (31, 119, 180), (214, 39, 40)
    assert tuple(pixels[360, 70]) == blue and tuple(pixels[30, 620]) == blue  # (0, 0), (1, 2)
    assert tuple(pixels[30, 70]) == red and tuple(pixels[360, 620]) == red
    assert tuple(pixels[195, 345]) in (blue, red)  # the crossing at (0.5, 1)
    with pytest.raises(ValueError, match="log axis"):
        curves_png(tmp_path / "d.png", x, {"a": x}, log_x=True)
    with pytest.raises(ValueError, match="shape"):
        curves_png(tmp_path / "e.png", x, {"a": x[:2]})


def test_class_grid_puts_class_c_in_row_c():
    images = np.arange(40, dtype=float)[:, None, None, None] * np.ones((40, 2, 2, 1))
    labels = np.arange(40) % 10
    grid, nrow = class_grid(images, labels, 10)
    assert nrow == 4 and grid.shape == (40, 2, 2, 1)
    np.testing.assert_array_equal(grid[:, 0, 0, 0].reshape(10, 4) % 10,
                                  np.repeat(np.arange(10)[:, None], 4, axis=1))
    single, nrow = class_grid(images, np.full(40, 3), 10)
    assert nrow == 10 and np.array_equal(single, images)


def test_import_needs_no_jax_or_matplotlib():
    code = (
        "import sys, genflow.plotting; "
        "bad = [m for m in ('jax', 'matplotlib', 'flax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
