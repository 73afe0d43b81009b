"""Paired dataset (pix2pix / pyramid pix2pix): one A image and its registered B image per item.

The pairs come from one of three folder layouts, detected automatically (:mod:`data.layouts`): combined AB images in
``<dataroot>/<phase>/``; the BCI layout ``<dataroot>/<A_dir>/<phase>/NAME`` + ``<dataroot>/<B_dir>/<phase>/NAME``
(``--A_dir``/``--B_dir``, defaults ``HE``/``IHC``); or ``<dataroot>/<phase>A|B/NAME`` (CycleGAN/MIST). Pairs are sorted
by file name and capped at ``--max_dataset_size``.

At construction every header is read (see :mod:`data.base_dataset`): unpartnered files, A/B size mismatches, odd AB
widths and unreadable headers raise :class:`~util.errors.DataError`. Both images of a pair get the same random
crop/flip (:mod:`data.transforms`). ``--direction BtoA`` swaps the roles of the two images; ``'A'`` (the input) then
comes from the B files and gets ``--input_nc`` channels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Tuple

from data.base_dataset import (BaseDataset, check_odd_widths, check_pair_sizes, her2_of, load_image,
                               read_headers)
from data.image_modes import to_channels
from data.layouts import cap, pair_by_name
from data.transforms import apply_transform, array_to_tensor, get_params
from util.errors import DataError

log = logging.getLogger(__name__)


class AlignedDataset(BaseDataset):
    """Map-style dataset of registered pairs; item dict as in :class:`data.base_dataset.BaseDataset`.

    Raises (construction):
        DataError: layout not found or ambiguous, missing/empty folder, unpartnered files (listed), A/B size mismatch
            (both files and sizes named), odd AB width, unreadable header.
        OptionError: bad ``--direction``/``--preprocess``/sizes/channels, ``--max_dataset_size`` < 1.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.layout, A_files, B_files = self.find_layout()
        if self.layout.combined:
            pairs = [(p, p) for p in A_files]
        else:
            pairs = pair_by_name(A_files, B_files, self.layout.A_folder, self.layout.B_folder)
        self.pairs: List[Tuple[Path, Path]] = cap(pairs, opt.max_dataset_size, str(self.root))
        headers = read_headers(p for pair in self.pairs for p in pair)
        if self.layout.combined:
            check_odd_widths(headers)
        else:
            check_pair_sizes(self.pairs, headers)
        #: ``(width, height)`` in px of each item's images before preprocessing (from the headers)
        self.sizes: List[Tuple[int, int]] = [
            ((w // 2, h) if self.layout.combined else (w, h)) for (w, h), _ in (headers[a] for a, _ in self.pairs)
        ]
        log.info("aligned dataset: %d pairs, layout %s (%s, %s)", len(self.pairs), self.layout.kind,
                 self.layout.A_folder, self.layout.B_folder)

    def files(self) -> List[Path]:
        seen = dict.fromkeys(p for pair in self.pairs for p in pair)
        return list(seen)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load_pair(self, index: int):
        a_path, b_path = self.pairs[index]
        if self.layout.combined:
            ab = load_image(a_path)
            w = ab.shape[1]
            if w % 2:
                raise DataError(f"combined AB image '{a_path}' has odd width {w}; A is the left half, B the right")
            a, b = ab[:, : w // 2], ab[:, w // 2:]
        else:
            a, b = load_image(a_path), load_image(b_path)
            if a.shape[:2] != b.shape[:2]:
                raise DataError(
                    f"'{a_path}' is {a.shape[1]}x{a.shape[0]} px but '{b_path}' is {b.shape[1]}x{b.shape[0]} px; "
                    "the images of a pair must have the same size"
                )
        if self.swap:
            a, b, a_path, b_path = b, a, b_path, a_path
        return a, b, a_path, b_path

    def __getitem__(self, index: int) -> dict:
        """Item ``index``: ``'A'`` ``(input_nc, H, W)``, ``'B'`` ``(output_nc, H, W)`` float32 in [-1, 1], paths, her2.

        Raises:
            DataError: a file of the pair cannot be decoded, or the decoded sizes disagree (names the files).
        """
        a, b, a_path, b_path = self._load_pair(index)
        a = to_channels(a, self.opt.input_nc, a_path)
        b = to_channels(b, self.opt.output_nc, b_path)
        params = get_params(self.opt, (a.shape[1], a.shape[0]), path=str(a_path))
        return {
            "A": apply_transform(array_to_tensor(a), params),
            "B": apply_transform(array_to_tensor(b), params),
            "A_paths": str(a_path),
            "B_paths": str(b_path),
            "her2": her2_of(a_path),
        }
