"""Dataset registry and DataLoader factory.

``--dataset_mode`` names a dataset class in :data:`DATASET_MODES`:

* ``aligned``: registered A/B pairs (:mod:`data.aligned_dataset`), three folder layouts detected automatically;
* ``single``: inputs only, the images directly inside ``--dataroot`` (:mod:`data.single_dataset`);
* ``unaligned``: independent A and B lists for CycleGAN (:mod:`data.unaligned_dataset`).

Items are dicts (see ``docs/ARCHITECTURE.md``): ``'A'`` ``(input_nc, H, W)`` float32 in [-1, 1], ``'B'``
``(output_nc, H, W)`` in [-1, 1] (not for ``single``), ``'A_paths'``, ``'B_paths'`` (str) and ``'her2'`` (str).
The datasets apply ``--direction`` themselves: ``'A'`` is always the network input.
"""
from __future__ import annotations

import random
from typing import Callable, Dict, Mapping, Optional, Type

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from data.aligned_dataset import AlignedDataset
from data.base_dataset import BaseDataset, validate
from data.transforms import resized_size
from data.single_dataset import SingleDataset
from data.unaligned_dataset import UnalignedDataset
from util.errors import DataError, OptionError

__all__ = ["DATASET_MODES", "get_dataset_class", "get_option_setter", "create_dataset", "create_dataloader",
           "collate_checked", "seed_worker", "validate", "BaseDataset"]

DATASET_MODES: Dict[str, Type[BaseDataset]] = {
    "aligned": AlignedDataset,
    "single": SingleDataset,
    "unaligned": UnalignedDataset,
}


def get_dataset_class(name: str) -> Type[BaseDataset]:
    """The dataset class registered as ``name``.

    Raises:
        OptionError: unknown name (the message lists the valid ``--dataset_mode`` values).
    """
    try:
        return DATASET_MODES[name]
    except KeyError:
        raise OptionError(
            f"--dataset_mode '{name}' is unknown; choose one of {', '.join(DATASET_MODES)}"
        ) from None


def get_option_setter(name: str) -> Callable:
    """The ``modify_commandline_options(parser, is_train) -> parser`` of dataset ``name`` (raises OptionError)."""
    return get_dataset_class(name).modify_commandline_options


