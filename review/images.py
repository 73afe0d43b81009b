"""Anonymous re-encoding of review images.

Real and generated images are decoded to uint8 RGB pixels and encoded again by the same PNG encoder with the same
settings, so file format, colour type, bit depth and chunk layout cannot tell them apart, and nothing of the source
file survives but its pixels: no text/EXIF/ICC/time chunks, no original name. (The compressed size still depends on
the content; a reviewer does not see it in the form.)
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from util.image_io import read_rgb_uint8

PathLike = Union[str, os.PathLike]

#: zlib level used for every review image (same for real and generated).
PNG_COMPRESS_LEVEL = 6


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode ``(H, W, 3)`` uint8 RGB pixels as a bare PNG (IHDR, IDAT, IEND only).

    Raises:
        ValueError: not an ``(H, W, 3)`` uint8 array.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def load_pixels(path: PathLike) -> np.ndarray:
    """Read ``path`` as ``(H, W, 3)`` uint8 RGB (:func:`util.image_io.read_rgb_uint8`; raises ``ImageReadError``)."""
    return read_rgb_uint8(Path(path))


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` URI of PNG bytes (RFC 2397)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
