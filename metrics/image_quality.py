"""PSNR and SSIM exactly as the BCI paper's protocol computes them, on saved uint8 RGB images.

Protocol (BCI, Liu et al., CVPR Workshops 2022, Table 2: 21.16 dB PSNR / 0.477 SSIM for pyramid pix2pix): each metric is
computed per image pair on the 8-bit RGB PNGs and averaged over the test set. We call scikit-image directly, so the
numbers equal ``skimage.metrics.peak_signal_noise_ratio(real, fake, data_range=255)`` and
``skimage.metrics.structural_similarity(real, fake, channel_axis=-1, data_range=255)`` (default 7x7 uniform window,
K1 = 0.01, K2 = 0.03, per-channel SSIM averaged over R, G, B, no Gaussian weighting) bit for bit.

The authors' released script passed ``multichannel=True`` (removed in scikit-image 0.21) and swallowed the resulting
error in a bare ``except``; these wrappers validate their input instead and never hide an error.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA_RANGE = 255


def _check_pair(real: np.ndarray, fake: np.ndarray) -> None:
    for name, a in (("real", real), ("fake", fake)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(
                f"{name} image must be a uint8 (H, W, 3) RGB array, got "
                f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}"
            )
    if real.shape != fake.shape:
        raise ValueError(f"real and fake images differ in shape: {real.shape} vs {fake.shape}")
    if min(real.shape[:2]) < 7:
        raise ValueError(f"SSIM's 7x7 window needs images of at least 7x7 px, got {real.shape[:2]}")


def psnr(real: np.ndarray, fake: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 RGB images.

    ``10 * log10(255**2 / MSE)`` with the MSE over all pixels and channels (scikit-image
    ``peak_signal_noise_ratio(real, fake, data_range=255)``).

    Args:
        real, fake: ``(H, W, 3)`` uint8 arrays in [0, 255], same shape (H, W >= 7).

    Returns:
        PSNR in dB; ``math.inf`` for identical images (MSE = 0). No warning is emitted for that case.

    Raises:
        ValueError: wrong dtype, layout or mismatched shapes.
    """
    _check_pair(real, fake)
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(real, fake, data_range=DATA_RANGE))


def ssim(real: np.ndarray, fake: np.ndarray) -> float:
    """Mean structural similarity (Wang et al. 2004) between two uint8 RGB images, in [-1, 1] (1 = identical).

    scikit-image ``structural_similarity(real, fake, channel_axis=-1, data_range=255)``: 7x7 uniform window,
    sample covariance, K1 = 0.01, K2 = 0.03, mean over the valid image area and over the three channels.

    Raises:
        ValueError: wrong dtype, layout or mismatched shapes.
    """
    _check_pair(real, fake)
    return float(structural_similarity(real, fake, channel_axis=-1, data_range=DATA_RANGE))


def mean_psnr(values: Iterable[float]) -> Tuple[Optional[float], int, int]:
    """Mean PSNR over the finite values.

    Identical pairs have infinite PSNR and would make a plain mean infinite; the documented mean excludes them and
    reports how many there were.

    Returns:
        ``(mean_db or None when no finite value, n_finite, n_infinite)``.

    Raises:
        ValueError: a value is NaN or -inf (cannot come from a valid PSNR).
    """
    vals = [float(v) for v in values]
    bad = [v for v in vals if math.isnan(v) or v == -math.inf]
    if bad:
        raise ValueError(f"invalid PSNR values {bad[:5]}")
    finite = [v for v in vals if math.isfinite(v)]
    n_inf = len(vals) - len(finite)
    return (float(np.mean(finite)) if finite else None), len(finite), n_inf
