"""PNG output with Pillow and numpy only: 2-D density scatters and image grids.

Nothing here imports matplotlib or JAX, so it can be called from the CLI, from scripts and
from tests without extra dependencies or compilation.
"""

from __future__ import annotations

import math
import operator
import os
import pathlib
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Height in pixels of one line of text (title, panel labels) above the panels.
_LINE_PX = 18
_FRAME_GRAY = 128
# Darkness of a pixel bin holding one point, so that isolated points stay visible.
_MIN_INK = 0.3

Extent = tuple[float, float, float, float]


def _prepare_path(path: str | os.PathLike[str]) -> pathlib.Path:
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _as_points(x: Any, what: str) -> np.ndarray:
    points = np.asarray(x, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"{what} must have shape (n, 2), got {points.shape}.")
    return points[np.all(np.isfinite(points), axis=1)]


def _default_extent(points: np.ndarray) -> Extent:
    """Square window around the 0.5/99.5 percentiles, padded by 10% of its side."""
    if points.shape[0] == 0:
        return (-1.0, 1.0, -1.0, 1.0)
    lo = np.percentile(points, 0.5, axis=0)
    hi = np.percentile(points, 99.5, axis=0)
    centre = (lo + hi) / 2.0
    half = float(np.max(hi - lo)) / 2.0 * 1.2
    if half <= 0.0:
        half = max(1.0, float(np.max(np.abs(centre)))) * 0.1
    return (centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half)


def _check_extent(extent: Any) -> Extent:
    try:
        x0, x1, y0, y1 = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise TypeError(
            f"extent must be four numbers (xmin, xmax, ymin, ymax), got {extent!r}."
        ) from None
    if not (x0 < x1 and y0 < y1) or not all(map(math.isfinite, (x0, x1, y0, y1))):
        raise ValueError(f"extent needs finite xmin < xmax and ymin < ymax, got {extent!r}.")
    return (x0, x1, y0, y1)


def _density_panel(points: np.ndarray, extent: Extent, size: int) -> np.ndarray:
    """Grayscale ``(size, size)`` uint8 panel: counts per pixel bin, log-tone-mapped, framed.

    Pixel ``(row, col)`` covers ``x`` bin ``col`` and ``y`` bin ``size - 1 - row`` (y points up).
    A bin with ``c > 0`` points gets darkness
    ``_MIN_INK + (1 - _MIN_INK) * log1p(c - 1) / log1p(c_max - 1)``; empty bins stay white.
    """
    x0, x1, y0, y1 = extent
    counts, _, _ = np.histogram2d(
        points[:, 0], points[:, 1], bins=size, range=[[x0, x1], [y0, y1]]
    )
    counts = counts.T[::-1]  # (y, x) with y increasing upwards
    ink = np.zeros_like(counts)
    filled = counts > 0
    if filled.any():
        peak = np.log1p(counts.max() - 1.0)
        scaled = np.log1p(counts[filled] - 1.0) / peak if peak > 0 else 1.0
        ink[filled] = _MIN_INK + (1.0 - _MIN_INK) * scaled
    panel = np.rint(255.0 * (1.0 - ink)).astype(np.uint8)
    panel[0, :] = panel[-1, :] = panel[:, 0] = panel[:, -1] = _FRAME_GRAY
    return panel


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont | None:
    try:
        return ImageFont.load_default()
    except OSError:  # pragma: no cover - Pillow always ships a bitmap fallback
        return None


def _draw_centred(draw: ImageDraw.ImageDraw, text: str, left: int, width: int, top: int) -> None:
    font = _font()
    try:
        text_width = draw.textlength(text, font=font)
    except (AttributeError, TypeError):  # pragma: no cover - very old Pillow
        text_width = 6 * len(text)
    x = left + max(0.0, (width - text_width) / 2.0)
    draw.text((x, top + 3), text, fill=0, font=font)


