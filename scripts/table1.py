"""Reproduce Table 1 of the BCI paper (Liu et al., CVPR Workshops 2022) with one command: train, test and evaluate
cycleGAN, pix2pix (U-Net 256), pix2pix (ResNet 9 blocks), pix2pixHD and pyramid pix2pix on one dataset, plus the
contrastive methods CUT, FastCUT and ASP (not in the paper's table), and write the table as markdown and CSV.

    python scripts/table1.py --dataroot ./datasets/BCI --out_dir ./table1 --gpu_ids 0
    python scripts/table1.py --smoke --out_dir /tmp/table1_smoke          # every row end to end, tiny, CPU, minutes

Each row calls ``train.main``, ``test.main`` and ``evaluate.main`` in this process with argument lists (the commands
are logged, so any row can be re-run by hand). Layout under ``--out_dir``: ``checkpoints/table1_<method>/``,
``results/table1_<method>/test_latest/`` (images, ``metrics.json``), and ``table1.md`` / ``table1.csv`` (written
atomically once every requested row is done). Settings per row and their sources: docs/BASELINES.md.

Exit status: 0 on success; 2 on bad options/data or when a row's step fails (one line on stderr naming the row, the
step and its exit status).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.errors import OptionError, UserError  # noqa: E402
from util.fileio import atomic_write_text  # noqa: E402
from util.logging_setup import HelpFormatter  # noqa: E402

log = logging.getLogger("table1")


@dataclass(frozen=True)
class Method:
    """One row of Table 1: ``train`` / ``smoke_train`` are extra train.py arguments (full run / ``--smoke``)."""

    key: str
    label: str
    train: Tuple[str, ...]
    smoke_train: Tuple[str, ...]
    #: published (PSNR dB, SSIM) from the BCI paper's Table 1 (see :data:`PAPER_SOURCE` and docs/BASELINES.md)
    paper: Optional[Tuple[float, float]] = None
    test: Tuple[str, ...] = field(default_factory=tuple)


#: Smoke settings shared by every row: tiny networks, one epoch, 64 px random crops of the 128 px sample tiles.
SMOKE_COMMON = ("--ngf", "8", "--ndf", "8", "--n_epochs", "1", "--n_epochs_decay", "0", "--batch_size", "1",
                "--preprocess", "crop", "--crop_size", "64", "--num_threads", "0", "--print_freq", "1000",
                "--display_freq", "100000", "--save_latest_freq", "100000", "--no_html")

METHODS: Dict[str, Method] = {m.key: m for m in (
    Method("cyclegan", "cycleGAN", ("--model", "cycle_gan", "--preprocess", "crop", "--crop_size", "512"),
           ("--model", "cycle_gan"), paper=(16.203, 0.373)),
    Method("pix2pix_unet", "pix2pix (U-Net 256)", ("--model", "pix2pix", "--netG", "unet_256", "--preprocess", "none"),
           ("--model", "pix2pix", "--netG", "unet_256", "--preprocess", "resize_and_crop", "--load_size", "256",
            "--crop_size", "256"), paper=(18.654, 0.419)),
    Method("pix2pix_resnet", "pix2pix (ResNet 9 blocks)",
           ("--model", "pix2pix", "--netG", "resnet_9blocks", "--preprocess", "none"),
           ("--model", "pix2pix", "--netG", "resnet_9blocks"), paper=(19.328, 0.44)),
    Method("pix2pixhd", "pix2pixHD", ("--model", "pix2pixhd", "--preprocess", "none"),
           ("--model", "pix2pixhd", "--no_vgg_loss"), paper=(19.634, 0.471)),
    Method("pyramidpix2pix", "pyramid pix2pix", ("--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4"),
           ("--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4"), paper=(21.16, 0.477)),
    # contrastive methods (not in the BCI paper): the CUT paper's CUT / FastCUT recipes on 512 px crops like the
    # cycleGAN row, and the ASP authors' recipe (its own defaults: 512 px crops of 1024 px images)
    Method("cut", "CUT", ("--model", "cut", "--CUT_mode", "CUT", "--preprocess", "crop", "--crop_size", "512"),
           ("--model", "cut", "--CUT_mode", "CUT")),
    Method("fastcut", "FastCUT", ("--model", "cut", "--CUT_mode", "FastCUT", "--preprocess", "crop", "--crop_size",
                                  "512"), ("--model", "cut", "--CUT_mode", "FastCUT")),
    # smoke: 64 px crops are too small for ASP's 5-layer discriminator (>= 96 px), 3 layers there
    Method("asp", "ASP", ("--model", "asp"), ("--model", "asp", "--n_layers_D", "3")),
)}

#: columns of the table taken from each run's metrics.json (key, header, format)
METRIC_COLUMNS = (
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("fid", "FID", "{:.2f}"),
    ("kid_x1e3", "KID x1e3", "{:.2f}"),
    ("iod_pearson_r", "IOD r", "{:.3f}"),
    ("iod_mae", "IOD MAE (OD px)", "{:.1f}"),
    ("dab_pos_real_mean", "DAB+ real", "{:.3f}"),
    ("dab_pos_fake_mean", "DAB+ fake", "{:.3f}"),
    ("n_images", "n", "{:d}"),
)
PAPER_HEADER = "BCI paper Table 1 (PSNR dB / SSIM)"
#: where the published figures come from (printed under the table)
PAPER_SOURCE = ("Liu et al., \"BCI: Breast Cancer Immunohistochemical Image Generation through Pyramid Pix2pix\", "
                "CVPR Workshops 2022 (arXiv:2204.11425), Table 1 \"Comparison of PSNR and SSIM values of different "
                "methods on BCI dataset\"; figures as printed there (BCI test set), not re-computed")
#: Pearson r over fewer images than this is always +-1 or undefined: the table leaves the cell empty
MIN_IMAGES_FOR_R = 3


class StepFailed(UserError):
    """A train/test/evaluate step of a row returned a non-zero exit status."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--dataroot", default=None,
                   help="BCI-layout dataset (HE/train, IHC/train, HE/test, IHC/test); with --smoke and no --dataroot "
                        "the sample dataset is built under --out_dir")
    p.add_argument("--out_dir", default="./table1", help="checkpoints, results and the table go here")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated rows to run, from: {', '.join(METHODS)}")
    p.add_argument("--smoke", action="store_true",
                   help="tiny CPU configuration (ngf/ndf 8, 64 px crops, 1 epoch, few images) to check the pipeline")
    p.add_argument("--gpu_ids", default="-1", help="passed to train.py/test.py, e.g. 0; -1 = CPU")
    p.add_argument("--seed", type=int, default=0, help="training seed of every row")
    p.add_argument("--max_dataset_size", type=int, default=None,
                   help="cap on training images per row (default: all; --smoke: 4)")
    p.add_argument("--num_test", type=int, default=None, help="cap on test images per row (default: all; --smoke: 2)")
    p.add_argument("--vgg_weights", default=None, metavar="PATH",
                   help="VGG19 weights for pix2pixHD's perceptual loss (default: the torch hub cache)")
    p.add_argument("--no_vgg_loss", action="store_true", help="train pix2pixHD without the VGG loss (always in --smoke)")
    p.add_argument("--inception_weights", default=None,
                   help="FID Inception weights for evaluate.py (default: its own lookup; FID skipped if absent)")
    p.add_argument("--no_fid", action="store_true", help="do not compute FID/KID (always in --smoke)")
    p.add_argument("--reuse", action="store_true",
                   help="rows whose results/<name>/test_latest/metrics.json exists are read, not re-run")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; --smoke: 1, faster for tiny networks)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def select_methods(text: str) -> List[Method]:
    """Parse ``--methods``; raises :class:`OptionError` naming unknown entries."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in METHODS]
    if bad or not keys:
        raise OptionError(f"--methods: unknown {bad or 'empty list'}; choose from {', '.join(METHODS)}")
    return [METHODS[k] for k in dict.fromkeys(keys)]


def experiment_name(method: Method) -> str:
    return f"table1_{method.key}"


def row_commands(method: Method, args: argparse.Namespace, dataroot: Path, out_dir: Path
                 ) -> Tuple[List[str], List[str], List[str]]:
    """The train.py, test.py and evaluate.py argument lists of one row."""
    name = experiment_name(method)
    ck, res = str(out_dir / "checkpoints"), str(out_dir / "results")
    common = ["--dataroot", str(dataroot), "--name", name, "--checkpoints_dir", ck, "--gpu_ids", args.gpu_ids]
    train = common + (list(SMOKE_COMMON) + list(method.smoke_train) if args.smoke else list(method.train))
    train += ["--seed", str(args.seed)]
    if args.max_dataset_size is not None:
        train += ["--max_dataset_size", str(args.max_dataset_size)]
    if method.key == "pix2pixhd" and not args.smoke:
        if args.no_vgg_loss:
            train.append("--no_vgg_loss")
        elif args.vgg_weights:
            train += ["--vgg_weights", args.vgg_weights]
    test = common + ["--model", _train_model(method), "--results_dir", res, "--num_threads", "0",
                     "--overwrite"] + list(method.test)  # a row retrains, so its results replace the old ones
    if args.num_test is not None:
        test += ["--num_test", str(args.num_test)]
    evaluate = ["--result_path", str(Path(res) / name), "--no_progress"]
    if args.smoke or args.no_fid:
        evaluate.append("--no_fid")
    if args.smoke:
        evaluate += ["--num_workers", "1"]
    if args.inception_weights:
        evaluate += ["--inception_weights", args.inception_weights]
    return train, test, evaluate


def _train_model(method: Method) -> str:
    return method.train[method.train.index("--model") + 1]


def _run_step(method: Method, step: str, fn, argv: List[str]) -> float:
    log.info("[%s] %s %s", method.key, step, " ".join(argv))
    t0 = time.time()
    rc = fn(argv)
    if rc != 0:
        raise StepFailed(f"table1 row '{method.key}' ({method.label}): {step} exited with status {rc}; its command "
                         f"is logged above (python {step} {' '.join(argv)})")
    return time.time() - t0


def run_row(method: Method, args: argparse.Namespace, dataroot: Path, out_dir: Path) -> dict:
    """Train, test and evaluate one row (or reuse its metrics with ``--reuse``); returns its metrics.json dict plus
    ``train_s`` / ``test_s`` / ``eval_s`` wall times (None when reused)."""
    import evaluate as evaluate_cli
    import test as test_cli
    import train as train_cli

    metrics_path = out_dir / "results" / experiment_name(method) / "test_latest" / "metrics.json"
    if args.reuse and metrics_path.is_file():
        log.info("[%s] reusing %s (--reuse)", method.key, metrics_path)
        return dict(read_metrics(metrics_path), train_s=None, test_s=None, eval_s=None)
    train_argv, test_argv, eval_argv = row_commands(method, args, dataroot, out_dir)
    times = {"train_s": _run_step(method, "train.py", train_cli.main, train_argv),
             "test_s": _run_step(method, "test.py", test_cli.main, test_argv),
             "eval_s": _run_step(method, "evaluate.py", evaluate_cli.main, eval_argv)}
    return dict(read_metrics(metrics_path), **times)


def read_metrics(path: Path) -> dict:
    """Read a metrics.json written by evaluate.py; flattens ``fid_kid`` into ``fid`` / ``kid_x1e3`` when computed.

    Raises:
        UserError: missing or unreadable file (names it).
    """
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"evaluate.py wrote no metrics file '{path}'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read metrics file '{path}': {e}") from e
    fk = m.get("fid_kid") or {}
    if fk.get("status") == "computed":
        m["fid"], m["kid_x1e3"] = fk.get("fid"), fk.get("kid_x1e3")
    return m


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    try:
        return spec.format(int(value) if spec == "{:d}" else float(value))
    except (TypeError, ValueError):
        return str(value)


def table_rows(results: List[Tuple[Method, dict]]) -> Tuple[List[str], List[List[str]]]:
    """Header and formatted cells: method, the metric columns, the paper reference, train/test seconds."""
    header = ["Method"] + [h for _, h, _ in METRIC_COLUMNS] + [PAPER_HEADER, "train s", "test s"]
    rows = []
    for method, m in results:
        paper = f"{method.paper[0]:g} / {method.paper[1]:g}" if method.paper else ""
        n = m.get("n_images")
        if isinstance(n, int) and n < MIN_IMAGES_FOR_R:  # r of 2 points is +-1 whatever the images: not a result
            m = dict(m, iod_pearson_r=None)
        rows.append([method.label] + [_fmt(m.get(k), spec) for k, _, spec in METRIC_COLUMNS]
                    + [paper, _fmt(m.get("train_s"), "{:.1f}"), _fmt(m.get("test_s"), "{:.1f}")])
    return header, rows


def to_markdown(results: List[Tuple[Method, dict]], dataroot: Path, smoke: bool) -> str:
    header, rows = table_rows(results)
    lines = ["# Table 1: H&E -> IHC translation on " + str(dataroot), ""]
    if smoke:
        lines += ["**Smoke run** (tiny networks, 1 epoch, a few sample images): checks the pipeline; the numbers say "
                  "nothing about the methods.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += ["", f"PSNR/SSIM/stain metrics: evaluate.py (docs/EVALUATION.md); empty cell = not computed (IOD r also "
              f"when fewer than {MIN_IMAGES_FOR_R} images). \"{PAPER_HEADER}\": published reference, not computed "
              f"here: {PAPER_SOURCE}. Settings per row: docs/BASELINES.md.", ""]
    return "\n".join(lines)


def to_csv(results: List[Tuple[Method, dict]]) -> str:
    header, rows = table_rows(results)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["key"] + header)
    for (method, _), r in zip(results, rows):
        w.writerow([method.key] + r)
    return buf.getvalue()


def _prepare_dataroot(args: argparse.Namespace, out_dir: Path) -> Path:
    if args.dataroot is not None:
        root = Path(args.dataroot)
        if not root.is_dir():
            raise OptionError(f"--dataroot '{root}' is not a folder")
        return root
    if not args.smoke:
        raise OptionError("--dataroot is required (a BCI-layout dataset); only --smoke builds the sample dataset")
    root = out_dir / "sample_bci"
    if not root.is_dir():
        from scripts.make_sample_dataset import DEFAULT_SOURCE, build

        build(root, 128, 8, 4, 0, DEFAULT_SOURCE, False)
    return root


def _check_vgg(args: argparse.Namespace, methods: List[Method]) -> None:
    """Fail before hours of training when pix2pixHD's VGG weights are unavailable."""
    if args.smoke or args.no_vgg_loss or not any(m.key == "pix2pixhd" for m in methods):
        return
    from models.pix2pixhd_model import build_vgg_loss

    build_vgg_loss(args.vgg_weights)


