"""Stain whole slides: H&E slide file(s) -> virtual IHC pyramidal BigTIFF(s), with thumbnails and an HTML page.

Example::

    python stain_slide.py --name bci_pyramidpix2pix --input slides/ --output stained/ --gpu_ids 0
    python stain_slide.py --backend onnxruntime --onnx bci.onnx --input slides.txt --output stained/ --shard 0/4

A folder or a list file (``.txt``/``.csv``) is a multi-slide run: sharded (``--shard i/n`` or torchrun / SLURM
array environment), recorded in a per-shard manifest CSV, resumable, and going on past slides that fail (exit
status 1 if any failed). See docs/WSI.md (options, resolution, output, speed) and docs/DEPLOY.md (many slides,
many machines, ONNX).
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C while the imports below load: one line and exit 130, not a traceback
    from util.logging_setup import exit_on_early_interrupt

    exit_on_early_interrupt("stain_slide.py")

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from util.errors import OptionError

log = logging.getLogger("stain_slide")

#: File suffixes picked up when --input is a folder.
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".czi", ".svslide",
                  ".dcm", ".png", ".jpg", ".jpeg")


def build_parser() -> argparse.ArgumentParser:
    from util.logging_setup import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter, description="H&E whole slide -> virtual IHC pyramidal BigTIFF (tiled, seamless).")
    p.add_argument("--name", default=None,
                   help="experiment whose generator to use (its train_opt.json rebuilds it); optional with --onnx")
    p.add_argument("--checkpoints_dir", default="./checkpoints", help="folder holding <name>/")
    p.add_argument("--epoch", default="latest", help="which <epoch>_net_G.pth to load")
    p.add_argument("--input", required=True,
                   help="a slide file, a folder of them, or a list file (.txt: one path a line; .csv: a 'path' column)")
    p.add_argument("--output", required=True,
                   help="output .tif/.tiff (for one input file) or a folder (<stem>_ihc.tiff per slide)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output slides that exist (a multi-slide run still skips slides its manifest lists as "
                        "done)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="process shard I of N (0-based) of a folder or list (default: torchrun RANK/WORLD_SIZE, "
                        "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, else 0/1)")
    p.add_argument("--manifest", default=None,
                   help="manifest CSV of this shard (default: <output>/manifest.csv, "
                        "<output>/manifest.shard-I-of-N.csv when sharded)")
    p.add_argument("--gpu_ids", default="-1",
                   help="GPU id(s), e.g. 0 or 0,1; -1 for CPU. One process uses the first id, under torchrun id "
                        "number LOCAL_RANK of the list")
    p.add_argument("--batch_size", type=int, default=4, help="tiles per forward pass")
    p.add_argument("--tile_size", type=int, default=512,
                   help="network input tile, px; a multiple of the generator's stride (resnet 4, unet_256 256)")
    p.add_argument("--overlap", type=int, default=64, help="overlap of neighbouring tiles, px (< tile_size/2)")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader processes reading tiles")
    p.add_argument("--target_mpp", "--mpp", dest="target_mpp", type=float, default=None,
                   help="um/px the model was trained at (default: 'mpp' in train_opt.json, else 0.46 as BCI)")
    p.add_argument("--slide_mpp", type=float, default=None,
                   help="um/px of the slide's level 0, for files without (or with wrong) MPP metadata")
    p.add_argument("--level", type=int, default=None,
                   help="process this slide level as it is (no MPP matching, no resampling)")
    p.add_argument("--no_tissue_mask", action="store_true", help="run the generator on background tiles too")
    p.add_argument("--keep_glass_colour", action="store_true",
                   help="keep the generator's colour on glass inside processed tiles (default: glass is white, like "
                        "the skipped background tiles)")
    p.add_argument("--compression", default="jpeg", choices=("jpeg", "deflate", "none"),
                   help="TIFF tile compression: jpeg (quality 90) or lossless deflate")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast on GPU: auto = bf16 where supported, else fp16; CPU always fp32")
    p.add_argument("--tmp_dir", default=None, help="folder for temporaries (default: beside the output)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    try:
        from models.tta import add_tta_options
    except ImportError:  # pragma: no cover - models.tta is part of the project
        pass
    else:
        add_tta_options(p)
    from models.backends import TORCH_CPU_OPTIONS, add_backend_options

    add_backend_options(p)
    p.add_argument("--cpu_path", default="eager", choices=TORCH_CPU_OPTIONS,
                   help="PyTorch CPU inference option (--backend torch, --gpu_ids -1): eager float32; channels_last; "
                        "winograd (channels-last + Winograd F(4x4,3x3)); bf16 autocast (oneDNN; outputs ~40 dB from "
                        "fp32). See docs/PERFORMANCE.md")
    return p


def list_inputs(path: Path) -> List[Path]:
    """The slide files to process: ``path`` itself, the slide files of a folder (sorted), or the slides named by a
    ``.txt``/``.csv`` list file (:func:`wsi.batch.read_list_file`; listed files are not checked here: a missing
    one fails on its own in the run).

    Raises:
        OptionError: ``path`` missing, a folder without slide files, an empty list. Files of other types in the
            folder are listed in a warning (never skipped silently).
    """
    from wsi.batch import is_list_file, read_list_file

    if is_list_file(path):
        return read_list_file(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise OptionError(f"--input '{path}' does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    slides = [p for p in files if p.suffix.lower() in SLIDE_SUFFIXES]
    other = [p.name for p in files if p.suffix.lower() not in SLIDE_SUFFIXES]
    if other:
        log.warning("--input %s: ignoring %d file(s) that are not slides (%s): %s", path, len(other),
                    "/".join(SLIDE_SUFFIXES), ", ".join(other[:10]) + (" ..." if len(other) > 10 else ""))
    if not slides:
        raise OptionError(f"--input folder '{path}' holds no slide files ({', '.join(SLIDE_SUFFIXES)})")
    return slides


def output_for(inputs: Sequence[Path], input_arg: Path, output: Path) -> List[Tuple[Path, Path]]:
    """Pair each input with its output TIFF.

    Raises:
        OptionError: a folder input with a file output; two inputs that would write the same output (e.g. ``a.svs``
            and ``a.tiff``: one would silently overwrite the other); an output that is one of the inputs.
    """
    is_file_out = output.suffix.lower() in (".tif", ".tiff")
    if input_arg.is_dir() or len(inputs) > 1 or input_arg.suffix.lower() in (".txt", ".csv"):
        if is_file_out:
            raise OptionError(f"--input '{input_arg}' is a folder, so --output must be a folder, not '{output}'")
        jobs = [(p, output / f"{p.stem}_ihc.tiff") for p in inputs]
    elif output.exists() and output.is_dir() or not is_file_out:
        jobs = [(inputs[0], output / f"{inputs[0].stem}_ihc.tiff")]
    else:
        jobs = [(inputs[0], output)]
    seen = {}
    sources = {p.resolve() for p in inputs}
    for src, dst in jobs:
        key = dst.resolve()
        if key in sources:
            raise OptionError(f"--output '{dst}' is an input slide; it would be overwritten")
        if key in seen:
            raise OptionError(f"--input '{seen[key]}' and '{src}' would both be written to '{dst}'; stain them into "
                              "different --output folders")
        seen[key] = src
    return jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    opt = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from util.logging_setup import run_cli

    return run_cli(_run, opt, prog="stain_slide.py")


def _device(opt: argparse.Namespace) -> str:
    import torch

    try:
        ids = [int(t) for t in str(opt.gpu_ids).split(",")]
    except ValueError:
        raise OptionError(f"--gpu_ids '{opt.gpu_ids}': expected a GPU id such as 0 (or 0,1: the first is used), "
                          "or -1 for the CPU") from None
    gpu = ids[0]
    if "LOCAL_RANK" in os.environ and gpu >= 0:  # torchrun: one GPU of the list per local process
        gpu = ids[int(os.environ["LOCAL_RANK"]) % len(ids)]
    if gpu >= 0 and not torch.cuda.is_available():
        raise OptionError(f"--gpu_ids {opt.gpu_ids}: CUDA is not available on this machine; use --gpu_ids -1")
    return f"cuda:{gpu}" if gpu >= 0 else "cpu"


def _generator(opt: argparse.Namespace, device: str):
    """``(generator, train_opt, description)`` for ``--backend``: the PyTorch generator of ``--name``, or the
    ``--onnx`` export run by onnxruntime (options from its sidecar, checked against ``--name``'s when given)."""
    from models.backends import OnnxGenerator, check_backend_options, check_sidecar

    check_backend_options(opt)
    if opt.backend == "onnxruntime":
        if opt.cpu_path != "eager":
            raise OptionError(f"--cpu_path {opt.cpu_path} is a PyTorch option; it does not apply to --backend "
                              "onnxruntime")
        from models.export import read_sidecar
        from options import load_train_options

        side = read_sidecar(opt.onnx)
        train_opt = dict(side.get("options") or {})
        if side.get("mpp") is not None:
            train_opt.setdefault("mpp", side["mpp"])
        if opt.name:
            check_sidecar(side, load_train_options(opt.checkpoints_dir, opt.name), opt.onnx)
        if "netG" not in train_opt:
            raise OptionError(f"--onnx '{opt.onnx}': its sidecar lacks the generator options (netG)")
        net = OnnxGenerator(opt.onnx, device=device, threads=opt.ort_threads)
        return net, train_opt, (f"{Path(opt.onnx).name} (onnxruntime; {side.get('name')}, {train_opt['netG']}, "
                                f"epoch {side.get('epoch')})")
    if not opt.name:
        raise OptionError("--name is required (or --backend onnxruntime --onnx FILE)")
    from models.inference import load_generator

    netG, train_opt = load_generator(opt.checkpoints_dir, opt.name, opt.epoch, device=device)
    described = f"{opt.name} ({train_opt.get('model')}, {train_opt['netG']}, epoch {opt.epoch})"
    if opt.cpu_path != "eager":
        if device != "cpu":
            raise OptionError(f"--cpu_path {opt.cpu_path} is a CPU option; on {device} use --precision")
        from models.backends import torch_cpu_generator

        return torch_cpu_generator(netG, opt.cpu_path), train_opt, f"{described}, CPU path {opt.cpu_path}"
    return netG, train_opt, described


def _run(opt: argparse.Namespace) -> int:
    from models.networks import generator_extras, generator_stride
    from wsi.batch import is_list_file
    from wsi.pipeline import DEFAULT_TARGET_MPP, StainSettings, plan_reading, validate_settings
    from wsi.reader import open_slide

    device = _device(opt)
    input_arg = Path(opt.input)
    multi = input_arg.is_dir() or is_list_file(input_arg)
    inputs = list_inputs(input_arg)
    jobs = output_for(inputs, input_arg, Path(opt.output))
    if multi:
        from wsi.batch import resolve_shard

        shard = resolve_shard(opt.shard)
    elif opt.shard is not None:
        raise OptionError(f"--shard {opt.shard}: --input '{input_arg}' is one slide; shards split a folder or a list")
    else:
        src, dst = jobs[0]
        if dst.exists() and not opt.overwrite:
            raise OptionError(f"--output '{dst}' exists; pass --overwrite to replace it")
    netG, train_opt, described = _generator(opt, device)
    if train_opt.get("input_nc", 3) != 3 or train_opt.get("output_nc", 3) != 3:
        raise OptionError(f"--name {opt.name}: stain_slide needs an RGB->RGB generator, the run has input_nc "
                          f"{train_opt.get('input_nc')} / output_nc {train_opt.get('output_nc')}")
    target = opt.target_mpp or train_opt.get("mpp") or DEFAULT_TARGET_MPP
    s = StainSettings(tile_size=opt.tile_size, overlap=opt.overlap, batch_size=opt.batch_size,
                      num_workers=opt.num_workers, target_mpp=float(target), slide_mpp=opt.slide_mpp,
                      level=opt.level, tissue_mask=not opt.no_tissue_mask,
                      white_background=not opt.keep_glass_colour, compression=opt.compression,
                      stride_multiple=generator_stride(train_opt["netG"], **generator_extras(train_opt)), device=device, precision=opt.precision,
                      progress=not opt.no_progress, tmp_dir=opt.tmp_dir,
                      info={"model": described, "target MPP": str(target)})
    validate_settings(s)
    if not multi:  # check the input before writing anything
        with open_slide(jobs[0][0]) as r:
            plan_reading(r, s.target_mpp, s.slide_mpp, s.level)

    generator = netG
    modes = None
    try:
        from models.tta import TTAWrapper, tta_modes_from_opt
    except ImportError:  # pragma: no cover
        pass
    else:
        modes = tta_modes_from_opt(opt)
        if modes:
            generator = TTAWrapper(netG, modes)
            s.info["TTA"] = ",".join(modes)

    from wsi.pipeline import stain_slide

    if not multi:
        src, dst = jobs[0]
        summary = stain_slide(generator, src, dst, s)
        log.info("%s -> %s: %s tiles in %.1f s", src, dst, summary["tiles_run"], summary["seconds"])
        return 0
    from wsi.batch import run_many

    failed = run_many(lambda a, b: stain_slide(generator, a, b, s), jobs, Path(opt.output), shard,
                      manifest=Path(opt.manifest) if opt.manifest else None, overwrite=opt.overwrite)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
