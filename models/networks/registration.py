"""Registration network and spatial transformer for registration-corrected training (``--reg_correction``).

RegGAN (Kong et al., "Breaking the Dilemma of Medical Image-to-Image Translation", NeurIPS 2021; authors' code
Kid-Liet/Reg-GAN) trains, jointly with the generator, a registration network ``R`` that takes the translated image
and the target and predicts a dense 2-channel displacement field; a spatial transformer warps the translated image
with it, and the generator's pixel loss compares the *warped* translation with the target. Misaligned training pairs
then cost the generator less blur: ``R`` absorbs the displacement.

* :class:`RegistrationUNet`: a small U-Net (VoxelMorph-style encoder/decoder with skip connections, LeakyReLU 0.2),
  input ``cat(moving, fixed)`` ``(N, 2C, H, W)``, output the field ``(N, 2, H, W)`` in pixels. Its last convolution
  starts at N(0, 1e-5) weights and zero bias (VoxelMorph's flow-layer initialisation), so training starts from an
  almost identity warp. Any H, W >= 2 work (the decoder upsamples to each skip connection's size).
* :func:`warp`: the spatial transformer through ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=True``,
  **border** padding: a pixel sampled outside the image takes the nearest edge value. This toolkit's choice: grid_sample's
  default zero padding would, in the [-1, 1] image convention, paint mid-grey borders that the pixel loss penalises).

Field convention (used by every function here and by ``models/registration_losses.py``): ``flow[:, 0]`` is the
horizontal (x, width) and ``flow[:, 1]`` the vertical (y, height) displacement in pixels; the warped image at pixel
``q = (x, y)`` is the moving image sampled at ``q + flow(q)``.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RegistrationUNet", "define_R", "warp", "identity_grid"]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True))


class RegistrationUNet(nn.Module):
    """U-Net predicting a displacement field from ``(moving, fixed)``.

    Args:
        in_nc: channels of *one* image (the network sees ``2 * in_nc``).
        nf: channels of the first level; deeper levels use ``2 * nf``.
        depth: number of stride-2 downsamplings (default 3, i.e. features down to 1/8 of the image size).

    ``forward(moving, fixed)``: both ``(N, in_nc, H, W)`` (any range; the toolkit passes [-1, 1] images), returns
    ``(N, 2, H, W)`` float displacements in pixels (x then y).

    Raises:
        ValueError: ``in_nc``, ``nf`` or ``depth`` < 1 (constructor); inputs of different shapes (forward).
    """

    def __init__(self, in_nc: int = 3, nf: int = 32, depth: int = 3):
        super().__init__()
        if in_nc < 1 or nf < 1 or depth < 1:
            raise ValueError(f"RegistrationUNet needs in_nc, nf, depth >= 1, got {in_nc}, {nf}, {depth}")
        widths = [nf] + [2 * nf] * depth  # level 0 (full size) .. level depth
        self.inc = _conv(2 * in_nc, widths[0])
        self.down = nn.ModuleList(_conv(widths[i], widths[i + 1], stride=2) for i in range(depth))
        # decoder: at level i (from depth-1 down to 0) fuse the upsampled deeper features with the skip of level i
        self.up = nn.ModuleList(_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.refine = _conv(widths[0], widths[0])
        self.flow = nn.Conv2d(widths[0], 2, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)

    def forward(self, moving: Tensor, fixed: Tensor) -> Tensor:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving and fixed images differ in shape: {tuple(moving.shape)} vs {tuple(fixed.shape)}")
        x = self.inc(torch.cat([moving, fixed], 1))
        skips: List[Tensor] = [x]
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()  # the deepest level is x itself
        for layer in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = layer(torch.cat([x, skip], 1))
        return self.flow(self.refine(x))


def define_R(in_nc: int = 3, nf: int = 32, depth: int = 3, device: torch.device = torch.device("cpu")) -> nn.Module:
    """Build a :class:`RegistrationUNet` on ``device`` (PyTorch's default initialisation for the hidden layers, the
    flow layer as in the class docstring)."""
    return RegistrationUNet(in_nc, nf, depth).to(device)


def identity_grid(height: int, width: int, dtype: torch.dtype = torch.float32,
                  device: torch.device = torch.device("cpu")) -> Tensor:
    """Pixel coordinates ``(1, 2, H, W)``: channel 0 is x (column index), channel 1 is y (row index)."""
    ys = torch.arange(height, dtype=dtype, device=device)
    xs = torch.arange(width, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy])[None]


def warp(image: Tensor, flow: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Spatial transformer: ``out(q) = image(q + flow(q))`` by ``torch.nn.functional.grid_sample``.

    Args:
        image: ``(N, C, H, W)`` float, any range (the toolkit's images are in [-1, 1]); H, W >= 2.
        flow: ``(N, 2, H, W)`` displacement in pixels, x (width) then y (height) (module docstring).
        mode: grid_sample interpolation (``'bilinear'``, ``'nearest'``, ``'bicubic'``).
        padding_mode: grid_sample padding for samples outside the image (default ``'border'``, see module docstring).

    Returns:
        ``(N, C, H, W)``, same dtype as ``image``. A zero field returns ``image`` (up to float rounding); an integer
        field moves pixels exactly (``align_corners=True`` maps pixel centres to pixel centres).

    Raises:
        ValueError: shapes that do not match, or H or W < 2.
    """
    if image.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"warp needs image (N, C, H, W) and flow (N, 2, H, W), got {tuple(image.shape)} and "
                         f"{tuple(flow.shape)}")
    n, _, h, w = image.shape
    if flow.shape[0] != n or flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"flow {tuple(flow.shape)} does not match image {tuple(image.shape)}")
    if h < 2 or w < 2:
        raise ValueError(f"warp needs H, W >= 2, got {h}x{w}")
    flow = flow.to(image.dtype)
    pos = identity_grid(h, w, image.dtype, image.device) + flow  # (N, 2, H, W) sampling positions in pixels
    scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=image.dtype, device=image.device).view(1, 2, 1, 1)
    grid = (pos * scale - 1.0).permute(0, 2, 3, 1)  # (N, H, W, 2), x then y, in [-1, 1] for align_corners=True
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)

