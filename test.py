"""Apply a trained model to a dataset phase and write result images plus an HTML page.

    python test.py --dataroot ./datasets/BCI --name bci_pyramid --model pyramidpix2pix
    python test.py --dataroot ./my_he_tiles --name bci_pyramid --model test --dataset_mode single

Writes ``<results_dir>/<name>/<phase>_<epoch>/images/<stem>_{real_A,fake_B,real_B}.png`` (lossless, the input's
pixel size), ``index.html`` with one row per image and ``run_manifest.json`` (checkpoint set and hashes, data, options,
the image list and output flags). The folder holds one run: it is written beside the old one and swapped in when
complete; an earlier run there is replaced only with ``--overwrite``. Generated images that are non-finite or flat
(``--flat_std``) are flagged (``--strict``: exit 3). The networks are rebuilt from the run's saved training options.
Inference runs under ``torch.inference_mode()`` and ``--amp`` autocast; ``--batch_size N`` stacks up to N images of
the same size (images keep their native resolution; differently sized images go into separate batches).
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C while the imports below load: one line and exit 130, not a traceback
    from util.logging_setup import exit_on_early_interrupt

    exit_on_early_interrupt("test.py")

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

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


def _input_paths(dataset) -> list:
    """The input (A-side) file of every item, for naming results; [] when the dataset does not expose them."""
    if hasattr(dataset, "pairs"):
        return [Path(b if getattr(dataset, "swap", False) else a) for a, b in dataset.pairs]
    if hasattr(dataset, "paths"):
        return [Path(p) for p in dataset.paths]
    return []


def _probe(model, size, with_b: bool) -> None:
    """Run the model's test forward on a zero image of ``size`` (H, W)."""
    import torch

    c_in, c_out = model.opt.input_nc, model.opt.output_nc
    batch = {"A": torch.zeros(1, c_in, *size), "A_paths": ["<probe>"], "her2": ["?"]}
    if with_b:
        batch["B"] = torch.zeros(1, c_out, *size)
    model.set_input(batch)
    model.test()


def check_min_size(model, dataset, n: int) -> None:
    """Refuse, up front, images too small for the generator (e.g. 1x1): the model's test forward is tried on a zero
    image of the smallest height and width among the first ``n`` items; when it fails, the smallest square size that
    works is searched and every smaller file is named.

    Raises:
        DataError: images smaller than the network can process (names them, their sizes and the minimum).
    """
    from util.errors import DataError

    sizes = list(getattr(dataset, "sizes", []) or [])[:n]
    if not sizes:
        return
    with_b = getattr(model.opt, "dataset_mode", "") != "single"
    h_min, w_min = min(h for _, h in sizes), min(w for w, _ in sizes)
    try:
        _probe(model, (h_min, w_min), with_b)
        return
    except RuntimeError as first:
        failure = first
    minimum = None
    for s in range(max(h_min, w_min, 1), 257):
        try:
            _probe(model, (s, s), with_b)
        except RuntimeError:
            continue
        minimum = s
        break
    if minimum is None:
        raise failure  # not a size problem: a bug, show it
    paths = _input_paths(dataset)
    small = [f"'{paths[i] if i < len(paths) else i}' ({w}x{h} px)" for i, (w, h) in enumerate(sizes)
             if w < minimum or h < minimum]
    raise DataError(f"{len(small)} image(s) are smaller than --netG {model.opt.netG} can process (at least "
                    f"{minimum}x{minimum} px): {', '.join(small[:5])}{' ...' if len(small) > 5 else ''}")


