"""Unpaired dataset (CycleGAN): A and B image lists read independently.

Uses the same three layouts as the aligned dataset (:mod:`data.layouts`): for the two-folder layouts the A and B
folders are listed separately (no pairing, the counts may differ); for combined AB images, A items are the left halves
and B items the right halves. ``--direction BtoA`` swaps the two lists. The length is ``max(len(A), len(B))``; item
``i`` uses A image ``i % len(A)`` and, with ``--serial_batches``, B image ``i % len(B)``, otherwise a B image drawn
uniformly at random (torch's generator, so seeded DataLoaders repeat it) - as in the CycleGAN reference code.
A and B get independent random crops/flips.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from data.base_dataset import BaseDataset, check_odd_widths, her2_of, load_image, read_headers
from data.image_modes import to_channels
from data.layouts import cap
from data.transforms import apply_transform, array_to_tensor, get_params
from util.errors import DataError

log = logging.getLogger(__name__)

#: (file, part): part is None for a whole image, 'left' / 'right' for a half of a combined AB image.
ImageRef = Tuple[Path, Optional[str]]


class UnalignedDataset(BaseDataset):
    """Map-style unpaired dataset; items hold ``'A'``, ``'B'``, ``'A_paths'``, ``'B_paths'``, ``'her2'`` (of A).

    Raises (construction):
        DataError: layout not found or ambiguous, missing/empty folder, odd AB width, unreadable header.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.layout, A_files, B_files = self.find_layout()
        if self.layout.combined:
            A: List[ImageRef] = [(p, "left") for p in A_files]
            B: List[ImageRef] = [(p, "right") for p in B_files]
        else:
            A = [(p, None) for p in A_files]
            B = [(p, None) for p in B_files]
        if self.swap:
            A, B = B, A
        self.A = cap(A, opt.max_dataset_size, f"{self.root} (A)")
        self.B = cap(B, opt.max_dataset_size, f"{self.root} (B)")
        headers = read_headers(p for p, _ in self.A + self.B)
        if self.layout.combined:
            check_odd_widths(headers)
        log.info("unaligned dataset: %d A and %d B images, layout %s", len(self.A), len(self.B), self.layout.kind)

    def files(self) -> List[Path]:
        return list(dict.fromkeys(p for p, _ in self.A + self.B))

    def __len__(self) -> int:
        return max(len(self.A), len(self.B))

    def _load(self, ref: ImageRef, nc: int) -> torch.Tensor:
        path, part = ref
        a = load_image(path)
        if part is not None:
            w = a.shape[1]
            if w % 2:
                raise DataError(f"combined AB image '{path}' has odd width {w}; A is the left half, B the right")
            a = a[:, : w // 2] if part == "left" else a[:, w // 2:]
        a = to_channels(a, nc, path)
        params = get_params(self.opt, (a.shape[1], a.shape[0]), path=str(path))
        return apply_transform(array_to_tensor(a), params)

    def b_index(self, index: int) -> int:
        """Index of the B image used by item ``index`` (random unless ``--serial_batches``)."""
        if self.opt.serial_batches:
            return index % len(self.B)
        from data.transforms import current_generator

        return int(torch.randint(0, len(self.B), (1,), generator=current_generator()).item())

    def __getitem__(self, index: int) -> dict:
        """Item ``index``: ``'A'`` ``(input_nc, H, W)``, ``'B'`` ``(output_nc, H', W')`` float32 in [-1, 1].

        Raises:
            DataError: a file cannot be decoded (names it).
        """
        a_ref = self.A[index % len(self.A)]
        b_ref = self.B[self.b_index(index)]
        return {
            "A": self._load(a_ref, self.opt.input_nc),
            "B": self._load(b_ref, self.opt.output_nc),
            "A_paths": str(a_ref[0]),
            "B_paths": str(b_ref[0]),
            "her2": her2_of(a_ref[0]),
        }
