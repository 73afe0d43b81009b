"""Geometric preprocessing (resize, crop, flip) shared by all datasets, with one random draw per item.

The modes follow the pix2pix/CycleGAN ``--preprocess`` option (Isola et al. 2017; Zhu et al. 2017, reference code
``data/base_dataset.py``):

=========================  ==========================================================================================
``resize_and_crop``        resize to ``load_size x load_size`` (aspect ratio not kept), then crop ``crop_size``
``crop``                   crop ``crop_size x crop_size`` from the full-resolution image
``scale_width``            resize to width ``load_size``, height ``max(int(load_size * h / w), crop_size)``
``scale_width_and_crop``   ``scale_width``, then crop ``crop_size``
``none``                   full resolution: nothing resized or cropped (unlike the reference code, sizes are *not*
                           rounded to a multiple of 4; the model must accept the image size)
=========================  ==========================================================================================

Randomness: during training (``opt.isTrain``) the crop position is uniform over all valid positions and the image is
flipped left-right with probability 1/2 unless ``--no_flip``. At test/eval time (``opt.isTrain`` False) there is no
randomness at all: the crop is the centre crop (top-left offset ``(size - crop_size) // 2``) and nothing is flipped,
whatever ``--no_flip`` says. A paired dataset draws the parameters once per item (:func:`get_params`) and applies them
to both A and B (:func:`apply_transform`), so the pair stays registered. Draws use the generator installed by
:func:`item_generator` (training: one generator per item, seeded by :class:`data.sampling.EpochSampler` from the run's
seed, the epoch and the item, so the draws do not depend on workers, processes or where a resumed run starts), else
torch's global random generator.

Resizing is bicubic with antialiasing (``torchvision.transforms.v2.functional.resize``, matching the PIL ``BICUBIC``
filter the reference code uses to within one grey level): 8-bit images are resized in uint8 (rounded, like the
reference code), higher-bit-depth images in float32 (clamped back to [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from util.errors import DataError, OptionError

_ITEM_GENERATOR: Optional[torch.Generator] = None


class item_generator:
    """Context manager: random draws of :func:`get_params` (and of the unaligned dataset's B choice) inside the block
    come from a generator seeded with ``seed`` instead of torch's global one. Not re-entrant across threads (the
    DataLoader runs items one at a time per process)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(int(seed))

    def __enter__(self) -> torch.Generator:
        global _ITEM_GENERATOR
        self._saved, _ITEM_GENERATOR = _ITEM_GENERATOR, self.gen
        return self.gen

    def __exit__(self, *exc) -> None:
        global _ITEM_GENERATOR
        _ITEM_GENERATOR = self._saved


def current_generator() -> Optional[torch.Generator]:
    """The generator installed by :func:`item_generator`, or None (torch's global generator)."""
    return _ITEM_GENERATOR


PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")


@dataclass(frozen=True)
class TransformParams:
    """One item's preprocessing parameters.

    Attributes:
        size: ``(height, width)`` in pixels after resizing (the input size when nothing is resized).
        crop: ``(top, left)`` of the ``crop_size x crop_size`` window in the resized image, or None for no crop.
        crop_size: side of the crop window in pixels.
        flip: flip left-right.
    """

    size: Tuple[int, int]
    crop: Optional[Tuple[int, int]]
    crop_size: int
    flip: bool


def check_options(opt) -> None:
    """Validate ``opt.preprocess``, ``opt.load_size`` and ``opt.crop_size`` before any image is read.

    Raises:
        OptionError: unknown mode; non-positive sizes; ``load_size < crop_size`` for a mode that resizes to
            ``load_size`` and then crops.
    """
    mode = opt.preprocess
    if mode not in PREPROCESS_MODES:
        raise OptionError(f"--preprocess '{mode}' is not one of {', '.join(PREPROCESS_MODES)}")
    if mode == "none":
        return
    if opt.load_size < 1 or opt.crop_size < 1:
        raise OptionError(f"--load_size ({opt.load_size}) and --crop_size ({opt.crop_size}) must be positive")
    if mode in ("resize_and_crop", "scale_width_and_crop") and opt.load_size < opt.crop_size:
        raise OptionError(
            f"--preprocess {mode}: --load_size {opt.load_size} is smaller than --crop_size {opt.crop_size}; "
            "the resized image must be at least as large as the crop"
        )


