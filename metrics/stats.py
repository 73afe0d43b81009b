"""Small-sample statistics for the evaluation: bootstrap confidence intervals and Fisher-z intervals for Pearson r.

- Bootstrap over images (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13, percentile interval):
  draw ``n_boot`` resamples of the n images with replacement, compute the statistic on each, and take the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles (``numpy.percentile``, linear interpolation). The resample
  indices are ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))`` — the draws ``scipy.stats.bootstrap``
  makes for one sample with ``method='percentile'`` and the same seed, so the mean's interval equals scipy's.
- Pearson r, resampling (x, y) pairs together; a resample where either side is constant has no r and is dropped (the
  count is returned).
- Fisher z interval for r (Fisher 1921): ``tanh(atanh(r) +- z_{(1+level)/2} / sqrt(n - 3))``, needs n >= 4.

All functions are seeded and pure (same inputs and seed -> same interval). Defaults: 2000 resamples, seed 0, 95 %.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
from scipy import stats

N_BOOT = 2000
BOOT_SEED = 0
LEVEL = 0.95


def _percentile_interval(values: np.ndarray, level: float) -> list:
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def _check(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                      level: float = LEVEL) -> Optional[list]:
    """Percentile bootstrap interval ``[lo, hi]`` of the mean of ``values`` (1-D, finite).

    Returns None for fewer than 2 values (no spread to resample). Raises ValueError: non-finite values, bad level.
    """
    _check(level, n_boot)
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        return None
    if not np.isfinite(x).all():
        raise ValueError("bootstrap_mean_ci needs finite values")
    idx = np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))
    return _percentile_interval(x[idx].mean(axis=1), level)


def _rows_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``(B, n)`` arrays; NaN where a row is constant."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    sxx = np.einsum("ij,ij->i", xc, xc)
    syy = np.einsum("ij,ij->i", yc, yc)
    sxy = np.einsum("ij,ij->i", xc, yc)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    r[(np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def bootstrap_pearson_ci(x: Sequence[float], y: Sequence[float], n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                         level: float = LEVEL) -> Dict[str, object]:
    """Percentile bootstrap interval of Pearson r between paired samples, resampling pairs.

    Returns:
        ``{"ci": [lo, hi] or None, "n_boot": n_boot, "n_degenerate": resamples without an r, "seed": seed}``;
        ``ci`` is None for fewer than 3 pairs or when more than half of the resamples are degenerate.

    Raises:
        ValueError: lengths differ, bad level or n_boot.
    """
    _check(level, n_boot)
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"bootstrap_pearson_ci needs equal lengths, got {x.size} and {y.size}")
    out: Dict[str, object] = {"ci": None, "n_boot": n_boot, "n_degenerate": None, "seed": seed, "level": level}
    if x.size < 3:
        return out
    idx = np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))
    r = _rows_pearson(x[idx], y[idx])
    ok = np.isfinite(r)
    out["n_degenerate"] = int((~ok).sum())
    if ok.sum() * 2 >= n_boot:
        out["ci"] = _percentile_interval(r[ok], level)
    return out


def fisher_z_ci(r: Optional[float], n: int, level: float = LEVEL) -> Optional[list]:
    """Fisher z interval ``[lo, hi]`` for a Pearson r from ``n`` pairs (formula in the module doc).

    Returns None when r is None or n < 4 (the standard error 1/sqrt(n-3) needs n > 3); r = +-1 gives ``[r, r]``.
    """
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    if r is None or n < 4 or not math.isfinite(r):
        return None
    if abs(r) >= 1.0:
        return [float(r), float(r)]
    z = math.atanh(r)
    half = stats.norm.ppf((1 + level) / 2) / math.sqrt(n - 3)
    return [math.tanh(z - half), math.tanh(z + half)]


def bootstrap_protocol(n_boot: int = N_BOOT, seed: int = BOOT_SEED, level: float = LEVEL) -> str:
    """One line describing the interval method (stored in metrics.json's ``protocol``)."""
    return (f"{int(level * 100)} % percentile bootstrap over images ({n_boot} resamples, numpy default_rng seed "
            f"{seed}); Pearson r also with the Fisher z interval (n >= 4)")
