"""Reading whole-slide images and plain images behind one small interface.

``open_slide(path)`` returns a :class:`SlideReader` (a context manager) for

* whole-slide formats through OpenSlide (``openslide-python`` + the ``openslide-bin`` wheel): Aperio SVS, Hamamatsu
  NDPI/VMS, 3DHISTECH MRXS, Leica SCN, Philips TIFF, Ventana BIF, Zeiss CZI, DICOM and generic *tiled* TIFF - every file
  for which ``openslide.OpenSlide.detect_format`` names a vendor;
* PNG, JPEG and plain (strip) TIFF through Pillow / tifffile, as a single level.

Conventions (those of OpenSlide): ``(x, y)`` of :meth:`SlideReader.read_region` are level-0 pixel coordinates of the
region's top-left corner; ``width``/``height`` are in pixels of the requested level. Pixels outside the image, and
transparent pixels (OpenSlide returns alpha 0 where no scan data exists), come out white (255, 255, 255); partly
transparent pixels are composited onto white. Every returned array is ``uint8 (height, width, 3)`` RGB.

MPP (micrometres per pixel at level 0):

* OpenSlide: the ``openslide.mpp-x`` / ``openslide.mpp-y`` properties, else the TIFF resolution tags
  (``tiff.XResolution`` with ``tiff.ResolutionUnit`` centimeter or inch);
* TIFF via tifffile: ``XResolution``/``YResolution`` with ``ResolutionUnit`` 2 (inch) or 3 (centimetre);
* PNG (pHYs chunk) and JPEG (JFIF density / EXIF) through Pillow's ``info['dpi']``.

When x and y differ the mean is used. Values outside :data:`PLAUSIBLE_MPP` (0.01-100 um/px) are ignored with a
warning, because many files carry a meaningless screen default such as 72 or 96 dpi (264-353 um/px); ``mpp`` is then
``None``.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from util.errors import UserError

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: Range of MPP values (um/px) accepted from file metadata; anything else is treated as "no MPP".
PLAUSIBLE_MPP = (0.01, 100.0)
#: Relative tolerance for "a level matches the target MPP" in :meth:`SlideReader.best_level_for_mpp`.
MPP_TOLERANCE = 0.10
#: Largest level :meth:`SlideReader.read_level` will read into memory (pixels).
MAX_READ_LEVEL_PIXELS = 64 * 1024 * 1024
#: Pixels of one strip read by :meth:`SlideReader.get_thumbnail` (bounds its memory whatever the level's size).
THUMBNAIL_STRIP_PIXELS = 16 * 1024 * 1024

PLAIN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_FORMATS = (
    "OpenSlide formats (Aperio .svs/.tif, Hamamatsu .ndpi/.vms/.vmu, 3DHISTECH .mrxs, Leica .scn, Philips .tiff, "
    "Ventana .bif, Zeiss .czi, DICOM, Sakura .svslide, generic tiled .tif/.tiff) and plain .png/.jpg/.jpeg/.tif/.tiff "
    "images"
)


class SlideError(UserError, OSError):
    """A slide file is missing, unreadable, corrupt, or in an unsupported format (the message names the file)."""


class UnsupportedSlideFormatError(SlideError):
    """The file exists but is neither an OpenSlide format nor a plain PNG/JPEG/TIFF image."""


class SlideMPPError(UserError, ValueError):
    """An operation needs the slide's MPP (um/px) but the file carries none."""


def _plausible_mpp(mx: Optional[float], my: Optional[float], source: str, path: Path) -> Optional[float]:
    vals = [v for v in (mx, my) if v is not None and math.isfinite(v) and v > 0]
    if not vals:
        return None
    mpp = float(sum(vals) / len(vals))
    if not (PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]):
        log.warning("%s: ignoring implausible MPP %.4g um/px from %s (accepted range %g-%g)",
                    path, mpp, source, *PLAUSIBLE_MPP)
        return None
    return mpp


