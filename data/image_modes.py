"""Reading an image file of any Pillow mode as an intensity array with the requested number of channels.

All image modes end up in one convention: an array ``(H, W, C)`` with C = 1 or 3 holding intensities in [0, 1]
(0 = black, 1 = white), stored either as uint8 (value / 255; 8-bit sources, kept in 8 bits so that cropping happens
before any float conversion) or as float32 (16-bit, 32-bit, float and alpha-composited sources). :func:`to_unit_float`
turns both into float32 in [0, 1]; :func:`load_array` reads a file straight to float32. The datasets later map the
values to [-1, 1].

Mode rules (Pillow mode names, https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes):

* ``L``, ``RGB``: 8-bit, kept as uint8 (intensity = value / 255).
* ``1`` (bilevel): 0 -> 0, 1 -> 255 (uint8).
* ``P`` / ``PA`` (palette): converted through Pillow to ``RGB`` (``RGBA`` when the palette has transparency), then as below.
* ``RGBA``, ``LA``, ``PA``, ``La``, ``RGBa``: **composited on white** with the alpha channel
  (``out = a * colour + (1 - a) * 1``). White is the background of a bright-field slide, so transparent padding
  looks like empty glass instead of black tissue. Premultiplied modes (``La``, ``RGBa``) are un-premultiplied by Pillow
  first.
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: converted to ``RGB`` by Pillow.
* ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (16-bit grey): divided by 65535, so the full 16-bit range maps onto
  [0, 1] monotonically (nothing clipped; the 8-bit equivalent is value / 257).
* ``I`` (32-bit signed integer, e.g. Pillow's reading of some 16-bit TIFFs): taken as 16-bit data and divided by 65535;
  values outside [0, 65535] raise :class:`~util.errors.DataError` (the scale would be a guess).
* ``F`` (32-bit float): taken as intensities in [0, 1] (scikit-image's float-image convention); values outside
  [0, 1] or non-finite values raise :class:`~util.errors.DataError`.
* 16-bit-per-channel RGB files: Pillow reads them as 8-bit ``RGB`` (high byte, i.e. value // 256 - a rescaling, not a
  clip). Files Pillow cannot identify (e.g. float64 TIFF) raise :class:`~util.errors.DataError`.

Channel count: 3 -> 1 uses the ITU-R 601-2 luma weights of Pillow's ``convert("L")``
(``L = 0.299 R + 0.587 G + 0.114 B``) computed in float32 (no intermediate rounding, so the result is float32);
1 -> 3 repeats the grey channel.
"""
from __future__ import annotations

import os
from typing import Tuple, Union

import numpy as np
from PIL import Image

from util.errors import DataError

PathLike = Union[str, os.PathLike]

#: Luma weights of ITU-R 601-2, as used by Pillow's ``convert("L")``.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I;16BS", "I;16LS", "I;16S")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_PILLOW_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV")
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_header(path: PathLike) -> Tuple[Tuple[int, int], str]:
    """Read only the header of an image file (no pixel decoding).

    Returns:
        ``((width, height), mode)`` in pixels and the Pillow mode string.

    Raises:
        DataError: the file is missing, not an image Pillow can identify, or its header is corrupt (names the file).
    """
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except _PIL_ERRORS as e:
        raise DataError(f"cannot read image header of '{path}': {e}") from e


