"""The whole build: coarse homography, block-wise fine registration into a disk-backed mosaic, patches, report.

Frames: the *working frame* is the H&E slide at working downsample ``d`` (level-0 pixels per working pixel, from
``--level`` or ``--mpp``); working pixel ``(x, y)`` has its centre at H&E level-0 ``(d x + (d-1)/2, d y + (d-1)/2)``.
Everything the build writes (mosaic, patches, CSV positions) lives in that frame; the IHC slide is resampled onto it
through the homography (coarse) and then elastix's per-block transform (fine).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from registration import fine as fine_mod
from registration.blocks import Mosaic, block_grid
from registration.coarse import CoarseResult, estimate_homography
from registration.patches import (PatchCriteria, PatchRecord, assess_patch, bci_name, next_free_index, patch_grid,
                                  write_patch_csv)
from registration.points import read_points_csv
from registration.sampling import grid_to_level0, read_warped, scale_matrix, translate_matrix
from registration.stains import grey_channel, normalised_cross_correlation, tissue_mask
from util.errors import OptionError
from util.image_io import save_png

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: A fine result is rejected when it lowers the block's NCC (grey channel) by more than this.
FINE_WORSE_TOLERANCE = 0.02
#: A fine result is rejected when more than this fraction of the kept block pulls content from beyond the margin.
MAX_OUTSIDE_MARGIN = 0.01


@dataclass
class BuildConfig:
    """Settings of one build (the options of ``scripts/build_pairs.py``)."""

    her2: str
    phase: str = "train"
    level: Optional[int] = None
    mpp: Optional[float] = None
    blocks: tuple[int, int] = (4, 4)
    max_block: int = 4096
    margin: int = 64
    overlap: int = 32
    channel: str = "hematoxylin"
    fine: fine_mod.FineParams = field(default_factory=fine_mod.FineParams)
    skip_fine: bool = False
    min_block_tissue: float = 0.05
    patch_size: int = 1024
    stride: Optional[int] = None
    criteria: PatchCriteria = field(default_factory=PatchCriteria)
    start_index: Optional[int] = None
    name: Optional[str] = None
    thumb_size: int = 1024
    keep_registered: bool = False
    report: bool = True

    def validate(self) -> None:
        """Raise :class:`OptionError` naming the option for out-of-range values."""
        if self.level is not None and self.mpp is not None:
            raise OptionError("--level and --mpp choose the same thing (the working resolution); give one")
        if self.mpp is not None and not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise OptionError(f"--mpp {self.mpp}: expected a positive number of um/px")
        if self.overlap < 0 or self.margin < self.overlap:
            raise OptionError(f"--margin {self.margin} / --overlap {self.overlap}: need 0 <= overlap <= margin")
        if self.patch_size < 8:
            raise OptionError(f"--patch_size {self.patch_size}: expected at least 8 px")
        if self.stride is not None and self.stride < 1:
            raise OptionError(f"--stride {self.stride}: expected a positive number of px (or none: --patch_size)")
        f = self.fine
        if not (f.grid_spacing > 0 and math.isfinite(f.grid_spacing)):
            raise OptionError(f"--grid_spacing {f.grid_spacing}: expected a positive number of working px")
        for opt, v in (("--affine_iterations", f.affine_iterations), ("--bspline_iterations", f.bspline_iterations)):
            if v < 0:
                raise OptionError(f"{opt} {v}: expected >= 0 (0 skips the stage)")
        if not self.skip_fine and f.affine_iterations == 0 and f.bspline_iterations == 0:
            raise OptionError("--affine_iterations and --bspline_iterations are both 0: nothing to register "
                              "(use --no_fine for the coarse alignment only)")
        if f.resolutions is not None and f.resolutions < 1:
            raise OptionError(f"--resolutions {f.resolutions}: expected >= 1")
        if not 0 <= self.min_block_tissue <= 1:
            raise OptionError(f"--min_block_tissue {self.min_block_tissue}: expected a fraction in [0, 1]")
        c = self.criteria
        for opt, v in (("--min_tissue", c.min_tissue), ("--min_coverage", c.min_coverage)):
            if not 0 <= v <= 1:
                raise OptionError(f"{opt} {v}: expected a fraction in [0, 1]")
        if c.score_downsample < 1:
            raise OptionError(f"--score_downsample {c.score_downsample}: expected >= 1")
        if self.thumb_size < 16:
            raise OptionError(f"--thumb_size {self.thumb_size}: expected at least 16 px")


@dataclass
class BlockRecord:
    """What happened to one block. ``status``: ``fine`` (elastix result used), ``coarse`` (fine stage off),
    ``background`` (too little tissue to register), ``outside_ihc`` (no IHC data), ``failed`` (elastix error),
    ``rejected`` (elastix result worse than coarse, or displaced further than the margin); all but ``fine`` keep the
    coarse alignment. Displacements in working pixels; scores are NCC of the registration channel."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    status: str
    seconds: float = 0.0
    mean_disp: float = float("nan")
    max_disp: float = float("nan")
    score_coarse: float = float("nan")
    score_fine: float = float("nan")
    note: str = ""


