"""Normalisation layer factory (pix2pix convention)."""
from __future__ import annotations

import functools

from torch import nn

from util.errors import OptionError


class Identity(nn.Module):
    def forward(self, x):
        return x


def get_norm_layer(norm_type: str = "instance"):
    """Return a constructor ``f(num_features) -> nn.Module`` for ``'batch'``, ``'instance'`` or ``'none'``.

    Batch norm has learnable affine parameters and running statistics; instance norm has neither (pix2pix/CycleGAN
    convention, which fixes the checkpoint key layout).

    Raises:
        OptionError: unknown norm (names ``--norm``).
    """
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "none":
        return lambda num_features: Identity()
    raise OptionError(f"--norm '{norm_type}' is not supported; choose batch, instance or none")


def uses_bias(norm_layer) -> bool:
    """Convolutions before a norm layer need a bias unless the norm is batch norm (which has its own shift)."""
    if isinstance(norm_layer, functools.partial):
        return norm_layer.func is not nn.BatchNorm2d
    return norm_layer is not nn.BatchNorm2d
