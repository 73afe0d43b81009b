"""Pyramid (multi-scale) L1 losses of pyramid pix2pix (Liu et al., "BCI: Breast Cancer Immunohistochemical Image
Generation through Pyramid Pix2pix", CVPR Workshops 2022, section 4.1, eqs. 1-5).

The loss compares the generated and the real IHC image not only at full resolution but also at coarser octaves of a
Gaussian scale space, so that the generator is penalised for wrong low-frequency content even where the pair is not
perfectly registered at pixel level.

The octave chain (as in the authors' released code, which chains kornia operations):

* octave 1 starts with the full image; each octave applies four successive Gaussian blurs (3x3 kernel, sigma 1,
  reflect border, each channel on its own);
* the first layer of octave ``k + 1`` is the 4th-blurred layer of octave ``k`` decimated by 2: every second row and
  column is kept, starting at index 0, so a side of ``n`` pixels becomes ``ceil(n / 2)``;
* pyramid level 1 is the full image (unblurred); level ``k >= 2`` is the first layer of octave ``k``.

``S_k = mean |F_k(real) - F_k(fake)|`` over all elements of level ``k`` (paper eq. 1); the objective is
``sum_k w_k * S_k`` over the levels chosen with ``--pattern`` (e.g. ``L1_L2_L3_L4``).

"Reflect" is the PyTorch / kornia / ``numpy.pad(mode='reflect')`` border: the edge pixel is *not* repeated
(``[a b c] -> b | a b c | b``). SciPy's ``ndimage`` calls this border ``'mirror'`` (its ``'reflect'`` repeats the edge).
Padding one pixel this way needs a side of at least 2 pixels, which bounds the smallest usable image
(:func:`min_image_size`).

Everything here is a pure function of tensors and numbers; :class:`PyramidL1Loss` is a thin ``nn.Module`` wrapper.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.errors import OptionError

__all__ = [
    "PYRAMID_TOKENS",
    "BLURS_PER_OCTAVE",
    "gaussian_kernel1d",
    "gaussian_blur",
    "downsample2",
    "pyramid_levels",
    "pyramid_l1",
    "parse_pattern",
    "min_image_size",
    "check_image_size",
    "PyramidL1Loss",
    "BINOMIAL_TAPS_5",
    "ASP_GP_WEIGHTS",
    "separable_blur",
    "gaussian_pyramid",
    "gaussian_pyramid_min_size",
    "gaussian_pyramid_l1",
]

#: Valid ``--pattern`` tokens; token ``Lk`` selects pyramid level ``k``.
PYRAMID_TOKENS: Tuple[str, ...] = ("L1", "L2", "L3", "L4")
#: Gaussian blurs applied per octave before decimation (BCI paper, section 4.1).
BLURS_PER_OCTAVE = 4
_KERNEL_SIZE = 3
_SIGMA = 1.0


# ----------------------------------------------------------------------------------------------------------- kernels
def _gaussian_weights(kernel_size: int, sigma: float) -> List[float]:
    """Normalised 1-D Gaussian taps ``exp(-x^2 / (2 sigma^2))`` at ``x = -(k//2) .. k//2`` (kornia's convention)."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    half = kernel_size // 2
    taps = [math.exp(-(x * x) / (2.0 * sigma * sigma)) for x in range(-half, half + 1)]
    total = math.fsum(taps)
    return [t / total for t in taps]


@functools.lru_cache(maxsize=64)
def _cached_taps(kernel_size: int, sigma: float) -> Tuple[float, ...]:
    """The kernel taps as Python floats, computed once per ``(kernel_size, sigma)``.

    Python-float taps serve every dtype and device without a host-to-device copy: PyTorch applies a Python scalar
    in the op's internal precision (float32 for bfloat16/float16 tensors) and rounds only the result.
    """
    return tuple(_gaussian_weights(kernel_size, sigma))


@functools.lru_cache(maxsize=64)
def _cached_kernel2d(kernel_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The 2-D kernel ``outer(g, g)`` as a ``(1, 1, k, k)`` conv weight, computed in float64 and cast once, cached per
    ``(kernel_size, sigma, dtype, device)`` so an accelerator never rebuilds or re-uploads it."""
    g = torch.tensor(_gaussian_weights(kernel_size, sigma), dtype=torch.float64)
    return torch.outer(g, g).view(1, 1, kernel_size, kernel_size).to(device=device, dtype=dtype)


def gaussian_kernel1d(kernel_size: int = _KERNEL_SIZE, sigma: float = _SIGMA, *, dtype: torch.dtype = torch.float64,
                      device: torch.device | str = "cpu") -> Tensor:
    """The normalised 1-D Gaussian kernel, shape ``(kernel_size,)``, summing to 1.

    Taps ``exp(-x^2 / (2 sigma^2))`` at integer offsets ``x = -(k // 2) .. k // 2``, as kornia's
    ``get_gaussian_kernel1d``.
    For k = 3, sigma = 1: ``[0.27407, 0.45186, 0.27407]``.

    Raises:
        ValueError: ``kernel_size`` not a positive odd int, or ``sigma`` not a finite number > 0.
    """
    return torch.tensor(_gaussian_weights(kernel_size, float(sigma)), dtype=torch.float64).to(device=device,
                                                                                              dtype=dtype)


def _check_image_tensor(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


# -------------------------------------------------------------------------------------------------------- operations
def gaussian_blur(x: Tensor, kernel_size: int = _KERNEL_SIZE, sigma: float = _SIGMA) -> Tensor:
    """Blur every channel of ``x`` with an isotropic Gaussian, reflect border (kornia ``gaussian_blur2d`` semantics).

    Args:
        x: ``(N, C, H, W)`` floating tensor (any float dtype, any device, any value range).
        kernel_size: odd kernel side (the paper uses 3).
        sigma: standard deviation in pixels (the paper uses 1).

    Returns:
        ``(N, C, H, W)`` tensor of ``x``'s dtype and device. The border is PyTorch ``'reflect'`` (edge not repeated),
        i.e. ``scipy.ndimage`` ``mode='mirror'``. On CPU the separable kernel is applied as a vertical then a
        horizontal pass of reflect-padded shifted multiply-adds (fastest there, forward and backward); on other
        devices as ``F.pad`` + one ``conv2d`` with a cached ``(1, 1, k, k)`` kernel (channels folded into the batch).
        Both equal the 2-D correlation up to rounding; neither loops over channels in Python.

    Raises:
        TypeError / ValueError: ``x`` is not a 4-D floating tensor, bad ``kernel_size`` / ``sigma``, or a side of
            ``x`` is not larger than ``kernel_size // 2`` (the reflect border needs it).
    """
    _check_image_tensor(x)
    taps = _cached_taps(kernel_size, float(sigma))
    pad = kernel_size // 2
    if pad == 0:
        return x * taps[0]  # a 1x1 kernel normalised to sum 1 is the identity
    h, w = x.shape[-2:]
    if h <= pad or w <= pad:
        raise ValueError(f"gaussian_blur: image of {h}x{w} px is too small for a reflect border of {pad} px "
                         f"(kernel_size {kernel_size}); every side must be at least {pad + 1} px")
    if x.device.type == "cpu":
        return _blur_shift_add(x, taps, pad)
    return _blur_conv(x, kernel_size, float(sigma), pad)


def _blur_shift_add(x: Tensor, taps: Sequence[float], pad: int) -> Tensor:
    """CPU path: separable blur as reflect-padded shifted multiply-adds (vertical, then horizontal)."""
    h, w = x.shape[-2:]
    y = _correlate_axis(_reflect_pad_axis(x, pad, dim=2), taps, dim=2, size=h)
    return _correlate_axis(_reflect_pad_axis(y, pad, dim=3), taps, dim=3, size=w)


def _blur_conv(x: Tensor, kernel_size: int, sigma: float, pad: int) -> Tensor:
    """Accelerator path: ``F.pad(reflect)`` + one 2-D convolution with channels folded into the batch (two kernel
    launches per blur instead of about a dozen elementwise ones)."""
    n, c, h, w = x.shape
    weight = _cached_kernel2d(kernel_size, sigma, x.dtype, x.device)
    y = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(y, weight).reshape(n, c, h, w)


def _reflect_pad_axis(x: Tensor, pad: int, dim: int) -> Tensor:
    """Reflect-pad ``pad`` elements on both ends of ``dim`` (edge not repeated), equal to
    ``F.pad(..., mode='reflect')`` on that axis. Built from flipped views and one ``cat``: unlike ``F.pad``'s
    reflect kernel it opens no parallel region on small tensors, which keeps the deep (tiny) octaves cheap when the
    CPU is oversubscribed. Needs ``x.shape[dim] > pad``.
    """
    n = x.shape[dim]
    return torch.cat([x.narrow(dim, 1, pad).flip(dim), x, x.narrow(dim, n - 1 - pad, pad).flip(dim)], dim)


def _correlate_axis(y: Tensor, taps: Sequence[float], dim: int, size: int) -> Tensor:
    """``sum_i taps[i] * y[..., i : i + size, ...]`` along ``dim`` ('valid' 1-D correlation of a padded tensor).

    Shifted views and fused multiply-adds: on CPU this is several times faster than a depthwise ``conv2d`` with a
    one-channel kernel, especially in the backward pass, and it needs no weight tensor.
    """
    out = y.narrow(dim, 0, size) * taps[0]
    for i in range(1, len(taps)):
        out = out.add_(y.narrow(dim, i, size), alpha=taps[i])
    return out


def downsample2(x: Tensor) -> Tensor:
    """Keep every second row and column starting at index 0: ``(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))``.

    Same as kornia ``blur_pool2d(x, 1, stride=2)`` used by the BCI code (a 1x1 "blur" is the identity).
    """
    _check_image_tensor(x)
    return x[:, :, ::2, ::2]


def min_image_size(max_level: int) -> int:
    """Smallest image side (pixels) for which pyramid levels ``1 .. max_level`` can be computed.

    Rule: every layer that is blurred must be at least 2 px a side (a 3x3 reflect border pads 1 px, which needs
    2 px). Octaves ``1 .. max_level - 1`` are blurred; octave ``j`` has side ``ceil(n / 2^(j-1))``; level
    ``max_level`` itself is only compared, never blurred, so it may be 1 px. Hence the minimum is 1 for level 1 and
    ``2^(max_level - 2) + 1`` for ``max_level >= 2``: 2, 3, 5 px for levels 2, 3, 4.

    Raises:
        ValueError: ``max_level`` is not an int >= 1.
    """
    if isinstance(max_level, bool) or not isinstance(max_level, int) or max_level < 1:
        raise ValueError(f"max_level must be an int >= 1, got {max_level!r}")
    if max_level == 1:
        return 1
    return 2 ** (max_level - 2) + 1


def check_image_size(height: int, width: int, max_level: int) -> None:
    """Raise :class:`~util.errors.OptionError` if an image of ``height x width`` px is too small for ``max_level``.

    See :func:`min_image_size` for the rule. The message gives the size, the smallest side that works and the options
    to change (``--crop_size`` / ``--load_size``, or fewer levels in ``--pattern``).
    """
    need = min_image_size(max_level)
    if min(height, width) < need:
        deepest = f"L{max_level}"
        raise OptionError(
            f"images of {height}x{width} px are too small for pyramid level {deepest} of --pattern: level "
            f"{deepest} needs at least {need}x{need} px (every blurred octave layer must be >= 2 px a side). "
            f"Increase --crop_size/--load_size to at least {need}, "
            f"or drop {deepest} (and deeper levels) from --pattern."
        )


def pyramid_levels(x: Tensor, num_levels: int) -> List[Tensor]:
    """The pyramid levels ``1 .. num_levels`` of ``x`` (BCI paper section 4.1).

    Args:
        x: ``(N, C, H, W)`` floating tensor (any value range; images are in [-1, 1]).
        num_levels: number of levels, >= 1 (the paper uses up to 4).

    Returns:
        list of ``num_levels`` tensors; element ``k - 1`` is level ``k`` with shape ``(N, C, H_k, W_k)``,
        ``H_1 = H`` and ``H_{k+1} = ceil(H_k / 2)`` (same for W). Level 1 is ``x`` itself (not a copy).
        Gradients flow through all levels.

    Raises:
        TypeError / ValueError: ``x`` not a 4-D floating tensor, ``num_levels`` < 1, or ``x`` smaller than
            :func:`min_image_size` ``(num_levels)`` on a side.
    """
    _check_image_tensor(x)
    need = min_image_size(num_levels)
    h, w = x.shape[-2:]
    if min(h, w) < need:
        raise ValueError(f"pyramid_levels: input of {h}x{w} px is too small for {num_levels} levels; "
                         f"at least {need}x{need} px are needed (see min_image_size)")
    levels = [x]
    cur = x
    for _ in range(num_levels - 1):
        for _ in range(BLURS_PER_OCTAVE):
            cur = gaussian_blur(cur, _KERNEL_SIZE, _SIGMA)
        cur = downsample2(cur)
        levels.append(cur)
    return levels


def pyramid_l1(fake: Tensor, real: Tensor, levels: Sequence[int],
               weights: Optional[Sequence[float]] = None) -> Tuple[Tensor, List[Tensor]]:
    """Weighted pyramid L1 loss ``sum_k w_k * S_k`` with ``S_k = mean |F_k(real) - F_k(fake)|`` (BCI eqs. 1-5).

    Args:
        fake: generated image ``(N, C, H, W)``, floating, usually in [-1, 1]; gradients flow to it.
        real: target image of the same shape; treated as a constant (its pyramid is built under ``torch.no_grad()``,
            it never receives a gradient).
        levels: pyramid levels to compare, distinct ints >= 1 in any order (``--pattern`` gives 1..4).
        weights: one weight per entry of ``levels`` (same order); default all 1.

    Returns:
        ``(total, per_level)``: ``total`` a 0-dim tensor; ``per_level`` the *unweighted* 0-dim ``S_k`` in the order of
        ``levels``. Only levels up to ``max(levels)`` are computed. Dtype and device are those of ``fake``.

    Raises:
        ValueError / TypeError: empty or repeated levels, a level < 1, ``weights`` of the wrong length, shapes that
            differ, or images too small for ``max(levels)`` (see :func:`min_image_size`).
    """
    levels = list(levels)
    if not levels:
        raise ValueError("pyramid_l1: levels is empty; give at least one pyramid level (e.g. [1, 2, 3, 4])")
    for k in levels:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"pyramid_l1: levels must be ints >= 1, got {levels!r}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"pyramid_l1: repeated level in {levels!r}")
    if weights is None:
        weights = [1.0] * len(levels)
    else:
        weights = list(weights)
        if len(weights) != len(levels):
            raise ValueError(f"pyramid_l1: {len(weights)} weights for {len(levels)} levels {levels!r}")
    _check_image_tensor(fake, "fake")
    _check_image_tensor(real, "real")
    if fake.shape != real.shape:
        raise ValueError(f"pyramid_l1: fake {tuple(fake.shape)} and real {tuple(real.shape)} differ in shape")
    real = real.to(dtype=fake.dtype, device=fake.device)

    depth = max(levels)
    fake_pyr = pyramid_levels(fake, depth)
    with torch.no_grad():
        real_pyr = pyramid_levels(real.detach(), depth)

    per_level = [torch.mean(torch.abs(fake_pyr[k - 1] - real_pyr[k - 1])) for k in levels]
    total = per_level[0] * weights[0]
    for s, wk in zip(per_level[1:], weights[1:]):
        total = total + s * wk
    return total, per_level


# ------------------------------------------------------------------------------------------------------------ pattern
def parse_pattern(pattern: str) -> List[int]:
    """Parse ``--pattern`` (e.g. ``'L1_L2_L3_L4'``): underscore-separated tokens from :data:`PYRAMID_TOKENS`.

    Order does not matter; the sorted level numbers are returned (``'L3_L1' -> [1, 3]``). Tokens are case-sensitive.

    Raises:
        OptionError: empty pattern, empty token (``'L1__L2'``, trailing ``'_'``), unknown token (``'L5'``, ``'l1'``)
            or repeated token (``'L1_L1'``); the message names ``--pattern``, the bad token and the valid tokens.
    """
    valid = ", ".join(PYRAMID_TOKENS)
    if not isinstance(pattern, str):
        raise OptionError(f"--pattern must be a string such as 'L1_L2_L3_L4', got {pattern!r}; valid tokens: {valid}")
    seen: List[int] = []
    for token in pattern.split("_"):
        if token == "":
            raise OptionError(f"--pattern {pattern!r} has an empty token (check for '__' or a leading/trailing '_'); "
                              f"give underscore-separated tokens from: {valid}")
        if token not in PYRAMID_TOKENS:
            raise OptionError(f"--pattern {pattern!r}: unknown token {token!r}; valid tokens: {valid}")
        level = PYRAMID_TOKENS.index(token) + 1
        if level in seen:
            raise OptionError(f"--pattern {pattern!r}: token {token!r} is repeated; valid tokens: {valid}, each once")
        seen.append(level)
    return sorted(seen)


# ------------------------------------------------------------------------------------------------------------- module
class PyramidL1Loss(nn.Module):
    """``nn.Module`` wrapper of :func:`pyramid_l1` with fixed levels and weights.

    ``forward(fake, real) -> (total, per_level)``, see :func:`pyramid_l1`. Holds no parameters or buffers.

    Raises:
        ValueError: empty / repeated levels or a weights length mismatch (at construction).
    """

    def __init__(self, levels: Sequence[int], weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.levels = list(levels)
        self.weights = None if weights is None else [float(w) for w in weights]
        if not self.levels:
            raise ValueError("PyramidL1Loss: levels is empty")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"PyramidL1Loss: repeated level in {self.levels!r}")
        if self.weights is not None and len(self.weights) != len(self.levels):
            raise ValueError(f"PyramidL1Loss: {len(self.weights)} weights for levels {self.levels!r}")

    def forward(self, fake: Tensor, real: Tensor) -> Tuple[Tensor, List[Tensor]]:
        return pyramid_l1(fake, real, self.levels, self.weights)

    def extra_repr(self) -> str:
        return f"levels={self.levels}, weights={self.weights}"


# ------------------------------------------------------------------------------ ASP's Gaussian pyramid ("gp") loss
#: 1-D taps of the 5x5 binomial kernel ``[1, 4, 6, 4, 1] / 16`` (the 2-D kernel is their outer product, sum 1/256 *
#: 256 = 1), the Burt-Adelson pyramid kernel used by ASP's Gaussian-pyramid loss.
BINOMIAL_TAPS_5: Tuple[float, ...] = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)
#: ASP's per-level weights of the Gaussian-pyramid L1 loss, finest level first (the authors' MIST recipe
#: ``--gp_weights [0.015625,0.03125,0.0625,0.125,0.25,1.0]``): six levels.
ASP_GP_WEIGHTS: Tuple[float, ...] = (0.015625, 0.03125, 0.0625, 0.125, 0.25, 1.0)


def separable_blur(x: Tensor, taps: Sequence[float]) -> Tensor:
    """Correlate every channel of ``x`` ``(N, C, H, W)`` with the separable kernel ``outer(taps, taps)``, reflect
    border (edge not repeated), same size out. ``taps`` has odd length ``k``; every side of ``x`` must exceed
    ``k // 2``. Same CPU / accelerator paths as :func:`gaussian_blur`.

    Raises:
        TypeError / ValueError: ``x`` not a 4-D floating tensor, even or empty ``taps``, image too small.
    """
    _check_image_tensor(x)
    taps = tuple(float(t) for t in taps)
    if not taps or len(taps) % 2 == 0:
        raise ValueError(f"separable_blur: taps must have odd length, got {len(taps)}")
    pad = len(taps) // 2
    if pad == 0:
        return x * taps[0]
    h, w = x.shape[-2:]
    if h <= pad or w <= pad:
        raise ValueError(f"separable_blur: image of {h}x{w} px is too small for a reflect border of {pad} px; every "
                         f"side must be at least {pad + 1} px")
    if x.device.type == "cpu":
        return _blur_shift_add(x, taps, pad)
    n, c = x.shape[:2]
    g = torch.tensor(taps, dtype=torch.float64)
    weight = torch.outer(g, g).view(1, 1, len(taps), len(taps)).to(device=x.device, dtype=x.dtype)
    y = F.pad(x.reshape(n * c, 1, h, w), (pad, pad, pad, pad), mode="reflect")
    return F.conv2d(y, weight).reshape(n, c, h, w)


def gaussian_pyramid_min_size(num_levels: int, kernel_size: int = len(BINOMIAL_TAPS_5)) -> int:
    """Smallest image side for :func:`gaussian_pyramid`: the last blurred layer (side ``ceil(n / 2^(L-2))``) must be
    larger than the reflect border ``k // 2``, so ``n >= (k // 2) * 2^(L-2) + 1`` (33 px for ASP's 6 levels and
    5x5 kernel)."""
    if num_levels < 2:
        return kernel_size // 2 + 1
    return (kernel_size // 2) * 2 ** (num_levels - 2) + 1


def gaussian_pyramid(x: Tensor, num_levels: int = len(ASP_GP_WEIGHTS),
                     taps: Sequence[float] = BINOMIAL_TAPS_5) -> List[Tensor]:
    """The Gaussian pyramid of ASP's "gp" loss, finest level first.

    ``num_levels - 1`` times: ``filtered = blur(current)`` (:func:`separable_blur`, 5x5 binomial by default); keep
    ``filtered``; ``current = filtered[:, :, ::2, ::2]``. The last level is the final ``current`` (decimated, not
    blurred again). So level 1 is the *blurred* full-resolution image and level ``l`` has side
    ``ceil(H / 2^(l-1))``.

    Args:
        x: ``(N, C, H, W)`` floating tensor (images in [-1, 1]).
        num_levels: >= 1 (ASP: 6).
        taps: odd-length 1-D kernel taps (ASP: :data:`BINOMIAL_TAPS_5`).

    Raises:
        ValueError: ``num_levels`` < 1, or ``x`` smaller than :func:`gaussian_pyramid_min_size` on a side.
    """
    _check_image_tensor(x)
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"num_levels must be an int >= 1, got {num_levels!r}")
    if num_levels == 1:
        return [x]
    need = gaussian_pyramid_min_size(num_levels, len(taps))
    if min(x.shape[-2:]) < need:
        raise ValueError(f"gaussian_pyramid: input of {x.shape[-2]}x{x.shape[-1]} px is too small for {num_levels} "
                         f"levels with a {len(taps)}-tap kernel; at least {need}x{need} px are needed")
    levels = []
    cur = x
    for _ in range(num_levels - 1):
        filtered = separable_blur(cur, taps)
        levels.append(filtered)
        cur = filtered[:, :, ::2, ::2]
    levels.append(cur)
    return levels


def gaussian_pyramid_l1(fake: Tensor, real: Tensor, weights: Sequence[float] = ASP_GP_WEIGHTS,
                        taps: Sequence[float] = BINOMIAL_TAPS_5) -> Tensor:
    """ASP's Gaussian-pyramid reconstruction loss (its ``lambda_gp`` term; "gp" = Gaussian pyramid):
    ``(1 / L) * sum_l w_l * mean|G_l(fake) - G_l(real)|`` over the ``L = len(weights)`` levels of
    :func:`gaussian_pyramid` (weighted L1s *averaged* over the levels, as the authors' release does).

    Args:
        fake: ``(N, C, H, W)`` generated image in [-1, 1]; gradients flow to it.
        real: target of the same shape (a constant: its pyramid is built without gradient).
        weights: one weight per level, finest first (ASP: :data:`ASP_GP_WEIGHTS`, 1/64 ... 1/4, 1).
        taps: the 1-D blur kernel.

    Returns:
        0-dim tensor (multiply by ``--lambda_gp``).

    Raises:
        ValueError: empty weights, shapes that differ, images too small for ``len(weights)`` levels.
    """
    weights = [float(w) for w in weights]
    if not weights:
        raise ValueError("gaussian_pyramid_l1: weights is empty (one weight per pyramid level)")
    _check_image_tensor(fake, "fake")
    _check_image_tensor(real, "real")
    if fake.shape != real.shape:
        raise ValueError(f"gaussian_pyramid_l1: fake {tuple(fake.shape)} and real {tuple(real.shape)} differ in shape")
    fake_pyr = gaussian_pyramid(fake, len(weights), taps)
    with torch.no_grad():
        real_pyr = gaussian_pyramid(real.detach().to(dtype=fake.dtype, device=fake.device), len(weights), taps)
    total = None
    for w, f, r in zip(weights, fake_pyr, real_pyr):
        term = torch.mean(torch.abs(f - r)) * w
        total = term if total is None else total + term
    return total / len(weights)
