"""Disk-backed image buffers and the pyramidal BigTIFF / thumbnail / HTML outputs.

Memory is bounded: images larger than a few tiles live in :class:`RawFile` temporaries (plain files read and written
with ``os.pread``/``os.pwrite``, so the data sits in the page cache, not in the process's resident memory, unlike an
``np.memmap`` whose touched pages count towards RSS). The TIFF is written tile by tile from them with tifffile's
tile-iterator interface, and each pyramid level is built from the previous one while it is being written.

Values in the buffers are stored *inverted* ("darkness", ``255 - v``) so that never-written regions - sparse holes of
the file, which read as zeros - are white. Background never touches the disk.

TIFF layout (OpenSlide's "generic-tiff" format): a BigTIFF whose main IFD chain holds the levels, full resolution
first, each tiled (``tile`` px, default 512), halved each time (2x2 box mean, ``skimage.measure.block_reduce``)
until the level fits in one tile; later pages are marked reduced-resolution (NewSubfileType 1). Every page carries
``XResolution``/``YResolution`` in pixels per centimetre (``ResolutionUnit`` 3), from which OpenSlide reports
``openslide.mpp-x/y`` (um/px = 10^4 / (px/cm)). Compression ``jpeg`` (quality 90, RGB), ``deflate`` (zlib with
horizontal predictor, lossless) or ``none``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from skimage.measure import block_reduce

from util.errors import OptionError
from util.fileio import atomic_path, atomic_write, atomic_write_text
from util.image_io import save_png

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

COMPRESSIONS = ("jpeg", "deflate", "none")
JPEG_QUALITY = 90


class RawFile:
    """A ``(rows, cols, channels)`` array of ``dtype`` in a sparse temporary file (zeros where never written).

    Rows may be addressed modulo ``rows`` (``ring=True`` in :meth:`read`/:meth:`write`), which makes a band buffer
    of a few tile heights serve a whole slide.
    """

    def __init__(self, folder: PathLike, rows: int, cols: int, channels: int, dtype, prefix: str = "raw"):
        self.rows, self.cols, self.channels = int(rows), int(cols), int(channels)
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.cols * self.channels * self.dtype.itemsize
        fd, name = tempfile.mkstemp(prefix=f".{prefix}.", suffix=".partial.raw", dir=folder)
        self.path = Path(name)
        self._fd = fd
        os.ftruncate(fd, self.rows * self.row_bytes)

    def _span(self, y: int, x: int, h: int, w: int, ring: bool) -> Tuple[int, int, int, int, int, int]:
        """Clip a request to the array; returns (y0, y1, x0, x1) in array coords plus offsets into the request."""
        if ring:
            y0, y1 = y, y + h
        else:
            y0, y1 = max(y, 0), min(y + h, self.rows)
        x0, x1 = max(x, 0), min(x + w, self.cols)
        return y0, y1, x0, x1, y0 - y, x0 - x

    def read(self, y: int, x: int, h: int, w: int, ring: bool = False) -> np.ndarray:
        """``(h, w, channels)``; outside the array zeros."""
        out = np.zeros((h, w, self.channels), self.dtype)
        y0, y1, x0, x1, oy, ox = self._span(y, x, h, w, ring)
        if x1 <= x0 or y1 <= y0:
            return out
        nbytes = (x1 - x0) * self.channels * self.dtype.itemsize
        col_off = x0 * self.channels * self.dtype.itemsize
        for yy in range(y0, y1):
            r = yy % self.rows if ring else yy
            buf = os.pread(self._fd, nbytes, r * self.row_bytes + col_off)
            out[oy + yy - y0, ox:ox + x1 - x0] = np.frombuffer(buf, self.dtype).reshape(x1 - x0, self.channels)
        return out

    def write(self, y: int, x: int, arr: np.ndarray, ring: bool = False) -> None:
        """Write ``arr`` ``(h, w, channels)`` at ``(y, x)``; the part outside the array is dropped."""
        h, w = arr.shape[:2]
        y0, y1, x0, x1, oy, ox = self._span(y, x, h, w, ring)
        if x1 <= x0 or y1 <= y0:
            return
        arr = np.ascontiguousarray(arr[oy:oy + y1 - y0, ox:ox + x1 - x0], dtype=self.dtype)
        col_off = x0 * self.channels * self.dtype.itemsize
        for i, yy in enumerate(range(y0, y1)):
            r = yy % self.rows if ring else yy
            os.pwrite(self._fd, arr[i].tobytes(), r * self.row_bytes + col_off)

    def zero(self, y: int, x: int, h: int, w: int, ring: bool = False) -> None:
        """Set a region back to zero."""
        self.write(y, x, np.zeros((h, w, self.channels), self.dtype), ring=ring)

    def close(self) -> None:
        """Close and delete the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RawFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # safety net; close() is the normal path
        try:
            self.close()
        except (OSError, AttributeError, TypeError):
            pass


