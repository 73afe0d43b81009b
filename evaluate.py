"""Score a results folder written by test.py: PSNR/SSIM (BCI protocol), per-HER2-level tables, DAB stain metrics,
FID and KID.

    python evaluate.py --result_path ./results/<name>                    # scores <name>/test_latest/images
    python evaluate.py --result_path ./results/<name> --phase val --epoch 40
    python evaluate.py --result_path ./results                           # every experiment holding test_latest

Writes ``metrics.csv`` (per image), ``metrics.md`` and ``metrics.json`` into each ``<phase>_<epoch>/`` folder, and,
for a results root with several experiments, ``metrics_<phase>_<epoch>.md/.json`` across them. Definitions, protocol
and outputs: docs/EVALUATION.md. Exit status: 0 on success, 2 on a pairing/option/file error (one line on stderr).
"""
from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C while the imports below load: one line and exit 130, not a traceback
    from util.logging_setup import exit_on_early_interrupt

    exit_on_early_interrupt("evaluate.py")

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from metrics.pairing import (PairingError, check_pairing, format_problems, pair_images, resolve_runs,
                             restrict_to_manifest)
from metrics.report import experiments_left_out, fid_kid_text, summarize, write_comparison, write_run_reports
from metrics.scoring import available_cores, score_pairs
from metrics.stain import DAB_THRESHOLD_OD
from util.errors import OptionError
from util.results_run import read_manifest

log = logging.getLogger("evaluate")


def build_parser() -> argparse.ArgumentParser:
    from util.logging_setup import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--result_path", required=True,
                   help="results folder of one experiment (<results_dir>/<name>) or a root holding several")
    p.add_argument("--phase", default="test", help="phase part of the <phase>_<epoch> folder")
    p.add_argument("--epoch", default="latest", help="epoch part of the <phase>_<epoch> folder")
    p.add_argument("--allow_partial", action="store_true",
                   help="score the pairs that match and report how many were left out, instead of failing")
    p.add_argument("--num_workers", type=int, default=0,
                   help=f"processes for PSNR/SSIM/stain scoring; 0 = all available cores ({available_cores()} here), "
                        "or one process for fewer than eight 1024x1024 pairs' worth of pixels")
    p.add_argument("--dab_threshold", type=float, default=DAB_THRESHOLD_OD,
                   help="DAB optical density above which a pixel counts as DAB-positive")
    p.add_argument("--no_fid", action="store_true",
                   help="do not compute FID/KID (FID/KID of an earlier evaluation of the same images are kept)")
    p.add_argument("--drop_fid", action="store_true",
                   help="with --no_fid: also remove FID/KID of an earlier evaluation from metrics.json")
    p.add_argument("--flat_std", type=float, default=1.0,
                   help="flag a virtual IHC image whose every channel has a standard deviation below this many grey "
                        "levels as flat (collapsed generator)")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 3 when an output is flagged (flat or non-finite) or the overall IOD "
                        "correlation is not meaningful")
    p.add_argument("--inception_weights", default=None,
                   help="FID Inception weights file pt_inception-2015-12-05-6726825d.pth "
                        "(default: the torch hub cache; FID/KID are skipped when absent)")
    p.add_argument("--fid_weights_unchecked", action="store_true",
                   help="use Inception weights whose sha256 is not the standard file's (FID/KID then do not compare "
                        "with published numbers; metrics.json records the hash)")
    p.add_argument("--fid_batch_size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--kid_subset_size", type=int, default=1000,
                   help="KID subset size (reduced to the number of images when larger)")
    p.add_argument("--kid_subsets", type=int, default=100, help="number of KID subsets")
    p.add_argument("--device", default="auto", help="device for the Inception network: auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--report_gallery", type=int, default=8,
                   help="images in each of the best/worst galleries of report.html")
    p.add_argument("--no_report", action="store_true", help="do not write report.html and its plots")
    p.add_argument("--tensorboard_dir", default=None,
                   help="also log the metrics (eval/psnr, ...) as TensorBoard scalars here, e.g. "
                        "checkpoints/<name>/tensorboard (step: the epoch, 0 for latest)")
    p.add_argument("--wandb_dir", default=None, help="also log the metrics to a wandb run in this folder")
    p.add_argument("--wandb_mode", default="auto", choices=["auto", "offline", "online"],
                   help="auto: online when a wandb API key is configured, else offline")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def _check_options(opt: argparse.Namespace) -> None:
    if opt.num_workers < 0:
        raise OptionError(f"--num_workers must be >= 0 (0 = all cores), got {opt.num_workers}")
    if not (math.isfinite(opt.dab_threshold) and opt.dab_threshold >= 0):
        raise OptionError(f"--dab_threshold must be a finite optical density >= 0, got {opt.dab_threshold}")
    for name in ("fid_batch_size", "kid_subsets", "report_gallery"):
        if getattr(opt, name) < 1:
            raise OptionError(f"--{name} must be >= 1, got {getattr(opt, name)}")
    if opt.kid_subset_size < 2:
        raise OptionError(f"--kid_subset_size must be >= 2, got {opt.kid_subset_size}")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fid_kid(opt: argparse.Namespace, pairs) -> dict:
    if opt.no_fid:
        return {"status": "skipped", "reason": "--no_fid"}
    from metrics.distribution import distribution_metrics

    if len(pairs) < 2:
        return {"status": "skipped", "reason": f"FID/KID need at least 2 images, have {len(pairs)}"}
    return distribution_metrics([p.real for p in pairs], [p.fake for p in pairs], weights=opt.inception_weights,
                                device=_device(opt.device), batch_size=opt.fid_batch_size,
                                kid_subset_size=opt.kid_subset_size, kid_subsets=opt.kid_subsets,
                                progress=not opt.no_progress, weights_unchecked=opt.fid_weights_unchecked)


