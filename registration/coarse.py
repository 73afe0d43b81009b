"""Coarse alignment: the projective transform (homography) from manually chosen point pairs (BCI paper, section 3).

The transform maps **H&E level-0 pixel coordinates to IHC level-0 pixel coordinates** ((x, y), pixel centres at
integers), so warping the IHC slide onto the H&E frame samples the IHC at ``H(x_he)`` (scikit-image ``warp``
inverse-map convention). Estimation is scikit-image's total-least-squares DLT
(:meth:`skimage.transform.ProjectiveTransform.from_estimate`, Hartley & Zisserman, *Multiple View Geometry*, 2nd ed.,
algorithm 4.1); this module adds the checks that make a bad point set a clear error:

* fewer than 4 pairs;
* duplicated points (two H&E points, or two IHC points, closer than :data:`DUPLICATE_TOLERANCE_PX`);
* a degenerate configuration: the homography is not unique, which happens exactly when all points but at most one lie
  on a line (collinear sets). Detected from the singular values of the Hartley-normalised DLT matrix
  (null space of dimension >= 2: ``s[7] / s[0] < DEGENERATE_RATIO``);
* a transform whose line at infinity crosses the H&E slide (it would fold the image).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from skimage.transform import ProjectiveTransform

from registration.points import MIN_POINTS, PointsError

log = logging.getLogger(__name__)

#: Two points closer than this (level-0 px) count as duplicates.
DUPLICATE_TOLERANCE_PX = 0.5
#: Relative singular value below which the DLT system is treated as rank deficient (no unique homography).
DEGENERATE_RATIO = 1e-7
#: Relative singular value below which a warning about a poorly conditioned (nearly collinear) set is logged.
POOR_CONDITION_RATIO = 1e-3


@dataclass
class CoarseResult:
    """A fitted homography and its quality.

    Attributes:
        transform: ``ProjectiveTransform`` mapping H&E level-0 (x, y) -> IHC level-0 (x, y).
        residuals: ``(N,)`` float64, ``|H(he_i) - ihc_i|`` in IHC level-0 pixels, per point (0 for exactly 4 points).
        condition: ``s[7] / s[0]`` of the normalised DLT matrix (0 = degenerate, ~1e-2..1 = well spread points).
    """

    transform: ProjectiveTransform
    residuals: np.ndarray
    condition: float

    @property
    def matrix(self) -> np.ndarray:
        """``(3, 3)`` float64 homography, normalised so that ``matrix[2, 2] == 1``."""
        return self.transform.params / self.transform.params[2, 2]

    @property
    def rms(self) -> float:
        """Root-mean-square residual in IHC level-0 pixels."""
        return float(np.sqrt(np.mean(self.residuals ** 2)))

    @property
    def max_residual(self) -> float:
        return float(self.residuals.max())


def _hartley_normalise(p: np.ndarray) -> np.ndarray:
    """Translate to the centroid and scale so that the mean distance from it is sqrt(2) (Hartley & Zisserman 4.4.4)."""
    c = p.mean(axis=0)
    d = np.sqrt(((p - c) ** 2).sum(axis=1)).mean()
    s = np.sqrt(2) / d if d > 0 else 1.0
    return (p - c) * s


def dlt_condition(src: np.ndarray, dst: np.ndarray) -> float:
    """``s[7] / s[0]`` of the Hartley-normalised DLT matrix of the point pairs (0 when the homography is not unique).

    Args:
        src, dst: ``(N, 2)`` float arrays of (x, y).
    """
    a, b = _hartley_normalise(np.asarray(src, float)), _hartley_normalise(np.asarray(dst, float))
    rows = []
    for (x, y), (u, v) in zip(a, b):
        rows.append([x, y, 1, 0, 0, 0, -x * u, -y * u, -u])
        rows.append([0, 0, 0, x, y, 1, -x * v, -y * v, -v])
    s = np.linalg.svd(np.asarray(rows), compute_uv=False)
    s = np.concatenate([s, np.zeros(max(0, 9 - s.size))])
    return float(s[7] / s[0]) if s[0] > 0 else 0.0


def _duplicates(p: np.ndarray) -> Optional[tuple[int, int]]:
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    d[np.tril_indices(len(p))] = np.inf
    i, j = np.unravel_index(np.argmin(d), d.shape)
    return (int(i), int(j)) if d[i, j] < DUPLICATE_TOLERANCE_PX else None


def estimate_homography(he: np.ndarray, ihc: np.ndarray, source: str = "points",
                        he_size: Optional[Sequence[int]] = None) -> CoarseResult:
    """Fit the H&E -> IHC homography to point pairs and report the residual of each point.

    Args:
        he: ``(N, 2)`` H&E level-0 (x, y) pixel coordinates.
        ihc: ``(N, 2)`` IHC level-0 (x, y) pixel coordinates; row i corresponds to ``he`` row i.
        source: name of the CSV (or other origin) used in error messages.
        he_size: optional ``(width, height)`` of the H&E slide at level 0; when given, the transform must keep the
            whole slide on one side of its line at infinity.

    Returns:
        :class:`CoarseResult`.

    Raises:
        PointsError: fewer than 4 pairs, mismatched lengths, duplicated points, a degenerate (collinear) set, or a
            transform that folds the slide. The message names ``source`` and the rows (1-based data rows).
    """
    he = np.asarray(he, np.float64)
    ihc = np.asarray(ihc, np.float64)
    if he.ndim != 2 or he.shape[1] != 2 or he.shape != ihc.shape:
        raise PointsError(f"{source}: expected two (N, 2) point arrays of equal length, got {he.shape} and {ihc.shape}")
    n = len(he)
    if n < MIN_POINTS:
        raise PointsError(f"{source}: {n} point pair(s); a projective transform needs at least {MIN_POINTS}")
    for name, p in (("H&E", he), ("IHC", ihc)):
        dup = _duplicates(p)
        if dup is not None:
            i, j = dup
            raise PointsError(f"{source}: {name} points of rows {i + 1} and {j + 1} coincide ({p[i, 0]:g}, {p[i, 1]:g});"
                              " every point pair must be distinct")
    cond = min(dlt_condition(he, ihc), dlt_condition(ihc, he))
    if cond < DEGENERATE_RATIO:
        raise PointsError(f"{source}: the {n} point pairs are degenerate (collinear: all but at most one point lie on "
                          "one line), so no unique projective transform exists; choose at least 4 points spread over "
                          "the tissue with no 3 on a line")
    if cond < POOR_CONDITION_RATIO:
        log.warning("%s: the point pairs are poorly conditioned (nearly collinear, condition %.2e); spread the points "
                    "over the tissue", source, cond)
    tform = ProjectiveTransform.from_estimate(he, ihc)
    if not tform or not np.all(np.isfinite(tform.params)):
        raise PointsError(f"{source}: scikit-image could not estimate a projective transform from the {n} point pairs "
                          f"({getattr(tform, 'message', 'estimation failed')})")
    if not isinstance(tform, ProjectiveTransform):  # pragma: no cover - defensive, skimage returns the class itself
        tform = ProjectiveTransform(np.asarray(tform.params))
    if he_size is not None:
        w, h = he_size
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float)
        m = tform.params
        den = corners @ m[2, :2] + m[2, 2]
        if not (np.all(den > 0) or np.all(den < 0)):
            raise PointsError(f"{source}: the projective transform from these points folds the H&E slide (its line at "
                              "infinity crosses the slide); check that the point pairs correspond")
    residuals = np.sqrt(((tform(he) - ihc) ** 2).sum(axis=1))
    res = CoarseResult(transform=tform, residuals=residuals, condition=cond)
    log.info("homography from %d point pairs (%s): RMS residual %.3f px, max %.3f px (IHC level-0)", n, source,
             res.rms, res.max_residual)
    return res
