"""Tile grid and blending window for seamless tiled inference.

Tiles of ``tile`` px are laid ``stride = tile - overlap`` apart: tile ``i`` covers ``[i * stride, i * stride + tile)``
along an axis; the last tile may run past the image (the reader pads it white, the padding is discarded).
With ``overlap < tile / 2`` every pixel is covered by one tile, or by two neighbours inside their ``overlap``-wide
shared strip, never by three.

Blending window (a partition of unity): along each axis a tile's weight is 1 in its middle and ramps over its
``overlap``-wide strips shared with a neighbour, the ramp of the left (upper) neighbour being ``1 - r`` where ``r`` is
the right (lower) tile's ramp, so the two weights sum to 1 exactly. Sides with no neighbour (image borders) keep
weight 1. The ramp is the raised cosine ``r(u) = sin^2(pi / 2 * (u + 0.5) / overlap)``, ``u = 0 .. overlap - 1``
(a Hann half-window, smooth at both ends). The 2-D weight is the product of the two axes' weights, so the weights of
the (at most 4) tiles covering a pixel sum to 1 everywhere: blended = sum(weight * tile output), no normalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Tuple

import numpy as np

from util.errors import OptionError


def ramp(overlap: int) -> np.ndarray:
    """Rising raised-cosine ramp of length ``overlap`` (float64, strictly inside (0, 1)); ``ramp + ramp[::-1] == 1``."""
    if overlap <= 0:
        return np.zeros(0)
    u = (np.arange(overlap) + 0.5) / overlap
    return np.sin(0.5 * math.pi * u) ** 2


@lru_cache(maxsize=16)
def axis_weights(tile: int, overlap: int, has_prev: bool, has_next: bool) -> np.ndarray:
    """1-D weights ``(tile,)`` float32 of a tile along one axis (see module docstring)."""
    w = np.ones(tile, np.float64)
    r = ramp(overlap)
    if overlap:
        if has_prev:
            w[:overlap] = r
        if has_next:
            w[tile - overlap:] = 1.0 - r
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


def tile_window(tile: int, overlap: int, col: int, row: int, n_cols: int, n_rows: int) -> np.ndarray:
    """2-D weights ``(tile, tile)`` float32 in (0, 1] of tile ``(col, row)`` in an ``n_cols x n_rows`` grid."""
    wx = axis_weights(tile, overlap, col > 0, col < n_cols - 1)
    wy = axis_weights(tile, overlap, row > 0, row < n_rows - 1)
    return wy[:, None] * wx[None, :]


def validate_tiling(tile: int, overlap: int, stride_multiple: int = 1) -> None:
    """Check a tile size and overlap.

    Raises:
        OptionError: ``tile`` not positive or not a multiple of ``stride_multiple`` (the generator's stride, e.g. 4
            for resnet generators, 256 for unet_256), ``overlap`` negative, or ``overlap >= tile / 2``.
    """
    if tile <= 0:
        raise OptionError(f"--tile_size must be positive, got {tile}")
    if stride_multiple > 1 and tile % stride_multiple:
        raise OptionError(f"--tile_size {tile} is not a multiple of {stride_multiple}, the stride this generator "
                          f"needs; use e.g. {max(stride_multiple, tile // stride_multiple * stride_multiple)}")
    if overlap < 0:
        raise OptionError(f"--overlap must be >= 0, got {overlap}")
    if 2 * overlap >= tile:
        raise OptionError(f"--overlap {overlap} must be less than half of --tile_size {tile} "
                          f"(at most {(tile - 1) // 2})")


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering a ``width x height`` image (pixels of the processing resolution)."""

    width: int
    height: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        validate_tiling(self.tile, self.overlap)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @staticmethod
    def _count(n: int, tile: int, stride: int) -> int:
        return 1 if n <= tile else 1 + math.ceil((n - tile) / stride)

    @property
    def n_cols(self) -> int:
        return self._count(self.width, self.tile, self.stride)

    @property
    def n_rows(self) -> int:
        return self._count(self.height, self.tile, self.stride)

    def __len__(self) -> int:
        return self.n_cols * self.n_rows

    def origin(self, col: int, row: int) -> Tuple[int, int]:
        """Top-left ``(x, y)`` of tile ``(col, row)``."""
        return col * self.stride, row * self.stride

    def window(self, col: int, row: int) -> np.ndarray:
        """Blending weights ``(tile, tile)`` float32 of tile ``(col, row)``."""
        return tile_window(self.tile, self.overlap, col, row, self.n_cols, self.n_rows)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        """``(col, row)`` in row-major order."""
        for r in range(self.n_rows):
            for c in range(self.n_cols):
                yield c, r