def scatter_png(
    path: str | os.PathLike[str],
    samples: Any,
    reference: Any = None,
    *,
    size: int = 512,
    extent: tuple[float, float, float, float] | None = None,
    title: str | None = None,
) -> pathlib.Path:
    """Render a 2-D point cloud as a density image and write it as a grayscale PNG.

    Each panel is a ``size x size`` 2-D histogram over ``extent`` (one bin per pixel, ``y``
    pointing up), tone-mapped by ``log1p`` of the count so that both dense and sparse regions
    show: empty bins are white, a bin with one point is light gray and the fullest bin is black.
    A 1-pixel gray frame surrounds each panel. Points outside ``extent`` and non-finite points
    are dropped.

    Layout: with ``reference``, two panels side by side, ``reference`` on the left labelled
    "data" and ``samples`` on the right labelled "samples", over a shared extent; without it,
    one unlabelled panel. A title adds one line of text on top. The image is therefore
    ``panels * size`` pixels wide and ``size + 18 * lines`` high, where ``lines`` counts the
    title and the label row.

    Args:
        path: Output file; missing parent directories are created.
        samples: Points of shape ``(n, 2)`` (numpy or JAX array).
        reference: Optional data points of shape ``(m, 2)`` to show beside ``samples``.
        size: Side of each square panel in pixels, ``>= 16``.
        extent: ``(xmin, xmax, ymin, ymax)`` shown in every panel. Default: a square window
            (equal aspect) centred on the 0.5/99.5 percentiles of ``reference`` (of ``samples``
            when there is no reference) and padded by 10% of their larger range on each side.
        title: Optional text drawn above the panels.

    Returns:
        The path written, as a ``pathlib.Path``.

    Raises:
        ValueError: If an array is not ``(n, 2)``, ``size < 16`` or ``extent`` is empty.
        TypeError: If ``size`` is not an integer or ``extent`` is not four numbers.
    """
    if isinstance(size, bool):
        raise TypeError(f"size must be an integer, got {size!r}.")
    try:
        size = operator.index(size)
    except TypeError:
        raise TypeError(f"size must be an integer, got {size!r}.") from None
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}.")
    samples = _as_points(samples, "samples")
    panels = [samples]
    labels: list[str] = []
    if reference is not None:
        reference = _as_points(reference, "reference")
        panels = [reference, samples]
        labels = ["data", "samples"]
    extent = _default_extent(panels[0]) if extent is None else _check_extent(extent)

    lines = int(title is not None) + int(bool(labels))
    header = _LINE_PX * lines
    canvas = np.full((header + size, size * len(panels)), 255, dtype=np.uint8)
    for i, points in enumerate(panels):
        canvas[header:, i * size : (i + 1) * size] = _density_panel(points, extent, size)
    image = Image.fromarray(canvas)  # 2-D uint8 -> mode "L"
    if lines:
        draw = ImageDraw.Draw(image)
        top = 0
        if title is not None:
            _draw_centred(draw, title, 0, image.width, top)
            top += _LINE_PX
        for i, label in enumerate(labels):
            _draw_centred(draw, label, i * size, size, top)

    out = _prepare_path(path)
    image.save(out, format="PNG")
    return out


def class_grid(
    images: np.ndarray, labels: np.ndarray | None, num_classes: int, per_row: int = 10
) -> tuple[np.ndarray, int]:
    """The images of a sample grid and its row length, for :func:`image_grid_png`.

    At most ``per_row`` images per row and ``per_row`` rows. When the samples cover several
    classes (``labels`` with more than one value), row ``c`` holds the first samples of class
    ``c``; with fewer samples than classes they stay in drawing order.

    Returns:
      ``(images, nrow)``.
    """
    if labels is None or len(set(np.asarray(labels).tolist())) == 1:
        return images[: per_row * per_row], per_row
    per_class = min(per_row, len(images) // num_classes)
    if per_class == 0:
        return images, min(per_row, len(images))
    rows = [images[labels == c][:per_class] for c in range(num_classes)]
    return np.concatenate(rows), per_class


def image_grid_png(
    path: str | os.PathLike[str],
    images: Any,
    *,
    nrow: int | None = None,
    pad: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> pathlib.Path:
    """Tile a batch of images into one PNG grid.

    Values are clipped to ``value_range = (lo, hi)`` and mapped to
    ``uint8 = round(255 (x - lo) / (hi - lo))`` (``nan`` counts as ``lo``). Image ``k`` goes to
    grid row ``k // nrow`` and column ``k % nrow``; its top-left pixel sits at
    ``(pad + row * (h + pad), pad + col * (w + pad))``. Padding and unused tiles are white.

    Args:
        path: Output file; missing parent directories are created.
        images: Array of shape ``(n, h, w)`` or ``(n, h, w, c)`` with ``c`` in ``{1, 3}``
            (channels last). One channel gives a grayscale ("L") PNG, three an "RGB" one.
        nrow: Images per row, as in torchvision's ``make_grid``. Default ``ceil(sqrt(n))``.
        pad: Pixels of white space between tiles and around the grid, ``>= 0``.
        value_range: ``(lo, hi)``, the values shown as black and white.

    Returns:
        The path written, as a ``pathlib.Path``. The PNG is
        ``nrow * (w + pad) + pad`` wide and ``ceil(n / nrow) * (h + pad) + pad`` high.

    Raises:
        ValueError: On a bad shape, an empty batch, ``nrow < 1``, ``pad < 0`` or ``lo >= hi``.
        TypeError: If ``nrow`` or ``pad`` is not an integer.
    """
    array = np.asarray(images, dtype=np.float64)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            "images must have shape (n, h, w) or (n, h, w, c) with c in {1, 3} (channels "
            f"last), got {np.shape(images)}; move channels last with np.moveaxis(x, 1, -1)."
        )
    n, h, w, c = array.shape
    if n == 0 or h == 0 or w == 0:
        raise ValueError(f"images must hold at least one non-empty image, got {array.shape}.")
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}.")
    for name, value in (("pad", pad), ("nrow", nrow)):
        integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
        if value is not None and not integer:
            raise TypeError(f"{name} must be an integer, got {value!r}.")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}.")
    ncol = math.ceil(math.sqrt(n)) if nrow is None else int(nrow)
    if ncol < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}.")
    rows = math.ceil(n / ncol)

    scaled = (np.clip(np.nan_to_num(array, nan=lo), lo, hi) - lo) / (hi - lo)
    tiles = np.rint(255.0 * scaled).astype(np.uint8)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for k in range(n):
        top = pad + (k // ncol) * (h + pad)
        left = pad + (k % ncol) * (w + pad)
        grid[top : top + h, left : left + w] = tiles[k]
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)  # uint8 -> "L" or "RGB"

    out = _prepare_path(path)
    image.save(out, format="PNG")
    return out