def _flags(scores, manifest: Optional[dict], flat_std: float) -> dict:
    """``{stem: [flags]}`` of the scored images: the run manifest's flags (``fake_B:non_finite`` ...) and this
    evaluation's own flat check on the saved virtual IHC (``flat``: every channel's std below ``flat_std``)."""
    scored = {s.stem for s in scores}
    out: dict = {}
    for stem, flags in ((manifest or {}).get("flagged") or {}).items():
        if stem in scored:
            out[stem] = sorted({f.split(":")[-1] for f in flags})
    for s in scores:
        if s.fake_std == s.fake_std and s.fake_std < flat_std:
            out.setdefault(s.stem, [])
            if "flat" not in out[s.stem]:
                out[s.stem].append("flat")
    return dict(sorted(out.items()))


def _images_digest(pairs) -> str:
    """sha256 over the scored files' names, sizes and modification times: identifies the image set evaluated."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(pairs, key=lambda p: p.stem):
        for f in (p.fake, p.real):
            st = Path(f).stat()
            h.update(f"{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _previous_fid_kid(run_dir: Path, digest: str) -> Optional[dict]:
    """FID/KID of an earlier evaluation of exactly these images (same digest), kept by a ``--no_fid`` rerun."""
    import json

    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("cannot read the earlier %s (%s): its FID/KID are not kept", path, e)
        return None
    fk = old.get("fid_kid") or {}
    if fk.get("status") != "computed":
        return None
    if old.get("images_digest") != digest:
        log.warning("%s holds FID/KID of other images (the results changed since): not kept", path)
        return None
    log.info("--no_fid: keeping FID/KID computed by the earlier evaluation of these images (%s)", path)
    return {**fk, "kept_from_earlier_evaluation": True}


def _manifest_summary(manifest: Optional[dict]) -> Optional[dict]:
    if manifest is None:
        return None
    return {k: manifest.get(k) for k in ("created", "name", "model", "dataroot", "phase", "epoch", "checkpoint",
                                         "n_images", "command")}


def run(opt: argparse.Namespace) -> List[dict]:
    """Evaluate every selected run; returns their summaries. Raises UserError/OSError on bad input."""
    _check_options(opt)
    if opt.inception_weights is not None and not opt.no_fid:
        from metrics.distribution import find_inception_weights

        from metrics.provenance import check_inception_weights

        path, _ = find_inception_weights(opt.inception_weights)  # fail before minutes of scoring
        check_inception_weights(path, opt.fid_weights_unchecked)
    run_name = f"{opt.phase}_{opt.epoch}"
    runs = resolve_runs(opt.result_path, opt.phase, opt.epoch)
    pairings, errors = [], []
    for exp, run_dir in runs:
        pr = pair_images(run_dir / "images")
        manifest = read_manifest(run_dir)
        unlisted = []
        if manifest is not None:
            unlisted = restrict_to_manifest(pr, manifest)
            if unlisted:
                log.warning("%s: %d pair(s) in images/ are not listed in run_manifest.json (not from this run) and "
                            "are not scored: %s", run_dir, len(unlisted), ", ".join(unlisted[:10]))
        else:
            log.warning("%s has no run_manifest.json (results of an older version or another tool): scoring every "
                        "pair found in images/", run_dir)
        try:
            check_pairing(pr, opt.allow_partial)
        except PairingError as e:
            errors.append(str(e))
        pairings.append((exp, run_dir, pr, manifest, unlisted))
    if errors:
        raise PairingError(" | ".join(errors))

    from metrics import provenance
    from metrics.report_html import write_comparison_report, write_run_report

    summaries, results = [], []
    for exp, run_dir, pr, manifest, unlisted in pairings:
        sizes = sorted({f"{h}x{w}" for h, w in (p.size for p in pr.pairs)})
        source = "listed in run_manifest.json" if manifest is not None else "found in images/, no run_manifest.json"
        print(f"{exp}/{run_name}: {len(pr.pairs)} image pair(s) ({source}), resolution {', '.join(sizes)} (HxW)"
              + (f"; {len(pr.problems)} problem(s), left out (--allow_partial)" if pr.problems else "")
              + (f"; {len(unlisted)} pair(s) in the folder not in the manifest, not scored" if unlisted else ""))
        scores, failed = score_pairs(pr.pairs, opt.num_workers, opt.dab_threshold, progress=not opt.no_progress)
        if failed and not opt.allow_partial:
            raise PairingError(f"images folder '{pr.images_dir}': {len(failed)} pair(s) could not be scored: "
                               f"{format_problems(failed)}. Pass --allow_partial to score the others")
        if not scores:
            raise PairingError(f"images folder '{pr.images_dir}': no pair could be scored: {format_problems(failed)}")
        left_out = list(pr.problems) + failed
        if failed:
            print(f"{exp}/{run_name}: {len(failed)} more pair(s) left out (unreadable data)")
        scored = {s.stem for s in scores}
        flagged = _flags(scores, manifest, opt.flat_std)
        digest = _images_digest([p for p in pr.pairs if p.stem in scored])
        fk = _fid_kid(opt, [p for p in pr.pairs if p.stem in scored])
        if opt.no_fid and not opt.drop_fid:
            fk = _previous_fid_kid(run_dir, digest) or fk
        summary = summarize(scores, exp, run_name, left_out, opt.dab_threshold, fk,
                            extra={"images_dir": str(pr.images_dir), "allow_partial": bool(opt.allow_partial),
                                   "n_other_files": pr.n_other_files, "images_digest": digest,
                                   "run_manifest": _manifest_summary(manifest), "not_in_manifest": unlisted,
                                   "flat_std": opt.flat_std, "flagged": flagged, "n_flagged": len(flagged),
                                   "provenance": provenance.collect(run_dir, argv=getattr(opt, "argv", None))})
        paths = write_run_reports(run_dir, summary, scores)
        if not opt.no_report:
            paths += write_run_report(run_dir, summary, scores, opt.report_gallery)[:1]
        results.append((summary, scores, run_dir))
        if opt.tensorboard_dir or opt.wandb_dir:
            from util.trackers import log_evaluation

            sub = (lambda d: None if d is None else (Path(d) / exp if len(runs) > 1 else Path(d)))
            log_evaluation(summary, int(opt.epoch) if str(opt.epoch).isdigit() else 0, sub(opt.tensorboard_dir),
                           sub(opt.wandb_dir), opt.wandb_mode)
        psnr = "n/a" if summary["psnr"] is None else f"{summary['psnr']:.2f} dB"
        inf = f" ({summary['psnr_n_infinite']} identical pair(s) excluded)" if summary["psnr_n_infinite"] else ""
        print(f"{exp}/{run_name}: n={summary['n_images']}  PSNR {psnr}{inf}  SSIM {summary['ssim']:.4f}  "
              f"left out {summary['n_left_out']}")
        if summary.get("iod_pearson_r_note"):
            print(f"{exp}/{run_name}: IOD Pearson r not reported: {summary['iod_pearson_r_note']}")
        if flagged:
            print(f"{exp}/{run_name}: WARNING {len(flagged)} of {len(scores)} virtual IHC image(s) flagged "
                  f"(flat: every channel's std < {opt.flat_std:g} grey levels; non_finite: NaN/inf from the "
                  f"generator): {', '.join(sorted(flagged)[:10])}{' ...' if len(flagged) > 10 else ''}")
        print(f"{exp}/{run_name}: {fid_kid_text(fk)}")
        print(f"{exp}/{run_name}: wrote {', '.join(str(p) for p in paths)}")
        summaries.append(summary)
    if runs[0][1].parent.resolve() != Path(opt.result_path).resolve():  # a results root of experiments
        root = Path(opt.result_path)
        left = experiments_left_out(root, run_name, [exp for exp, _ in runs])
        out = write_comparison(root, summaries, run_name, left)
        if not opt.no_report:
            out += write_comparison_report(root, run_name, results, left)[:1]
        print(f"table across {len(summaries)} experiments: {', '.join(str(p) for p in out)}"
              + (f"; {len(left)} left out: " + "; ".join(f"{n} ({w})" for n, w in left) if left else ""))
    return summaries


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    from util.logging_setup import run_cli

    opt = build_parser().parse_args(argv)
    opt.argv = ["evaluate.py"] + list(sys.argv[1:] if argv is None else argv)  # for metrics.json's provenance
    logging.basicConfig(level=logging.DEBUG if opt.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    def body(opt):
        summaries = run(opt)
        if opt.strict:
            bad = [s["experiment"] for s in summaries if s.get("n_flagged") or s.get("iod_pearson_r_note")]
            if bad:
                log.error("--strict: flagged outputs or a correlation that is not meaningful in: %s", ", ".join(bad))
                return 3
        return 0

    return run_cli(body, opt, prog="evaluate.py")


if __name__ == "__main__":
    sys.exit(main())
