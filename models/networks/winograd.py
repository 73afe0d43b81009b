"""Winograd F(4x4, 3x3) convolution for the CPU: 3x3 / stride 1 convolutions with 4x fewer multiplications.

On a CPU the training step of the paper's networks is bound by the 18 residual-block convolutions (3x3, 256 -> 256
channels at 1/4 resolution), which oneDNN already runs near the machine's peak float32 rate; only fewer
multiplications make them faster. The minimal filtering algorithm F(m x m, 3 x 3) of Winograd, as applied to CNNs by
Lavin & Gray ("Fast Algorithms for Convolutional Neural Networks", CVPR 2016, section 4.2, the F(4x4, 3x3) matrices
``B^T``, ``G``, ``A^T`` below), computes each 4x4 output tile from a 6x6 input tile with 36 instead of 144
multiplications per channel pair:

    Y = A^T [ sum_c (G g_kc G^T) .* (B^T d_c B) ] A

All tiles and channels are batched: the input and weight transforms are two matrix products with the Kronecker
matrices ``B^T (x) B^T`` (36x36) and ``G (x) G`` (36x9), the channel sums are 36 batched matrix products
``(tiles, C) x (C, K)``, the output transform one product with ``A^T (x) A^T`` (16x36). The backward pass is the
same algorithm transposed (custom ``autograd.Function``; it recomputes the input transform instead of keeping it, so
only the layer's input and weight are saved for backward). The transformed tiles are transient: at ``(2, 256, 130,
130)`` the extra peak memory over a direct convolution was ~2.5x the layer's output in the forward pass and ~7x in
forward + backward. Tile tensors above 16 MiB are computed a few images at a time (``_CHUNK_BYTES``): as heap blocks
between the long-lived activations they fragmented glibc's heap (256 px training step: peak RSS 2.3-2.9 GiB in
identical runs, 2.3-2.35 GiB chunked).

Numerics: float32 throughout, but a different summation than direct convolution: on random data the largest error
relative to the output's range is ~1e-5 against a float64 reference (direct float32: ~3e-7), and gradients are
~10-20x further from float64 than direct float32's; the accuracy cuDNN's Winograd algorithms also trade for speed on
GPUs. Measured here (2-core x86_64, torch 2.14.1, channels-last,
``(2, 256, 66, 66)`` input, 256 -> 256): forward + backward 102 ms vs 149 ms for ``F.conv2d``.

Use :func:`winograd_conv3x3` directly, or :func:`enable_winograd` to switch the eligible ``nn.Conv2d`` layers of a
network (same parameters, same checkpoint keys; ``train.py --winograd``).
"""
from __future__ import annotations

import logging
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

# Lavin & Gray (2016), F(4x4, 3x3), interpolation points 0, 1, -1, 2, -2, infinity
_BT = ((4, 0, -5, 0, 1, 0),
       (0, -4, -4, 1, 1, 0),
       (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0),
       (0, 2, -1, -2, 1, 0),
       (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0),
      (-1 / 6, -1 / 6, -1 / 6),
      (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6),
      (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0),
       (0, 1, -1, 2, -2, 0),
       (0, 1, 1, 4, 4, 0),
       (0, 1, -1, 8, -8, 1))
_M, _ALPHA = 4, 6  # output tile, input tile

# tile tensors are computed a few tile rows at a time, each piece near this size: transient blocks the heap reuses
# (below glibc's mmap threshold, no page faults) and that stay in cache between the transforms and the products.
# Layer forward + backward at (2, 256, 66, 66), channels-last, 2 cores: 1 MiB 69 ms, 2 MiB 62, 4 MiB 59, 8 MiB 59,
# 16 MiB 69, one piece 69 ms; at (2, 256, 130, 130): 1-16 MiB 218-253 ms, one piece (3 x 32 MiB) 284 ms
_CHUNK_BYTES = 4 * 2 ** 20

_MATS: Dict[Tuple[torch.dtype, torch.device], Tuple[Tensor, Tensor, Tensor]] = {}


