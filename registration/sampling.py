"""Reading a slide resampled onto an arbitrary output pixel grid (a projective map), tile by tile.

Coordinate convention (OpenSlide / scikit-image): pixel centres at integer (x, y); a pixel of a grid with downsample
``d`` (level-0 pixels per pixel) whose index is ``k`` has its centre at level-0 coordinate ``d * k + (d - 1) / 2``
(:func:`grid_to_level0`). Output pixel ``(x, y)`` samples the slide at level-0 coordinate ``M(x, y)`` where ``M`` is a
``(3, 3)`` projective matrix. Each output tile reads only the slide region it needs, at the coarsest pyramid level that
is still at least as fine as the output (Gaussian anti-aliasing when it is finer), so memory is bounded by the tile,
not by the slide. Pixels whose source lies outside the slide are white (255) and flagged in the coverage mask.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
from scipy import ndimage
from skimage.transform import ProjectiveTransform, warp

#: Margin (level pixels) read around each tile's source footprint for interpolation.
READ_PAD = 3


def scale_matrix(d: float) -> np.ndarray:
    """``(3, 3)`` matrix mapping pixel (x, y) of a grid with downsample ``d`` to level-0 coordinates (centre rule)."""
    return np.array([[d, 0, (d - 1) / 2], [0, d, (d - 1) / 2], [0, 0, 1]], float)


def translate_matrix(tx: float, ty: float) -> np.ndarray:
    """``(3, 3)`` matrix ``(x, y) -> (x + tx, y + ty)``."""
    return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], float)


def grid_to_level0(d: float, ox: float = 0.0, oy: float = 0.0) -> np.ndarray:
    """Matrix mapping pixel (x, y) of a window with origin ``(ox, oy)`` on a downsample-``d`` grid to level 0."""
    return scale_matrix(d) @ translate_matrix(ox, oy)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = np.c_[pts, np.ones(len(pts))] @ m.T
    return h[:, :2] / h[:, 2:3]


def _local_scale(m: np.ndarray, x: float, y: float) -> float:
    """sqrt(|det J|) of ``m`` at (x, y): level-0 pixels per output pixel, locally."""
    p = _apply(m, np.array([[x, y], [x + 1, y], [x, y + 1]], float))
    j = np.array([p[1] - p[0], p[2] - p[0]])
    return float(math.sqrt(abs(np.linalg.det(j))))


def choose_level(downsamples, scale: float) -> int:
    """Coarsest level whose downsample is at most ``scale`` (1e-3 relative slack); level 0 when all are coarser."""
    best = 0
    for i, ds in enumerate(downsamples):
        if ds <= scale * (1 + 1e-3) and ds >= downsamples[best]:
            best = i
    return best


def read_warped(reader, m: np.ndarray, height: int, width: int, tile: Optional[int] = None,
                order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Resample a slide onto an output grid.

    Args:
        reader: a ``wsi.reader.SlideReader`` (``level_dimensions``, ``level_downsamples``, ``read_region``).
        m: ``(3, 3)`` projective matrix, output pixel (x, y) -> slide level-0 (x, y).
        height, width: output size in pixels.
        tile: process the output in square tiles of this many pixels (bounds memory); ``None``: one piece.
        order: interpolation order (0 nearest, 1 bilinear, 3 bicubic), as in ``skimage.transform.warp``.

    Returns:
        ``(rgb, covered)``: ``(height, width, 3)`` uint8, and ``(height, width)`` bool, True where the source point lies
        inside the slide (elsewhere the pixel is white).
    """
    m = np.asarray(m, float)
    out = np.full((height, width, 3), 255, np.uint8)
    cov = np.zeros((height, width), bool)
    t = tile or max(height, width)
    for y0 in range(0, height, t):
        for x0 in range(0, width, t):
            h, w = min(t, height - y0), min(t, width - x0)
            mt = m @ translate_matrix(x0, y0)
            out[y0:y0 + h, x0:x0 + w], cov[y0:y0 + h, x0:x0 + w] = _read_tile(reader, mt, h, w, order)
    return out, cov


def _read_tile(reader, m: np.ndarray, h: int, w: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    scale = _local_scale(m, (w - 1) / 2, (h - 1) / 2)
    level = choose_level(reader.level_downsamples, scale)
    ds = float(reader.level_downsamples[level])
    lw, lh = reader.level_dimensions[level]
    # level-0 coordinate -> level pixel coordinate (centre rule)
    to_level = np.linalg.inv(scale_matrix(ds))
    a = to_level @ m
    corners = _apply(a, np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]], float))
    rel = scale / ds
    sigma = max(0.0, (rel - 1) / 2)
    pad = READ_PAD + int(math.ceil(3 * sigma))
    x0 = max(0, int(math.floor(corners[:, 0].min())) - pad)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - pad)
    x1 = min(lw, int(math.ceil(corners[:, 0].max())) + pad + 1)
    y1 = min(lh, int(math.ceil(corners[:, 1].max())) + pad + 1)
    out = np.full((h, w, 3), 255, np.uint8)
    cov = np.zeros((h, w), bool)
    if x1 <= x0 or y1 <= y0:
        return out, cov
    region = reader.read_region(int(round(x0 * ds)), int(round(y0 * ds)), level, x1 - x0, y1 - y0)
    a = translate_matrix(-x0, -y0) @ a  # output pixel -> region pixel
    # source coordinates of every output pixel, for the coverage mask (inside the slide level)
    yy, xx = np.mgrid[0:h, 0:w]
    den = a[2, 0] * xx + a[2, 1] * yy + a[2, 2]
    sx = (a[0, 0] * xx + a[0, 1] * yy + a[0, 2]) / den + x0
    sy = (a[1, 0] * xx + a[1, 1] * yy + a[1, 2]) / den + y0
    cov = (sx >= -0.5) & (sx <= lw - 0.5) & (sy >= -0.5) & (sy <= lh - 0.5)
    lin = a[:2, :2]
    if (np.allclose(a[2], [0, 0, 1]) and np.allclose(lin, np.eye(2)) and np.allclose(a[:2, 2], np.round(a[:2, 2]))):
        # pure integer shift: copy, no interpolation
        tx, ty = int(round(a[0, 2])), int(round(a[1, 2]))
        sub = region[max(ty, 0):ty + h, max(tx, 0):tx + w]
        out[max(-ty, 0):max(-ty, 0) + sub.shape[0], max(-tx, 0):max(-tx, 0) + sub.shape[1]] = sub
        out[~cov] = 255
        return out, cov
    src = region.astype(np.float32)
    if sigma > 0:
        src = ndimage.gaussian_filter(src, sigma=(sigma, sigma, 0), mode="nearest")
    warped = warp(src, ProjectiveTransform(a), output_shape=(h, w), order=order, mode="constant", cval=255.0,
                  preserve_range=True)
    out = np.clip(np.rint(warped), 0, 255).astype(np.uint8)
    out[~cov] = 255
    return out, cov