def create_dataset(opt) -> Dataset:
    """Build the map-style dataset named by ``opt.dataset_mode`` (no DataLoader).

    Raises:
        OptionError: unknown mode or invalid options; DataError: bad data (see each dataset).
    """
    return get_dataset_class(opt.dataset_mode)(opt)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and ``random`` from the worker's torch seed.

    PyTorch seeds each worker's torch generator with ``base_seed + worker_id`` (base_seed drawn from the loader's
    generator); this derives numpy's and Python's seeds from it, following the PyTorch reproducibility notes
    (https://pytorch.org/docs/stable/notes/randomness.html#dataloader).
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def collate_checked(items: list) -> dict:
    """DataLoader ``collate_fn``: ``torch.utils.data.default_collate`` after checking that the items' images agree
    (dataset item dicts; anything else is passed straight to ``default_collate``).

    A batch stacks ``'A'`` (and ``'B'``) of every item, so they must have one size; images of different sizes
    (e.g. ``--preprocess none`` or ``scale_width`` on a dataset of mixed sizes with ``--batch_size`` > 1) would
    otherwise fail inside ``torch.stack`` without naming a file.

    Raises:
        DataError: the items' ``'A'`` or ``'B'`` tensors differ in shape (names the files, their shapes, and the
            options that fix it).
    """
    dicts = [it for it in items if isinstance(it, Mapping)]
    for key in ("A", "B") if len(dicts) == len(items) else ():
        shapes = [tuple(it[key].shape) for it in items if key in it]
        if len(set(shapes)) > 1:
            listed = "; ".join(f"'{it.get(key + '_paths', '?')}' {tuple(it[key].shape[-2:])}" for it in items[:10])
            raise DataError(
                f"cannot batch images of different sizes ({key}, height x width): {listed}. Use --batch_size 1, "
                "or a --preprocess that gives one size (crop, resize_and_crop, scale_width_and_crop)"
            )
    return default_collate(items)


def check_batchable(opt, dataset: Dataset) -> None:
    """Before any batch is loaded: with ``--batch_size`` > 1 every item must come out of preprocessing at one size.

    Only ``--preprocess none`` and ``scale_width`` keep size differences (the other modes crop to ``--crop_size``);
    the source sizes come from the dataset's ``sizes`` attribute (``(width, height)`` per item, read from the headers
    by the aligned and single datasets; datasets without it are not checked here, :func:`collate_checked` still is).

    Raises:
        DataError: the items would have several sizes (lists a few examples and the options that fix it).
    """
    sizes = getattr(dataset, "sizes", None)
    if opt.batch_size <= 1 or not sizes or opt.preprocess not in ("none", "scale_width"):
        return
    examples: Dict[tuple, int] = {}
    for i, (w, h) in enumerate(sizes):
        examples.setdefault(resized_size(opt.preprocess, w, h, opt.load_size, opt.crop_size), i)
    if len(examples) > 1:
        paths = getattr(dataset, "pairs", None) or getattr(dataset, "paths", None) or []
        shown = "; ".join(f"'{paths[i][0] if isinstance(paths[i], tuple) else paths[i]}' -> {hw[0]}x{hw[1]} px"
                          if i < len(paths) else f"item {i} -> {hw[0]}x{hw[1]} px"
                          for hw, i in list(examples.items())[:5])
        raise DataError(
            f"--batch_size {opt.batch_size} with --preprocess {opt.preprocess}: the images would have "
            f"{len(examples)} different sizes (height x width), which cannot share a batch, e.g. {shown}. "
            "Use --batch_size 1, or --preprocess crop / resize_and_crop / scale_width_and_crop"
        )


def create_dataloader(opt, dataset: Dataset, shuffle: Optional[bool] = None, sampler: Optional[Sampler] = None,
                      drop_last: bool = False) -> DataLoader:
    """Wrap ``dataset`` in a DataLoader configured from the options.

    ``batch_size=opt.batch_size`` (items collated by :func:`collate_checked`); ``shuffle`` defaults to
    ``not opt.serial_batches`` (False when a sampler is given);
    ``num_workers=opt.num_threads`` with persistent workers when > 0; ``pin_memory`` when a GPU is used
    (``opt.gpu_ids`` non-empty and CUDA available). With ``opt.seed`` not None a ``torch.Generator`` seeded with it
    drives shuffling and the workers' seeds, and :func:`seed_worker` seeds numpy/random in each worker, so a CPU run
    with a seed repeats. With ``num_threads 0`` the datasets' random crops/flips draw from torch's global generator,
    which the caller seeds (``torch.manual_seed(opt.seed)``).

    Raises:
        OptionError: ``shuffle=True`` together with a sampler; ``batch_size`` < 1 or ``num_threads`` < 0.
        DataError: ``batch_size`` > 1 but the items would differ in size (:func:`check_batchable`).
    """
    if sampler is not None:
        if shuffle:
            raise OptionError("create_dataloader: shuffle=True cannot be combined with a sampler")
        shuffle = False
    elif shuffle is None:
        shuffle = not opt.serial_batches
    if opt.batch_size < 1:
        raise OptionError(f"--batch_size must be >= 1, got {opt.batch_size}")
    if opt.num_threads < 0:
        raise OptionError(f"--num_threads must be >= 0, got {opt.num_threads}")
    check_batchable(opt, dataset)
    seed = getattr(opt, "seed", None)
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    use_cuda = bool(getattr(opt, "gpu_ids", [])) and torch.cuda.is_available()
    workers = int(opt.num_threads)
    return DataLoader(
        dataset,
        batch_size=opt.batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        pin_memory=use_cuda,
        persistent_workers=workers > 0,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker,
        collate_fn=collate_checked,
    )
