"""Pyramid pix2pix ablation (BCI paper, Table 3): train, test and evaluate a list of ``--pattern`` values on one
dataset and write the table as markdown and CSV.

    python scripts/ablation.py --dataroot ./datasets/BCI --gpu_ids 0
    python scripts/ablation.py --smoke --out_dir /tmp/ablation_smoke   # tiny CPU run on the embedded sample

Rows (paper names): pix2pix = ``L1``; pix2pix+S1 = ``L1_L2``; +S1+S2 = ``L1_L2_L3``; +S1+S2+S3 = ``L1_L2_L3_L4``.
Every other option after ``--`` goes to train.py unchanged (e.g. ``-- --n_epochs 50 --n_epochs_decay 50``).
Everything goes under ``--out_dir`` (default ``./ablation``, like ``scripts/table1.py``): ``ablation.md``,
``ablation.csv`` (written atomically) and one experiment per pattern named ``<prefix>_<pattern>`` under
``<out_dir>/checkpoints`` / ``<out_dir>/results`` (``--checkpoints_dir`` / ``--results_dir`` / ``--out`` override). With ``--tta`` every pattern is also tested
with test-time augmentation (``test.py --tta --tta_modes <--tta_modes>``, results under ``<results_dir>/tta/``, so the
plain results are kept) and the table gains ``psnr_tta`` / ``ssim_tta`` (issue 9: figures with and without TTA).
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
TTA_COLUMNS = ["psnr_tta", "ssim_tta"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", default=None, help="paired dataset (default with --smoke: a derived sample)")
    p.add_argument("--patterns", default="L1,L1_L2,L1_L2_L3,L1_L2_L3_L4", help="comma-separated --pattern values")
    p.add_argument("--prefix", default="ablation", help="experiment name prefix")
    p.add_argument("--out_dir", default="./ablation",
                   help="checkpoints, results and the table go here (as scripts/table1.py), not into ./checkpoints")
    p.add_argument("--checkpoints_dir", default=None, help="default: <out_dir>/checkpoints")
    p.add_argument("--results_dir", default=None, help="default: <out_dir>/results")
    p.add_argument("--out", default=None, help="folder of ablation.md/csv (default: <out_dir>)")
    p.add_argument("--gpu_ids", default="-1")
    p.add_argument("--smoke", action="store_true", help="tiny networks, 2 epochs, on the embedded sample, CPU")
    p.add_argument("--no_fid", action="store_true", help="skip FID/KID in the evaluation")
    p.add_argument("--tta", action="store_true",
                   help="also test every pattern with test-time augmentation and add psnr_tta / ssim_tta columns")
    p.add_argument("--tta_modes", default="all", help="views averaged with --tta (see test.py --tta_modes)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; --smoke: 1, faster for tiny networks)")
    return p


def _read_metrics(path: Path) -> dict:
    """metrics.json written by evaluate.py; raises UserError naming the file when missing or unreadable."""
    from util.errors import UserError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"evaluate.py wrote no metrics file '{path}'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read metrics file '{path}': {e}") from e


def _test_and_evaluate(name: str, common: list, results_dir: str, no_fid: bool, extra_test=(), extra_eval=()) -> dict:
    """test.py then evaluate.py of experiment ``name`` into ``results_dir``; returns its metrics.json dict."""
    import evaluate
    import test as test_script
    from util.errors import UserError

    # every pattern is retrained, so its test results replace the earlier ones (--overwrite)
    if test_script.main(common + ["--model", "pyramidpix2pix", "--results_dir", results_dir,
                                  "--num_threads", "0", "--overwrite"] + list(extra_test)) != 0:
        raise UserError(f"testing {name} failed (see the messages above)")
    ev = ["--result_path", str(Path(results_dir) / name), "--no_progress"]
    if no_fid:
        ev.append("--no_fid")
    if evaluate.main(ev + list(extra_eval)) != 0:
        raise UserError(f"evaluating {name} failed (see the messages above)")
    return _read_metrics(Path(results_dir) / name / "test_latest" / "metrics.json")


def run(args: argparse.Namespace, train_extra: Sequence[str]) -> list[dict]:
    import train
    from models.pyramid import parse_pattern
    from models.tta import parse_tta_modes
    from util.errors import OptionError, UserError

    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    if not patterns:
        raise OptionError("--patterns is empty; give e.g. L1,L1_L2,L1_L2_L3,L1_L2_L3_L4")
    for p in patterns:
        parse_pattern(p)  # fail before any training
    if args.tta:
        parse_tta_modes(args.tta_modes)
    threads = 1 if args.smoke and args.threads is None else args.threads
    if threads is not None:
        if threads < 1:
            raise OptionError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)
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
        no_fid = args.no_fid or args.smoke
        extra_eval = ["--num_workers", "1"] if args.smoke else []  # a process pool costs more than a few tiles
        m = _test_and_evaluate(name, common, args.results_dir, no_fid, extra_eval=extra_eval)
        row = {"pattern": pattern, "method": PAPER_NAMES.get(pattern, pattern), **{k: m.get(k) for k in COLUMNS[2:]}}
        if args.tta:
            mt = _test_and_evaluate(name, common, str(Path(args.results_dir) / "tta"), True,
                                    ["--tta", "--tta_modes", args.tta_modes], extra_eval)
            row.update(psnr_tta=mt.get("psnr"), ssim_tta=mt.get("ssim"))
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[str]:
    return COLUMNS + (TTA_COLUMNS if any(c in r for r in rows for c in TTA_COLUMNS) else [])


def to_markdown(rows: list[dict]) -> str:
    def fmt(v):
        if v is None:
            return "n/a"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows), extrasaction="ignore", lineterminator="\n")
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
    args.checkpoints_dir = args.checkpoints_dir or str(Path(args.out_dir) / "checkpoints")
    args.results_dir = args.results_dir or str(Path(args.out_dir) / "results")
    setup_logging()
    log.info("writing under %s (checkpoints %s, results %s)", args.out_dir, args.checkpoints_dir, args.results_dir)
    rows = run(args, train_extra)
    out = Path(args.out) if args.out else Path(args.out_dir)
    md, cs = to_markdown(rows), to_csv(rows)
    atomic_write_text(out / "ablation.md", md)
    atomic_write_text(out / "ablation.csv", cs)
    print(md)
    print(f"wrote {out / 'ablation.md'} and {out / 'ablation.csv'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.logging_setup import run_cli

    return run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
