"""Losses and measurements on a displacement field (``--reg_correction``; field convention of
``models/networks/registration.py``: ``(N, 2, H, W)`` in pixels, x then y).

* :func:`smoothness_loss`: RegGAN's smoothness penalty (Kong et al., NeurIPS 2021, L_Smooth: the squared spatial
  gradient of the field), with forward differences along each image axis, the mean of their squares per axis, and the
  two axes averaged as VoxelMorph's ``Grad('l2')`` loss does (an implementation that sums the two axes instead has
  twice this value, i.e. ``--lambda_smooth`` doubled):

      L_smooth(u) = ( mean_{n,c,y,x} (u[n,c,y+1,x] - u[n,c,y,x])^2 + mean_{n,c,y,x} (u[n,c,y,x+1] - u[n,c,y,x])^2 ) / 2

  in px^2 per px^2 (pixel units of the field).
* :func:`correction_loss`: ``L_corr = mean |warp(fake, flow) - real|`` (RegGAN's correction loss, an L1).
* :func:`displacement_magnitude` / :func:`displacement_stats`: per-pixel ``||u||_2`` in pixels, and its mean / max
  (logged during training).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from models.networks.registration import warp

__all__ = ["smoothness_loss", "correction_loss", "displacement_magnitude", "displacement_stats"]


def _check_flow(flow: Tensor) -> None:
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"expected a displacement field (N, 2, H, W), got shape {tuple(flow.shape)}")


def smoothness_loss(flow: Tensor) -> Tensor:
    """RegGAN smoothness penalty (module docstring) of ``flow`` ``(N, 2, H, W)`` in pixels; a 0-dim tensor.

    Raises:
        ValueError: not ``(N, 2, H, W)``, or H or W < 2 (no spatial difference exists).
    """
    _check_flow(flow)
    if flow.shape[-1] < 2 or flow.shape[-2] < 2:
        raise ValueError(f"smoothness_loss needs H, W >= 2, got {tuple(flow.shape[-2:])}")
    dy = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    dx = flow[:, :, :, 1:] - flow[:, :, :, :-1]
    return ((dy * dy).mean() + (dx * dx).mean()) / 2.0


def correction_loss(fake: Tensor, real: Tensor, flow: Tensor) -> Tensor:
    """RegGAN's correction loss ``mean |warp(fake, flow) - real|``: ``fake``, ``real`` ``(N, C, H, W)`` (the
    toolkit's images, [-1, 1]), ``flow`` ``(N, 2, H, W)`` in pixels; a 0-dim tensor (units of the images)."""
    return (warp(fake, flow) - real).abs().mean()


def displacement_magnitude(flow: Tensor) -> Tensor:
    """``(N, H, W)``: the Euclidean length of the displacement at each pixel, in pixels."""
    _check_flow(flow)
    return torch.sqrt(flow[:, 0] ** 2 + flow[:, 1] ** 2)


def displacement_stats(flow: Tensor) -> Tuple[Tensor, Tensor]:
    """Mean and max displacement length over every pixel of the batch, in pixels (0-dim tensors, no gradient)."""
    with torch.no_grad():
        m = displacement_magnitude(flow.detach().float())
        return m.mean(), m.max()
