"""Synthetic H&E/IHC slide pairs with known geometry, for tests and benchmarks (not biology).

``ihc_like`` re-stains an H&E image by colour deconvolution (``skimage.color.rgb2hed``/``hed2rgb``): hematoxylin
kept, eosin removed, DAB drawn from the eosin density; the result has the IHC's colours and shares its hematoxylin
with the H&E, as a real restained section does (approximately). ``deform`` resamples it under a known homography and a
smooth sinusoidal displacement.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.color import hed2rgb, rgb2hed


def ihc_like(rgb: np.ndarray, dab_from_eosin: float = 0.6) -> np.ndarray:
    """``(H, W, 3)`` uint8 IHC-coloured version of an ``(H, W, 3)`` uint8 H&E image (module docstring)."""
    hed = rgb2hed(rgb)
    out = np.stack([hed[..., 0], np.zeros_like(hed[..., 0]), dab_from_eosin * np.maximum(hed[..., 1], 0)], -1)
    return np.clip(np.rint(hed2rgb(out) * 255), 0, 255).astype(np.uint8)


def sinusoidal_field(shape, amplitude: float, period: float, phase: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Smooth displacement ``(ux, uy)``, each ``(H, W)`` float64 in pixels with ``|u| <= amplitude``:
    ``ux = a sin(2 pi y / period + phase)``, ``uy = a cos(2 pi x / period - phase)`` (a = amplitude / sqrt 2)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = amplitude / np.sqrt(2)
    return a * np.sin(2 * np.pi * yy / period + phase), a * np.cos(2 * np.pi * xx / period - phase)


def deform(src: np.ndarray, out_shape, homography: np.ndarray | None = None, amplitude: float = 0.0,
           period: float = 256.0, cval: float = 255.0) -> np.ndarray:
    """Resample ``src`` so that output pixel ``q`` shows ``src`` at ``p = G(q) + u(G(q))``.

    Args:
        src: ``(H, W, 3)`` uint8 source (the H&E frame).
        out_shape: ``(h, w)`` of the output (the IHC frame).
        homography: ``(3, 3)`` H&E -> IHC matrix; ``G`` is its inverse (identity when ``None``).
        amplitude, period: of :func:`sinusoidal_field`, evaluated at ``G(q)`` in H&E pixels.
        cval: value outside ``src``.

    Returns:
        ``(h, w, 3)`` uint8, bicubic.
    """
    h, w = out_shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if homography is not None:
        g = np.linalg.inv(np.asarray(homography, float))
        den = g[2, 0] * xx + g[2, 1] * yy + g[2, 2]
        px = (g[0, 0] * xx + g[0, 1] * yy + g[0, 2]) / den
        py = (g[1, 0] * xx + g[1, 1] * yy + g[1, 2]) / den
    else:
        px, py = xx, yy
    if amplitude:
        a = amplitude / np.sqrt(2)
        px, py = px + a * np.sin(2 * np.pi * py / period + 0.3), py + a * np.cos(2 * np.pi * px / period - 0.3)
    out = np.stack([ndimage.map_coordinates(src[..., c].astype(np.float32), [py, px], order=3, mode="constant",
                                            cval=cval) for c in range(src.shape[2])], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