def _res_to_mpp(res: Optional[float], unit: Optional[str]) -> Optional[float]:
    """Pixels per unit -> um/px; unit 'inch' or 'centimeter' (TIFF ResolutionUnit 2 / 3)."""
    if res is None or not res or unit is None:
        return None
    unit = unit.lower()
    if unit in ("2", "inch"):
        return 25400.0 / res
    if unit in ("3", "centimeter", "cm"):
        return 10000.0 / res
    return None


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 straight (non-premultiplied) RGBA -> ``(H, W, 3)`` uint8 RGB over white."""
    rgb = rgba[..., :3]
    a = rgba[..., 3:4]
    if a.min() == 255:
        return np.ascontiguousarray(rgb)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a.astype(np.uint16)) + 127) // 255
    return out.astype(np.uint8)


def choose_level(level_mpps: List[float], target_mpp: float, tolerance: float = MPP_TOLERANCE,
                 name: object = "slide") -> int:
    """Pick the level to read for ``target_mpp`` from the levels' MPPs (um/px); the rule of
    :meth:`SlideReader.best_level_for_mpp`.

    Raises:
        ValueError: ``target_mpp`` not a positive finite number, or ``level_mpps`` empty.
    """
    if not (target_mpp > 0 and math.isfinite(target_mpp)):
        raise ValueError(f"target MPP must be a positive number of um/px, got {target_mpp}")
    if not level_mpps:
        raise ValueError("no levels")
    dist = [abs(math.log(m / target_mpp)) for m in level_mpps]
    matching = [i for i, m in enumerate(level_mpps) if abs(m / target_mpp - 1.0) <= tolerance]
    if matching:
        return min(matching, key=lambda i: dist[i])
    finer = [i for i, m in enumerate(level_mpps) if m < target_mpp]
    if finer:
        return max(finer, key=lambda i: level_mpps[i])
    log.warning("%s: every level (finest %.3f um/px) is coarser than the target %.3f um/px; using level 0 "
                "and upsampling", name, level_mpps[0], target_mpp)
    return 0


class SlideReader:
    """A multi-resolution image: ``level_count`` levels, level 0 the finest.

    Attributes:
        path: the file.
        dimensions: ``(width, height)`` of level 0 in pixels.
        level_count: number of levels.
        level_dimensions: ``[(width, height), ...]`` per level.
        level_downsamples: level-0 pixels per level pixel, per level (1.0 for level 0).
        mpp: micrometres per pixel at level 0, or ``None`` when the file has no (plausible) MPP metadata.
    """

    path: Path
    level_dimensions: List[Tuple[int, int]]
    level_downsamples: List[float]
    mpp: Optional[float]

    # ---- to implement -------------------------------------------------------------------------------------------
    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Read a ``width x height`` region of ``level`` whose top-left corner is ``(x, y)`` in level-0 pixels.

        Returns:
            ``(height, width, 3)`` uint8 RGB; outside/transparent pixels white.

        Raises:
            ValueError: ``level`` out of range or a non-positive size.
            SlideError: the file cannot be decoded.
        """
        raise NotImplementedError

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """Whole slide scaled so that its longer side is at most ``max_size`` px (aspect kept, never enlarged).

        The source is the smallest pyramid level still at least as large as the thumbnail (a lower level when the
        slide has one, as OpenSlide's own ``get_thumbnail`` does), read in horizontal strips of about
        :data:`THUMBNAIL_STRIP_PIXELS` pixels (at least one thumbnail row) and area-averaged (Pillow ``BOX`` filter)
        strip by strip, so memory is bounded by the strip and the thumbnail, never by the whole level (OpenSlide's
        ``get_thumbnail`` reads the whole level at once). Size: ``round(side * max_size / longer side)``, at least 1.

        Returns:
            ``(h, w, 3)`` uint8 RGB with ``max(h, w) <= max_size``.

        Raises:
            ValueError: ``max_size`` not positive.
        """
        max_size = int(max_size)
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        w0, h0 = self.dimensions
        scale = min(1.0, max_size / max(w0, h0))
        tw, th = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        large_enough = [i for i, (w, h) in enumerate(self.level_dimensions) if w >= tw and h >= th] or [0]
        level = min(large_enough, key=lambda i: self.level_dimensions[i][0] * self.level_dimensions[i][1])
        return self._strip_resize(level, tw, th)

    def _strip_resize(self, level: int, tw: int, th: int) -> np.ndarray:
        """Area-average ``level`` to ``(th, tw, 3)`` reading strips of whole level rows (see :meth:`get_thumbnail`)."""
        w, h = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        sy = h / th  # level rows per thumbnail row
        rows_per_strip = max(1, int(THUMBNAIL_STRIP_PIXELS // max(1, w) / max(sy, 1.0)))
        out = np.empty((th, tw, 3), np.uint8)
        for t0 in range(0, th, rows_per_strip):
            t1 = min(th, t0 + rows_per_strip)
            y0, y1 = t0 * sy, t1 * sy
            r0, r1 = int(math.floor(y0)), min(h, int(math.ceil(y1)))
            strip = self.read_region(0, round(r0 * ds), level, w, r1 - r0)
            im = Image.fromarray(strip).resize((tw, t1 - t0), Image.Resampling.BOX, box=(0, y0 - r0, w, y1 - r0))
            out[t0:t1] = np.asarray(im)
        return out

    def close(self) -> None:
        """Release the file. Further reads are undefined."""

    # ---- shared -------------------------------------------------------------------------------------------------
    @property
    def dimensions(self) -> Tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> Optional[float]:
        """MPP (um/px) of ``level``: ``mpp * level_downsamples[level]``, or ``None`` without MPP."""
        self._check_level(level)
        return None if self.mpp is None else self.mpp * self.level_downsamples[level]

    def read_level(self, level: int) -> np.ndarray:
        """The whole of ``level`` as ``(h, w, 3)`` uint8 RGB. For small levels and thumbnails only.

        Raises:
            ValueError: the level has more than :data:`MAX_READ_LEVEL_PIXELS` pixels (use read_region instead).
        """
        self._check_level(level)
        w, h = self.level_dimensions[level]
        if w * h > MAX_READ_LEVEL_PIXELS:
            raise ValueError(f"{self.path}: level {level} is {w}x{h} px, more than read_level's limit of "
                             f"{MAX_READ_LEVEL_PIXELS} px; read it in regions with read_region")
        return self.read_region(0, 0, level, w, h)

    def best_level_for_mpp(self, target_mpp: float, tolerance: float = MPP_TOLERANCE) -> int:
        """The level to read for a model trained at ``target_mpp`` um/px.

        Rule: among levels whose MPP is within ``tolerance`` (relative) of the target, the nearest one (in
        ``|log(mpp / target)|``); if none matches, the coarsest level still finer than the target (so that the
        caller only ever *down*-samples it to the target); if every level is coarser, level 0 (the caller upsamples,
        losing detail - a warning is logged).

        Raises:
            SlideMPPError: the slide has no MPP.
            ValueError: ``target_mpp`` is not positive.
        """
        if self.mpp is None:
            raise SlideMPPError(f"slide '{self.path}' has no MPP (um/px) metadata")
        return choose_level([self.mpp * d for d in self.level_downsamples], target_mpp, tolerance, self.path)

    def _check_level(self, level: int) -> None:
        if not (isinstance(level, (int, np.integer)) and 0 <= level < self.level_count):
            raise ValueError(f"{self.path}: level {level!r} out of range 0..{self.level_count - 1}")

    def _check_region(self, level: int, width: int, height: int) -> None:
        self._check_level(level)
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"{self.path}: region size must be positive, got {width}x{height}")

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}('{self.path}', {self.dimensions[0]}x{self.dimensions[1]}, "
                f"levels={self.level_count}, mpp={self.mpp})")