@dataclass
class BuildResult:
    """Summary of a build: where things were written and what was kept."""

    run_dir: Path
    patch_csv: Path
    report: Optional[Path]
    registered: Optional[Path]
    downsample: float
    frame: tuple[int, int]
    coarse: CoarseResult
    blocks: list[BlockRecord]
    patches: list[PatchRecord]
    seconds: dict

    @property
    def kept(self) -> list[PatchRecord]:
        return [p for p in self.patches if p.status == "kept"]


def working_downsample(he, level: Optional[int], mpp: Optional[float]) -> float:
    """Level-0 pixels per working pixel: ``level_downsamples[level]``, or ``mpp / he.mpp``; level 0 by default.

    Raises:
        OptionError: level out of range, or ``mpp`` given for a slide without MPP metadata (names the slide).
    """
    if mpp is not None:
        if he.mpp is None:
            raise OptionError(f"--mpp {mpp}: the H&E slide '{he.path}' has no MPP (um/px) metadata; use --level")
        d = mpp / he.mpp
        if d < 1 - 1e-6:
            log.warning("--mpp %.4g is finer than the H&E slide's level 0 (%.4g um/px): upsampling", mpp, he.mpp)
        return float(d)
    lv = 0 if level is None else int(level)
    if not 0 <= lv < he.level_count:
        raise OptionError(f"--level {lv}: the H&E slide '{he.path}' has levels 0..{he.level_count - 1}")
    return float(he.level_downsamples[lv])


def _ncc_ds(a: np.ndarray, b: np.ndarray, f: int = 4) -> float:
    from skimage.transform import downscale_local_mean

    if f > 1 and min(a.shape) >= 2 * f:
        a, b = downscale_local_mean(a, (f, f)), downscale_local_mean(b, (f, f))
    return normalised_cross_correlation(a, b)


