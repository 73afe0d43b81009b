"""Tissue detection on a low-resolution thumbnail.

Method: HSV saturation (``skimage.color.rgb2hsv``) of the thumbnail; glass and empty background are unsaturated
(grey/white), stained tissue is saturated. The threshold is Otsu's (``skimage.filters.threshold_otsu``) clipped to
[:data:`MIN_SATURATION`, :data:`MAX_SATURATION`]: the clip keeps an all-tissue crop from being split in half and
an all-glass one from being called tissue. Pixels that are nearly black (value < 0.1, scanner borders, pen marks in
black) are excluded. The mask is then cleaned with ``skimage.morphology`` (small holes filled, specks removed) and
dilated by one thumbnail pixel so that tissue borders are never cut.
"""
from __future__ import annotations

import logging
import math
from typing import Tuple

import numpy as np
import torch
from skimage import color, filters, morphology

log = logging.getLogger(__name__)

MIN_SATURATION = 0.05
MAX_SATURATION = 0.15


def tissue_mask(rgb: np.ndarray, min_object_px: int = 16) -> np.ndarray:
    """Boolean tissue mask of a thumbnail.

    Args:
        rgb: ``(h, w, 3)`` uint8 RGB thumbnail.
        min_object_px: connected tissue components smaller than this (thumbnail pixels) are dropped.

    Returns:
        ``(h, w)`` bool, True on tissue.

    Raises:
        ValueError: ``rgb`` is not ``(h, w, 3)`` uint8.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"tissue_mask expects (h, w, 3) uint8, got {rgb.shape} {rgb.dtype}")
    hsv = color.rgb2hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    if float(sat.max() - sat.min()) < 1e-6:
        thr = MIN_SATURATION
    else:
        thr = float(filters.threshold_otsu(sat))
    thr = min(max(thr, MIN_SATURATION), MAX_SATURATION)
    mask = (sat > thr) & (val > 0.1)
    mask = morphology.remove_small_holes(mask, max_size=min_object_px)
    mask = morphology.remove_small_objects(mask, max_size=min_object_px)
    mask = morphology.dilation(mask, morphology.footprint_rectangle((3, 3)))
    log.debug("tissue threshold %.3f, tissue fraction %.3f", thr, float(mask.mean()))
    return mask


def tiles_with_tissue(mask: np.ndarray, mask_scale: Tuple[float, float], grid) -> np.ndarray:
    """Which tiles of ``grid`` (a :class:`wsi.tiling.TileGrid`) touch tissue.

    Args:
        mask: ``(h, w)`` bool tissue mask.
        mask_scale: ``(sx, sy)`` processing pixels per mask pixel along x and y.
        grid: the tile grid, in processing pixels.

    Returns:
        ``(n_rows, n_cols)`` bool.
    """
    h, w = mask.shape
    sx, sy = mask_scale
    out = np.zeros((grid.n_rows, grid.n_cols), bool)
    for c, r in grid:
        x, y = grid.origin(c, r)
        x0, y0 = int(math.floor(x / sx)), int(math.floor(y / sy))
        x1, y1 = int(math.ceil((x + grid.tile) / sx)), int(math.ceil((y + grid.tile) / sy))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        out[r, c] = x1 > x0 and y1 > y0 and bool(mask[y0:y1, x0:x1].any())
    return out


#: Per-pixel glass (slide background) ramp: weight 1 at saturation <= GLASS_SAT[0] and value >= GLASS_VAL[1],
#: 0 at saturation >= GLASS_SAT[1] or value <= GLASS_VAL[0], linear in between (project convention, below the
#: tissue detector's saturation threshold range [MIN_SATURATION, MAX_SATURATION]).
GLASS_SAT = (0.05, 0.10)
GLASS_VAL = (0.75, 0.85)


def glass_weight(x: torch.Tensor) -> torch.Tensor:
    """How much each input pixel is bare glass.

    Args:
        x: ``(N, 3, H, W)`` RGB, uint8 in [0, 255] or float in [0, 255].

    Returns:
        ``(N, 1, H, W)`` float32 in [0, 1]: 1 on unsaturated bright pixels (glass), 0 on tissue (HSV saturation
        ``(max - min) / max`` and value ``max / 255``, as :func:`tissue_mask` reads them).
    """
    x = x.float()
    mx = x.amax(dim=1, keepdim=True)
    mn = x.amin(dim=1, keepdim=True)
    sat = torch.where(mx > 0, (mx - mn) / mx.clamp_min(1e-6), torch.zeros_like(mx))
    val = mx / 255.0
    w_sat = ((GLASS_SAT[1] - sat) / (GLASS_SAT[1] - GLASS_SAT[0])).clamp(0, 1)
    w_val = ((val - GLASS_VAL[0]) / (GLASS_VAL[1] - GLASS_VAL[0])).clamp(0, 1)
    return w_sat * w_val
