"""Pyramid pix2pix ablation (BCI paper, Table 3): train, test and evaluate a list of ``--pattern`` values on one
dataset and write the table as markdown and CSV.

    python scripts/ablation.py --dataroot ./datasets/BCI --gpu_ids 0
    python scripts/ablation.py --smoke            # tiny CPU run on the embedded sample (a few minutes)

Rows (paper names): pix2pix = ``L1``; pix2pix+S1 = ``L1_L2``; +S1+S2 = ``L1_L2_L3``; +S1+S2+S3 = ``L1_L2_L3_L4``.
Every other option after ``--`` goes to train.py unchanged (e.g. ``-- --n_epochs 50 --n_epochs_decay 50``).
Outputs ``<out>/ablation.md``, ``<out>/ablation.csv`` (written atomically) and one experiment per pattern named
``<prefix>_<pattern>`` under ``--checkpoints_dir`` / ``--results_dir``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("ablation")

PAPER_NAMES = {"L1": "pix2pix", "L1_L2": "pix2pix+S1", "L1_L2_L3": "pix2pix+S1+S2", "L1_L2_L3_L4": "pix2pix+S1+S2+S3"}
SMOKE_TRAIN = ["--ngf", "8", "--ndf", "8", "--n_epochs", "1", "--n_epochs_decay", "1", "--netG", "resnet_6blocks",
               "--num_threads", "0", "--print_freq", "1000", "--display_freq", "1000", "--seed", "0"]
COLUMNS = ["pattern", "method", "n_images", "psnr", "ssim", "iod_pearson_r", "iod_mae", "fid", "kid_x1e3"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", default=None, help="paired dataset (default with --smoke: a derived sample)")
    p.add_argument("--patterns", default="L1,L1_L2,L1_L2_L3,L1_L2_L3_L4", help="comma-separated --pattern values")
    p.add_argument("--prefix", default="ablation", help="experiment name prefix")
    p.add_argument("--checkpoints_dir", default="./checkpoints")
    p.add_argument("--results_dir", default="./results")
    p.add_argument("--out", default=None, help="folder of ablation.md/csv (default: <results_dir>/<prefix>)")
    p.add_argument("--gpu_ids", default="-1")
    p.add_argument("--smoke", action="store_true", help="tiny networks, 2 epochs, on the embedded sample, CPU")
    p.add_argument("--no_fid", action="store_true", help="skip FID/KID in the evaluation")
    return p


def run(args: argparse.Namespace, train_extra: Sequence[str]) -> list[dict]:
    import evaluate
    import test as test_script
    import train
    from models.pyramid import parse_pattern
    from util.errors import UserError

    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    for p in patterns:
        parse_pattern(p)  # fail before any training
    dataroot = args.dataroot
    if dataroot is None:
        if not args.smoke:
            raise UserError("--dataroot is required (or --smoke to use the embedded sample)")
        from scripts import make_sample_dataset

        dataroot = str(Path(args.results_dir) / args.prefix / "sample_bci")
        if not Path(dataroot).is_dir():
            make_sample_dataset.main(["--out", dataroot, "--tile_size", "64", "--n_train", "8", "--n_test", "4"])
    rows = []
    for pattern in patterns:
        name = f"{args.prefix}_{pattern}"
        common = ["--dataroot", dataroot, "--name", name, "--checkpoints_dir", args.checkpoints_dir,
                  "--gpu_ids", args.gpu_ids]
        log.info("=== %s (%s)", pattern, PAPER_NAMES.get(pattern, "custom"))
        extra = (SMOKE_TRAIN if args.smoke else []) + list(train_extra)
        if train.main(common + ["--model", "pyramidpix2pix", "--pattern", pattern] + extra) != 0:
            raise UserError(f"training {name} failed (see the messages above)")
        if test_script.main(common + ["--model", "pyramidpix2pix", "--results_dir", args.results_dir,
                                      "--num_threads", "0"]) != 0:
            raise UserError(f"testing {name} failed")
        ev = ["--result_path", str(Path(args.results_dir) / name), "--no_progress"]
        if args.no_fid or args.smoke:
            ev.append("--no_fid")
        if evaluate.main(ev) != 0:
            raise UserError(f"evaluating {name} failed")
        m = json.loads((Path(args.results_dir) / name / "test_latest" / "metrics.json").read_text())
        rows.append({"pattern": pattern, "method": PAPER_NAMES.get(pattern, pattern), **{k: m.get(k) for k in COLUMNS[2:]}})
    return rows


def to_markdown(rows: list[dict]) -> str:
    def fmt(v):
        if v is None:
            return "n/a"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _main(argv: Sequence[str]) -> int:
    from util.fileio import atomic_write_text
    from util.logging_setup import setup_logging

    argv = list(argv)
    train_extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_extra = argv[:i], argv[i + 1:]
    args = _parser().parse_args(argv)
    setup_logging()
    rows = run(args, train_extra)
    out = Path(args.out) if args.out else Path(args.results_dir) / args.prefix
    md, cs = to_markdown(rows), to_csv(rows)
    atomic_write_text(out / "ablation.md", md)
    atomic_write_text(out / "ablation.csv", cs)
    print(md)
    print(f"wrote {out / 'ablation.md'} and {out / 'ablation.csv'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.logging_setup import run_cli

    return run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