def register_block(he_ext: np.ndarray, ihc_ext: np.ndarray, cov_ext: np.ndarray, keep: tuple[slice, slice],
                   cfg: BuildConfig, rec: BlockRecord) -> tuple[np.ndarray, np.ndarray]:
    """Fine-register one block (with margin) and return the kept region of the registered IHC and its coverage.

    Args:
        he_ext, ihc_ext: ``(h, w, 3)`` uint8 H&E and coarse-aligned IHC of the block grown by the margin.
        cov_ext: ``(h, w)`` bool IHC coverage of ``ihc_ext``.
        keep: ``(rows, cols)`` slices of the region written to the mosaic (block grown by the overlap).
        cfg: the build settings; ``rec``: the block's record, updated in place (status, timings, displacements).

    Returns:
        ``(rgb, covered)`` of the kept region: ``(kh, kw, 3)`` uint8 and ``(kh, kw)`` bool. Pixels whose source falls
        outside the block's margin are filled from the nearest registered pixel and marked not covered.
    """
    coarse_out = ihc_ext[keep], cov_ext[keep]
    fixed = grey_channel(he_ext, cfg.channel)
    moving = grey_channel(ihc_ext, cfg.channel)
    rec.score_coarse = _ncc_ds(fixed[keep], moving[keep])
    if cfg.skip_fine:
        rec.status = "coarse"
        return coarse_out
    if cov_ext.mean() < 0.5:
        rec.status, rec.note = "outside_ihc", f"IHC covers {cov_ext.mean():.0%} of the block"
        return coarse_out
    tissue = float(tissue_mask(he_ext).mean())
    if tissue < cfg.min_block_tissue:
        rec.status, rec.note = "background", f"tissue {tissue:.1%} < {cfg.min_block_tissue:.0%}"
        return coarse_out
    try:
        res = fine_mod.register(fixed, moving, cfg.fine)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        log.warning("block (%d, %d): elastix failed, keeping the coarse alignment: %s", rec.row, rec.col, msg)
        rec.status, rec.note = "failed", msg[:200]
        return coarse_out
    rec.seconds = res.seconds
    disp = np.hypot(res.field[..., 0], res.field[..., 1])[keep]
    rec.mean_disp, rec.max_disp = float(disp.mean()), float(disp.max())
    h, w = fixed.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sx, sy = xx + res.field[..., 0], yy + res.field[..., 1]
    inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    cov_f = inside & (ndimage.map_coordinates(cov_ext.astype(np.uint8), [sy, sx], order=0, mode="constant",
                                              cval=0) > 0)
    warped = fine_mod.apply_to_rgb(ihc_ext, res.transform, fill=255.0)
    rec.score_fine = _ncc_ds(fixed[keep], grey_channel(warped, cfg.channel)[keep])
    if np.isfinite(rec.score_coarse) and rec.score_fine < rec.score_coarse - FINE_WORSE_TOLERANCE:
        rec.status, rec.note = "rejected", f"NCC {rec.score_fine:.3f} < coarse {rec.score_coarse:.3f}"
        log.warning("block (%d, %d): elastix result worse than coarse (%s); keeping coarse", rec.row, rec.col,
                    rec.note)
        return coarse_out
    outside = float((~inside[keep]).mean())
    if outside > MAX_OUTSIDE_MARGIN:
        rec.status, rec.note = "rejected", (f"{outside:.1%} of the block moved beyond the margin "
                                            f"(max displacement {rec.max_disp:.1f} px, --margin {cfg.margin})")
        log.warning("block (%d, %d): %s; keeping coarse (raise --margin)", rec.row, rec.col, rec.note)
        return coarse_out
    if not inside.all():
        # pull content for pixels whose source left the block from the nearest registered pixel (no black gaps)
        _, (iy, ix) = ndimage.distance_transform_edt(~inside, return_indices=True)
        warped = warped[iy, ix]
    rec.status = "fine"
    return warped[keep], cov_f[keep]


