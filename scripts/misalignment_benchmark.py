"""Misalignment benchmark: how much does each method lose when the training targets are displaced by a known amount?

    python scripts/misalignment_benchmark.py --dataroot ./datasets/BCI --out_dir ./misalignment --gpu_ids 0
    python scripts/misalignment_benchmark.py --dataroot DIR --out_dir DIR --smoke      # CPU pipeline check, < 3 min
    python scripts/misalignment_benchmark.py ... --methods pix2pix,pyramidpix2pix_reg --displacements 0,8 --seeds 0,1

From an aligned paired dataset (any layout train.py reads; A = H&E, B = IHC) the script builds, for every requested
maximum displacement d (px at the training size) and seed s, a training set whose IHC targets are resampled by a
seeded random smooth field whose largest displacement is exactly d (``data/displacement.py``; image i uses the field
of seed ``(s, i)``; H&E inputs unchanged); the test set stays aligned. Each selected method is trained on each
(d, s) with the same networks, budget and ``--seed s``, tested on the aligned test pairs (``test.py``) and scored
(``evaluate.py``: PSNR/SSIM, no FID). Outputs in ``--out_dir``:

* ``misalignment.csv``: one row per method, displacement and seed: ``method, displacement_px, seed, psnr, ssim,
  n_images``;
* ``misalignment.md``: PSNR and SSIM per method and displacement, mean +- sample standard deviation over the seeds,
  and the loss from the smallest displacement to each larger one (dB / SSIM);
* ``misalignment.png``: PSNR and SSIM against displacement, one line per method (error bars: standard deviation);
* ``data/``: the built datasets (``fields.json`` per training set records each image's field seed and max length);
  ``cells/<method>_d<d>_s<s>.json``: one finished cell (its metrics and the exact train arguments);
  ``checkpoints/``, ``results/``: the runs.

Resumable: a cell whose ``cells/*.json`` exists is read, not retrained (a cell recorded with other train arguments
is an error: use another ``--out_dir``). Datasets already built are reused.

Methods (``--methods``): ``pix2pix`` (``--model pix2pix``), ``pyramid_L1_L2``, ``pyramid_L1_L2_L3``,
``pyramidpix2pix`` (``--pattern L1_L2_L3_L4``), ``pix2pix_reg`` / ``pyramidpix2pix_reg`` (``--reg_correction``,
RegGAN), ``pyramidpix2pix_dab`` (``--lambda_dab``, value ``--dab_weight``), ``asp`` (``--model asp`` when that model
is registered; otherwise skipped with a logged note). Every method uses the same networks (``--netG``, ``--ngf``,
``--ndf``, basic PatchGAN, batch norm, vanilla GAN, batch 2: the BCI recipe) and budget (``--n_epochs`` +
``--n_epochs_decay``); arguments after ``--`` go to every train.py call.

The default (BCI, 5 methods x 5 displacements x 2 seeds = 50 runs of 4 + 4 epochs at 256 px) is sized for a GPU
afternoon. ``--smoke``: tiny networks (ngf = ndf = 8, resnet_6blocks), 64 px, 8 training pairs, 1 epoch, methods
pix2pix, pyramidpix2pix, pyramidpix2pix_reg, pyramidpix2pix_dab, displacements 0 and 4, seeds 0 and 1; with no
``--dataroot`` it derives the sample set (``scripts/make_sample_dataset.py``) in ``--out_dir``.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("misalignment_benchmark")

#: train.py arguments of each method (added to the common network/budget arguments).
METHODS: Dict[str, List[str]] = {
    "pix2pix": ["--model", "pix2pix"],
    "pyramid_L1_L2": ["--model", "pyramidpix2pix", "--pattern", "L1_L2"],
    "pyramid_L1_L2_L3": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3"],
    "pyramidpix2pix": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4"],
    "pix2pix_reg": ["--model", "pix2pix", "--reg_correction"],
    "pyramidpix2pix_reg": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4", "--reg_correction"],
    "pyramidpix2pix_dab": ["--model", "pyramidpix2pix", "--pattern", "L1_L2_L3_L4"],  # + --lambda_dab
    "asp": ["--model", "asp"],
}
DEFAULT_METHODS = "pix2pix,pyramidpix2pix,pyramidpix2pix_reg,pyramidpix2pix_dab,asp"
SMOKE_METHODS = "pix2pix,pyramidpix2pix,pyramidpix2pix_reg,pyramidpix2pix_dab"
CSV_COLUMNS = ["method", "displacement_px", "seed", "psnr", "ssim", "n_images"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="misalignment_benchmark.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataroot", default=None, help="aligned paired dataset (default with --smoke: a derived sample)")
    p.add_argument("--out_dir", required=True, help="folder of every output (tables, plot, data, runs)")
    p.add_argument("--methods", default=None, help=f"comma-separated, from {', '.join(METHODS)} "
                                                   f"(default {DEFAULT_METHODS}; --smoke {SMOKE_METHODS})")
    p.add_argument("--displacements", default=None, help="max displacements in px at the training size "
                                                         "(default 0,2,4,8,16; --smoke 0,4)")
    p.add_argument("--seeds", default="0,1", help="seeds (field and training); at least 2 for a spread")
    p.add_argument("--image_size", type=int, default=None,
                   help="training/test size in px: images are resized (Lanczos) to this square size before the "
                        "fields are applied; 0 = native size (default 256; --smoke 64)")
    p.add_argument("--smoothness", type=float, default=None, help="field smoothness: Gaussian sigma in px "
                                                                  "(default image_size / 8)")
    p.add_argument("--max_train", type=int, default=None, help="use the first N training pairs (default all; "
                                                               "--smoke 8)")
    p.add_argument("--num_test", type=int, default=None, help="score the first N test pairs (default all)")
    p.add_argument("--netG", default=None, help="generator of every method (default resnet_9blocks; --smoke "
                                                "resnet_6blocks)")
    p.add_argument("--ngf", type=int, default=None, help="default 64; --smoke 8")
    p.add_argument("--ndf", type=int, default=None, help="default 64; --smoke 8")
    p.add_argument("--n_epochs", type=int, default=None, help="epochs at constant lr (default 4; --smoke 1)")
    p.add_argument("--n_epochs_decay", type=int, default=None, help="epochs of linear decay (default 4; --smoke 0)")
    p.add_argument("--dab_weight", type=float, default=25.0,
                   help="--lambda_dab of pyramidpix2pix_dab (this benchmark's choice: the pyramid's level weight)")
    p.add_argument("--A_dir", default="HE", help="A folder name of a BCI-layout --dataroot")
    p.add_argument("--B_dir", default="IHC", help="B folder name of a BCI-layout --dataroot")
    p.add_argument("--gpu_ids", default="-1")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's; --smoke 1)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU pipeline check (see the module docstring)")
    return p


def _ints(text: str, what: str) -> List[int]:
    from util.errors import OptionError

    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise OptionError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals:
        raise OptionError(f"{what} is empty")
    if len(set(vals)) != len(vals) or any(v < 0 for v in vals):
        raise OptionError(f"{what} must be distinct integers >= 0, got {text!r}")
    return vals


def _settings(args) -> argparse.Namespace:
    """Fill the defaults that depend on --smoke."""
    s = args.smoke
    d = dict(methods=SMOKE_METHODS if s else DEFAULT_METHODS, displacements="0,4" if s else "0,2,4,8,16",
             image_size=64 if s else 256, max_train=8 if s else None, netG="resnet_6blocks" if s else "resnet_9blocks",
             ngf=8 if s else 64, ndf=8 if s else 64, n_epochs=1 if s else 4, n_epochs_decay=0 if s else 4,
             threads=1 if s else None)
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


# ------------------------------------------------------------------------------------------------------------ data
def _read_pairs(dataroot: str, phase: str, A_dir: str, B_dir: str):
    """``[(name, he_uint8, ihc_uint8)]`` of one phase, in file-name order (any layout train.py reads)."""
    from data.layouts import detect_layout, list_images, pair_by_name
    from util.image_io import read_rgb_uint8

    lay = detect_layout(dataroot, phase, A_dir, B_dir)
    out = []
    if lay.combined:
        for p in list_images(lay.A_folder):
            ab = read_rgb_uint8(p)
            w = ab.shape[1] // 2
            out.append((p.name, ab[:, :w], ab[:, w:2 * w]))
        return out
    pairs = pair_by_name(list_images(lay.A_folder), list_images(lay.B_folder), lay.A_folder, lay.B_folder)
    return [(a.name, read_rgb_uint8(a), read_rgb_uint8(b)) for a, b in pairs]


def _resize(rgb, size: int):
    import numpy as np
    from PIL import Image

    if size == 0 or rgb.shape[:2] == (size, size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))


def _png_name(name: str) -> str:
    return os.path.splitext(name)[0] + ".png"


def build_aligned(args, data_dir: Path) -> Path:
    """``data/aligned``: train and test pairs at the training size (lossless PNG, BCI layout; PNG files already at
    that size are copied byte for byte); built once."""
    from data.layouts import detect_layout
    from util.fileio import atomic_write_text
    from util.image_io import save_png

    from util.errors import UserError

    root = data_dir / "aligned"
    record = {"dataroot": str(args.dataroot), "image_size": args.image_size, "max_train": args.max_train}
    if (root / "done.json").is_file():
        old = json.loads((root / "done.json").read_text(encoding="utf-8"))
        if old != record:
            raise UserError(f"'{root}' was built with other settings ({old}, now {record}); use another --out_dir")
        return root
    for phase in ("train", "test"):
        pairs = _read_pairs(args.dataroot, phase, args.A_dir, args.B_dir)
        lay = detect_layout(args.dataroot, phase, args.A_dir, args.B_dir)
        a_folder, b_folder = (None, None) if lay.combined else (lay.A_folder, lay.B_folder)
        if phase == "train" and args.max_train:
            pairs = pairs[:args.max_train]
        for name, he, ihc in pairs:
            for side, img, src in (("HE", he, a_folder), ("IHC", ihc, b_folder)):
                dst = root / side / phase / _png_name(name)
                small = _resize(img, args.image_size)
                if small is img and src is not None and name.lower().endswith(".png"):
                    shutil.copyfile(src / name, _mkparent(dst))  # already the training size: the file untouched
                else:
                    save_png(small, dst)
        log.info("aligned %s set: %d pairs from %s", phase, len(pairs), args.dataroot)
    atomic_write_text(root / "done.json", json.dumps(record, indent=1) + "\n")
    return root


def build_displaced(aligned: Path, data_dir: Path, d: int, seed: int, smoothness: Optional[float]) -> Path:
    """``data/d<d>_s<seed>``: the aligned training pairs with each IHC target displaced by a field of max length
    ``d`` px (seed ``(seed, index)``); H&E unchanged. ``d == 0`` is the aligned set itself."""
    from data.displacement import displace_image, displacement_length, random_smooth_field
    from data.layouts import list_images
    from util.fileio import atomic_write_text
    from util.image_io import read_rgb_uint8, save_png

    if d == 0:
        return aligned
    root = data_dir / f"d{d}_s{seed}"
    if (root / "fields.json").is_file():
        old = json.loads((root / "fields.json").read_text(encoding="utf-8"))
        if old.get("smoothness_px") != smoothness:
            from util.errors import UserError

            raise UserError(f"'{root}' was built with --smoothness {old.get('smoothness_px')}, now {smoothness}; use "
                            "another --out_dir")
        return root
    records = []
    for i, path in enumerate(list_images(aligned / "IHC" / "train")):
        ihc = read_rgb_uint8(path)
        field = random_smooth_field(ihc.shape[0], ihc.shape[1], float(d), (seed, i), smoothness)
        save_png(displace_image(ihc, field), root / "IHC" / "train" / path.name)
        shutil.copyfile(aligned / "HE" / "train" / path.name, _mkparent(root / "HE" / "train" / path.name))
        length = displacement_length(field)
        records.append({"name": path.name, "field_seed": [seed, i], "max_px": float(length.max()),
                        "mean_px": float(length.mean())})
    atomic_write_text(root / "fields.json", json.dumps({"max_displacement_px": d, "seed": seed,
                                                        "smoothness_px": smoothness, "images": records},
                                                       indent=1) + "\n")
    log.info("displaced training set d=%d px seed %d: %d pairs in %s", d, seed, len(records), root)
    return root


def _mkparent(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


# ------------------------------------------------------------------------------------------------------------ cells
def method_args(method: str, args) -> List[str]:
    extra = ["--lambda_dab", str(args.dab_weight)] if method == "pyramidpix2pix_dab" else []
    if args.smoke and "--reg_correction" in METHODS[method]:
        extra += ["--netR_nf", "8"]  # only the models with a registration network take it
    return METHODS[method] + extra


def common_train_args(args) -> List[str]:
    return ["--netG", args.netG, "--netD", "basic", "--norm", "batch", "--gan_mode", "vanilla", "--batch_size", "2",
            "--preprocess", "none", "--ngf", str(args.ngf), "--ndf", str(args.ndf), "--n_epochs", str(args.n_epochs),
            "--n_epochs_decay", str(args.n_epochs_decay), "--gpu_ids", args.gpu_ids, "--display_id", "0",
            "--print_freq", "100000", "--display_freq", "100000", "--save_epoch_freq", "100000"] + (
            ["--num_threads", "0"] if args.smoke else [])


def run_cell(args, out: Path, method: str, d: int, seed: int, train_root: Path, test_root: Path,
             train_extra: Sequence[str]) -> dict:
    """Train, test and evaluate one (method, displacement, seed); returns the cell record (read when finished)."""
    import evaluate
    import test as test_script
    import train
    from util.errors import UserError
    from util.fileio import atomic_write_text

    name = f"{method}_d{d}_s{seed}"
    cell_file = out / "cells" / f"{name}.json"
    ckpt, results = out / "checkpoints", out / "results"
    targs = ["--dataroot", str(train_root), "--name", name, "--checkpoints_dir", str(ckpt), "--seed", str(seed),
             *method_args(method, args), *common_train_args(args), *train_extra]
    if cell_file.is_file():
        rec = json.loads(cell_file.read_text(encoding="utf-8"))
        if rec.get("train_args") != targs:
            raise UserError(f"cell '{cell_file}' was run with other train arguments ({rec.get('train_args')}); use "
                            "another --out_dir or delete that file")
        log.info("cell %s done (read from %s)", name, cell_file)
        return rec
    log.info("=== cell %s: train %s", name, " ".join(targs))
    shutil.rmtree(ckpt / name, ignore_errors=True)  # a cell interrupted before its record: start it again
    shutil.rmtree(results / name, ignore_errors=True)
    t0 = time.time()
    if train.main(targs) != 0:
        raise UserError(f"training {name} failed (see the messages above)")
    t1 = time.time()
    test_args = ["--dataroot", str(test_root), "--name", name, "--checkpoints_dir", str(ckpt), "--results_dir",
                 str(results), "--gpu_ids", args.gpu_ids, "--num_threads", "0", "--phase", "test"]
    if args.num_test:
        test_args += ["--num_test", str(args.num_test)]
    if test_script.main(test_args) != 0:
        raise UserError(f"testing {name} failed (see the messages above)")
    if evaluate.main(["--result_path", str(results / name), "--no_progress", "--no_fid", "--num_workers",
                      "1" if args.smoke else "0"]) != 0:
        raise UserError(f"evaluating {name} failed (see the messages above)")
    mpath = results / name / "test_latest" / "metrics.json"
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the metrics of {name} from '{mpath}': {e}") from e
    rec = {"method": method, "displacement_px": d, "seed": seed, "psnr": m.get("psnr"), "ssim": m.get("ssim"),
           "n_images": m.get("n_images"), "train_s": round(t1 - t0, 2), "test_eval_s": round(time.time() - t1, 2),
           "train_args": targs}
    atomic_write_text(cell_file, json.dumps(rec, indent=1) + "\n")
    return rec


# --------------------------------------------------------------------------------------------------------- reports
def to_csv(rows: List[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def aggregate(rows: List[dict], metric: str) -> Dict[str, Dict[int, tuple]]:
    """``{method: {d: (mean, sd or None, n)}}`` over seeds (sd: sample standard deviation, None for one seed)."""
    out: Dict[str, Dict[int, tuple]] = {}
    for r in rows:
        out.setdefault(r["method"], {}).setdefault(r["displacement_px"], []).append(r[metric])
    agg: Dict[str, Dict[int, tuple]] = {}
    for method, per_d in out.items():
        agg[method] = {}
        for d, vals in sorted(per_d.items()):
            vals = [float(v) for v in vals if v is not None]
            mean = statistics.fmean(vals) if vals else float("nan")
            sd = statistics.stdev(vals) if len(vals) > 1 else None
            agg[method][d] = (mean, sd, len(vals))
    return agg


def to_markdown(rows: List[dict], displacements: List[int]) -> str:
    lines = []
    d0 = min(displacements)
    for metric, unit, fmt in (("psnr", "dB", "{:.2f}"), ("ssim", "", "{:.3f}")):
        agg = aggregate(rows, metric)
        lines.append(f"### {metric.upper()}{' (' + unit + ')' if unit else ''}: mean +- sd over seeds\n")
        drops = [d for d in displacements if d != d0]
        head = ["method"] + [f"{d} px" for d in displacements] + [f"loss {d0}->{d} px" for d in drops]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method, per_d in agg.items():
            cells = [method]
            for d in displacements:
                if d not in per_d:
                    cells.append("n/a")
                    continue
                mean, sd, n = per_d[d]
                cells.append(fmt.format(mean) + (" +- " + fmt.format(sd) if sd is not None else "") + f" (n={n})")
            for d in drops:
                if d in per_d and d0 in per_d:
                    cells.append(fmt.format(per_d[d0][0] - per_d[d][0]))
                else:
                    cells.append("n/a")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: List[dict], path: Path, title: str) -> Path:
    """PSNR and SSIM against displacement, one line per method (matplotlib, Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from util.fileio import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        for method, per_d in aggregate(rows, metric).items():
            ds = sorted(per_d)
            means = [per_d[d][0] for d in ds]
            sds = [per_d[d][1] or 0.0 for d in ds]
            ax.errorbar(ds, means, yerr=sds, marker="o", capsize=3, label=method)
        ax.set_xticks(sorted({int(r["displacement_px"]) for r in rows}))
        ax.set_xlabel("max displacement of the training targets (px)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------------------ main
def run(args, train_extra: Sequence[str]) -> List[dict]:
    import models
    from util.errors import OptionError, UserError

    args = _settings(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise OptionError(f"--methods: unknown {', '.join(unknown) or '(empty)'}; valid: {', '.join(METHODS)}")
    if "asp" in methods and "asp" not in models.available_models():
        log.warning("method 'asp' skipped: no model 'asp' is registered in this installation (models/__init__.py)")
        methods.remove("asp")
    displacements = sorted(_ints(args.displacements, "--displacements"))
    seeds = _ints(args.seeds, "--seeds")
    if args.image_size < 0:
        raise OptionError(f"--image_size must be >= 0, got {args.image_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise OptionError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    if args.dataroot is None:
        if not args.smoke:
            raise UserError("--dataroot is required (or --smoke to use the derived sample)")
        from scripts import make_sample_dataset

        args.dataroot = str(out / "sample_bci")
        if not Path(args.dataroot).is_dir():
            if make_sample_dataset.main(["--out", args.dataroot, "--tile_size", "64", "--n_train", "8", "--n_test",
                                         "4"]) != 0:
                raise UserError("building the sample dataset failed (see the messages above)")
    data_dir = out / "data"
    aligned = build_aligned(args, data_dir)
    rows = []
    for d in displacements:
        for seed in seeds:
            train_root = build_displaced(aligned, data_dir, d, seed, args.smoothness)
            for method in methods:
                rows.append(run_cell(args, out, method, d, seed, train_root, aligned, train_extra))
    return rows, displacements


def _main(argv: Sequence[str]) -> int:
    from util.fileio import atomic_write_text
    from util.logging_setup import setup_logging

    argv = list(argv)
    train_extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_extra = argv[:i], argv[i + 1:]
    args = _parser().parse_args(argv)
    setup_logging()
    t0 = time.time()
    rows, displacements = run(args, train_extra)
    out = Path(args.out_dir)
    md = to_markdown(rows, displacements)
    atomic_write_text(out / "misalignment.csv", to_csv(rows))
    atomic_write_text(out / "misalignment.md", md)
    plot(rows, out / "misalignment.png",
         f"{args.dataroot}: {args.image_size or 'native'} px, {args.netG} ngf {args.ngf}, "
         f"{args.n_epochs}+{args.n_epochs_decay} epochs, seeds {args.seeds}")
    print(md)
    print(f"wrote {out / 'misalignment.csv'}, {out / 'misalignment.md'}, {out / 'misalignment.png'} "
          f"({len(rows)} cells, {time.time() - t0:.0f} s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.logging_setup import run_cli

    return run_cli(_main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
