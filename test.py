"""Apply a trained model to a dataset phase and write result images plus an HTML page.

    python test.py --dataroot ./datasets/BCI --name bci_pyramid --model pyramidpix2pix
    python test.py --dataroot ./my_he_tiles --name bci_pyramid --model test --dataset_mode single

Writes ``<results_dir>/<name>/<phase>_<epoch>/images/<stem>_{real_A,fake_B,real_B}.png`` (lossless, the input's
pixel size) and ``index.html`` with one row per image. The networks are rebuilt from the run's saved training options.
Inference runs under ``torch.inference_mode()`` and ``--amp`` autocast; ``--batch_size N`` stacks up to N images of
the same size (images keep their native resolution; differently sized images go into separate batches).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from torch.utils.data import DataLoader
from tqdm import tqdm

log = logging.getLogger("test")


def collate_same_size(items: list) -> list:
    """DataLoader ``collate_fn`` for native-resolution batches: split ``items`` into runs of equal image size.

    Returns a list of batches (``torch.utils.data.default_collate`` of each group), groups in the order of their first
    item and items in their original order within a group, so ``--batch_size`` > 1 never resizes or pads across
    images of different sizes. Sizes are compared on every tensor entry (``A``, and ``B`` when present).
    """
    from torch.utils.data import default_collate

    groups: dict = {}
    for item in items:
        key = tuple(tuple(v.shape) for v in item.values() if hasattr(v, "shape"))
        groups.setdefault(key, []).append(item)
    return [default_collate(g) for g in groups.values()]


def _test(argv: Optional[Sequence[str]]) -> int:
    import data
    import models
    import options
    from util.html import HTMLPage
    from util.image_io import save_png, tensor_to_uint8
    from util.logging_setup import setup_logging

    opt = options.parse_test(argv)
    setup_logging(opt.verbose)
    train_opt = options.load_train_options(opt.checkpoints_dir, opt.name)
    options.apply_train_options(opt, train_opt)
    explicit = set(opt.explicit)
    if "preprocess" not in explicit:
        opt.preprocess = "none"  # native resolution unless asked
    opt.num_threads = min(opt.num_threads, 2)
    opt.batch_size = 1 if "batch_size" not in explicit else opt.batch_size
    opt.serial_batches = True
    opt.no_flip = True
    if opt.model == "test" and "dataset_mode" not in explicit:
        opt.dataset_mode = "single"
    options.seed_everything(opt.seed if opt.seed is not None else 0)
    if "phase" not in explicit:
        from data.layouts import default_test_phase

        phase = default_test_phase(opt.dataroot, opt.phase)
        if phase != opt.phase:
            log.info("'%s' is a MIST stain folder without a %s split: testing on its '%s' split (results in %s_%s)",
                     opt.dataroot, opt.phase, phase, phase, opt.epoch)
            opt.phase = phase

    dataset = data.create_dataset(opt)
    total = len(dataset)
    n = total if opt.num_test is None else min(opt.num_test, total)
    if opt.num_test is not None and opt.num_test < 1:
        from util.errors import OptionError

        raise OptionError(f"--num_test must be >= 1, got {opt.num_test}")
    if opt.batch_size < 1:
        from util.errors import OptionError

        raise OptionError(f"--batch_size must be >= 1, got {opt.batch_size}")
    loader = DataLoader(dataset, batch_size=opt.batch_size, shuffle=False, num_workers=opt.num_threads,
                        collate_fn=collate_same_size, pin_memory=opt.device.type == "cuda")
    model = models.create_model(opt)
    if total > 0:  # lazily built networks (CUT's netF) need a batch before loading
        model.data_dependent_initialize(collate_same_size([dataset[0]])[0])
    model.setup(opt)
    if opt.amp != "none":
        log.info("inference under --amp %s autocast", opt.amp)
    if opt.train_mode_inference:
        model.train()
        log.info("generator in train mode (--train_mode_inference): batch statistics and dropout as the released code")
    else:
        model.eval()
    out_dir = Path(opt.results_dir) / opt.name / f"{opt.phase}_{opt.epoch}"
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    log.info("testing %d of %d images of '%s' (phase %s) with %s epoch %s -> %s", n, total, opt.dataroot,
             opt.phase, opt.name, opt.epoch, out_dir)
    page = HTMLPage(out_dir, f"{opt.name}: {opt.phase}, epoch {opt.epoch}")
    done = 0
    with tqdm(total=n, desc="test", unit="img", disable=None) as bar:
        for groups in loader:
            for batch in groups:
                if done >= n:
                    break
                model.set_input(batch)
                model.test()
                visuals = model.get_current_visuals()
                paths = model.get_image_paths()
                for b in range(len(paths)):
                    if done >= n:
                        break
                    stem = Path(paths[b]).stem
                    names, labels = [], []
                    for label, t in visuals.items():
                        fname = f"{stem}_{label}.png"
                        save_png(tensor_to_uint8(t[b]), img_dir / fname)
                        names.append(f"images/{fname}")
                        labels.append(f"{stem} {label}")
                    page.add_header(stem)
                    page.add_images(names, labels, names, width=opt.display_winsize)
                    done += 1
                    bar.update(1)
            if done >= n:
                break
    page.save()
    log.info("wrote %d of %d results to %s; open %s", done, total, img_dir, out_dir / "index.html")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point. ``argv`` defaults to ``sys.argv[1:]``; returns the exit status (2 on bad input)."""
    from util.logging_setup import run_cli

    return run_cli(_test, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
