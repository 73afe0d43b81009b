"""The HTML report of a build: overlays before/after each stage, point residuals, blocks, score histogram, patch map.

Overlays at thumbnail scale, per stage (``before``: IHC read at the same level-0 coordinates as the H&E, i.e. no
alignment; ``coarse``: after the homography; ``fine``: the registered mosaic):

* red/green: H&E registration channel in red, IHC channel in green, each scaled to its 99th percentile; aligned
  structures turn yellow, misaligned ones stay red or green;
* checkerboard: alternating squares of the H&E and the IHC thumbnail; edges continue across squares when aligned.

Images are rendered with numpy/Pillow (matplotlib is not a dependency); the page with dominate (text is escaped).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from registration.stains import grey_channel
from util.fileio import atomic_write_text
from util.image_io import save_png

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

REASON_COLOURS = {"kept": (0, 170, 0), "misaligned": (220, 0, 0), "background": (150, 150, 150),
                  "outside_ihc": (40, 40, 220)}
STAGES = ("before", "coarse", "fine")


def _scaled(ch: np.ndarray) -> np.ndarray:
    hi = float(np.percentile(ch, 99)) if ch.size else 0.0
    return np.clip(ch / hi, 0, 1) if hi > 0 else np.zeros_like(ch)


def red_green_overlay(he: np.ndarray, ihc: np.ndarray, channel: str = "hematoxylin") -> np.ndarray:
    """``(H, W, 3)`` uint8: H&E channel in red, IHC channel in green (module docstring). Inputs ``(H, W, 3)`` uint8."""
    r = _scaled(grey_channel(he, channel))
    g = _scaled(grey_channel(ihc, channel))
    return np.rint(np.stack([r, g, np.zeros_like(r)], axis=-1) * 255).astype(np.uint8)


def checkerboard(he: np.ndarray, ihc: np.ndarray, squares: int = 8) -> np.ndarray:
    """``(H, W, 3)`` uint8 checkerboard of two equally shaped images, ``squares`` squares along the longer side."""
    if he.shape != ihc.shape:
        raise ValueError(f"shapes differ: {he.shape} vs {ihc.shape}")
    h, w = he.shape[:2]
    side = max(1, int(np.ceil(max(h, w) / squares)))
    yy, xx = np.mgrid[0:h, 0:w]
    sel = ((yy // side + xx // side) % 2).astype(bool)
    out = he.copy()
    out[sel] = ihc[sel]
    return out


def score_histogram(scores: Sequence[float], reasons: Sequence[str], threshold: float, metric: str,
                    width: int = 640, height: int = 320, bins: int = 40) -> np.ndarray:
    """``(height, width, 3)`` uint8 stacked histogram of patch scores, coloured by reason, with the threshold line.

    Range: [-1, 1] for ``ncc``, [0, 1] otherwise. Undefined (nan) scores are counted in the title, not drawn.
    """
    lo, hi = (-1.0, 1.0) if metric == "ncc" else (0.0, 1.0)
    s = np.asarray(scores, float)
    r = np.asarray(reasons, object)
    ok = np.isfinite(s)
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(np.clip(s[ok & (r == k)], lo, hi), bins=edges)[0] for k in REASON_COLOURS}
    total = sum(counts.values())
    top = max(1, int(total.max()) if np.size(total) else 1)
    im = Image.new("RGB", (width, height), "white")
    dr = ImageDraw.Draw(im)
    l, rgt, t, b = 40, width - 10, 30, height - 30
    dr.rectangle([l, t, rgt, b], outline=(0, 0, 0))
    bw = (rgt - l) / bins
    for i in range(bins):
        y = b
        for k, col in REASON_COLOURS.items():
            c = int(counts[k][i])
            if c:
                hpx = (b - t) * c / top
                dr.rectangle([l + i * bw + 1, y - hpx, l + (i + 1) * bw - 1, y], fill=col)
                y -= hpx
    tx = l + (np.clip(threshold, lo, hi) - lo) / (hi - lo) * (rgt - l)
    dr.line([tx, t, tx, b], fill=(0, 0, 0), width=2)
    for v in np.linspace(lo, hi, 5):
        x = l + (v - lo) / (hi - lo) * (rgt - l)
        dr.line([x, b, x, b + 4], fill=(0, 0, 0))
        dr.text((x - 10, b + 6), f"{v:.1f}", fill=(0, 0, 0))
    dr.text((2, t - 4), str(top), fill=(0, 0, 0))
    dr.text((l, 8), f"{metric} score per patch (n={len(s)}, undefined={int((~ok).sum())}); line = --min_score "
                    f"{threshold:g}", fill=(0, 0, 0))
    x = rgt - 260
    for k, col in REASON_COLOURS.items():
        dr.rectangle([x, t + 6, x + 10, t + 16], fill=col)
        dr.text((x + 13, t + 5), k, fill=(0, 0, 0))
        x += 66
    return np.asarray(im)


def patch_map(he_thumb: np.ndarray, patches, f: int) -> np.ndarray:
    """H&E thumbnail with every patch outlined in its reason's colour (:data:`REASON_COLOURS`); ``f`` = working
    pixels per thumbnail pixel."""
    im = Image.fromarray(he_thumb.copy())
    dr = ImageDraw.Draw(im)
    for p in patches:
        x0, y0 = p.x / f, p.y / f
        dr.rectangle([x0, y0, x0 + p.size / f - 1, y0 + p.size / f - 1], outline=REASON_COLOURS.get(p.reason),
                     width=2 if p.reason == "kept" else 1)
    return np.asarray(im)


def points_map(he_thumb: np.ndarray, he_points: np.ndarray, d: float, f: int) -> np.ndarray:
    """H&E thumbnail with the point pairs' H&E ends marked and numbered (1-based CSV data rows)."""
    im = Image.fromarray(he_thumb.copy())
    dr = ImageDraw.Draw(im)
    for i, (x, y) in enumerate(np.asarray(he_points, float)):
        tx, ty = x / (d * f), y / (d * f)
        dr.line([tx - 6, ty, tx + 6, ty], fill=(255, 0, 255), width=2)
        dr.line([tx, ty - 6, tx, ty + 6], fill=(255, 0, 255), width=2)
        dr.text((tx + 5, ty + 3), str(i + 1), fill=(255, 0, 255))
    return np.asarray(im)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def write_report(result, cfg, thumbs: dict, f: int, points=None, he_path: Optional[PathLike] = None,
                 ihc_path: Optional[PathLike] = None) -> Path:
    """Write ``report.html`` and its PNGs into ``result.run_dir``; returns the HTML path.

    Args:
        result: :class:`registration.pipeline.BuildResult`.
        cfg: :class:`registration.pipeline.BuildConfig`.
        thumbs: ``{'he', 'before', 'coarse', 'fine'}`` -> ``(th, tw, 3)`` uint8 thumbnails of the working frame.
        f: working pixels per thumbnail pixel.
        points: ``(he_points, ihc_points)`` level-0 arrays, or ``None``.
    """
    import dominate
    from dominate import tags as T

    run = Path(result.run_dir)
    img = run / "report_images"
    files = {}

    def put(key, arr):
        save_png(arr, img / f"{key}.png")
        files[key] = f"report_images/{key}.png"

    put("he", thumbs["he"])
    for st in STAGES:
        put(f"{st}_redgreen", red_green_overlay(thumbs["he"], thumbs[st], cfg.channel))
        put(f"{st}_checker", checkerboard(thumbs["he"], thumbs[st]))
        put(f"{st}_ihc", thumbs[st])
    put("histogram", score_histogram([p.score for p in result.patches], [p.reason for p in result.patches],
                                     cfg.criteria.min_score, cfg.criteria.metric))
    put("patch_map", patch_map(thumbs["he"], result.patches, f))
    if points is not None:
        put("points", points_map(thumbs["he"], points[0], result.downsample, f))

    counts = {k: sum(p.reason == k for p in result.patches) for k in REASON_COLOURS}
    doc = dominate.document(title=f"Registration report: {run.name}")
    with doc.head:
        T.style("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} "
                "td,th{border:1px solid #bbb;padding:2px 6px;font-size:small} img{max-width:100%} "
                ".row{display:flex;gap:8px;flex-wrap:wrap} .row div{flex:1;min-width:280px}")
    with doc:
        T.h1(f"Registration report: {run.name}")
        with T.table():
            for k, v in (("H&E slide", he_path), ("IHC slide", ihc_path), ("HER2 level", cfg.her2),
                         ("phase", cfg.phase),
                         ("working frame", f"{result.frame[0]} x {result.frame[1]} px, downsample "
                                           f"{result.downsample:g} of H&E level 0"),
                         ("blocks", f"{len(result.blocks)} ({cfg.blocks[0]}x{cfg.blocks[1]} requested, max "
                                    f"{cfg.max_block} px), margin {cfg.margin} px, overlap {cfg.overlap} px"),
                         ("registration channel", cfg.channel),
                         ("patches", f"{len(result.patches)} cut at {cfg.patch_size} px: " +
                          ", ".join(f"{k} {v}" for k, v in counts.items())),
                         ("criteria", f"min_tissue {cfg.criteria.min_tissue}, min_score {cfg.criteria.min_score} "
                                      f"({cfg.criteria.metric}), min_coverage {cfg.criteria.min_coverage}"),
                         ("time", ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))):
                with T.tr():
                    T.th(k)
                    T.td(str(v))
        T.h2("Coarse alignment: homography from the point pairs")
        c = result.coarse
        T.p(f"RMS residual {c.rms:.3f} px, max {c.max_residual:.3f} px (IHC level 0); condition {c.condition:.2e}"
            " (near 0: points nearly collinear). With exactly 4 points the residuals are 0 by construction: "
            "check the overlays.")
        if points is not None:
            with T.table():
                with T.tr():
                    for h in ("#", "he_x", "he_y", "ihc_x", "ihc_y", "residual (px)"):
                        T.th(h)
                for i, (a, b_, r) in enumerate(zip(points[0], points[1], c.residuals)):
                    with T.tr():
                        for v in (i + 1, a[0], a[1], b_[0], b_[1], r):
                            T.td(_fmt(float(v)) if not isinstance(v, int) else str(v))
            T.img(src=files["points"], alt="point pairs on the H&E")
        T.h2("Overlays (red: H&E, green: IHC; yellow where aligned) and checkerboards")
        for st in STAGES:
            T.h3({"before": "Before registration (same level-0 coordinates)", "coarse": "After coarse (homography)",
                  "fine": "After fine (elastix, blocks blended)"}[st])
            with T.div(cls="row"):
                for key in (f"{st}_redgreen", f"{st}_checker", f"{st}_ihc"):
                    with T.div():
                        T.img(src=files[key], alt=key)
        T.h2("Blocks (fine stage)")
        with T.table():
            cols = ("row", "col", "x0", "y0", "x1", "y1", "status", "seconds", "mean_disp", "max_disp",
                    "score_coarse", "score_fine", "note")
            with T.tr():
                for h in cols:
                    T.th(h)
            for b in result.blocks:
                with T.tr():
                    for h in cols:
                        T.td(_fmt(getattr(b, h)))
        T.h2("Patch scores")
        T.img(src=files["histogram"], alt="score histogram")
        T.h2("Patch map (green kept, red misaligned, grey background, blue outside IHC)")
        T.img(src=files["patch_map"], alt="patch map")
        T.p(f"Every patch is listed in {result.patch_csv.name}.")
    return atomic_write_text(run / "report.html", doc.render())
