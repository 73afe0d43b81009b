"""Known, smooth misalignment for paired datasets (issue 16, ``scripts/misalignment_benchmark.py``).

BCI's H&E and IHC images are consecutive sections: even registered, the pairs are off by cells to tens of pixels. To
measure how a method copes, the benchmark displaces each training target by a *known* random smooth field:

* :func:`random_smooth_field`: white Gaussian noise per component, smoothed with a Gaussian filter (``scipy.ndimage``,
  ``sigma = smoothness`` px, default ``max(H, W) / 8``, reflect border), then scaled so that the largest displacement
  length over the image equals ``max_px`` exactly (up to float rounding). Seeded by ``numpy.random.default_rng(seed)``
  (an int or a sequence of ints, e.g. ``(benchmark_seed, image_index)``); the shape of the field does not depend on
  ``max_px``, so the fields of one seed at 2, 4, 8 px are the same field scaled.
* :func:`displace_image`: ``out(q) = image(q + u(q))`` (the field convention of ``models/networks/registration.py``:
  channel 0 = x, channel 1 = y, pixels) by ``scipy.ndimage.map_coordinates`` (cubic spline, ``order=3``, reflect
  border), rounded and clipped to uint8. A zero field returns the image unchanged (no resampling).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

Seed = Union[int, Sequence[int]]


def random_smooth_field(height: int, width: int, max_px: float, seed: Seed,
                        smoothness: Optional[float] = None) -> np.ndarray:
    """A seeded random smooth displacement field whose maximum length is ``max_px``.

    Args:
        height, width: field size in pixels (the training size).
        max_px: the largest displacement length ``max_q ||u(q)||_2`` in pixels (>= 0; 0 gives a zero field).
        seed: ``numpy.random.default_rng`` seed.
        smoothness: Gaussian sigma in pixels (default ``max(height, width) / 8``).

    Returns:
        ``(2, H, W)`` float64, x then y displacement in pixels.

    Raises:
        ValueError: non-positive size, negative or non-finite ``max_px``, non-positive ``smoothness``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"field size must be positive, got {height}x{width}")
    if not (np.isfinite(max_px) and max_px >= 0):
        raise ValueError(f"max_px must be a finite number >= 0, got {max_px}")
    sigma = float(max(height, width)) / 8.0 if smoothness is None else float(smoothness)
    if not sigma > 0:
        raise ValueError(f"smoothness must be > 0, got {smoothness}")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((2, height, width))
    field = ndimage.gaussian_filter(noise, sigma=(0, sigma, sigma), mode="reflect")
    if max_px == 0:
        return np.zeros_like(field)
    length = np.sqrt(field[0] ** 2 + field[1] ** 2)
    return field * (max_px / length.max())


def displacement_length(field: np.ndarray) -> np.ndarray:
    """``(H, W)`` displacement length in pixels of a ``(2, H, W)`` field."""
    return np.sqrt(field[0] ** 2 + field[1] ** 2)


def displace_image(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Resample ``image`` so that ``out(q) = image(q + u(q))``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8.
        field: ``(2, H, W)`` x then y displacement in pixels.

    Returns:
        uint8 array of ``image``'s shape (a copy of ``image`` when the field is zero everywhere).

    Raises:
        ValueError: the field does not match the image.
    """
    if field.shape != (2,) + image.shape[:2]:
        raise ValueError(f"field of shape {field.shape} does not match image of shape {image.shape}")
    if not np.any(field):
        return image.copy()
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + field[1], xx + field[0]]
    chans = image[..., None] if image.ndim == 2 else image
    out = np.stack([ndimage.map_coordinates(chans[..., c].astype(np.float64), coords, order=3, mode="reflect")
                    for c in range(chans.shape[2])], -1)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out