def _kron_matrices(dtype: torch.dtype, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    """``(B^T (x) B^T [36, 36], G (x) G [36, 9], A^T (x) A^T [16, 36])``, built in float64, cached per dtype/device."""
    key = (dtype, device)
    if key not in _MATS:
        with torch.inference_mode(False):  # normal tensors even when first built under inference mode
            bt, g, at = (torch.tensor(m, dtype=torch.float64) for m in (_BT, _G, _AT))
            _MATS[key] = tuple(torch.kron(m, m).to(dtype=dtype, device=device) for m in (bt, g, at))
    return _MATS[key]


def _tiles(x: Tensor, th: int, tw: int) -> Tensor:
    """``(N, C, 4*th + 2, 4*tw + 2)`` -> transformed input tiles ``(36, N*th*tw, C)``."""
    n, c = x.shape[:2]
    kb = _kron_matrices(x.dtype, x.device)[0]
    d = x.unfold(2, _ALPHA, _M).unfold(3, _ALPHA, _M)  # (N, C, th, tw, 6, 6), a view
    d = d.permute(4, 5, 0, 2, 3, 1).reshape(_ALPHA * _ALPHA, n * th * tw * c)  # one gathering copy
    return (kb @ d).view(_ALPHA * _ALPHA, n * th * tw, c)


def _weights(w: Tensor) -> Tensor:
    """``(K, C, 3, 3)`` -> transformed filters ``(36, C, K)``."""
    k, c = w.shape[:2]
    kg = _kron_matrices(w.dtype, w.device)[1]
    return (kg @ w.reshape(k * c, 9).t()).view(_ALPHA * _ALPHA, k, c).transpose(1, 2)


def _out_view(y: Tensor, r0: int, rows: int, tw: int) -> Tensor:
    """Rows ``4*r0 .. 4*(r0+rows)`` of the output ``y`` ``(N, K, H, W)`` (either memory format) as a writable view
    ``(N, rows, 4, tw, 4, K)`` (tile row, row in tile, tile column, column in tile, channel)."""
    n, k = y.shape[:2]
    sn, sk, sh, sw = y.stride()
    return y.as_strided((n, rows, _M, tw, _M, k), (sn, _M * sh, sh, _M * sw, sw, sk),
                        y.storage_offset() + _M * r0 * sh)


def _untile_into(m: Tensor, y: Tensor, r0: int, rows: int, tw: int) -> None:
    """Output transform of the products ``(36, N*rows*tw, K)`` of tile rows ``r0 .. r0+rows``, written into ``y``."""
    n, k = y.shape[:2]
    ka = _kron_matrices(m.dtype, m.device)[2]
    t = (ka @ m.reshape(_ALPHA * _ALPHA, -1)).view(_M, _M, n, rows, tw, k)
    _out_view(y, r0, rows, tw).copy_(t.permute(2, 3, 0, 4, 1, 5))


def _tile_grad(gy: Tensor, r0: int, rows: int, tw: int) -> Tensor:
    """Transpose of :func:`_untile_into`: output gradient rows of tile rows ``r0 .. r0+rows`` -> ``(36, T, K)``."""
    n, k = gy.shape[:2]
    ka = _kron_matrices(gy.dtype, gy.device)[2]
    g = _out_view(gy, r0, rows, tw).permute(2, 4, 0, 1, 3, 5).reshape(_M * _M, n * rows * tw * k)
    return (ka.t() @ g).view(_ALPHA * _ALPHA, n * rows * tw, k)


def _add_tiles_into(gv: Tensor, gx: Tensor, r0: int, rows: int, tw: int) -> None:
    """Transpose of :func:`_tiles`: add the input-tile gradients ``(36, N*rows*tw, C)`` of tile rows ``r0 ..
    r0+rows`` into ``gx`` ``(N, Hp, Wp, C)`` (contiguous, NHWC). Neighbouring 6x6 tiles overlap by 2 pixels; the
    tile is added in four parts (rows 0-3 / 4-5 x columns 0-3 / 4-5), none of which overlaps itself."""
    n, _, wp, c = gx.shape
    kb = _kron_matrices(gv.dtype, gv.device)[0]
    gd = (kb.t() @ gv.reshape(_ALPHA * _ALPHA, -1)).view(_ALPHA, _ALPHA, n, rows, tw, c)
    sn, sh, sw, _ = gx.stride()
    for a0, la in ((0, _M), (_M, _ALPHA - _M)):
        for b0, lb in ((0, _M), (_M, _ALPHA - _M)):
            part = gx.as_strided((n, rows, la, tw, lb, c), (sn, _M * sh, sh, _M * sw, sw, 1),
                                 gx.storage_offset() + (_M * r0 + a0) * sh + b0 * sw)
            part += gd[a0:a0 + la, b0:b0 + lb].permute(2, 3, 0, 4, 1, 5)


def _row_chunks(n: int, th: int, tw: int, channels: int, itemsize: int):
    """``(first tile row, rows)`` pieces whose tile tensors ``(36, N*rows*tw, channels)`` stay near
    ``_CHUNK_BYTES``, of equal size."""
    total = _ALPHA * _ALPHA * n * th * tw * channels * itemsize
    pieces = min(th, max(1, -(-total // _CHUNK_BYTES)))
    per = -(-th // pieces)
    return [(r0, min(per, th - r0)) for r0 in range(0, th, per)]


class _Winograd3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        n, c, hp, wp = x.shape
        k = w.shape[0]
        th, tw = (hp - 2) // _M, (wp - 2) // _M
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        y = torch.empty((n, k, _M * th, _M * tw), dtype=x.dtype, device=x.device,
                        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        wt = _weights(w)
        for r0, rows in _row_chunks(n, th, tw, max(c, k), x.element_size()):
            xs = x[:, :, _M * r0:_M * (r0 + rows) + 2]
            _untile_into(torch.bmm(_tiles(xs, rows, tw), wt), y, r0, rows, tw)
        ctx.save_for_backward(x, w)
        ctx.geometry = (n, c, th, tw, channels_last)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):
        x, w = ctx.saved_tensors
        n, c, th, tw, channels_last = ctx.geometry
        k = w.shape[0]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        wt_t = _weights(w).transpose(1, 2) if need_x else None  # (36, K, C)
        gx = x.new_zeros((n, _M * th + 2, _M * tw + 2, c)) if need_x else None  # NHWC: adds over channel vectors
        gu = None  # (36, C, K), summed over the chunks
        for r0, rows in _row_chunks(n, th, tw, max(c, k), x.element_size()):
            gm = _tile_grad(gy, r0, rows, tw)  # (36, T, K)
            if need_x:
                _add_tiles_into(torch.bmm(gm, wt_t), gx, r0, rows, tw)
            if need_w:
                t = _tiles(x[:, :, _M * r0:_M * (r0 + rows) + 2], rows, tw).transpose(1, 2)
                gu = torch.bmm(t, gm) if gu is None else gu.baddbmm_(t, gm)
        gw = None
        if need_w:
            kg = _kron_matrices(w.dtype, w.device)[1]
            gw = (kg.t() @ gu.reshape(_ALPHA * _ALPHA, c * k)).view(3, 3, c, k).permute(3, 2, 0, 1).contiguous()
        if need_x:
            gx = gx.permute(0, 3, 1, 2)
            gx = gx if channels_last else gx.contiguous()
        return gx, gw


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0) -> Tensor:
    """3x3 convolution, stride 1, no dilation, one group, zero ``padding``, by Winograd F(4x4, 3x3): the result of
    ``torch.nn.functional.conv2d(x, weight, bias, padding=padding)`` up to float32 rounding (see the module notes).

    Args:
        x: ``(N, C, H, W)`` floating point (contiguous or channels-last; the output keeps that layout), with
            ``H + 2 * padding >= 3`` and ``W + 2 * padding >= 3``.
        weight: ``(K, C, 3, 3)``; bias: ``(K,)`` or None.
    Returns:
        ``(N, K, H + 2 * padding - 2, W + 2 * padding - 2)``. Sizes that are not a multiple of the 4x4 output
        tile are padded with zeros on the bottom/right internally and cropped.
    Raises:
        ValueError: a weight that is not ``(K, C, 3, 3)`` with ``C`` matching ``x``, a negative ``padding``, or an
            input too small.
    """
    if weight.dim() != 4 or weight.shape[2:] != (3, 3) or x.dim() != 4 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3 needs x (N, C, H, W) and weight (K, C, 3, 3); got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if padding < 0:
        raise ValueError(f"winograd_conv3x3: padding must be >= 0, got {padding}")
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if padding:
        x = F.pad(x, (padding,) * 4)
    hp, wp = x.shape[-2:]
    if hp < 3 or wp < 3:
        raise ValueError(f"winograd_conv3x3: input {hp}x{wp} (after padding {padding}) is smaller than the 3x3 kernel")
    ho, wo = hp - 2, wp - 2
    th, tw = -(-ho // _M), -(-wo // _M)
    extra_h, extra_w = _M * th - ho, _M * tw - wo
    if extra_h or extra_w:
        x = F.pad(x, (0, extra_w, 0, extra_h))
    y = _Winograd3x3.apply(x, weight)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    if extra_h or extra_w:  # crop the partial tiles, back to a dense tensor in the input's layout
        y = y[:, :, :ho, :wo].contiguous(memory_format=torch.channels_last if channels_last
                                         else torch.contiguous_format)
    return y


def _computable(conv: nn.Conv2d) -> bool:
    """3x3 kernel, stride 1, dilation 1, one group, equal zero padding on both axes (or none)."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and conv.padding[0] == conv.padding[1])


def eligible(conv: nn.Module, min_channels: int = 32) -> bool:
    """Whether ``conv`` is an ``nn.Conv2d`` that :func:`winograd_conv3x3` computes: 3x3 kernel, stride 1, dilation
    1, one group, zero padding mode (or none), at least ``min_channels`` input and output channels (below that the
    transforms cost more than the saved multiplications)."""
    return (type(conv) in (nn.Conv2d, WinogradConv2d) and _computable(conv)
            and min(conv.in_channels, conv.out_channels) >= min_channels)


class WinogradConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (same parameters and state-dict keys) whose CPU float32 forward is
    :func:`winograd_conv3x3`. It is the stock convolution for a configuration Winograd F(4x4, 3x3) does not
    compute (stride, dilation, groups, a kernel other than 3x3, non-zero or unequal padding), on other devices, for
    other dtypes, under autocast (low precision formats would lose too much in the transforms) and inside
    ``torch.compile`` graphs (tracing the custom backward took minutes). Unbatched ``(C, H, W)`` input works as for
    ``nn.Conv2d``."""

    def forward(self, x: Tensor) -> Tensor:
        if (not _computable(self) or x.device.type != "cpu" or x.dtype != torch.float32
                or self.weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or torch.compiler.is_compiling() or x.dim() not in (3, 4)):
            return super().forward(x)
        if x.dim() == 3:
            return winograd_conv3x3(x.unsqueeze(0), self.weight, self.bias, self.padding[0]).squeeze(0)
        return winograd_conv3x3(x, self.weight, self.bias, self.padding[0])


def enable_winograd(net: nn.Module, min_channels: int = 32) -> int:
    """Switch every eligible ``nn.Conv2d`` of ``net`` (see :func:`eligible`) to :class:`WinogradConv2d` in place:
    the module objects, parameters and checkpoint keys stay, optimizers built earlier stay valid. Returns how many
    layers were switched."""
    count = 0
    for m in net.modules():
        if type(m) is nn.Conv2d and eligible(m, min_channels):
            m.__class__ = WinogradConv2d
            count += 1
    return count


def use_winograd(net: nn.Module, name: str, device: torch.device, compiling: bool = False,
                 amp: str = "none") -> int:
    """``--winograd``: switch the eligible 3x3 convolutions of ``net`` to Winograd F(4x4, 3x3)
    (:func:`enable_winograd`); logs how many. On CUDA it does nothing but warn (cuDNN
    chooses Winograd kernels itself under ``cudnn.benchmark``). Returns the number of layers switched."""
    if device.type != "cpu":
        log.warning("--winograd is a CPU fast path; on %s cuDNN picks its own algorithms: %s unchanged",
                    device.type, name)
        return 0
    if compiling:
        log.warning("--winograd has no effect inside torch.compile graphs (--compile): %s keeps direct "
                    "convolutions there", name)
    if amp != "none":
        log.warning("--winograd has no effect under --amp %s (Winograd transforms need float32): %s keeps direct "
                    "convolutions in autocast regions", amp, name)
    count = enable_winograd(net)
    log.info("--winograd: %d convolution(s) of %s use Winograd F(4x4,3x3)", count, name)
    return count
