"""Test-time augmentation (TTA) over the 8 dihedral transforms of the image plane.

A translation network ``fn`` maps ``(N, C_in, H, W)`` to ``(N, C_out, H, W)``. TTA feeds it each transformed input
``t(x)``, maps every output back with the inverse transform ``t^-1`` and averages:

    y = 1/|T| * sum_{t in T} t^-1(fn(t(x)))

Tissue has no preferred orientation, so rotated and mirrored views are equally valid inputs; averaging them removes
orientation-dependent artefacts of the generator (it is exact for an equivariant ``fn``, e.g. the identity).

Transforms act on the last two dimensions ``(H, W)`` with the conventions of :func:`numpy.rot90` / :func:`torch.rot90`
(``rot90`` turns the image by 90 degrees counter-clockwise as displayed, row 0 at the top):

==================  =============================================  =================
name                output pixel ``[i, j]`` (output size)          inverse
==================  =============================================  =================
``id``              ``x[i, j]`` (H, W)                             ``id``
``rot90``           ``x[j, W-1-i]`` (W, H)                         ``rot270``
``rot180``          ``x[H-1-i, W-1-j]`` (H, W)                     ``rot180``
``rot270``          ``x[H-1-j, i]`` (W, H)                         ``rot90``
``flipH``           ``x[i, W-1-j]`` (H, W)  mirror left-right      ``flipH``
``flipV``           ``x[H-1-i, j]`` (H, W)  mirror top-bottom      ``flipV``
``transpose``       ``x[j, i]`` (W, H)  main diagonal              ``transpose``
``antitranspose``   ``x[H-1-j, W-1-i]`` (W, H)  anti-diagonal      ``antitranspose``
==================  =============================================  =================

Non-square inputs (H != W): ``rot90``, ``rot270``, ``transpose`` and ``antitranspose`` hand the generator a
``(N, C, W, H)`` tensor, so the generator must accept both orientations (for the pix2pix generators both H and W
must be multiples of the network's total down-sampling factor: 4 for ``resnet_*``, 2**num_downs for ``unet_*``).
Use only ``id,rot180,flipH,flipV`` to keep the orientation.

Cost: one generator call per mode (8x the inference time with all modes). A generator left in train mode (the
pix2pix default at test time without ``--eval``) draws new dropout masks and batch statistics in every call, so the
average then also smooths over that randomness.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from util.errors import OptionError

log = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]

_H, _W = -2, -1


def _rot(k: int) -> Transform:
    return lambda t: torch.rot90(t, k, dims=(_H, _W))


def _flip_h(t: torch.Tensor) -> torch.Tensor:
    return torch.flip(t, dims=(_W,))


def _flip_v(t: torch.Tensor) -> torch.Tensor:
    return torch.flip(t, dims=(_H,))


def _transpose(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(_H, _W)


def _antitranspose(t: torch.Tensor) -> torch.Tensor:
    return torch.flip(t.transpose(_H, _W), dims=(_H, _W))


#: name -> (forward transform, inverse transform). Order is the default application order.
_TRANSFORMS: Dict[str, Tuple[Transform, Transform]] = {
    "id": (lambda t: t, lambda t: t),
    "rot90": (_rot(1), _rot(-1)),
    "rot180": (_rot(2), _rot(2)),
    "rot270": (_rot(3), _rot(1)),
    "flipH": (_flip_h, _flip_h),
    "flipV": (_flip_v, _flip_v),
    "transpose": (_transpose, _transpose),
    "antitranspose": (_antitranspose, _antitranspose),
}

#: The 8 dihedral transforms (the symmetry group of the square), in default order.
TTA_MODES: Tuple[str, ...] = tuple(_TRANSFORMS)


def transform(x: torch.Tensor, mode: str, inverse: bool = False) -> torch.Tensor:
    """Apply dihedral transform ``mode`` (or its inverse) to the last two dimensions of ``x``.

    Raises:
        OptionError: unknown ``mode`` (the message lists the valid names).
    """
    if mode not in _TRANSFORMS:
        raise OptionError(f"unknown TTA mode '{mode}'; valid modes: {', '.join(TTA_MODES)}")
    fwd, inv = _TRANSFORMS[mode]
    return (inv if inverse else fwd)(x)


def parse_tta_modes(text: str) -> Tuple[str, ...]:
    """Parse a comma-separated list of TTA modes (``--tta_modes``).

    ``'all'`` (or an empty string) means all 8 :data:`TTA_MODES`. Names are case-sensitive, surrounding spaces are
    ignored, and the result keeps the given order.

    Raises:
        OptionError: an unknown or repeated name (a repeat would weight that view twice); the message lists the
            valid names.
    """
    text = (text or "").strip()
    if text in ("", "all"):
        return TTA_MODES
    modes = [m.strip() for m in text.split(",")]
    bad = [m for m in modes if m not in _TRANSFORMS]
    if bad:
        raise OptionError(
            f"unknown mode(s) {', '.join(repr(m) for m in bad)} in '{text}'; "
            f"valid modes: all, or a comma-separated subset of {', '.join(TTA_MODES)}"
        )
    dupes = sorted({m for m in modes if modes.count(m) > 1})
    if dupes:
        raise OptionError(f"--tta_modes: mode(s) {', '.join(dupes)} given more than once in '{text}'")
    return tuple(modes)


def tta_apply(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, modes: Iterable[str] = TTA_MODES
) -> torch.Tensor:
    """Average ``fn`` over dihedral views of ``x``: ``mean_t t^-1(fn(t(x)))``.

    Args:
        fn: image-to-image function, ``(N, C_in, h, w) -> (N, C_out, h, w)``; called once per mode (sequentially,
            so peak memory is that of one call). With non-square inputs it also receives ``(N, C_in, W, H)`` views
            (see the module docstring).
        x: ``(N, C_in, H, W)`` tensor (network images are in [-1, 1]; any range works).
        modes: names from :data:`TTA_MODES` (default: all 8).

    Returns:
        ``(N, C_out, H, W)``: the mean of the back-transformed outputs, returned in the dtype of ``fn``'s outputs.
        Floating outputs are accumulated in float64 (never below float32), so the sum of up to 8 float16/float32
        views is exact and the mean of identical views equals them bit for bit (an equivariant ``fn`` gives exactly
        ``fn(x)``). Autograd mode is the caller's (wrap in ``torch.no_grad()`` for inference).

    Raises:
        OptionError: empty, unknown or repeated modes.
        ValueError: ``x`` is not 4-D, or ``fn``'s back-transformed outputs differ in shape between modes (``fn`` does
            not keep the spatial size).
    """
    modes = tuple(modes)
    if not modes:
        raise OptionError("TTA needs at least one mode; valid modes: " + ", ".join(TTA_MODES))
    parse_tta_modes(",".join(modes))  # validates names and repeats
    if x.dim() != 4:
        raise ValueError(f"tta_apply expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    acc: Optional[torch.Tensor] = None
    out_dtype = None
    for mode in modes:
        y = transform(fn(transform(x, mode)), mode, inverse=True)
        if acc is None:
            out_dtype = y.dtype
            acc = y.to(torch.float64 if y.is_floating_point() else torch.float32).clone()
        else:
            if y.shape != acc.shape:
                raise ValueError(
                    f"TTA mode '{mode}' gave an output of shape {tuple(y.shape)} after the inverse transform, but "
                    f"'{modes[0]}' gave {tuple(acc.shape)}; the generator must keep the spatial size for both "
                    f"orientations of a {x.shape[-2]}x{x.shape[-1]} input"
                )
            acc = acc + y.to(acc.dtype)
    assert acc is not None and out_dtype is not None
    return (acc / len(modes)).to(out_dtype)


class TTAWrapper(nn.Module):
    """``nn.Module`` whose forward is :func:`tta_apply` of the wrapped generator (for pipelines that take a module).

    Args:
        net: generator ``(N, C_in, H, W) -> (N, C_out, H, W)``.
        modes: TTA mode names (default all 8).
    """

    def __init__(self, net: nn.Module, modes: Sequence[str] = TTA_MODES):
        super().__init__()
        self.net = net
        self.modes = parse_tta_modes(",".join(modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return tta_apply(self.net, x, self.modes)


def _modes_type(text: str) -> str:
    """argparse ``type`` for ``--tta_modes``: validate and return the normalised comma-separated string."""
    try:
        return ",".join(parse_tta_modes(text)) if text.strip() not in ("", "all") else "all"
    except OptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def add_tta_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--tta`` (flag) and ``--tta_modes`` (default ``'all'``) to ``parser`` (for test.py, stain_slide.py).

    ``opt.tta_modes`` stays a string (validated at parse time, so saved options stay plain JSON); turn it into the
    mode tuple with :func:`tta_modes_from_opt`.
    """
    parser.add_argument(
        "--tta", action="store_true",
        help="test-time augmentation: average the generator over rotated/mirrored views (8x slower with all modes)",
    )
    parser.add_argument(
        "--tta_modes", type=_modes_type, default="all",
        help="comma-separated TTA views (used with --tta): all, or a subset of " + ", ".join(TTA_MODES)
        + ". rot90/rot270/transpose/antitranspose swap H and W for non-square inputs",
    )
    return parser


def tta_modes_from_opt(opt: argparse.Namespace) -> Optional[Tuple[str, ...]]:
    """Return the TTA modes selected by ``opt`` (``None`` when ``--tta`` is off).

    Raises:
        OptionError: invalid ``--tta_modes`` (when the namespace was not built by :func:`add_tta_options`).
    """
    modes_text = getattr(opt, "tta_modes", "all")
    if not getattr(opt, "tta", False):
        if modes_text not in ("all", "", None):
            log.warning("--tta_modes %s is ignored without --tta", modes_text)
        return None
    return parse_tta_modes(modes_text or "all")
