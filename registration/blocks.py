"""The block grid of the fine stage and the seamless, disk-backed mosaic of registered blocks.

The working frame (the H&E slide at the working resolution) is split into ``rows x cols`` blocks (BCI paper: 16
blocks, 4x4), subdivided further when a block would exceed ``max_block`` pixels on a side, so that memory is bounded
by the block size. Each block is registered with a ``margin`` of surrounding pixels (so the warp never has to pull
content from outside what was read: no black seams) and written back with an ``overlap`` band on each side that is
cross-faded with what neighbouring blocks wrote before (blocks are processed in raster order; inside the band the new
block's weight rises linearly from 0 to 1, so along a shared edge the two blocks' weights sum to 1).

The mosaic lives in uncompressed, memory-mapped TIFF files (``tifffile.memmap``): RGB uint8 plus a uint8 coverage
mask (255 where the IHC slide covered the pixel). Nothing but one block is ever held in memory.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from util.errors import OptionError

PathLike = Union[str, os.PathLike]


def parse_grid(text: str) -> tuple[int, int]:
    """``'4x4'`` -> ``(4, 4)`` (rows, cols). Raises :class:`OptionError` naming ``--blocks`` otherwise."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise OptionError(f"--blocks {text!r}: expected ROWSxCOLS, e.g. 4x4") from None
    if rows < 1 or cols < 1:
        raise OptionError(f"--blocks {text!r}: rows and columns must be >= 1")
    return rows, cols


@dataclass(frozen=True)
class Block:
    """One block: its core ``[y0, y1) x [x0, x1)`` in working pixels and its grid position ``(row, col)``."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int

    def expanded(self, pad: int, height: int, width: int, clip: bool = True) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` grown by ``pad`` on every side, clipped to the ``height x width`` frame unless
        ``clip`` is False (the registration context reaches past the frame's border, where the slides may still
        have content)."""
        if not clip:
            return self.y0 - pad, self.y1 + pad, self.x0 - pad, self.x1 + pad
        return max(0, self.y0 - pad), min(height, self.y1 + pad), max(0, self.x0 - pad), min(width, self.x1 + pad)


def block_grid(height: int, width: int, rows: int, cols: int, max_block: int = 0) -> list[Block]:
    """Split a ``height x width`` frame into at least ``rows x cols`` near-equal blocks, raster order.

    ``max_block`` > 0 raises the counts so that no block side exceeds it. Blocks tile the frame exactly.
    """
    if max_block and max_block > 0:
        rows = max(rows, math.ceil(height / max_block))
        cols = max(cols, math.ceil(width / max_block))
    rows, cols = min(rows, height), min(cols, width)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    return [Block(r, c, int(ys[r]), int(ys[r + 1]), int(xs[c]), int(xs[c + 1]))
            for r in range(rows) for c in range(cols)]


def blend_alpha(block: Block, y0: int, y1: int, x0: int, x1: int, overlap: int) -> np.ndarray:
    """Weight ``(y1 - y0, x1 - x0)`` float32 of a block's new pixels over what earlier (upper/left) blocks wrote.

    Along y: if the block has an upper neighbour, the weight rises linearly over ``[block.y0 - overlap,
    block.y0 + overlap)`` from ``0.5 / (2 overlap)`` to ``1 - 0.5 / (2 overlap)``, and is 1 below; same along x with the
    left neighbour. The 2-D weight is the product. Pixels never written before have weight 1 by construction.
    """
    def axis(lo, hi, start, has_prev):
        w = np.ones(hi - lo, np.float32)
        if has_prev and overlap > 0:
            u = (np.arange(lo, hi) - (start - overlap) + 0.5) / (2 * overlap)
            w = np.clip(u, 0, 1).astype(np.float32)
        return w

    wy = axis(y0, y1, block.y0, block.row > 0)
    wx = axis(x0, x1, block.x0, block.col > 0)
    return wy[:, None] * wx[None, :]


class Mosaic:
    """Disk-backed RGB + coverage images of the working frame, written block by block.

    Args:
        rgb_path, coverage_path: TIFF files to create (uncompressed, so they can be memory-mapped; BigTIFF when large).
        height, width: frame size in pixels.
    """

    def __init__(self, rgb_path: PathLike, coverage_path: PathLike, height: int, width: int):
        import tifffile

        self.height, self.width = int(height), int(width)
        self.rgb_path, self.coverage_path = Path(rgb_path), Path(coverage_path)
        self.rgb = tifffile.memmap(self.rgb_path, shape=(self.height, self.width, 3), dtype=np.uint8,
                                   photometric="rgb")
        self.rgb[:] = 255
        self.cov = tifffile.memmap(self.coverage_path, shape=(self.height, self.width), dtype=np.uint8,
                                   photometric="minisblack")
        self.cov[:] = 0

    def write(self, block: Block, y0: int, y1: int, x0: int, x1: int, rgb: np.ndarray, covered: np.ndarray,
              overlap: int) -> None:
        """Blend ``rgb`` ``(y1-y0, x1-x0, 3)`` uint8 and ``covered`` (bool, same size) into the frame at rows
        ``[y0, y1)``, columns ``[x0, x1)`` (see :func:`blend_alpha`)."""
        a = blend_alpha(block, y0, y1, x0, x1, overlap)
        old = self.rgb[y0:y1, x0:x1].astype(np.float32)
        new = old * (1 - a[..., None]) + rgb.astype(np.float32) * a[..., None]
        self.rgb[y0:y1, x0:x1] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        oldc = self.cov[y0:y1, x0:x1].astype(np.float32)
        self.cov[y0:y1, x0:x1] = np.rint(oldc * (1 - a) + covered.astype(np.float32) * 255 * a).astype(np.uint8)

    def strips(self, rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(y0, rgb_strip, coverage_strip)`` over the frame, ``rows`` rows at a time (views, not copies)."""
        for y0 in range(0, self.height, rows):
            yield y0, self.rgb[y0:y0 + rows], self.cov[y0:y0 + rows]

    def flush(self) -> None:
        self.rgb.flush()
        self.cov.flush()

    def close(self) -> None:
        """Flush and release the memory maps (the files stay)."""
        for name in ("rgb", "cov"):
            arr = getattr(self, name, None)
            if arr is not None:
                arr.flush()
                setattr(self, name, None)  # the map closes when the last view is gone