def _thumb_plan(height: int, width: int, thumb_size: int) -> tuple[int, int, int]:
    f = max(1, math.ceil(max(height, width) / thumb_size))
    return f, max(1, height // f), max(1, width // f)


def mosaic_thumbnail(mosaic: Mosaic, f: int, th: int, tw: int) -> np.ndarray:
    """``(th, tw, 3)`` uint8 block-mean thumbnail (factor ``f``) of the mosaic, read strip by strip."""
    out = np.empty((th, tw, 3), np.uint8)
    rows = f * max(1, 256 // f)
    for y0, strip, _ in mosaic.strips(rows):
        t0 = y0 // f
        n = min(strip.shape[0] // f, th - t0)
        if n <= 0:
            continue
        a = np.asarray(strip[:n * f, :tw * f], np.float32).reshape(n, f, tw, f, 3).mean(axis=(1, 3))
        out[t0:t0 + n] = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return out


def build_from_readers(he, ihc, coarse: CoarseResult, out_dir: PathLike, cfg: BuildConfig,
                       points: Optional[tuple[np.ndarray, np.ndarray]] = None) -> BuildResult:
    """Register ``ihc`` onto ``he`` and write patches, patch table and report under ``out_dir``.

    Args:
        he, ihc: open slide readers (``wsi.reader.SlideReader`` interface).
        coarse: the H&E -> IHC level-0 homography (:func:`registration.coarse.estimate_homography`).
        out_dir: dataset root; patches go to ``HE/<phase>/`` and ``IHC/<phase>/``, the rest to
            ``registration/<name>/`` (``name`` defaults to the H&E file stem).
        cfg: :class:`BuildConfig`.
        points: the point pairs (drawn in the report).

    Raises:
        OptionError: bad settings, an existing run folder, or a name collision with existing patches.
    """
    cfg.validate()
    timings: dict = {}
    t_all = time.perf_counter()
    out_dir = Path(out_dir)
    name = cfg.name or Path(getattr(he, "path", "he")).stem
    run_dir = out_dir / "registration" / name
    if (run_dir / "patches.csv").exists():
        raise OptionError(f"run folder '{run_dir}' already holds a build (patches.csv); choose another --name or "
                          "remove it")
    d = working_downsample(he, cfg.level, cfg.mpp)  # may raise: check before creating anything
    run_dir.mkdir(parents=True, exist_ok=True)
    W0, H0 = he.dimensions
    width, height = int(W0 // d), int(H0 // d)
    if width < cfg.patch_size or height < cfg.patch_size:
        log.warning("working frame %dx%d px is smaller than --patch_size %d: no patch can be cut", width, height,
                    cfg.patch_size)
    m_he = grid_to_level0(d)
    hmat = coarse.matrix
    log.info("working frame %dx%d px (downsample %.4g of the H&E level 0)", width, height, d)

    blocks = block_grid(height, width, *cfg.blocks, max_block=cfg.max_block)
    records: list[BlockRecord] = []
    tmp_rgb = run_dir / ".ihc_registered.partial.tif"
    tmp_cov = run_dir / ".coverage.partial.tif"
    mosaic = Mosaic(tmp_rgb, tmp_cov, height, width)
    completed = False
    try:
        t = time.perf_counter()
        for b in tqdm(blocks, desc="registering blocks", unit="block", leave=False):
            ey0, ey1, ex0, ex1 = b.expanded(cfg.margin, height, width, clip=False)
            ky0, ky1, kx0, kx1 = b.expanded(cfg.overlap, height, width)
            m_blk = m_he @ translate_matrix(ex0, ey0)
            he_ext, _ = read_warped(he, m_blk, ey1 - ey0, ex1 - ex0)
            ihc_ext, cov_ext = read_warped(ihc, hmat @ m_blk, ey1 - ey0, ex1 - ex0)
            keep = (slice(ky0 - ey0, ky1 - ey0), slice(kx0 - ex0, kx1 - ex0))
            rec = BlockRecord(b.row, b.col, b.y0, b.y1, b.x0, b.x1, status="")
            rgb, cov = register_block(he_ext, ihc_ext, cov_ext, keep, cfg, rec)
            mosaic.write(b, ky0, ky1, kx0, kx1, rgb, cov, cfg.overlap)
            records.append(rec)
            log.info("block (%d, %d) %dx%d: %s %s", b.row, b.col, b.x1 - b.x0, b.y1 - b.y0, rec.status, rec.note)
        mosaic.flush()
        timings["registration_s"] = time.perf_counter() - t

        t = time.perf_counter()
        f, th, tw = _thumb_plan(height, width, cfg.thumb_size)
        thumbs = {}
        if cfg.report:
            m_th = m_he @ scale_matrix(f)
            thumbs["he"] = read_warped(he, m_th, th, tw, tile=256)[0]
            thumbs["before"] = read_warped(ihc, m_th, th, tw, tile=256)[0]
            thumbs["coarse"] = read_warped(ihc, hmat @ m_th, th, tw, tile=256)[0]
            thumbs["fine"] = mosaic_thumbnail(mosaic, f, th, tw)
        timings["thumbnails_s"] = time.perf_counter() - t

        t = time.perf_counter()
        patches = _cut_patches(he, m_he, mosaic, out_dir, run_dir, cfg, d, height, width)
        timings["patches_s"] = time.perf_counter() - t
        completed = True
    finally:
        mosaic.close()
        del mosaic
        if not completed:  # the frame-sized temporaries must not outlive a failed or interrupted run
            for p in (tmp_rgb, tmp_cov):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    registered = None
    if cfg.keep_registered:
        registered = run_dir / "ihc_registered.tif"
        os.replace(tmp_rgb, registered)
        os.replace(tmp_cov, run_dir / "ihc_coverage.tif")
    else:
        for p in (tmp_rgb, tmp_cov):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    timings["total_s"] = time.perf_counter() - t_all
    csv_path = write_patch_csv(run_dir / "patches.csv", patches)
    result = BuildResult(run_dir=run_dir, patch_csv=csv_path, report=None, registered=registered, downsample=d,
                         frame=(width, height), coarse=coarse, blocks=records, patches=patches, seconds=timings)
    if cfg.report:
        from registration.report import write_report

        result.report = write_report(result, cfg, thumbs, f, points, he_path=getattr(he, "path", None),
                                     ihc_path=getattr(ihc, "path", None))
    counts = {r: sum(p.reason == r for p in patches) for r in sorted({p.reason for p in patches})}
    log.info("%d patches: %s; written to %s", len(patches), counts, out_dir)
    return result


def _cut_patches(he, m_he: np.ndarray, mosaic: Mosaic, out_dir: Path, run_dir: Path, cfg: BuildConfig, d: float,
                 height: int, width: int) -> list[PatchRecord]:
    """Assess every grid patch; stage the kept pairs, then move them into the BCI folders (all or nothing)."""
    s = cfg.patch_size
    grid = patch_grid(height, width, s, cfg.stride)
    start = next_free_index(out_dir, cfg.phase) if cfg.start_index is None else int(cfg.start_index)
    he_dir, ihc_dir = out_dir / "HE" / cfg.phase, out_dir / "IHC" / cfg.phase
    staging = run_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "HE").mkdir(parents=True)
    (staging / "IHC").mkdir(parents=True)
    records: list[PatchRecord] = []
    index = start
    try:
        for y, x in tqdm(grid, desc="cutting patches", unit="patch", leave=False):
            he_p, _ = read_warped(he, m_he @ translate_matrix(x, y), s, s)
            ihc_p = np.asarray(mosaic.rgb[y:y + s, x:x + s])
            cov_p = np.asarray(mosaic.cov[y:y + s, x:x + s])
            tissue, coverage, score, reason = assess_patch(he_p, ihc_p, cov_p, cfg.criteria)
            x0, y0 = int(round(x * d)), int(round(y * d))  # level-0 left/top edge of the patch
            rec = PatchRecord(x=x, y=y, x0=x0, y0=y0, size=s, tissue=tissue, coverage=coverage, score=score,
                              status="kept" if reason == "kept" else "dropped", reason=reason)
            if reason == "kept":
                rec.name = bci_name(index, cfg.phase, cfg.her2)
                index += 1
                for sub, arr in (("HE", he_p), ("IHC", ihc_p)):
                    target = (he_dir if sub == "HE" else ihc_dir) / rec.name
                    if target.exists():
                        raise OptionError(f"'{target}' already exists; choose another --start_index (default: the "
                                          "next free index)")
                    save_png(arr, staging / sub / rec.name)
            records.append(rec)
        he_dir.mkdir(parents=True, exist_ok=True)
        ihc_dir.mkdir(parents=True, exist_ok=True)
        for rec in records:
            if rec.name:
                os.replace(staging / "HE" / rec.name, he_dir / rec.name)
                os.replace(staging / "IHC" / rec.name, ihc_dir / rec.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return records


def build_pairs(he_path: PathLike, ihc_path: PathLike, points_csv: PathLike, out_dir: PathLike,
                cfg: BuildConfig) -> BuildResult:
    """Open both slides, fit the homography from ``points_csv`` and run :func:`build_from_readers`.

    Raises:
        PointsError: bad points CSV (names it). SlideError / OSError: unreadable slides. OptionError: bad settings.
    """
    from wsi.reader import open_slide

    cfg.validate()
    he_pts, ihc_pts = read_points_csv(points_csv)
    with open_slide(he_path) as he, open_slide(ihc_path) as ihc:
        coarse = estimate_homography(he_pts, ihc_pts, source=f"points CSV '{points_csv}'", he_size=he.dimensions)
        return build_from_readers(he, ihc, coarse, out_dir, cfg, points=(he_pts, ihc_pts))
