"""The CSV of corresponding points between an H&E slide and its restained IHC neighbour.

Format: a header with (at least) the columns ``he_x,he_y,ihc_x,ihc_y`` (case-insensitive, any order, extra columns
allowed), then one row per point pair, in **level-0 pixels** of each slide (x to the right, y down, the pixel centre
of the top-left pixel at (0, 0), as in OpenSlide / scikit-image). At least 4 pairs are needed for a homography
(BCI paper section 3: "at least four" manually chosen pairs).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Union

import numpy as np

from util.errors import UserError

PathLike = Union[str, os.PathLike]

POINT_COLUMNS = ("he_x", "he_y", "ihc_x", "ihc_y")
MIN_POINTS = 4


class PointsError(UserError, ValueError):
    """The points CSV is missing, malformed, has fewer than 4 pairs, or its pairs are degenerate (the message names
    the CSV and the offending rows)."""


def read_points_csv(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read the corresponding points.

    Args:
        path: CSV file with columns ``he_x, he_y, ihc_x, ihc_y`` (level-0 pixels).

    Returns:
        ``(he, ihc)``: two float64 arrays ``(N, 2)`` of (x, y) level-0 pixel coordinates, row i of one matching row i
        of the other.

    Raises:
        PointsError: missing/unreadable file, missing columns, non-numeric or non-finite values, fewer than 4 rows.
            Degeneracy (duplicates, collinearity) is checked by :func:`registration.coarse.estimate_homography`.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise PointsError(f"points CSV '{path}' is empty; expected a header {','.join(POINT_COLUMNS)}")
            names = {n.strip().lower(): n for n in reader.fieldnames if n is not None}
            missing = [c for c in POINT_COLUMNS if c not in names]
            if missing:
                raise PointsError(f"points CSV '{path}' lacks column(s) {', '.join(missing)}; expected a header with "
                                  f"{','.join(POINT_COLUMNS)} (got {','.join(reader.fieldnames)})")
            rows = []
            for lineno, row in enumerate(reader, start=2):
                vals = []
                for c in POINT_COLUMNS:
                    raw = row.get(names[c])
                    try:
                        v = float(raw)
                    except (TypeError, ValueError):
                        raise PointsError(f"points CSV '{path}' line {lineno}: column {c} is {raw!r}, expected a "
                                          "number of level-0 pixels") from None
                    if not math.isfinite(v):
                        raise PointsError(f"points CSV '{path}' line {lineno}: column {c} is {raw!r}, expected a "
                                          "finite number")
                    vals.append(v)
                rows.append(vals)
    except OSError as e:
        raise PointsError(f"cannot read points CSV '{path}': {e}") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise PointsError(f"points CSV '{path}' is not a readable CSV file: {e}") from e
    if len(rows) < MIN_POINTS:
        raise PointsError(f"points CSV '{path}' has {len(rows)} point pair(s); a projective transform needs at least "
                          f"{MIN_POINTS} (columns {','.join(POINT_COLUMNS)}, level-0 pixels)")
    a = np.asarray(rows, np.float64)
    return a[:, :2].copy(), a[:, 2:].copy()


def write_points_csv(path: PathLike, he: np.ndarray, ihc: np.ndarray) -> Path:
    """Write point pairs in the format :func:`read_points_csv` reads (atomically). ``he``/``ihc``: ``(N, 2)`` (x, y)."""
    from util.fileio import atomic_write_text

    he, ihc = np.asarray(he, float), np.asarray(ihc, float)
    lines = [",".join(POINT_COLUMNS)]
    lines += [f"{a[0]:.6f},{a[1]:.6f},{b[0]:.6f},{b[1]:.6f}" for a, b in zip(he, ihc)]
    return atomic_write_text(path, "\n".join(lines) + "\n")
