"""Build BCI-style H&E/IHC patch pairs from a registered slide pair (BCI paper, Liu et al. 2022, section 3).

Given an H&E slide, its restained IHC neighbour and a CSV of >= 4 corresponding points (level-0 pixels, columns
``he_x,he_y,ihc_x,ihc_y``), the command

1. fits the projective transform H&E -> IHC from the points (scikit-image) and reports each point's residual;
2. registers the IHC onto the H&E block by block with elastix (affine + B-spline on the hematoxylin channel),
   applying the transform to all three channels and blending the blocks' overlaps (no seams);
3. cuts ``--patch_size`` patches, drops background, uncovered and badly aligned ones, and writes
   ``<out>/HE/<phase>/NNNNN_<phase>_<level>.png`` + ``<out>/IHC/<phase>/...`` (the BCI layout);
4. writes ``<out>/registration/<name>/patches.csv`` (every patch: position, tissue, coverage, score, reason) and
   ``report.html`` (overlays before/after each stage, block table, score histogram, patch map).

Example::

    python scripts/build_pairs.py --he he.svs --ihc ihc.svs --points points.csv --her2 2+ --out datasets/mybci \
        --phase train --level 0 --blocks 4x4

Exit status: 0 on success, 2 on bad input (one line on stderr), 1 on unexpected errors.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the project root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.her2 import HER2_LEVELS  # noqa: E402

log = logging.getLogger("build_pairs")


def build_parser() -> argparse.ArgumentParser:
    from util.logging_setup import HelpFormatter

    p = argparse.ArgumentParser(prog="build_pairs.py", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--he", required=True, type=Path, help="H&E slide (any format wsi.reader opens, or PNG/TIFF)")
    io.add_argument("--ihc", required=True, type=Path, help="restained IHC slide of the same tissue")
    io.add_argument("--points", required=True, type=Path,
                    help="CSV of >= 4 point pairs, columns he_x,he_y,ihc_x,ihc_y in level-0 pixels")
    io.add_argument("--her2", required=True, choices=HER2_LEVELS, help="HER2 level of the slide (file names)")
    io.add_argument("--out", required=True, type=Path, help="dataset root (HE/<phase>, IHC/<phase>, registration/)")
    io.add_argument("--phase", default="train", choices=("train", "test"), help="output subfolder")
    io.add_argument("--name", default=None, help="run name for registration/<name>/ (default: H&E file stem)")
    io.add_argument("--start_index", type=int, default=None,
                    help="first NNNNN of the kept patches (default: next free index in HE/<phase>)")
    io.add_argument("--keep_registered", action="store_true",
                    help="keep the registered IHC (ihc_registered.tif, working frame) and its coverage mask")
    io.add_argument("--no_report", action="store_true", help="skip report.html")
    io.add_argument("--thumb_size", type=int, default=1024, help="longer side of the report's thumbnails, px")
    res = p.add_mutually_exclusive_group()
    res.add_argument("--level", type=int, default=None, help="working resolution: this H&E pyramid level")
    res.add_argument("--mpp", type=float, default=None,
                     help="working resolution in um/px (needs MPP metadata in the H&E slide)")
    fine = p.add_argument_group("fine registration (elastix)")
    fine.add_argument("--blocks", default="4x4", help="ROWSxCOLS block grid (BCI: 16 blocks)")
    fine.add_argument("--max_block", type=int, default=4096,
                      help="largest block side in working px (more blocks when needed; bounds memory); 0: no limit")
    fine.add_argument("--margin", type=int, default=64, help="context registered around each block, working px")
    fine.add_argument("--overlap", type=int, default=32, help="blended band on each side of a block seam, px")
    fine.add_argument("--channel", default="hematoxylin", choices=("hematoxylin", "grey"),
                      help="channel registered and scored")
    fine.add_argument("--affine_iterations", type=int, default=256, help="elastix affine iterations per resolution")
    fine.add_argument("--bspline_iterations", type=int, default=256,
                      help="elastix B-spline iterations per resolution")
    fine.add_argument("--grid_spacing", type=float, default=64.0, help="B-spline control-point spacing, working px")
    fine.add_argument("--resolutions", type=int, default=None, help="elastix pyramid levels (default: by block size)")
    fine.add_argument("--no_fine", action="store_true", help="coarse (homography) alignment only")
    fine.add_argument("--min_block_tissue", type=float, default=0.05,
                      help="blocks with less tissue keep the coarse alignment")
    pt = p.add_argument_group("patches")
    pt.add_argument("--patch_size", type=int, default=1024, help="patch side, working px")
    pt.add_argument("--stride", type=int, default=None, help="grid step (default: patch_size)")
    pt.add_argument("--min_tissue", type=float, default=0.5, help="drop patches with a smaller H&E tissue fraction")
    pt.add_argument("--min_score", type=float, default=0.2, help="drop patches whose alignment score is lower")
    pt.add_argument("--score", default="ncc", choices=("ncc", "nmi"), help="alignment score")
    pt.add_argument("--score_downsample", type=int, default=4, help="block-average factor before scoring")
    pt.add_argument("--min_coverage", type=float, default=0.99,
                    help="drop patches where the IHC covers a smaller fraction")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(a: argparse.Namespace):
    """:class:`registration.pipeline.BuildConfig` from parsed arguments (raises OptionError on bad values)."""
    from registration.blocks import parse_grid
    from registration.fine import FineParams
    from registration.patches import PatchCriteria
    from registration.pipeline import BuildConfig

    cfg = BuildConfig(
        her2=a.her2, phase=a.phase, level=a.level, mpp=a.mpp, blocks=parse_grid(a.blocks), max_block=a.max_block,
        margin=a.margin, overlap=a.overlap, channel=a.channel,
        fine=FineParams(affine_iterations=a.affine_iterations, bspline_iterations=a.bspline_iterations,
                        grid_spacing=a.grid_spacing, resolutions=a.resolutions),
        skip_fine=a.no_fine, min_block_tissue=a.min_block_tissue, patch_size=a.patch_size, stride=a.stride,
        criteria=PatchCriteria(min_tissue=a.min_tissue, min_score=a.min_score, min_coverage=a.min_coverage,
                               metric=a.score, channel=a.channel, score_downsample=a.score_downsample),
        start_index=a.start_index, name=a.name, thumb_size=a.thumb_size, keep_registered=a.keep_registered,
        report=not a.no_report)
    cfg.validate()
    return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from util.logging_setup import setup_logging

    from util.logging_setup import run_cli

    def body(args):
        from registration.pipeline import build_pairs

        cfg = config_from_args(args)
        result = build_pairs(args.he, args.ihc, args.points, args.out, cfg)
        print(f"{len(result.kept)} of {len(result.patches)} patches kept -> {args.out}/HE/{cfg.phase}, "
              f"{args.out}/IHC/{cfg.phase}; table {result.patch_csv}"
              + (f"; report {result.report}" if result.report else ""))

    setup_logging(args.verbose)
    return run_cli(body, args, prog="build_pairs")


if __name__ == "__main__":
    sys.exit(main())
