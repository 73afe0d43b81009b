"""Stain a whole slide: plan the resolution, find tissue, run the generator on overlapping tiles, blend, write.

Data flow (memory bounded by a few tiles, independent of the slide size):

1. :func:`plan_reading` picks the level and resampling so that the network sees pixels of the model's MPP.
2. :func:`wsi.tissue.tissue_mask` on a thumbnail selects the tiles to run; the others stay white, and so does the
   glass inside the tiles that are run (:func:`wsi.tissue.glass_weight` of the input pixel fades the output to white;
   ``white_background=False`` keeps the generator's own background colour), so the slide has one background.
3. A ``torch.utils.data.DataLoader`` (workers read and resample tiles in parallel, each opening its own reader)
   feeds batches to the generator under ``torch.inference_mode()`` (and bf16/fp16 autocast on CUDA).
4. :class:`BandBlender` adds each output tile, weighted by its partition-of-unity window (:mod:`wsi.tiling`), into a
   disk-backed band two strides high, and moves finished rows into a disk-backed full-resolution buffer
   (:class:`wsi.writer.RawFile`); blending runs in a background thread while the generator runs on the next batch.
5. :func:`wsi.writer.write_pyramid_tiff` writes the pyramidal BigTIFF tile-wise and atomically, then the thumbnails
   and the HTML page are written.

Any exception (including one raised by the generator midway) leaves no output file and no temporary behind.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from util.errors import OptionError
from util.threads import rebalance
from wsi import writer as W
from wsi.reader import MPP_TOLERANCE, SlideMPPError, SlideReader, choose_level, open_slide
from wsi.tiling import TileGrid, validate_tiling
from wsi.tissue import glass_weight, tiles_with_tissue, tissue_mask

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
Generator = Callable[[torch.Tensor], torch.Tensor]

#: BCI's resolution (um/px): 20x scans, the MPP the published models were trained at.
DEFAULT_TARGET_MPP = 0.46


@dataclass(frozen=True)
class ReadPlan:
    """How a slide is read for the network.

    Attributes:
        level: slide level read.
        downsample: level-0 pixels per level pixel.
        scale: level pixels per processing pixel (1.0: no resampling; 1.08 means the level is slightly finer than
            the target and is shrunk by 1.08).
        width, height: the processed (and written) image size in processing pixels.
        out_mpp: um/px of the processed image (and the output TIFF), or None when unknown.
    """

    level: int
    downsample: float
    scale: float
    width: int
    height: int
    out_mpp: Optional[float]


def plan_reading(reader: SlideReader, target_mpp: float = DEFAULT_TARGET_MPP, slide_mpp: Optional[float] = None,
                 level: Optional[int] = None, tolerance: float = MPP_TOLERANCE) -> ReadPlan:
    """Choose level and resampling for a model trained at ``target_mpp`` um/px.

    Args:
        reader: the open slide.
        target_mpp: the model's training resolution (``--target_mpp``/``--mpp``).
        slide_mpp: the slide's level-0 um/px, overriding or supplying the file's metadata (``--slide_mpp``).
        level: read this level as it is, no resampling (``--level``); output MPP is the level's if known.
        tolerance: relative MPP difference accepted without resampling.

    Raises:
        SlideMPPError: neither the file nor ``slide_mpp`` gives the slide's MPP and no ``level`` is given.
        OptionError: ``level`` out of range, non-positive MPPs.
    """
    if slide_mpp is not None and not slide_mpp > 0:
        raise OptionError(f"--slide_mpp must be a positive number of um/px, got {slide_mpp}")
    if not (target_mpp and target_mpp > 0):
        raise OptionError(f"--target_mpp must be a positive number of um/px, got {target_mpp}")
    mpp0 = slide_mpp if slide_mpp is not None else reader.mpp
    if level is not None:
        if not 0 <= level < reader.level_count:
            raise OptionError(f"--level {level} out of range for '{reader.path}' (levels 0..{reader.level_count - 1})")
        ds = reader.level_downsamples[level]
        w, h = reader.level_dimensions[level]
        return ReadPlan(level, ds, 1.0, w, h, None if mpp0 is None else mpp0 * ds)
    if mpp0 is None:
        raise SlideMPPError(f"slide '{reader.path}' has no MPP (um/px) metadata: give its level-0 resolution with "
                            f"--slide_mpp UM_PER_PX, or pick the level to process as it is with --level N")
    mpps = [mpp0 * d for d in reader.level_downsamples]
    lv = choose_level(mpps, target_mpp, tolerance, reader.path)
    ds = reader.level_downsamples[lv]
    lw, lh = reader.level_dimensions[lv]
    if abs(mpps[lv] / target_mpp - 1.0) <= tolerance:
        return ReadPlan(lv, ds, 1.0, lw, lh, mpps[lv])
    scale = target_mpp / mpps[lv]
    return ReadPlan(lv, ds, scale, max(1, round(lw / scale)), max(1, round(lh / scale)), target_mpp)


class TileDataset(Dataset):
    """Input tiles ``(tile, tile, 3)`` uint8 RGB (outside the slide white), read in processing pixels.

    Each DataLoader worker opens its own reader (slide handles are not shared across processes).
    """

    def __init__(self, path: PathLike, plan: ReadPlan, grid: TileGrid, tiles: List[Tuple[int, int]]):
        self.path, self.plan, self.grid, self.tiles = Path(path), plan, grid, tiles
        self._reader: Optional[SlideReader] = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.tiles)

    def _slide(self) -> SlideReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = open_slide(self.path)
            self._pid = os.getpid()
        return self._reader

    def read_tile(self, col: int, row: int) -> np.ndarray:
        """``(tile, tile, 3)`` uint8 RGB of tile ``(col, row)``."""
        p, T = self.plan, self.grid.tile
        x, y = self.grid.origin(col, row)
        s = self._slide()
        if p.scale == 1.0:
            return s.read_region(round(x * p.downsample), round(y * p.downsample), p.level, T, T)
        # level pixels [x*scale, (x+T)*scale) -> T px; read whole pixels and resample with Pillow (box filter when
        # shrinking, Lanczos when enlarging)
        lx0, ly0 = math.floor(x * p.scale), math.floor(y * p.scale)
        lx1, ly1 = math.ceil((x + T) * p.scale), math.ceil((y + T) * p.scale)
        region = s.read_region(round(lx0 * p.downsample), round(ly0 * p.downsample), p.level, lx1 - lx0, ly1 - ly0)
        box = (x * p.scale - lx0, y * p.scale - ly0, (x + T) * p.scale - lx0, (y + T) * p.scale - ly0)
        resample = Image.Resampling.BOX if p.scale > 1 else Image.Resampling.LANCZOS
        return np.asarray(Image.fromarray(region).resize((T, T), resample, box=box))

    def __getitem__(self, k: int) -> Tuple[np.ndarray, int]:
        col, row = self.tiles[k]
        return self.read_tile(col, row), k


def collate_tiles(items: List[Tuple[np.ndarray, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batch ``(tile, tile, 3)`` uint8 tiles into ``(N, 3, tile, tile)`` uint8 (one numpy copy) plus indices."""
    x = np.stack([a for a, _ in items]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([k for _, k in items])


class BandBlender:
    """Accumulates windowed output tiles (darkness ``(1 - y) / 2`` in [0, 1]) in a disk-backed band of ``2 * stride``
    rows and moves completed rows, as uint8 darkness, into ``level0`` (a :class:`wsi.writer.RawFile`).

    Tiles must arrive in row-major order (tile rows non-decreasing). Row band ``k`` (image rows
    ``[k * stride, (k + 1) * stride)``) is complete once a tile of a later tile row arrives (tile row ``r`` covers rows
    ``[r * stride, r * stride + tile)`` and ``tile <= 2 * stride`` because ``overlap < tile / 2``).
    """

    def __init__(self, grid: TileGrid, level0: W.RawFile, folder: PathLike):
        self.grid, self.level0 = grid, level0
        S = grid.stride
        self.band = W.RawFile(folder, 2 * S, grid.width, 3, np.float32, prefix="band")
        self.touched: List[set] = [set(), set()]
        self.next_band = 0
        self.n_bands = math.ceil(grid.height / S)

    def add(self, col: int, row: int, darkness: np.ndarray) -> None:
        """Add one tile's output ``(tile, tile, 3)`` float darkness."""
        g = self.grid
        if row < self.next_band:
            raise RuntimeError(f"tile row {row} arrived after band {self.next_band - 1} was written")
        self._flush_until(row)
        x, y = g.origin(col, row)
        h, w = min(g.tile, g.height - y), min(g.tile, g.width - x)
        wgt = g.window(col, row)[:h, :w, None]
        acc = self.band.read(y, x, h, w, ring=True)
        acc += wgt * darkness[:h, :w]
        self.band.write(y, x, acc, ring=True)
        for b in (row, row + 1):
            if b * g.stride < y + h:
                self.touched[b % 2].update(c for c in (col, col + 1) if c * g.stride < x + w)

    def _flush_until(self, band_end: int) -> None:
        S, W_, H = self.grid.stride, self.grid.width, self.grid.height
        for k in range(self.next_band, min(band_end, self.n_bands)):
            y0, h = k * S, min(S, H - k * S)
            for c in sorted(self.touched[k % 2]):
                x0, w = c * S, min(S, W_ - c * S)
                acc = self.band.read(y0, x0, h, w, ring=True)
                self.level0.write(y0, x0, np.clip(np.rint(acc * 255.0), 0, 255).astype(np.uint8))
                self.band.zero(y0, x0, h, w, ring=True)
            self.touched[k % 2].clear()
        self.next_band = max(self.next_band, min(band_end, self.n_bands))

    def finish(self) -> None:
        """Write all remaining rows."""
        self._flush_until(self.n_bands)

    def close(self) -> None:
        self.band.close()


@dataclass
class StainSettings:
    """Run settings (the stain_slide.py options)."""

    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 4
    num_workers: int = 2
    target_mpp: float = DEFAULT_TARGET_MPP
    slide_mpp: Optional[float] = None
    level: Optional[int] = None
    tissue_mask: bool = True
    white_background: bool = True
    compression: str = "jpeg"
    tiff_tile: int = 512
    thumbnail_size: int = 1024
    stride_multiple: int = 1
    device: str = "cpu"
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    progress: bool = True
    tmp_dir: Optional[str] = None
    info: Dict[str, str] = field(default_factory=dict)


def validate_settings(s: StainSettings) -> None:
    """Raise OptionError for unusable settings (tile size vs generator stride, overlap, batch size, ...)."""
    validate_tiling(s.tile_size, s.overlap, s.stride_multiple)
    if s.batch_size < 1:
        raise OptionError(f"--batch_size must be >= 1, got {s.batch_size}")
    if s.num_workers < 0:
        raise OptionError(f"--num_workers must be >= 0, got {s.num_workers}")
    if s.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise OptionError(f"--precision must be auto, fp32, bf16 or fp16, got '{s.precision}'")
    W.check_compression(s.compression)


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device_type="cpu", enabled=False)
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def run_generator(generator: Generator, dataset: TileDataset, grid: TileGrid, blender: BandBlender,
                  s: StainSettings) -> int:
    """Run ``generator`` on every tile of ``dataset`` and blend the outputs. Returns the number of tiles run."""
    device = torch.device(s.device)
    loader = DataLoader(dataset, batch_size=s.batch_size, shuffle=False, num_workers=s.num_workers,
                        collate_fn=collate_tiles, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if s.num_workers else None, persistent_workers=False)
    done = 0
    pending: List[cf.Future] = []
    bar = tqdm(total=len(dataset), unit="tile", disable=not s.progress, desc=dataset.path.name, dynamic_ncols=True)
    with cf.ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode(), bar:
        for x, idx in loader:
            glass = glass_weight(x) if s.white_background else None
            x = x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
            with _autocast(device, s.precision):
                y = generator(x)
            rebalance()  # fewer intra-op threads while other jobs use cores (util/threads.py)
            if y.shape != x.shape:
                raise OptionError(f"the generator maps {tuple(x.shape)} to {tuple(y.shape)}; stain_slide needs a "
                                  "3-channel output of the input's size")
            d = ((1.0 - y.float().clamp_(-1, 1)) * 0.5).cpu()
            if glass is not None:  # glass comes out white, like the background tiles that are never run
                d.mul_(1.0 - glass)
            d = d.permute(0, 2, 3, 1).numpy()
            tiles = [dataset.tiles[int(k)] for k in idx]
            pending.append(pool.submit(_blend_batch, blender, tiles, d))
            while len(pending) > 1:
                pending.pop(0).result()  # re-raises blending errors
            done += len(tiles)
            bar.update(len(tiles))
        for f in pending:
            f.result()
    return done


