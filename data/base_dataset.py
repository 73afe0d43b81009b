"""Base class and shared helpers of the datasets: option checks, image loading, header checks, full validation.

Corrupt data is caught in two stages:

* at construction every file's *header* is read with Pillow (``Image.open`` without decoding the pixels): missing,
  unidentifiable or header-corrupt files, A/B size mismatches and odd AB widths stop the run there, all offending files
  listed in one :class:`~util.errors.DataError`;
* a file whose pixel data is damaged (e.g. a truncated PNG) is only detected when decoded: ``dataset[i]`` raises a
  :class:`~util.errors.DataError` naming it. :func:`validate` decodes every file up front when that matters
  (e.g. before a long training run).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from data.her2 import parse_her2
from data.image_modes import image_to_array, open_image, read_header
from data.layouts import detect_layout, expected_layouts, list_images
from data.transforms import check_options
from util.errors import DataError, OptionError

log = logging.getLogger(__name__)

DIRECTIONS = ("AtoB", "BtoA")
_MAX_LISTED = 10

Header = Tuple[Tuple[int, int], str]


def _listing(items: Sequence[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    return shown + (f"; ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def her2_of(path: Path) -> str:
    """HER2 level parsed from a BCI file name (``data.her2.parse_her2``), ``''`` when the name has none."""
    return parse_her2(Path(path).name) or ""


def load_image(path: Path) -> np.ndarray:
    """Decode ``path`` as grey ``(H, W)`` or colour ``(H, W, 3)`` intensities (``data.image_modes`` rules).

    Returns:
        uint8 (intensity = value / 255) for 8-bit sources, float32 in [0, 1] otherwise.

    Raises:
        DataError: unreadable or corrupt file, unsupported mode or value range (names the file).
    """
    return image_to_array(open_image(path), path)


def read_headers(paths: Iterable[Path]) -> Dict[Path, Header]:
    """Read every file's header (size and mode, no decoding).

    Returns:
        ``{path: ((width, height), mode)}``.

    Raises:
        DataError: listing every file whose header could not be read.
    """
    headers: Dict[Path, Header] = {}
    bad: List[str] = []
    for p in paths:
        if p in headers:
            continue
        try:
            headers[p] = read_header(p)
        except DataError as e:
            bad.append(str(e))
    if bad:
        raise DataError(f"{len(bad)} unreadable image file(s): {_listing(bad)}")
    return headers


def check_odd_widths(headers: Dict[Path, Header]) -> None:
    """Combined AB images must have an even width (A = left half, B = right half).

    Raises:
        DataError: listing the files of odd width.
    """
    odd = [f"'{p}' is {w}x{h} px" for p, ((w, h), _) in headers.items() if w % 2]
    if odd:
        raise DataError(
            f"{len(odd)} combined AB image(s) of odd width (A is the left half, B the right half, so the width must "
            f"be even): {_listing(odd)}"
        )


def check_pair_sizes(pairs: Sequence[Tuple[Path, Path]], headers: Dict[Path, Header]) -> None:
    """A and B of each pair must have the same size.

    Raises:
        DataError: naming both files and both sizes for every mismatched pair.
    """
    bad = []
    for a, b in pairs:
        (wa, ha), _ = headers[a]
        (wb, hb), _ = headers[b]
        if (wa, ha) != (wb, hb):
            bad.append(f"'{a}' is {wa}x{ha} px but '{b}' is {wb}x{hb} px")
    if bad:
        raise DataError(f"{len(bad)} pair(s) whose A and B differ in size: {_listing(bad)}")


class BaseDataset(torch.utils.data.Dataset):
    """Map-style dataset base: checks the shared options and fixes the item contract.

    Items are dicts: ``'A'`` ``(input_nc, H, W)`` float32 in [-1, 1], ``'B'`` ``(output_nc, H, W)`` in [-1, 1]
    (not for ``single``), ``'A_paths'``/``'B_paths'`` (str), ``'her2'`` (``'0'``, ``'1+'``, ``'2+'``, ``'3+'`` or ``''``).
    ``--direction BtoA`` swaps the roles of the A and B files before anything else, so ``'A'`` is always the network
    input (with ``input_nc`` channels) and ``'B'`` the target (``output_nc``).

    Raises (construction):
        OptionError: unknown ``--direction`` or ``--preprocess``, bad sizes or channel counts.
    """

    def __init__(self, opt):
        self.opt = opt
        self.root = Path(opt.dataroot)
        check_options(opt)
        direction = getattr(opt, "direction", "AtoB")
        if direction not in DIRECTIONS:
            raise OptionError(f"--direction '{direction}' is not one of {', '.join(DIRECTIONS)}")
        self.swap = direction == "BtoA"
        for name in ("input_nc", "output_nc"):
            if getattr(opt, name) not in (1, 3):
                raise OptionError(f"--{name} {getattr(opt, name)} is not supported by the datasets (use 1 or 3)")

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """Add dataset-specific options to ``parser`` (argparse); the base adds none. Returns the parser."""
        return parser

    def find_layout(self):
        """Detect the paired layout under ``--dataroot`` (``--A_dir``/``--B_dir`` for the folder layout) and list its
        images. Returns ``(layout, A_files, B_files)``; for combined AB images both lists are the same files.

        Raises:
            DataError: layout not found or ambiguous, missing or empty folder (the expected layouts are named).
        """
        A_dir, B_dir = getattr(self.opt, "A_dir", "HE"), getattr(self.opt, "B_dir", "IHC")
        layout = detect_layout(self.root, self.opt.phase, A_dir, B_dir)
        expected = expected_layouts(self.root, self.opt.phase, A_dir, B_dir)
        A_files = list_images(layout.A_folder, expected)
        B_files = A_files if layout.combined else list_images(layout.B_folder, expected)
        return layout, A_files, B_files

    def files(self) -> List[Path]:
        """Every image file the dataset reads (each once), for :func:`validate`."""
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError


def validate(dataset: BaseDataset, progress: bool = True) -> int:
    """Decode every file of ``dataset`` (pixels, mode and value range), collecting all failures.

    Returns:
        the number of files checked.

    Raises:
        DataError: listing every file that failed (each message names its file).
    """
    files = dataset.files()
    bad = []
    for p in tqdm(files, desc="validating images", unit="img", disable=not progress):
        try:
            load_image(p)
        except DataError as e:
            bad.append(str(e))
    if bad:
        raise DataError(f"{len(bad)} of {len(files)} image file(s) failed to decode: {_listing(bad)}")
    log.info("validated %d image files", len(files))
    return len(files)
