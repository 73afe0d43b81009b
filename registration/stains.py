"""The single channel that registration and alignment scoring use, and the tissue mask.

* ``hematoxylin``: the hematoxylin optical density from colour deconvolution,
  ``skimage.color.rgb2hed(rgb)[..., 0]`` (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 23, 2001). Both H&E and
  HER2 IHC carry hematoxylin (the IHC counterstain), so nuclei appear in both (BCI paper, section 3).
* ``grey``: ``1 - skimage.color.rgb2gray(rgb)`` (ITU-R BT.709 luma), dark tissue high, white background 0.

Tissue mask: a pixel is tissue when its HSV saturation (``skimage.color.rgb2hsv``) exceeds ``saturation`` and it is
not near-black (value > 0.1, excludes scanner borders/pen/debris); white glass background has low saturation.
"""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2gray, rgb2hed, rgb2hsv

CHANNELS = ("hematoxylin", "grey")
#: Default HSV saturation above which a pixel counts as tissue.
TISSUE_SATURATION = 0.07


def grey_channel(rgb: np.ndarray, channel: str = "hematoxylin") -> np.ndarray:
    """One float channel of an RGB image.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB.
        channel: ``'hematoxylin'`` (optical density, >= 0, about 0..0.3 for stained tissue) or ``'grey'``
            (``1 - luma`` in [0, 1]).

    Returns:
        ``(H, W)`` float32, higher = more stain.

    Raises:
        ValueError: unknown channel or not an ``(H, W, 3)`` array.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    if channel == "hematoxylin":
        return np.maximum(rgb2hed(rgb)[..., 0], 0).astype(np.float32)
    if channel == "grey":
        return (1.0 - rgb2gray(rgb)).astype(np.float32)
    raise ValueError(f"unknown registration channel {channel!r}; expected one of {CHANNELS}")


def tissue_mask(rgb: np.ndarray, saturation: float = TISSUE_SATURATION) -> np.ndarray:
    """``(H, W)`` bool tissue mask of an ``(H, W, 3)`` uint8 RGB image (see module docstring)."""
    hsv = rgb2hsv(rgb)
    return (hsv[..., 1] > saturation) & (hsv[..., 2] > 0.1)


def normalised_cross_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Zero-mean normalised cross-correlation (Pearson r) of two equally shaped arrays, in [-1, 1].

    Returns ``nan`` when either array is constant (no structure to compare).
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den <= 1e-12 * max(1, a.size):
        return float("nan")
    return float((a * b).sum() / den)