def check_compression(name: str) -> str:
    """Validate ``--compression``. Raises OptionError naming the choices."""
    if name not in COMPRESSIONS:
        raise OptionError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got '{name}'")
    return name


def _tifffile_compression(name: str) -> dict:
    if name == "jpeg":
        return {"compression": "jpeg", "compressionargs": {"level": JPEG_QUALITY}}
    if name == "deflate":
        return {"compression": "zlib", "predictor": True}
    return {"compression": None}


def pyramid_shapes(width: int, height: int, tile: int) -> List[Tuple[int, int]]:
    """``[(w, h), ...]`` of every level: halved (ceil) until the level fits in one ``tile x tile`` tile."""
    shapes = [(int(width), int(height))]
    while max(shapes[-1]) > tile:
        w, h = shapes[-1]
        shapes.append(((w + 1) // 2, (h + 1) // 2))
    return shapes


def write_pyramid_tiff(path: PathLike, level0: RawFile, width: int, height: int, mpp: Optional[float],
                       compression: str = "jpeg", tile: int = 512, tmp_dir: Optional[PathLike] = None,
                       software: str = "stain_slide.py", thumb_size: Optional[int] = None) -> Tuple[Path, np.ndarray]:
    """Write the darkness image in ``level0`` (``(height, width, 3)`` uint8, 255 - RGB) as a pyramidal BigTIFF.

    Written atomically (temporary name beside ``path``, renamed at the end).

    Args:
        path: the ``.tif``/``.tiff`` to write.
        level0: the full-resolution buffer.
        mpp: um/px of level 0 (stored as px/cm resolution tags), or ``None`` (no resolution tags).
        compression: one of :data:`COMPRESSIONS`.
        tile: TIFF tile size, a multiple of 16.
        tmp_dir: folder for the lower levels' temporaries (default: beside ``path``).
        thumb_size: the longer side of the thumbnail to be made from the returned level; ``None``: the smallest level.

    Returns:
        ``(path, level)`` - as ``(h, w, 3)`` uint8 RGB, the smallest pyramid level whose longer side is at least
        ``thumb_size`` (level 0 when even that is smaller), so that a thumbnail of ``thumb_size`` is a
        downscale of it, never an upscale; at most ``2 * thumb_size`` px a side unless level 0 is returned.
    """
    import tifffile

    check_compression(compression)
    if tile % 16:
        raise OptionError(f"TIFF tile size must be a multiple of 16, got {tile}")
    path = Path(path)
    shapes = pyramid_shapes(width, height, tile)
    folder = Path(tmp_dir) if tmp_dir is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    comp = _tifffile_compression(compression)
    big_enough = [k for k, (w, h) in enumerate(shapes) if thumb_size is None or max(w, h) >= thumb_size]
    k_thumb = big_enough[-1] if big_enough else 0
    buffers: List[RawFile] = [level0]
    thumb_level: Optional[np.ndarray] = None
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, (w, h) in enumerate(shapes):
                src = buffers[k]
                dst = None
                if k + 1 < len(shapes):
                    nw, nh = shapes[k + 1]
                    dst = RawFile(folder, nh, nw, 3, np.uint8, prefix=f"level{k + 1}")
                    buffers.append(dst)
                extra = {}
                if mpp is not None:
                    ppcm = 1e4 / (mpp * 2 ** k)
                    extra = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
                tw.write(_level_tiles(src, w, h, tile, dst), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile),
                         photometric="rgb", subfiletype=0 if k == 0 else 1, metadata=None, software=software,
                         **comp, **extra)
                if k == k_thumb:
                    thumb_level = 255 - src.read(0, 0, h, w)
                if k > 0:
                    src.close()
    finally:
        for b in buffers[1:]:
            b.close()
    log.info("wrote %s (%d levels, %s)", path, len(shapes), compression)
    return path, thumb_level


def _level_tiles(src: RawFile, w: int, h: int, tile: int, dst: Optional[RawFile]) -> Iterator[np.ndarray]:
    """Yield the level's tiles (RGB, row-major) and write their 2x2 box-mean into ``dst`` (darkness)."""
    half = tile // 2
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            d = src.read(y, x, tile, tile)
            if dst is not None and d.any():
                small = block_reduce(d, (2, 2, 1), np.mean)
                dst.write(y // 2, x // 2, np.round(small).astype(np.uint8)[:half, :half])
            yield 255 - d


def thumbnail(rgb: np.ndarray, max_size: int) -> np.ndarray:
    """Resize ``(h, w, 3)`` uint8 so that its longer side is at most ``max_size`` (Lanczos, never enlarged)."""
    h, w = rgb.shape[:2]
    s = min(1.0, max_size / max(h, w))
    if s >= 1.0:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                  Image.Resampling.LANCZOS))


