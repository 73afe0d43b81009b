"""Cutting the registered pair into patches, filtering them, and writing the BCI layout.

Patches of ``size`` pixels are laid on a grid with ``stride`` (default: ``size``) from the top-left of the working
frame; only whole patches are cut (a right/bottom remainder narrower than a patch is not a patch). Each patch gets:

* ``coverage``: fraction of its pixels for which the IHC slide had data (see :mod:`registration.blocks`);
* ``tissue``: tissue fraction of the H&E patch (:func:`registration.stains.tissue_mask`);
* ``score``: alignment of H&E and IHC, computed on one channel (hematoxylin by default: both stains carry it)
  after block-averaging by ``score_downsample`` (robust to nucleus-level differences between restained sections):
  ``ncc`` = zero-mean normalised cross-correlation in [-1, 1], or ``nmi`` = normalised mutual information
  (``skimage.metrics.normalized_mutual_information``, Studholme et al. 1999, 32 bins) minus 1, in [0, 1].

Reasons, checked in this order: ``outside_ihc`` (coverage < ``min_coverage``), ``background`` (tissue <
``min_tissue``), ``misaligned`` (score < ``min_score`` or undefined), else ``kept``.

Layout (BCI): ``<out>/HE/<phase>/NNNNN_<phase>_<level>.png`` and ``<out>/IHC/<phase>/<same name>``, NNNNN counting
the kept patches from ``start_index``.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from skimage.metrics import normalized_mutual_information
from skimage.transform import downscale_local_mean

from data.her2 import HER2_LEVELS
from registration.stains import grey_channel, normalised_cross_correlation, tissue_mask
from util.errors import OptionError
from util.fileio import atomic_write_text

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

SCORE_METRICS = ("ncc", "nmi")
PHASES = ("train", "test")
REASONS = ("kept", "outside_ihc", "background", "misaligned")
_NAME_RE = re.compile(r"^(\d+)_")


@dataclass
class PatchCriteria:
    """Filtering thresholds (see module docstring). Fractions in [0, 1]; ``min_score`` in the metric's range."""

    min_tissue: float = 0.5
    min_score: float = 0.2
    min_coverage: float = 0.99
    metric: str = "ncc"
    channel: str = "hematoxylin"
    score_downsample: int = 4


@dataclass
class PatchRecord:
    """One row of the patch table. Positions: ``x, y`` working pixels; ``x0, y0`` H&E level-0 pixels (top-left)."""

    x: int
    y: int
    x0: int
    y0: int
    size: int
    tissue: float
    coverage: float
    score: float
    status: str
    reason: str
    name: str = ""


def bci_name(index: int, phase: str, level: str) -> str:
    """BCI file name ``NNNNN_<phase>_<level>.png`` (e.g. ``00012_test_2+.png``).

    Raises:
        OptionError: ``phase`` not in train/test or ``level`` not a HER2 level.
    """
    if phase not in PHASES:
        raise OptionError(f"--phase {phase!r}: expected one of {', '.join(PHASES)}")
    if level not in HER2_LEVELS:
        raise OptionError(f"HER2 level {level!r}: expected one of {' '.join(HER2_LEVELS)}")
    return f"{int(index):05d}_{phase}_{level}.png"


def next_free_index(out_dir: PathLike, phase: str) -> int:
    """1 + the largest NNNNN among ``HE/<phase>/`` and ``IHC/<phase>/`` file names, or 0 when there are none."""
    best = -1
    for sub in ("HE", "IHC"):
        d = Path(out_dir) / sub / phase
        if d.is_dir():
            for p in d.iterdir():
                m = _NAME_RE.match(p.name)
                if m and p.suffix.lower() == ".png":
                    best = max(best, int(m.group(1)))
    return best + 1


def patch_grid(height: int, width: int, size: int, stride: Optional[int] = None) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of every whole ``size x size`` patch on a grid with ``stride``, raster order."""
    stride = stride or size
    if size <= 0 or stride <= 0:
        raise OptionError(f"--patch_size {size} / --stride {stride}: must be positive")
    return [(y, x) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]


def alignment_score(he: np.ndarray, ihc: np.ndarray, metric: str = "ncc", channel: str = "hematoxylin",
                    downsample: int = 4) -> float:
    """Alignment score of an H&E and an IHC patch (module docstring); ``nan`` when a channel is constant.

    Args:
        he, ihc: ``(H, W, 3)`` uint8 RGB of equal shape.
        metric: ``'ncc'`` ([-1, 1]) or ``'nmi'`` ([0, 1]).
        channel: ``'hematoxylin'`` or ``'grey'``.
        downsample: block-average factor (>= 1) applied to the channel before scoring.

    Raises:
        ValueError: unknown metric/channel or shape mismatch.
    """
    if he.shape != ihc.shape:
        raise ValueError(f"patch shapes differ: {he.shape} vs {ihc.shape}")
    a, b = grey_channel(he, channel), grey_channel(ihc, channel)
    if downsample > 1:
        a = downscale_local_mean(a, (downsample, downsample))
        b = downscale_local_mean(b, (downsample, downsample))
    if metric == "ncc":
        return normalised_cross_correlation(a, b)
    if metric == "nmi":
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return float("nan")
        return float(normalized_mutual_information(a, b, bins=32) - 1.0)
    raise ValueError(f"unknown score metric {metric!r}; expected one of {SCORE_METRICS}")


def assess_patch(he: np.ndarray, ihc: np.ndarray, covered: np.ndarray, crit: PatchCriteria
                 ) -> tuple[float, float, float, str]:
    """``(tissue, coverage, score, reason)`` of one patch pair.

    Args:
        he, ihc: ``(S, S, 3)`` uint8 RGB.
        covered: ``(S, S)`` coverage (bool, or uint8 0..255 as stored by the mosaic).
        crit: :class:`PatchCriteria`.
    """
    cov = np.asarray(covered, np.float64)
    coverage = float(cov.mean() / (255.0 if covered.dtype == np.uint8 else 1.0))
    tissue = float(tissue_mask(he).mean())
    score = alignment_score(he, ihc, crit.metric, crit.channel, crit.score_downsample)
    if coverage < crit.min_coverage:
        reason = "outside_ihc"
    elif tissue < crit.min_tissue:
        reason = "background"
    elif not np.isfinite(score) or score < crit.min_score:
        reason = "misaligned"
    else:
        reason = "kept"
    return tissue, coverage, score, reason


CSV_COLUMNS = ("name", "status", "reason", "x", "y", "x0", "y0", "size", "tissue", "coverage", "score")


def write_patch_csv(path: PathLike, records: Iterable[PatchRecord]) -> Path:
    """Write the patch table (every patch, kept or dropped) atomically; columns :data:`CSV_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in records:
        d = asdict(r)
        for k in ("tissue", "coverage", "score"):
            d[k] = "" if not np.isfinite(d[k]) else f"{d[k]:.4f}"
        w.writerow({k: d[k] for k in CSV_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def read_patch_csv(path: PathLike) -> list[dict]:
    """Rows of a patch table written by :func:`write_patch_csv`, as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