class OpenSlideReader(SlideReader):
    """A slide read through OpenSlide (any format ``openslide.OpenSlide.detect_format`` recognises)."""

    def __init__(self, path: PathLike):
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(f"cannot open slide '{self.path}' with OpenSlide: {e}") from e
        s = self._slide
        self.level_dimensions = [tuple(int(v) for v in d) for d in s.level_dimensions]
        self.level_downsamples = [float(d) for d in s.level_downsamples]
        self.vendor = s.properties.get("openslide.vendor")
        self.mpp = self._read_mpp()

    def _read_mpp(self) -> Optional[float]:
        p = self._slide.properties

        def num(key: str) -> Optional[float]:
            try:
                return float(p[key]) if key in p else None
            except ValueError:
                return None

        mpp = _plausible_mpp(num("openslide.mpp-x"), num("openslide.mpp-y"), "openslide.mpp-x/y", self.path)
        if mpp is None:
            unit = p.get("tiff.ResolutionUnit")
            mpp = _plausible_mpp(_res_to_mpp(num("tiff.XResolution"), unit),
                                 _res_to_mpp(num("tiff.YResolution"), unit), "TIFF resolution tags", self.path)
        return mpp

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        import openslide

        self._check_region(level, width, height)
        try:
            im = self._slide.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        except openslide.OpenSlideError as e:
            raise SlideError(f"cannot read region ({x}, {y}, level {level}, {width}x{height}) of '{self.path}': "
                             f"{e}") from e
        return _composite_on_white(np.asarray(im))

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None


