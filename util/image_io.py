"""Conversions between image files, uint8 arrays and network tensors.

Convention (pix2pix/CycleGAN): a network image is a float tensor ``(N, C, H, W)`` or ``(C, H, W)`` in [-1, 1];
a saved image is uint8 ``(H, W, C)`` RGB (or ``(H, W)`` grey) in [0, 255]. The mapping is
``u8 = round((t + 1) / 2 * 255)`` clipped to [0, 255] and ``t = u8 / 127.5 - 1``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from util.fileio import atomic_path

if TYPE_CHECKING:  # torch is imported lazily: image-reading worker processes (evaluate.py) do not need it
    import torch

PathLike = Union[str, os.PathLike]


class ImageReadError(OSError):
    """An image file is missing, unreadable or corrupt; the message names the file."""


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """Convert one image tensor in [-1, 1] to a uint8 array.

    Args:
        t: ``(C, H, W)`` or ``(1, C, H, W)`` float tensor in [-1, 1]; values outside are clipped. C is 1 or 3.

    Returns:
        ``(H, W, 3)`` uint8 for C = 3, ``(H, W)`` uint8 for C = 1.

    Raises:
        ValueError: for other shapes.
    """
    import torch

    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"tensor_to_uint8 takes one image, got a batch of shape {tuple(t.shape)}")
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"expected (C, H, W) with C in (1, 3), got shape {tuple(t.shape)}")
    a = t.detach().float().cpu().clamp(-1, 1)
    a = torch.round((a + 1.0) * 127.5).to(torch.uint8).numpy()
    return a[0] if a.shape[0] == 1 else np.ascontiguousarray(a.transpose(1, 2, 0))


def uint8_to_tensor(a: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`tensor_to_uint8`: ``(H, W, C)`` or ``(H, W)`` uint8 -> ``(C, H, W)`` float32 in [-1, 1]."""
    import torch

    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float() / 127.5 - 1.0


def save_png(array: np.ndarray, path: PathLike) -> Path:
    """Save a uint8 array as a lossless PNG, atomically (temporary file, then rename)."""
    if array.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {array.dtype} for {path}")
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)


def read_rgb_uint8(path: PathLike) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageReadError: missing, unreadable or corrupt file (the message names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image '{path}': {e}") from e
