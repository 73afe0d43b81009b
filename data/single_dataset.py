"""Inputs only (inference on a folder of H&E images): ``--dataset_mode single``.

Which folder is read:

1. the image files directly inside ``--dataroot`` (like the pix2pix/CycleGAN ``single`` mode), when there are any;
2. otherwise the *input* folder of a paired layout for ``--phase`` (:mod:`data.layouts`):
   ``<dataroot>/<A_dir>/<phase>`` (BCI layout) or ``<dataroot>/<phase>A`` (CycleGAN/MIST layout) - the B folders
   (``<B_dir>``, ``<phase>B``) with ``--direction BtoA``. Combined AB images are not inputs and are not used.

So ``--dataroot <BCI>/HE/test`` and ``--dataroot <BCI> --phase test`` read the same images. Items hold ``'A'``
``(input_nc, H, W)`` float32 in [-1, 1], ``'A_paths'`` and ``'her2'`` (from the file name, ``''`` when absent).
Preprocessing follows ``--preprocess`` (no random crop or flip unless ``opt.isTrain``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List

from data.base_dataset import BaseDataset, her2_of, load_image, read_headers
from data.image_modes import to_channels
from data.layouts import cap, is_image_file, list_images
from data.transforms import apply_transform, array_to_tensor, get_params
from util.errors import DataError

log = logging.getLogger(__name__)


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_file(p.name) for p in folder.iterdir())


class SingleDataset(BaseDataset):
    """Input images sorted by name, capped at ``--max_dataset_size`` (folder rules in the module docstring).

    Raises (construction):
        DataError: missing dataroot; no image directly inside and no (or both) paired-layout input folders
            (the message lists what the folder holds and the accepted places); empty folder; unreadable header.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.folder = self._input_folder()
        self.paths: List[Path] = cap(list_images(self.folder), opt.max_dataset_size, str(self.folder))
        headers = read_headers(self.paths)
        #: ``(width, height)`` in px of each item's image before preprocessing (from the headers)
        self.sizes = [headers[p][0] for p in self.paths]
        log.info("single dataset: %d images in %s", len(self.paths), self.folder)

    def _input_folder(self) -> Path:
        root, opt = self.root, self.opt
        if not root.is_dir():
            raise DataError(f"dataroot '{root}' does not exist or is not a folder (--dataset_mode single)")
        if _has_images(root):
            return root
        side = "B" if self.swap else "A"
        sub = getattr(opt, "B_dir", "IHC") if self.swap else getattr(opt, "A_dir", "HE")
        candidates = [root / sub / opt.phase, root / f"{opt.phase}{side}"]
        found = [c for c in candidates if c.is_dir()]
        if len(found) == 1:
            log.info("single dataset: no images directly in %s; reading the input folder %s", root, found[0])
            return found[0]
        held = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        what = "several input folders (" + ", ".join(map(str, found)) + ")" if found else "no image files"
        raise DataError(
            f"--dataset_mode single: dataroot '{root}' holds {what}; it holds: {', '.join(held[:10]) or 'nothing'}. "
            f"Expected images directly inside --dataroot, or one of {candidates[0]} / {candidates[1]} "
            f"(--phase {opt.phase}, --direction {opt.direction})"
        )

    def files(self) -> List[Path]:
        return list(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        """Item ``index``: ``'A'`` ``(input_nc, H, W)`` float32 in [-1, 1], ``'A_paths'``, ``'her2'``.

        Raises:
            DataError: the file cannot be decoded (names it).
        """
        path = self.paths[index]
        a = to_channels(load_image(path), self.opt.input_nc, path)
        params = get_params(self.opt, (a.shape[1], a.shape[0]), path=str(path))
        return {"A": apply_transform(array_to_tensor(a), params), "A_paths": str(path), "her2": her2_of(path)}
