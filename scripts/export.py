"""Export a trained generator to ONNX or TorchScript, with a JSON sidecar, and verify it on real H&E tiles.

    python scripts/export.py --name bci_pyramid --format onnx --output deploy/bci_pyramid.onnx
    python scripts/export.py --name bci_pyramid --format torchscript --output deploy/bci_pyramid.pt

The generator is rebuilt from ``<checkpoints_dir>/<name>/train_opt.json`` (the A -> B generator: ``G``, or ``G_A`` of
a CycleGAN run) with stock PyTorch layers and loaded from ``<epoch>_net_G.pth``. ONNX: opset 17, dynamic batch,
height and width, input ``input`` / output ``output`` ``(N, 3, H, W)`` float32 in [-1, 1]. The exported file is
then run (onnxruntime, or ``torch.jit.load``) on real H&E tiles (``--verify_images``, default the bundled
``samples/`` H&E) and compared with PyTorch; a largest absolute difference above ``--tolerance`` (default 1/255, half an
8-bit grey level in the [-1, 1] output range) is an error and removes the export. ``<output>.json`` records the model, its options, the
input/output convention, the training tile size, the checkpoint's SHA-256 and the verification result.
See docs/DEPLOY.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    from models.export import DEFAULT_TOLERANCE, FORMATS, ONNX_OPSET

    from util.logging_setup import HelpFormatter


    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="export.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="experiment folder <checkpoints_dir>/<name>")
    p.add_argument("--checkpoints_dir", default="./checkpoints")
    p.add_argument("--epoch", default="latest", help="which <epoch>_net_G.pth")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (opset below) or torchscript (traced)")
    p.add_argument("--output", required=True, help="file to write (.onnx / .pt); the sidecar is <output>.json")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset")
    p.add_argument("--verify_images", nargs="+", default=None,
                   help="real H&E images or slides to cut verification tiles from (default: samples/ H&E)")
    p.add_argument("--verify_tile", type=int, default=256,
                   help="verification tile size, px (rounded up to the generator's stride)")
    p.add_argument("--verify_count", type=int, default=4, help="number of verification tiles")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest accepted |exported - PyTorch| in the [-1, 1] output range")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return p


def _run(opt: argparse.Namespace) -> int:
    from models import export as E
    from models.inference import generator_file, load_generator
    from models.networks import generator_extras, generator_stride
    from util.errors import OptionError

    out = Path(opt.output)
    if out.exists() and not opt.overwrite:
        raise OptionError(f"--output '{out}' exists; pass --overwrite to replace it")
    if opt.verify_count < 1 or opt.verify_tile < 1 or not opt.tolerance >= 0:
        raise OptionError("--verify_count and --verify_tile must be >= 1 and --tolerance >= 0")
    net, train_opt = load_generator(opt.checkpoints_dir, opt.name, opt.epoch, device="cpu")
    ckpt = generator_file(train_opt, Path(opt.checkpoints_dir) / opt.name, str(opt.epoch))
    stride = generator_stride(train_opt["netG"], **generator_extras(train_opt))
    images = [Path(p) for p in opt.verify_images] if opt.verify_images else E.default_verify_images(ROOT)
    if not images:
        raise OptionError("no verification images: pass --verify_images (real H&E images or slides)")
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise OptionError(f"--verify_images: not found: {', '.join(missing)}")
    tile = E.verification_tile(stride, opt.verify_tile)
    tiles = E.real_tiles(images, tile, opt.verify_count)
    example = E.example_input(int(train_opt.get("input_nc", 3)), stride)
    if int(train_opt.get("input_nc", 3)) != 3:
        raise OptionError(f"--name {opt.name}: verification on RGB H&E tiles needs input_nc 3, the run has "
                          f"{train_opt.get('input_nc')}")
    if opt.format == "onnx":
        E.export_onnx(net, out, example, opset=opt.opset)
    else:
        E.export_torchscript(net, out, example)
    try:
        result = E.verify_export(net, out, opt.format, tiles, stride, opt.tolerance)
        side = E.make_sidecar(opt.format, out, train_opt, name=opt.name, epoch=opt.epoch, checkpoint=ckpt,
                              stride=stride, opset=opt.opset,
                              verification={**result, "images": [p.name for p in images]})
        E.write_sidecar(out, side)
    except BaseException:
        out.unlink(missing_ok=True)  # never leave an unverified export behind
        raise
    log.info("exported %s epoch %s -> %s (+ %s); max |diff| vs PyTorch %.3g, PSNR %.1f dB", opt.name, opt.epoch,
             out, E.sidecar_path(out).name, result["max_abs_diff"], result["psnr_db"])
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; returns the exit status (2 with one error line for bad input or an unexportable model)."""
    from util.logging_setup import run_cli, setup_logging

    opt = build_parser().parse_args(argv)
    setup_logging()
    return run_cli(_run, opt, prog="export.py")


if __name__ == "__main__":
    sys.exit(main())
