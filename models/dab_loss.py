"""DAB-aware loss (``--lambda_dab``): compare the amount of DAB in the virtual and the real IHC image block by block,
so that a pair misaligned by a few cells still agrees on *how much* HER2 staining a region holds.

Idea from PSPStain (Chen et al., "Pathological Semantics-Preserving Learning for H&E-to-IHC Virtual Staining",
MICCAI 2024): its protein-aware loss turns both images into a DAB optical-density map by colour deconvolution and
compares them at block level rather than pixel by pixel. This module re-derives that idea for the toolkit; the exact
transforms below are this toolkit's choices, stated where made.

Pipeline, for ``(N, 3, H, W)`` RGB tensors in [-1, 1]:

1. ``rgb01 = clamp((x + 1) / 2, RGB_FLOOR, 1)`` (RGB in [0, 1], floored as scikit-image does before the logarithm);
2. optical density per channel ``OD_c = -log10(rgb01_c)``;
3. colour deconvolution with the evaluator's stain matrix (``metrics.stain.HED_FROM_RGB``, scikit-image's
   ``hed_from_rgb``): ``OD_DAB = max(sum_c OD_c * HED_FROM_RGB[c, 2], 0)``. This equals the evaluator's
   ``metrics.stain.dab_od`` (``6 * rgb2hed(rgb)[..., 2]``) on the same image, in decimal OD;
4. focal OD map ``F = OD_DAB ** gamma`` (``gamma >= 1``; ``gamma > 1`` weighs strongly stained pixels more, in the
   spirit of a focal weighting; PSPStain's exact focal transform is not reproduced here, ``gamma = 2`` is this
   toolkit's default choice);
5. block comparison: ``mean over blocks |avgpool_k(F_fake) - avgpool_k(F_real)|`` with ``k x k`` blocks (block mean
   = block sum / k^2, so the loss does not grow with k; partial blocks at the right/bottom edge are averaged over their
   own pixels);
6. optionally a soft histogram of ``F`` per image (Gaussian kernels at ``bins`` centres spread evenly over
   ``[0, hist_max]``, width = the bin spacing, normalised to sum 1) compared by L1 (sum over bins, mean over images).

Every step is differentiable almost everywhere (the clamps have zero gradient outside their range).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from metrics.stain import HED_FROM_RGB, RGB_FLOOR

__all__ = ["dab_od_map", "focal_od", "block_means", "dab_block_l1", "soft_histogram", "dab_histogram_l1", "dab_loss"]


def _check_rgb(x: Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected an RGB batch (N, 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")


def dab_od_map(rgb: Tensor) -> Tensor:
    """DAB optical density of ``rgb`` ``(N, 3, H, W)`` in [-1, 1]: ``(N, 1, H, W)`` decimal OD >= 0 (steps 1-3 of
    the module docstring; the same numbers as ``metrics.stain.dab_od`` on the image mapped to [0, 1]).

    Raises:
        ValueError: not an ``(N, 3, H, W)`` tensor.
    """
    _check_rgb(rgb, "dab_od_map")
    x = ((rgb + 1.0) * 0.5).clamp(RGB_FLOOR, 1.0)
    od = -torch.log10(x)
    col = torch.tensor(HED_FROM_RGB[:, 2].copy(), dtype=od.dtype, device=od.device).view(1, 3, 1, 1)
    return (od * col).sum(1, keepdim=True).clamp(min=0.0)


def focal_od(od: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal OD map ``od ** gamma`` (step 4); ``od`` >= 0 any shape.

    Raises:
        ValueError: ``gamma`` < 1 (its gradient would be unbounded at OD 0).
    """
    if not gamma >= 1.0:
        raise ValueError(f"gamma must be >= 1, got {gamma}")
    return od if gamma == 1.0 else od.pow(gamma)


