"""Dropout for the pix2pix generators, with a cheap Bernoulli mask on the CPU.

``nn.Dropout`` on the CPU draws one Mersenne-Twister sample per element (``aten::bernoulli_``): about 27 ms for the
``(2, 256, 64, 64)`` activation of a ResNet block, ~5 % of a pyramid pix2pix training step at 256 px (profile in
``scripts/bench_train.py --profile``). For the keep probability 0.5 that pix2pix uses, :func:`bernoulli_mask`
takes one random *bit* per element instead (``torch.randint`` bytes, unpacked): the same distribution (each element
kept independently with probability exactly 1/2), ~10x less time. Other probabilities use ``torch.rand < keep``.

Same arithmetic as ``nn.Dropout`` (inverted dropout, Srivastava et al. 2014; PyTorch convention): in training
``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``, identity in eval mode; the mask is stored as ``bool``
(1 byte per element, like ``aten::native_dropout``). On CUDA and inside ``torch.compile`` the fused native dropout
is used (it is fast there). The random stream differs from ``nn.Dropout``'s, so seeded runs are reproducible with
each other but not sample-for-sample identical to runs with ``nn.Dropout``. The module has no parameters, so the
checkpoint key layout is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_SHIFTS: dict = {}


def _bit_shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS[device]


def bernoulli_mask(like: torch.Tensor, keep: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``bool`` tensor shaped and laid out like ``like`` (contiguous or channels-last), each element ``True``
    independently with probability ``keep``.

    ``keep == 0.5`` uses one random bit per element (``torch.randint`` bytes unpacked little-endian); any other
    value in [0, 1] uses ``torch.rand(...) < keep``. Draws from ``generator`` (default: the global generator of
    ``like``'s device), so ``torch.manual_seed`` makes it reproducible.

    Raises:
        ValueError: ``keep`` outside [0, 1].
    """
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep probability must be in [0, 1], got {keep}")
    shape = like.shape
    channels_last = like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(
        memory_format=torch.channels_last)
    # draw in the memory order of `like` so the elementwise product keeps its layout
    draw_shape = (shape[0], shape[2], shape[3], shape[1]) if channels_last else tuple(shape)
    n = like.numel()
    if keep == 0.5:
        nbytes = (n + 7) // 8
        bits = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=like.device, generator=generator)
        mask = (bits.unsqueeze(1) >> _bit_shifts(like.device)).bitwise_and_(1).view(torch.bool).view(-1)[:n]
        mask = mask.view(draw_shape)
    else:
        mask = torch.rand(draw_shape, device=like.device, generator=generator) < keep
    return mask.permute(0, 3, 1, 2) if channels_last else mask


class _MaskedScale(torch.autograd.Function):
    """``y = x * mask * scale``; the gradient is ``g * mask * scale``. Saves only the bool mask."""

    @staticmethod
    def forward(ctx, x, mask, scale):
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return x.mul(mask).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad.mul(mask).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` (any shape, floating point): ``x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)``;
    ``x`` itself when not training or ``p == 0``; zeros when ``p == 1`` (``torch.nn.functional.dropout``
    semantics).

    Raises:
        ValueError: ``p`` outside [0, 1].
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling() or p == 1.0:
        return F.dropout(x, p, True)
    return _MaskedScale.apply(x, bernoulli_mask(x, 1.0 - p), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout(p)`` (inverted dropout, identity in eval mode) with the fast CPU mask of
    :func:`dropout`. Input: any shape; output: the same shape."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