def _test(argv: Optional[Sequence[str]]) -> int:
    import data
    import models
    import options
    from util.fileio import sha256_file
    from util.image_io import save_png, tensor_to_uint8
    from util.result_page import add_result_row, start_result_page
    from util.threads import rebalance
    from util.logging_setup import setup_logging
    from util.errors import OptionError
    from util.results_run import (ResultsStaging, check_unique_stems, describe_existing, output_flags,
                                   write_manifest)

    opt = options.parse_test(argv)
    setup_logging(opt.verbose)
    from options.release import describe, resolve_train_options

    # train_opt.json, else the release's train_opt.txt, else the command line and the model's (release) defaults
    train_opt, source = resolve_train_options(opt.checkpoints_dir, opt.name, options.build_parser(
        False, [f"--model={opt.model}", f"--dataset_mode={opt.dataset_mode}"]))
    log.info("%s", describe(source, Path(opt.checkpoints_dir) / opt.name))
    if train_opt:
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
    if opt.num_test is not None and opt.num_test < 1:
        raise OptionError(f"--num_test must be >= 1, got {opt.num_test}")
    if opt.batch_size < 1:
        raise OptionError(f"--batch_size must be >= 1, got {opt.batch_size}")
    if not opt.flat_std >= 0:
        raise OptionError(f"--flat_std must be >= 0 grey levels, got {opt.flat_std}")
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
    inputs = _input_paths(dataset)[:n]
    check_unique_stems(inputs)
    out_dir = Path(opt.results_dir) / opt.name / f"{opt.phase}_{opt.epoch}"
    if not opt.overwrite and describe_existing(out_dir):  # refuse before minutes of inference
        ResultsStaging(out_dir, overwrite=False)
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=opt.batch_size, shuffle=False, num_workers=opt.num_threads,
                        collate_fn=collate_same_size, pin_memory=opt.device.type == "cuda")
    model = models.create_model(opt)
    if total > 0:  # lazily built networks (CUT's netF) need a batch before loading
        model.data_dependent_initialize(collate_same_size([dataset[0]])[0])
    model.setup(opt)
    from models.backends import use_backend

    use_backend(model, opt)  # --backend onnxruntime: the exported generator replaces the PyTorch one
    if opt.amp != "none":
        log.info("inference under --amp %s autocast", opt.amp)
    if opt.train_mode_inference:
        model.train()
        log.info("generator in train mode (--train_mode_inference): batch statistics and dropout as the released code")
    else:
        model.eval()
        check_min_size(model, dataset, n)
    staging = ResultsStaging(out_dir, opt.overwrite)
    with staging:
        img_dir = staging.path / "images"
        img_dir.mkdir()
        log.info("testing %d of %d images of '%s' (phase %s) with %s epoch %s -> %s%s", n, total, opt.dataroot,
                 opt.phase, opt.name, opt.epoch, out_dir,
                 f" (replacing {staging.replacing})" if staging.replacing else "")
        page = start_result_page(staging.path, f"{opt.name}: {opt.phase}, epoch {opt.epoch}")
        done, records, flagged = 0, [], {}
        with tqdm(total=n, desc="test", unit="img", disable=None) as bar:
            for groups in loader:
                for batch in groups:
                    if done >= n:
                        break
                    model.set_input(batch)
                    model.test()
                    rebalance()  # fewer intra-op threads while other jobs use cores (util/threads.py)
                    visuals = model.get_current_visuals()
                    paths = model.get_image_paths()
                    for b in range(len(paths)):
                        if done >= n:
                            break
                        stem = Path(paths[b]).stem
                        arrays, files, flags = {}, {}, []
                        for label, t in visuals.items():
                            fname = f"{stem}_{label}.png"
                            arr = arrays[label] = tensor_to_uint8(t[b])
                            if label.startswith("fake"):
                                flags += [f"{label}:{f}" for f in output_flags(t[b], arr, opt.flat_std)]
                            save_png(arr, img_dir / fname)
                            files[label] = f"images/{fname}"
                        if flags:
                            flagged[stem] = flags
                            if len(flagged) <= 5:
                                log.warning("output of '%s' is flagged: %s", paths[b], ", ".join(flags))
                        records.append({"stem": stem, "input": str(paths[b]), "files": files, "flags": flags,
                                        "her2": (batch.get("her2") or [None] * len(paths))[b]})
                        # labelled H&E / virtual IHC / real IHC, with PSNR/SSIM when the real IHC is present
                        add_result_row(page, stem, arrays, opt.display_winsize, opt.page_scores,
                                       header_suffix=f" [{', '.join(flags)}]" if flags else "")
                        done += 1
                        bar.update(1)
                if done >= n:
                    break
        page.save()
        cs = getattr(model, "loaded_set", None)
        checkpoint = None
        if cs is not None:
            gen_files = {f"{cs.label}_net_{name}.pth" for name in model.model_names}
            checkpoint = {"dir": str(cs.save_dir), "label": cs.label, "set_id": cs.get("set_id"),
                          "legacy": cs.legacy, "epoch": cs.get("epoch"), "total_iters": cs.get("total_iters"),
                          "files": {f: (cs.manifest["files"][f]["sha256"] if cs.manifest else sha256_file(cs.path(f)))
                                    for f in sorted(gen_files)}}
        write_manifest(staging.path, {
            "name": opt.name, "model": opt.model, "dataroot": str(opt.dataroot), "phase": opt.phase,
            "epoch": str(opt.epoch), "num_test": opt.num_test, "n_images": done, "n_available": total,
            "checkpoint": checkpoint, "flat_std": opt.flat_std, "flagged": flagged, "images": records,
            "options": options.options_to_dict(opt)})
        staging.commit()
    if flagged:
        kinds = sorted({f.split(":")[1] for fl in flagged.values() for f in fl})
        log.warning("%d of %d outputs are flagged (%s; flat = every channel's standard deviation below %.1f grey "
                    "levels): the generator may have collapsed; evaluate.py reports them", len(flagged), done,
                    ", ".join(kinds), opt.flat_std)
    log.info("wrote %d of %d results to %s; open %s", done, total, out_dir / "images", out_dir / "index.html")
    if flagged and opt.strict:
        log.error("--strict: %d flagged output(s)", len(flagged))
        return 3
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point. ``argv`` defaults to ``sys.argv[1:]``; returns the exit status (2 on bad input)."""
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.logging_setup import run_cli

    return run_cli(_test, sys.argv[1:] if argv is None else argv, prog="test.py")


if __name__ == "__main__":
    sys.exit(main())