def resized_size(mode: str, width: int, height: int, load_size: int, crop_size: int) -> Tuple[int, int]:
    """``(height, width)`` after the resize step of ``mode`` for a ``width x height`` image (pixels)."""
    if mode == "resize_and_crop":
        return load_size, load_size
    if mode in ("scale_width", "scale_width_and_crop"):
        if width == load_size and height >= crop_size:
            return height, width
        return int(max(load_size * height / width, crop_size)), load_size
    return height, width


def get_params(opt, size: Tuple[int, int], path: str = "<image>", train: Optional[bool] = None) -> TransformParams:
    """Draw the preprocessing parameters for one item.

    Args:
        opt: options with ``preprocess``, ``load_size``, ``crop_size``, ``no_flip``, ``isTrain``.
        size: ``(width, height)`` of the source image in pixels (Pillow order).
        path: file named in errors.
        train: random crop/flip when True; defaults to ``opt.isTrain``.

    Raises:
        OptionError: see :func:`check_options`.
        DataError: the (resized) image is smaller than ``--crop_size`` (names the file, both sizes and the options).
    """
    check_options(opt)
    if train is None:
        train = bool(opt.isTrain)
    width, height = size
    mode = opt.preprocess
    h, w = resized_size(mode, width, height, opt.load_size, opt.crop_size)
    crop = None
    cs = opt.crop_size
    if "crop" in mode:
        if cs > h or cs > w:
            resized = "" if (h, w) == (height, width) else f", {w}x{h} after --preprocess {mode} --load_size {opt.load_size}"
            raise DataError(
                f"image '{path}' is {width}x{height} px{resized}, smaller than --crop_size {cs} "
                f"(--preprocess {mode}); lower --crop_size" + ("" if mode == "crop" else " or use a larger --load_size")
            )
        if train:
            top = int(torch.randint(0, h - cs + 1, (1,), generator=_ITEM_GENERATOR).item())
            left = int(torch.randint(0, w - cs + 1, (1,), generator=_ITEM_GENERATOR).item())
        else:
            top, left = (h - cs) // 2, (w - cs) // 2
        crop = (top, left)
    flip = bool(train and not opt.no_flip and torch.rand((), generator=_ITEM_GENERATOR).item() < 0.5)
    return TransformParams(size=(h, w), crop=crop, crop_size=cs, flip=flip)


def apply_transform(img: torch.Tensor, params: TransformParams) -> torch.Tensor:
    """Resize, crop and flip one image with ``params``, then map it to the network range.

    Args:
        img: ``(C, H, W)`` intensities: uint8 (value / 255) or float in [0, 1]. uint8 images stay uint8 until the
            end: resized in 8 bits (rounded, as the reference code's PIL resize; torchvision's fast uint8 path,
            quickest when the tensor is a channels-last view as :func:`array_to_tensor` returns), and cropped before
            the float conversion. Float images are resized in float and clamped to [0, 1].
        params: from :func:`get_params` (the same object for A and B of a pair).

    Returns:
        ``(C, h, w)`` float32 in [-1, 1] (uint8: ``v / 127.5 - 1`` as ``util.image_io.uint8_to_tensor``;
        float: ``2 x - 1``).
    """
    if tuple(img.shape[-2:]) != params.size:
        if img.dtype != torch.uint8:
            img = img.to(torch.float32)
        img = TF.resize(img, list(params.size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        if img.dtype != torch.uint8:
            img = img.clamp_(0.0, 1.0)
    if params.crop is not None:
        top, left = params.crop
        img = img[..., top:top + params.crop_size, left:left + params.crop_size]
    if params.flip:
        img = TF.horizontal_flip(img)
    img = img.contiguous()  # (C, H, W) memory order before the float copy (cheapest while still uint8)
    if img.dtype == torch.uint8:
        return img.to(torch.float32).div_(127.5).sub_(1.0)
    return img.to(torch.float32) * 2.0 - 1.0


def array_to_tensor(a) -> torch.Tensor:
    """``(H, W, C)`` numpy array -> ``(C, H, W)`` torch tensor (dtype kept; a view unless ``a`` is read-only, as
    Pillow's arrays are, in which case it is copied first)."""
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).permute(2, 0, 1)