def open_image(path: PathLike) -> Image.Image:
    """Open and fully decode an image file with Pillow.

    Raises:
        DataError: missing, unreadable, truncated or corrupt file (the message names it).
    """
    try:
        with Image.open(path) as im:
            im.load()
            # copy() detaches the decoded pixels from the file handle closed by the with-block.
            return im.copy()
    except _PIL_ERRORS as e:
        raise DataError(f"cannot decode image '{path}': {e}") from e


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, C+1)`` float in [0, 1] with alpha last -> ``(H, W, C)`` composited on white."""
    colour, alpha = rgba[..., :-1], rgba[..., -1:]
    return colour * alpha + (1.0 - alpha)


def image_to_array(im: Image.Image, path: PathLike = "<image>") -> np.ndarray:
    """Convert a decoded Pillow image of any supported mode to grey ``(H, W)`` or colour ``(H, W, 3)`` intensities.

    Returns:
        uint8 (intensity = value / 255) for 8-bit sources, float32 in [0, 1] otherwise.

    See the module docstring for the rule applied to each mode. ``path`` only names the file in error messages.

    Raises:
        DataError: an unsupported mode, or ``I``/``F`` values outside the documented range.
    """
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "La":
        im = im.convert("LA")
        mode = "LA"
    elif mode == "RGBa":
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode in _PILLOW_TO_RGB_MODES:
        im = im.convert("RGB")
        mode = "RGB"

    if mode in ("L", "RGB"):
        return np.asarray(im, dtype=np.uint8)
    if mode == "1":
        return np.asarray(im, dtype=np.uint8) * np.uint8(255)
    if mode in ("RGBA", "LA"):
        return _composite_on_white(np.asarray(im, dtype=np.float32) / np.float32(255.0)).astype(np.float32)
    if mode in _SIXTEEN_BIT_MODES:
        a = np.asarray(im)
        if a.dtype.kind == "i" and a.min(initial=0) < 0:
            raise DataError(f"image '{path}' (mode {mode}) holds negative 16-bit values; expected unsigned 0..65535")
        return a.astype(np.float32) / np.float32(65535.0)
    if mode == "I":
        a = np.asarray(im)
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(
                f"image '{path}' is a 32-bit integer image (mode I) with values {lo}..{hi}; expected 16-bit data "
                "in 0..65535 (rescale it, or save it as 8- or 16-bit)"
            )
        return a.astype(np.float32) / np.float32(65535.0)
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        if a.size and not np.isfinite(a).all():
            raise DataError(f"image '{path}' is a float image (mode F) with NaN or infinite values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"image '{path}' is a float image (mode F) with values {lo:g}..{hi:g}; expected intensities in [0, 1]"
            )
        return a.copy()
    raise DataError(f"image '{path}' has the unsupported Pillow mode '{im.mode}'")


def to_channels(a: np.ndarray, nc: int, path: PathLike = "<image>") -> np.ndarray:
    """Give a grey ``(H, W)`` / ``(H, W, 1)`` or colour ``(H, W, 3)`` intensity array exactly ``nc`` channels.

    Returns:
        ``(H, W, nc)``; same dtype and scale as the input (uint8 or float32 in [0, 1]), except 3 -> 1 channel, which
        returns float32 in [0, 1] (luma, see the module docstring).

    Raises:
        DataError: ``nc`` is not 1 or 3, or the array has another channel count (names the file).
    """
    if nc not in (1, 3):
        raise DataError(f"cannot give image '{path}' {nc} channels: --input_nc/--output_nc must be 1 or 3")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise DataError(f"image '{path}' has shape {a.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")
    c = a.shape[2]
    if c == nc:
        return a
    if nc == 3:
        return np.repeat(a, 3, axis=2)
    luma = a.astype(np.float32) @ LUMA_WEIGHTS
    if a.dtype == np.uint8:
        luma /= np.float32(255.0)
    return luma[:, :, None]


def to_unit_float(a: np.ndarray) -> np.ndarray:
    """uint8 (value / 255) or float32 intensities -> float32 in [0, 1]."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    return a.astype(np.float32, copy=False)


def load_array(path: PathLike, nc: int) -> np.ndarray:
    """Read an image file as ``(H, W, nc)`` float32 in [0, 1] (see the module docstring for the mode rules).

    Raises:
        DataError: unreadable/corrupt file, unsupported mode or value range, or ``nc`` not in (1, 3).
    """
    return to_unit_float(to_channels(image_to_array(open_image(path), path), nc, path))
