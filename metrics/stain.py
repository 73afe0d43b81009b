"""Stain-aware metrics: DAB optical density by colour deconvolution, integrated optical density (IOD), positive area.

HER2 IHC shows the antibody as brown DAB over a blue hematoxylin counterstain. PSNR/SSIM score every pixel alike; these
metrics ask whether the generated image carries the right *amount* of DAB, which is what a pathologist scores.

Colour deconvolution (Ruifrok & Johnston, Anal. Quant. Cytol. Histol. 23(4), 2001) with scikit-image
``skimage.color.rgb2hed`` (its fixed H, E, DAB stain vectors). scikit-image returns stain amounts scaled by
``1 / -log10(1e-6) = 1/6`` of a decimal optical density (``separate_stains`` divides ``ln(I)`` by ``ln(1e-6)``), so

    OD_DAB(p) = 6 * rgb2hed(rgb)[p, 2]          (decimal optical density along the unit DAB vector, >= 0)

For an image of N pixels:

    IOD            = sum_p OD_DAB(p)                              (OD * px; integrated optical density)
    mean OD        = IOD / N                                      (OD)
    positive area  = #{p : OD_DAB(p) > t} / N                     (fraction in [0, 1]; t = DAB_THRESHOLD_OD)

The default threshold t = 0.15 OD is a project convention (weak DAB staining sits around 0.1-0.3 OD in the
literature; a hematoxylin-only rendering of ``samples/ihc.png`` gives OD_DAB < 0.01), configurable with
``--dab_threshold``.
IOD is reported in OD * px of the image as saved; compare IOD only between images of the same size and magnification.

Across images (overall and per HER2 level): Pearson r between real and generated IOD, and the mean absolute IOD error
``mean_i |IOD_fake_i - IOD_real_i|``. The overall r pools all levels, so the large IOD differences *between* HER2
levels dominate it: it is usually higher than every per-level r (e.g. 0.9995 overall with 0.997 and 0.920 within
levels) and says little about ranking images within a level; read the per-level rows for that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats
from skimage.color import hed_from_rgb, rgb2hed

#: ``-log10(1e-6)``: converts scikit-image's stain amounts to decimal optical density.
SKIMAGE_TO_OD = 6.0
#: The stain matrix ``rgb2hed`` applies (scikit-image's ``hed_from_rgb``, read-only view): stain amounts are
#: ``(-log(max(rgb, 1e-6)) / -log(1e-6)) @ HED_FROM_RGB``; column 2 is DAB. Differentiable re-implementations of the
#: deconvolution (``models/dab_loss.py``) use this matrix so training and evaluation share one set of stain vectors.
HED_FROM_RGB = hed_from_rgb.view()
HED_FROM_RGB.flags.writeable = False
#: Smallest RGB value (in [0, 1]) before the logarithm, as in scikit-image's ``separate_stains``.
RGB_FLOOR = 1e-6
#: Default DAB-positive threshold in decimal optical density (project convention, see module docstring).
DAB_THRESHOLD_OD = 0.15


def dab_od(rgb: np.ndarray) -> np.ndarray:
    """DAB optical density per pixel.

    Args:
        rgb: ``(H, W, 3)`` RGB, uint8 in [0, 255] or float in [0, 1] (scikit-image's conventions).

    Returns:
        ``(H, W)`` float64, decimal optical density >= 0 (``6 * rgb2hed(rgb)[..., 2]``).

    Raises:
        ValueError: not an ``(H, W, 3)`` array.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got {getattr(rgb, 'shape', type(rgb).__name__)}")
    return rgb2hed(rgb)[..., 2] * SKIMAGE_TO_OD


@dataclass(frozen=True)
class DabStats:
    """DAB measurements of one image: ``iod`` (OD * px), ``mean_od`` (OD), ``positive_fraction`` (in [0, 1])."""

    iod: float
    mean_od: float
    positive_fraction: float


def dab_stats(rgb: np.ndarray, threshold_od: float = DAB_THRESHOLD_OD) -> DabStats:
    """IOD, mean OD and DAB-positive area fraction of one RGB image (formulas in the module docstring).

    Raises:
        ValueError: bad array, or a negative/non-finite threshold.
    """
    if not (math.isfinite(threshold_od) and threshold_od >= 0):
        raise ValueError(f"DAB threshold must be a finite OD >= 0, got {threshold_od}")
    od = dab_od(rgb)
    iod = float(od.sum())
    return DabStats(iod=iod, mean_od=iod / od.size, positive_fraction=float(np.count_nonzero(od > threshold_od)) / od.size)


def pearson_r(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Pearson correlation coefficient of two equal-length samples (``scipy.stats.pearsonr``).

    Returns:
        r in [-1, 1], or ``None`` when it is undefined (fewer than 2 values, or either sample constant, where scipy
        would return NaN with a warning).

    Raises:
        ValueError: lengths differ.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"pearson_r needs equal lengths, got {x.shape} and {y.shape}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(stats.pearsonr(x, y).statistic)


R_MIN_IMAGES = 3
R_MIN_RELATIVE_SPREAD = 0.01  # coefficient of variation below which an IOD series counts as near-constant


def correlation_note(x: Sequence[float], y: Sequence[float], what: str = "IOD") -> Optional[str]:
    """Why a Pearson r of ``x`` (real) and ``y`` (virtual) would not be meaningful, or None when it is.

    Not meaningful: fewer than :data:`R_MIN_IMAGES` values, or a series that is (nearly) constant — its coefficient
    of variation ``std / |mean|`` below :data:`R_MIN_RELATIVE_SPREAD` (1 %), e.g. the identical flat outputs of a
    collapsed generator, where r only measures rounding noise.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.size < R_MIN_IMAGES:
        return f"fewer than {R_MIN_IMAGES} images ({x.size})"
    for name, v in (("real", x), ("virtual", y)):
        mean = abs(float(np.mean(v)))
        cv = float(np.std(v)) / mean if mean > 0 else (0.0 if float(np.ptp(v)) == 0 else math.inf)
        if cv < R_MIN_RELATIVE_SPREAD:
            return (f"near-constant {name} {what} (relative spread {cv:.2g} < {R_MIN_RELATIVE_SPREAD:g}): "
                    "a correlation would only measure noise")
    return None


def iod_agreement(iod_real: Sequence[float], iod_fake: Sequence[float]) -> dict:
    """Agreement of generated with real IOD over a set of images.

    Returns:
        ``{"iod_pearson_r": r or None, "iod_pearson_r_note": None or why r is left blank (see
        :func:`correlation_note`), "iod_mae": mean |fake - real| (OD * px) or None when empty}``.
    """
    real = np.asarray(iod_real, dtype=np.float64)
    fake = np.asarray(iod_fake, dtype=np.float64)
    if real.shape != fake.shape:
        raise ValueError(f"iod_agreement needs equal lengths, got {real.shape} and {fake.shape}")
    note = correlation_note(real, fake)
    return {
        "iod_pearson_r": None if note else pearson_r(real, fake),
        "iod_pearson_r_note": note,
        "iod_mae": float(np.mean(np.abs(fake - real))) if real.size else None,
    }