class ImageReader(SlideReader):
    """A single-level plain image (PNG, JPEG, strip TIFF). Uncompressed contiguous TIFFs are memory-mapped;
    everything else is decoded into memory once, on the first read."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self._array: Optional[np.ndarray] = None
        suffix = self.path.suffix.lower()
        if suffix in (".tif", ".tiff"):
            self._init_tiff()
        else:
            self._init_pillow()
        self.level_downsamples = [1.0]

    # ---- metadata ----
    def _init_pillow(self) -> None:
        try:
            with Image.open(self.path) as im:
                self.level_dimensions = [(int(im.width), int(im.height))]
                dpi = im.info.get("dpi")
                fmt = im.format
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SlideError(f"cannot read image '{self.path}': {e}") from e
        if fmt not in ("PNG", "JPEG", "MPO"):
            raise UnsupportedSlideFormatError(
                f"'{self.path}' is a {fmt} file; supported formats: {SUPPORTED_FORMATS}")
        self.mpp = None
        if dpi:
            try:
                mx, my = (25400.0 / float(d) if float(d) > 0 else None for d in dpi[:2])
            except (TypeError, ValueError, ZeroDivisionError):
                mx = my = None
            self.mpp = _plausible_mpp(mx, my, f"{fmt} dpi {dpi}", self.path)

    def _init_tiff(self) -> None:
        import tifffile

        try:
            with tifffile.TiffFile(self.path) as tf:
                page = tf.pages.first if hasattr(tf.pages, "first") else tf.pages[0]
                shape = page.shape
                axes = page.axes
                tags = page.tags
                unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
                mx = my = None
                for name in ("XResolution", "YResolution"):
                    if name in tags:
                        num, den = tags[name].value
                        res = num / den if den else 0.0
                        val = _res_to_mpp(res, str(int(unit)))
                        if name[0] == "X":
                            mx = val
                        else:
                            my = val
        except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as e:
            raise SlideError(f"cannot read TIFF '{self.path}': {e}") from e
        if "Y" not in axes or "X" not in axes:
            raise SlideError(f"TIFF '{self.path}' has axes {axes!r}, expected an image with Y and X axes")
        self.level_dimensions = [(int(shape[axes.index("X")]), int(shape[axes.index("Y")]))]
        self.mpp = _plausible_mpp(mx, my, "TIFF resolution tags", self.path)

    # ---- pixels ----
    def _pixels(self) -> np.ndarray:
        if self._array is None:
            self._array = self._load()
        return self._array

    def _load(self) -> np.ndarray:
        if self.path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            try:
                try:
                    arr = tifffile.memmap(self.path, mode="r")
                except ValueError:  # compressed or not contiguous: decode
                    arr = tifffile.imread(self.path, key=0)
            except (tifffile.TiffFileError, OSError, ValueError) as e:
                raise SlideError(f"cannot read TIFF '{self.path}': {e}") from e
            return self._to_rgb(arr)
        try:
            with Image.open(self.path) as im:
                im.load()
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    return _composite_on_white(np.asarray(im.convert("RGBA")))
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise SlideError(f"cannot read image '{self.path}': {e}") from e

    def _to_rgb(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype == np.uint16:
            arr = (arr.astype(np.uint32) * 255 + 32767) // 65535
            arr = arr.astype(np.uint8)
        elif arr.dtype != np.uint8:
            raise SlideError(f"TIFF '{self.path}' has {arr.dtype} pixels; only uint8 and uint16 are supported")
        if arr.ndim == 2:
            return np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim == 3 and arr.shape[2] == 3:
            return arr
        if arr.ndim == 3 and arr.shape[2] == 4:
            return _composite_on_white(np.asarray(arr))
        if arr.ndim == 3 and arr.shape[2] == 1:
            return np.repeat(arr, 3, axis=2)
        raise SlideError(f"TIFF '{self.path}' has pixel array shape {arr.shape}; expected (H, W), (H, W, 3) or "
                         "(H, W, 4)")

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        self._check_region(level, width, height)
        x, y, width, height = int(x), int(y), int(width), int(height)
        a = self._pixels()
        W, H = self.dimensions
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + width, W), min(y + height, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = a[y0:y1, x0:x1, :3]
        return out

    def close(self) -> None:
        self._array = None


def open_slide(path: PathLike) -> SlideReader:
    """Open ``path`` as a :class:`SlideReader` (use as a context manager).

    OpenSlide is tried first (any format it detects, including tiled TIFF); otherwise PNG, JPEG and plain TIFF are
    read as a single level through Pillow / tifffile.

    Raises:
        SlideError: the file is missing, is a folder, or cannot be decoded.
        UnsupportedSlideFormatError: neither OpenSlide nor the plain-image readers accept it
            (the message lists :data:`SUPPORTED_FORMATS`).
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideError(f"slide file '{path}' does not exist")
    if not path.is_file():
        raise SlideError(f"'{path}' is not a file (expected a slide file: {SUPPORTED_FORMATS})")
    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError) as e:
        raise SlideError(f"cannot read '{path}': {e}") from e
    if vendor is not None:
        return OpenSlideReader(path)
    if path.suffix.lower() in PLAIN_IMAGE_SUFFIXES:
        return ImageReader(path)
    raise UnsupportedSlideFormatError(f"'{path}' is not a supported slide or image; supported formats: "
                                      f"{SUPPORTED_FORMATS}")