def block_means(x: Tensor, block_size: int) -> Tensor:
    """Means of ``x`` ``(N, C, H, W)`` over ``block_size x block_size`` blocks, ``(N, C, ceil(H/k), ceil(W/k))``;
    edge blocks cut by the image border are averaged over their own pixels.

    Raises:
        ValueError: ``block_size`` < 1.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if block_size == 1:
        return x
    return F.avg_pool2d(x, block_size, stride=block_size, ceil_mode=True)


def dab_block_l1(fake: Tensor, real: Tensor, block_size: int = 16, gamma: float = 2.0) -> Tensor:
    """``mean |block_means(F(fake)) - block_means(F(real))|`` (steps 1-5) for RGB ``(N, 3, H, W)`` in [-1, 1];
    a 0-dim tensor in OD^gamma."""
    if fake.shape != real.shape:
        raise ValueError(f"fake and real differ in shape: {tuple(fake.shape)} vs {tuple(real.shape)}")
    bf = block_means(focal_od(dab_od_map(fake), gamma), block_size)
    br = block_means(focal_od(dab_od_map(real), gamma), block_size)
    return (bf - br).abs().mean()


def soft_histogram(x: Tensor, bins: int, hist_max: float) -> Tensor:
    """Differentiable histogram of each image of ``x`` ``(N, ...)``: ``(N, bins)`` summing to 1 per image.

    Bin ``b`` has centre ``c_b = b * hist_max / (bins - 1)``; a value ``v`` contributes ``exp(-(v - c_b)^2 /
    (2 s^2))`` with ``s = hist_max / (bins - 1)``, and each image's counts are normalised to sum 1.

    Raises:
        ValueError: ``bins`` < 2 or ``hist_max`` <= 0.
    """
    if bins < 2 or not hist_max > 0:
        raise ValueError(f"soft_histogram needs bins >= 2 and hist_max > 0, got {bins}, {hist_max}")
    v = x.reshape(x.shape[0], 1, -1)
    s = hist_max / (bins - 1)
    centres = torch.arange(bins, dtype=v.dtype, device=v.device).view(1, bins, 1) * s
    k = torch.exp(-0.5 * ((v - centres) / s) ** 2).sum(-1)  # (N, bins)
    return k / k.sum(1, keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)


def dab_histogram_l1(fake: Tensor, real: Tensor, bins: int = 16, hist_max: float = 2.0, gamma: float = 2.0) -> Tensor:
    """L1 between the soft histograms (:func:`soft_histogram`) of the focal DAB OD maps, summed over bins and
    averaged over the batch; a 0-dim tensor in [0, 2]."""
    hf = soft_histogram(focal_od(dab_od_map(fake), gamma), bins, hist_max)
    hr = soft_histogram(focal_od(dab_od_map(real), gamma), bins, hist_max)
    return (hf - hr).abs().sum(1).mean()


def dab_loss(fake: Tensor, real: Tensor, block_size: int = 16, gamma: float = 2.0, hist_bins: int = 0,
             hist_max: Optional[float] = 2.0) -> Tensor:
    """The DAB-aware loss: :func:`dab_block_l1` plus, when ``hist_bins`` >= 2, :func:`dab_histogram_l1`.

    Args:
        fake, real: ``(N, 3, H, W)`` RGB in [-1, 1] (virtual and real IHC).
        block_size: block side k in pixels (``--dab_block_size``).
        gamma: focal exponent (``--dab_gamma``).
        hist_bins: soft-histogram bins (``--dab_hist_bins``; 0 = no histogram term).
        hist_max: upper end of the histogram range, in OD^gamma.

    Returns:
        0-dim tensor (unweighted; the model multiplies by ``--lambda_dab``).

    Raises:
        ValueError: bad shapes or parameters (named).
    """
    loss = dab_block_l1(fake, real, block_size, gamma)
    if hist_bins:
        loss = loss + dab_histogram_l1(fake, real, hist_bins, hist_max, gamma)
    return loss