def run(args: argparse.Namespace) -> Tuple[Path, Path]:
    """Run the requested rows and write the table; returns the markdown and CSV paths."""
    methods = select_methods(args.methods)
    if args.smoke:
        args.max_dataset_size = 4 if args.max_dataset_size is None else args.max_dataset_size
        args.num_test = 2 if args.num_test is None else args.num_test
        args.threads = 1 if args.threads is None else args.threads
    for name in ("max_dataset_size", "num_test", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise OptionError(f"--{name} must be >= 1, got {v}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataroot = _prepare_dataroot(args, out_dir)
    _check_vgg(args, methods)
    results = []
    t0 = time.time()
    for method in methods:
        m = run_row(method, args, dataroot, out_dir)
        log.info("[%s] PSNR %s dB, SSIM %s", method.key, _fmt(m.get("psnr"), "{:.2f}"), _fmt(m.get("ssim"), "{:.4f}"))
        results.append((method, m))
    md = atomic_write_text(out_dir / "table1.md", to_markdown(results, dataroot, args.smoke))
    cs = atomic_write_text(out_dir / "table1.csv", to_csv(results))
    log.info("Table 1 (%d rows) in %.1f s: %s, %s", len(results), time.time() - t0, md, cs)
    return md, cs


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.logging_setup import setup_logging

    from util.logging_setup import run_cli

    def body(args):
        md, _ = run(args)
        print(Path(md).read_text(encoding="utf-8"))

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(body, args, prog="table1.py")


if __name__ == "__main__":
    sys.exit(main())
