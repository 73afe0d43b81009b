"""Colour coding of a displacement field for the training page (``--reg_correction``): hue = direction, saturation 1,
value = length relative to ``max_px`` (the usual optical-flow colour wheel; HSV to RGB by
``matplotlib.colors.hsv_to_rgb``)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor


def flow_to_rgb(flow: Tensor, max_px: Optional[float] = None) -> Tensor:
    """Visual of a displacement field.

    Args:
        flow: ``(N, 2, H, W)`` in pixels, x then y (``models/networks/registration.py``).
        max_px: length shown at full brightness; default the largest length in the batch (a zero field is black).

    Returns:
        ``(N, 3, H, W)`` float32 in [-1, 1] on the CPU (the visual convention of ``util/visualizer.py``): black = no
        displacement; hue 0 (red) = pointing to +x, 1/3 (green) = +y at 120 degrees, and so on counter-clockwise.

    Raises:
        ValueError: not ``(N, 2, H, W)``, or ``max_px`` <= 0.
    """
    from matplotlib.colors import hsv_to_rgb

    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected a displacement field (N, 2, H, W), got shape {tuple(flow.shape)}")
    if max_px is not None and not max_px > 0:
        raise ValueError(f"max_px must be > 0, got {max_px}")
    f = flow.detach().float().cpu().numpy()
    u, v = f[:, 0], f[:, 1]
    mag = np.sqrt(u * u + v * v)
    scale = float(max_px) if max_px is not None else float(mag.max())
    hue = (np.arctan2(v, u) / (2 * np.pi)) % 1.0
    val = np.clip(mag / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(mag)
    hsv = np.stack([hue, np.ones_like(hue), val], -1)  # (N, H, W, 3)
    rgb = hsv_to_rgb(hsv).astype(np.float32)
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0