THUMBNAIL_JPEG_QUALITY = 90


def write_thumbnail(rgb: np.ndarray, path: PathLike, max_size: int = 1024) -> Path:
    """Save a thumbnail (atomically): JPEG, quality 90, for a ``.jpg``/``.jpeg`` path (a 1024 px slide overview is
    a few hundred kB instead of megabytes of PNG), else PNG."""
    small = thumbnail(rgb, max_size)
    if Path(path).suffix.lower() in (".jpg", ".jpeg"):
        return atomic_write(path, lambda p: Image.fromarray(small).save(p, format="JPEG",
                                                                       quality=THUMBNAIL_JPEG_QUALITY))
    return save_png(small, path)


def write_html(path: PathLike, title: str, he_png: str, ihc_png: str, info: Dict[str, str]) -> Path:
    """An HTML page (dominate) showing the H&E and virtual IHC thumbnails side by side, plus a table of ``info``.

    ``he_png``/``ihc_png`` are paths relative to the page. Text and attributes are escaped by dominate.
    """
    import dominate
    from dominate import tags as t

    doc = dominate.document(title=title)
    with doc.head:
        t.meta(charset="utf-8")
        t.style("img{max-width:48vw;border:1px solid #ccc} td{vertical-align:top;padding:4px}")
    with doc:
        t.h1(title)
        with t.table():
            with t.tr():
                t.th("H&E (input)")
                t.th("virtual IHC (output)")
            with t.tr():
                t.td(t.img(src=he_png, alt="H&E thumbnail"))
                t.td(t.img(src=ihc_png, alt="virtual IHC thumbnail"))
        with t.table():
            for k, v in info.items():
                with t.tr():
                    t.td(k)
                    t.td(str(v))
    return atomic_write_text(path, doc.render())


def output_paths(tiff_path: PathLike) -> Dict[str, Path]:
    """The files of one stained slide: ``tiff``, ``thumb`` (virtual IHC JPEG), ``he_thumb`` (input JPEG), ``html``."""
    p = Path(tiff_path)
    stem = p.name[: -len(p.suffix)] if p.suffix else p.name
    return {"tiff": p, "thumb": p.with_name(f"{stem}_thumbnail.jpg"),
            "he_thumb": p.with_name(f"{stem}_he_thumbnail.jpg"), "html": p.with_name(f"{stem}.html")}


def existing_outputs(paths: Sequence[Path]) -> List[Path]:
    return [p for p in paths if p.exists()]