def _blend_batch(blender: BandBlender, tiles: List[Tuple[int, int]], d: np.ndarray) -> None:
    for (c, r), t in zip(tiles, d):
        blender.add(c, r, t)


def stain_slide(generator: Generator, input_path: PathLike, output_path: PathLike, s: StainSettings) -> Dict:
    """Stain one slide; write ``output_path`` (``.tif``/``.tiff``) plus ``<stem>_thumbnail.jpg``,
    ``<stem>_he_thumbnail.jpg`` and ``<stem>.html`` beside it.

    Args:
        generator: maps ``(N, 3, T, T)`` in [-1, 1] to the same shape in [-1, 1] (T = ``s.tile_size``).
        input_path: slide or image file (see :func:`wsi.reader.open_slide`).
        output_path: the TIFF to write.
        s: settings.

    Returns:
        a summary dict (plan, tiles, seconds, outputs).

    Raises:
        SlideError, SlideMPPError, OptionError: bad input (nothing is written).
        Any exception from ``generator``: nothing is written, temporaries removed.
    """
    validate_settings(s)
    out = W.output_paths(output_path)
    if out["tiff"].suffix.lower() not in (".tif", ".tiff"):
        raise OptionError(f"--output '{output_path}' must end in .tif or .tiff (or be a folder)")
    t0 = time.perf_counter()
    with open_slide(input_path) as reader:
        plan = plan_reading(reader, s.target_mpp, s.slide_mpp, s.level)
        grid = TileGrid(plan.width, plan.height, s.tile_size, s.overlap)
        # one pass over a low level serves both the page's H&E thumbnail and the tissue mask
        mask_size = max(256, min(4096, max(plan.width, plan.height) // 16)) if s.tissue_mask else 0
        overview = reader.get_thumbnail(max(s.thumbnail_size, mask_size))
        he_thumb = W.thumbnail(overview, s.thumbnail_size)
        if s.tissue_mask:
            mask = tissue_mask(W.thumbnail(overview, mask_size))
            sel = tiles_with_tissue(mask, (plan.width / mask.shape[1], plan.height / mask.shape[0]), grid)
        else:
            sel = np.ones((grid.n_rows, grid.n_cols), bool)
    tiles = [(c, r) for c, r in grid if sel[r, c]]
    log.info("%s: level %d, scale %.4f, %dx%d px at %s um/px, %d of %d tiles with tissue", input_path, plan.level,
             plan.scale, plan.width, plan.height, plan.out_mpp, len(tiles), len(grid))
    out["tiff"].parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(s.tmp_dir) if s.tmp_dir else out["tiff"].parent
    with tempfile.TemporaryDirectory(prefix=f".{out['tiff'].name}.", suffix=".partial", dir=tmp_parent) as tmp:
        with W.RawFile(tmp, plan.height, plan.width, 3, np.uint8, prefix="level0") as level0:
            blender = BandBlender(grid, level0, tmp)
            try:
                n = run_generator(generator, TileDataset(input_path, plan, grid, tiles), grid, blender, s)
                blender.finish()
            finally:
                blender.close()
            t_gen = time.perf_counter() - t0
            _, thumb_level = W.write_pyramid_tiff(out["tiff"], level0, plan.width, plan.height, plan.out_mpp,
                                               s.compression, s.tiff_tile, tmp_dir=tmp,
                                               thumb_size=s.thumbnail_size)
    W.write_thumbnail(thumb_level, out["thumb"], s.thumbnail_size)
    W.write_thumbnail(he_thumb, out["he_thumb"], s.thumbnail_size)
    secs = time.perf_counter() - t0
    summary = {"input": str(input_path), "output": str(out["tiff"]), "level": plan.level, "scale": plan.scale,
               "size": f"{plan.width}x{plan.height}", "mpp": plan.out_mpp, "tiles_run": n, "tiles_total": len(grid),
               "seconds": round(secs, 2), "seconds_generator_and_blend": round(t_gen, 2)}
    W.write_html(out["html"], f"Virtual IHC: {Path(input_path).name}", out["he_thumb"].name, out["thumb"].name,
                 {**{k: str(v) for k, v in summary.items()}, **s.info})
    return summary