_CURVE_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def curves_png(
    path: str | os.PathLike[str],
    x: Any,
    curves: dict[str, Any],
    *,
    log_x: bool = False,
    log_y: bool = False,
    title: str | None = None,
    size: tuple[int, int] = (640, 400),
) -> pathlib.Path:
    """Plot one or more curves ``y(x)`` against a shared ``x`` as an RGB PNG with a legend.

    Point ``(x_i, y_i)`` maps linearly (or logarithmically with ``log_x`` / ``log_y``) from
    the data's range onto the plot area; the axis ends are written at the corners.

    Args:
        path: Output file; missing parent directories are created.
        x: ``(n,)`` abscissae, ``n >= 2``.
        curves: label -> ``(n,)`` ordinates (at most five curves).
        log_x, log_y: logarithmic axes (the values must then be positive).
        title: Text above the plot.
        size: ``(width, height)`` in pixels.
    """
    xs = np.asarray(x, np.float64)
    ys = {k: np.asarray(v, np.float64) for k, v in curves.items()}
    if xs.ndim != 1 or xs.size < 2 or not ys or len(ys) > len(_CURVE_COLOURS):
        raise ValueError(f"need x of shape (n,), n >= 2, and 1 to {len(_CURVE_COLOURS)} curves; "
                         f"got x {xs.shape} and {len(ys)} curves.")
    for label, y in ys.items():
        if y.shape != xs.shape:
            raise ValueError(f"curve {label!r} has shape {y.shape}, x has {xs.shape}.")
    every = np.concatenate(list(ys.values()))
    for name, values, log in (("x", xs, log_x), ("y", every, log_y)):
        if not np.all(np.isfinite(values)) or (log and np.any(values <= 0)):
            raise ValueError(f"{name} values must be finite{' and > 0 (log axis)' if log else ''}.")
    fx = np.log10 if log_x else (lambda v: v)
    fy = np.log10 if log_y else (lambda v: v)
    width, height = size
    left, right, top, bottom = 70, width - 20, 30, height - 40
    x_lo, x_hi = float(fx(xs).min()), float(fx(xs).max())
    y_lo, y_hi = float(fy(every).min()), float(fy(every).max())
    y_hi = y_hi if y_hi > y_lo else y_lo + 1.0
    to_px = lambda a, b: (left + (fx(a) - x_lo) / (x_hi - x_lo) * (right - left),  # noqa: E731
                          bottom - (fy(b) - y_lo) / (y_hi - y_lo) * (bottom - top))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for value, (px, py) in ((xs.min(), (left, bottom + 5)), (xs.max(), (right - 40, bottom + 5))):
        draw.text((px, py), f"{value:.3g}", fill=(0, 0, 0), font=font)
    for value, py in ((every.min(), bottom - 10), (every.max(), top)):
        draw.text((5, py), f"{value:.3g}", fill=(0, 0, 0), font=font)
    if title:
        _draw_centred(draw, title, 0, width, 5)
    for k, (label, y) in enumerate(ys.items()):
        colour = _CURVE_COLOURS[k]
        points = [to_px(a, b) for a, b in zip(xs, y)]
        draw.line(points, fill=colour, width=2)
        for px, py in points:
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
        draw.text((left + 10, top + 8 + 14 * k), label, fill=colour, font=font)
    out = _prepare_path(path)
    image.save(out, format="PNG")
    return out
