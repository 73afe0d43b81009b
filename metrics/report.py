"""Aggregating per-image scores into summaries, and writing ``metrics.csv``, ``metrics.md`` and ``metrics.json``.

Conventions:
- PSNR mean excludes identical pairs (infinite PSNR); their count is ``psnr_n_infinite``. SSIM mean is over all images.
- Undefined values (no image in a HER2 level, no finite PSNR, Pearson r of a constant or single-value sample, FID/KID
  skipped) are JSON ``null``; JSON never holds ``Infinity``/``NaN`` (``json.dumps(allow_nan=False)``).
  The CSV writes an infinite PSNR as ``inf`` (read back by Python's ``float``).
- All files are written atomically (util/fileio.py).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from metrics.image_quality import mean_psnr
from metrics.scoring import PairScore
from metrics.stain import iod_agreement
from util.fileio import atomic_write_text

CSV_COLUMNS = ("name", "her2", "height", "width", "psnr_db", "ssim", "iod_real", "iod_fake", "iod_abs_error",
               "dab_pos_real", "dab_pos_fake", "dab_mean_od_real", "dab_mean_od_fake")

PROTOCOL = {
    "psnr": "skimage.metrics.peak_signal_noise_ratio(real_B, fake_B, data_range=255) on uint8 RGB PNGs, dB, "
            "mean over images with finite PSNR (identical pairs excluded, counted in psnr_n_infinite)",
    "ssim": "skimage.metrics.structural_similarity(real_B, fake_B, channel_axis=-1, data_range=255), 7x7 window, "
            "mean over all images",
    "iod": "sum over pixels of DAB optical density 6 * skimage.color.rgb2hed(rgb)[..., 2] (OD * px)",
    "dab_pos": "fraction of pixels with DAB OD > dab_threshold_od",
    "null": "null means undefined (no image, no finite value, constant sample) or not computed",
    "ci95": "percentile bootstrap over images, 2000 resamples, numpy default_rng(0) (metrics/stats.py); "
            "Pearson r: pairs resampled together, and Fisher z interval tanh(atanh(r) +- 1.96/sqrt(n-3))",
    "iod_basis": "IOD agreement uses per-image IOD when all images have one size, else mean OD (IOD per pixel)",
}


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


IOD_BASIS_IMAGE = "iod (OD*px per image; all images one size)"
IOD_BASIS_AREA = "mean_od (IOD / pixels, OD; images of different sizes, so IOD is normalised per area)"


def group_summary(scores: Sequence[PairScore]) -> Dict[str, object]:
    """Summary of one group of images: n_images, psnr (finite mean), psnr_n_infinite, ssim, stain agreement, and
    95 % intervals (:mod:`metrics.stats`): ``psnr_ci95``, ``ssim_ci95`` (bootstrap over images),
    ``iod_pearson_r_ci95`` (bootstrap over pairs) and ``iod_pearson_r_ci95_fisher``.

    IOD grows with the number of pixels, so pooling images of different sizes would correlate sizes, not staining:
    then r and the MAE are computed on the mean OD (IOD per pixel) and ``iod_basis`` says so."""
    from metrics.stats import bootstrap_mean_ci, bootstrap_pearson_ci, fisher_z_ci

    p, _, n_inf = mean_psnr(s.psnr for s in scores)
    out: Dict[str, object] = {
        "n_images": len(scores), "psnr": p, "psnr_n_infinite": n_inf, "ssim": _mean([s.ssim for s in scores])}
    out["psnr_ci95"] = bootstrap_mean_ci([s.psnr for s in scores if math.isfinite(s.psnr)])
    out["ssim_ci95"] = bootstrap_mean_ci([s.ssim for s in scores])
    stain = [s for s in scores if math.isfinite(s.iod_real) and math.isfinite(s.iod_fake)]
    if len({(s.height, s.width) for s in stain}) > 1:
        real, fake, out["iod_basis"] = ([s.dab_mean_od_real for s in stain], [s.dab_mean_od_fake for s in stain],
                                        IOD_BASIS_AREA)
    else:
        real, fake, out["iod_basis"] = [s.iod_real for s in stain], [s.iod_fake for s in stain], IOD_BASIS_IMAGE
    agree = iod_agreement(real, fake)
    out.update(agree)
    out["iod_pearson_r_ci95"] = bootstrap_pearson_ci(real, fake)["ci"] if agree["iod_pearson_r"] is not None else None
    out["iod_pearson_r_ci95_fisher"] = fisher_z_ci(agree["iod_pearson_r"], len(stain))
    out["iod_real_mean"] = _mean([s.iod_real for s in stain])
    out["iod_fake_mean"] = _mean([s.iod_fake for s in stain])
    out["dab_pos_real_mean"] = _mean([s.dab_pos_real for s in stain])
    out["dab_pos_fake_mean"] = _mean([s.dab_pos_fake for s in stain])
    return out


def summarize(scores: Sequence[PairScore], experiment: str, run: str, left_out: Sequence[str] = (),
              dab_threshold_od: Optional[float] = None, fid_kid: Optional[dict] = None,
              extra: Optional[dict] = None) -> Dict[str, object]:
    """Build the ``metrics.json`` dictionary (keys documented in docs/EVALUATION.md)."""
    from data.her2 import HER2_LEVELS  # here, not at import: the data package imports torch (see metrics.scoring)

    res = Counter(f"{s.height}x{s.width}" for s in scores)
    summary: Dict[str, object] = {"experiment": experiment, "run": run}
    summary.update(group_summary(scores))
    summary["n_left_out"] = len(left_out)
    summary["left_out"] = list(left_out)
    summary["resolution"] = [scores[0].height, scores[0].width] if len(res) == 1 else None
    summary["resolutions"] = dict(sorted(res.items()))
    summary["dab_threshold_od"] = dab_threshold_od
    summary["per_level"] = {lv: group_summary([s for s in scores if s.her2 == lv]) for lv in HER2_LEVELS}
    unknown = [s for s in scores if s.her2 is None]
    if unknown:
        summary["her2_unknown"] = group_summary(unknown)
    summary["fid_kid"] = fid_kid if fid_kid is not None else {"status": "skipped", "reason": "not requested"}
    summary["protocol"] = PROTOCOL
    if extra:
        summary.update(extra)
    return summary


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return _finite_or_none(obj.item())
    return obj


def to_json(summary: dict) -> str:
    """Strict JSON text: non-finite floats become null (``allow_nan=False`` guarantees no Infinity/NaN literal)."""
    return json.dumps(_finite_or_none(summary), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _csv_num(v: float) -> str:
    if math.isnan(v):
        return ""
    return "inf" if v == math.inf else repr(float(v))


def to_csv(scores: Sequence[PairScore]) -> str:
    """Per-image CSV text (columns :data:`CSV_COLUMNS`; empty cell = not computed, ``inf`` = identical pair)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in scores:
        w.writerow([s.stem, s.her2 or "", s.height, s.width, _csv_num(s.psnr), _csv_num(s.ssim),
                    _csv_num(s.iod_real), _csv_num(s.iod_fake), _csv_num(abs(s.iod_fake - s.iod_real)),
                    _csv_num(s.dab_pos_real), _csv_num(s.dab_pos_fake), _csv_num(s.dab_mean_od_real),
                    _csv_num(s.dab_mean_od_fake)])
    return buf.getvalue()


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


def _md_escape(text: str) -> str:
    """Text safe inside a markdown table cell or heading: HTML special characters as entities (a name such as
    ``<img src=x onerror=...>`` stays text in every renderer), markdown punctuation backslash-escaped, one line."""
    import html
    import re

    text = html.escape(str(text), quote=False).replace("\r", " ").replace("\n", " ")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", text)


def fid_kid_text(fk: dict) -> str:
    """One line describing FID/KID (values, or why they were skipped)."""
    if fk.get("status") != "computed":
        return f"FID / KID: skipped ({fk.get('reason', '')})"
    text = f"FID {_fmt(fk['fid'], '.2f')}, KID x10^3 {_fmt(fk['kid_x1e3'], '.2f')}"
    if fk.get("kid_std_x1e3") is not None:  # None: one estimate on all images, no spread to report
        text += f" +- {_fmt(fk['kid_std_x1e3'], '.2f')} (std over subsets)"
    protocol = fk.get("kid_protocol") or f"{fk['kid_subsets']} subsets of {fk['kid_subset_size']}"
    text += f" (KID {protocol}; {fk['n_images']} images; {fk['extractor']})"
    if fk.get("note"):
        text += f". Note: {fk['note']}"
    return text


def _ci(ci, spec: str) -> str:
    return "n/a" if not ci else f"[{format(ci[0], spec)}, {format(ci[1], spec)}]"


def ci_text(summary: dict) -> str:
    """One line with the overall 95 % intervals (bootstrap over images; Fisher z for r)."""
    return (f"95 % CI (bootstrap over {summary['n_images']} images): PSNR {_ci(summary.get('psnr_ci95'), '.2f')} dB, "
            f"SSIM {_ci(summary.get('ssim_ci95'), '.4f')}, IOD r {_ci(summary.get('iod_pearson_r_ci95'), '.4f')} "
            f"(Fisher z {_ci(summary.get('iod_pearson_r_ci95_fisher'), '.4f')})")


def to_markdown(summary: dict) -> str:
    """Markdown report: one row per HER2 level and overall, then FID/KID and notes."""
    lines = [f"# {_md_escape(summary['experiment'])} - {_md_escape(summary['run'])}", ""]
    res = summary["resolution"]
    res_text = f"{res[0]}x{res[1]} px (HxW)" if res else "mixed: " + ", ".join(
        f"{k} ({v})" for k, v in summary["resolutions"].items())
    lines.append(f"{summary['n_images']} images, resolution {res_text}; {summary['n_left_out']} left out.")
    lines += ["", "| HER2 | N | PSNR (dB) | SSIM | IOD Pearson r | IOD MAE (OD*px) | DAB+ real | DAB+ fake |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = list(summary["per_level"].items())
    if "her2_unknown" in summary:
        rows.append(("unknown", summary["her2_unknown"]))
    rows.append(("**all**", summary))
    for name, g in rows:
        lines.append(f"| {name} | {g['n_images']} | {_fmt(g['psnr'], '.2f')} | {_fmt(g['ssim'], '.4f')} | "
                     f"{_fmt(g['iod_pearson_r'], '.4f')} | {_fmt(g['iod_mae'], '.4g')} | "
                     f"{_fmt(g['dab_pos_real_mean'], '.3f')} | {_fmt(g['dab_pos_fake_mean'], '.3f')} |")
    lines += ["", ci_text(summary), "", fid_kid_text(summary["fid_kid"]), ""]
    if summary.get("iod_basis") == IOD_BASIS_AREA:
        lines.append("- Images differ in size: IOD r and MAE are computed on the mean OD (IOD per pixel, OD), not on "
                     "the IOD itself.")
    if summary.get("iod_pearson_r_note"):
        lines.append(f"- IOD Pearson r is left blank: {_md_escape(summary['iod_pearson_r_note'])}; per-level r is "
                     "blank where a level has fewer than 3 images or a near-constant series.")
    if summary.get("n_flagged"):
        fl = summary.get("flagged") or {}
        lines.append(f"- **{summary['n_flagged']} flagged virtual IHC image(s)** (flat: every channel's standard "
                     f"deviation below {summary.get('flat_std')} grey levels; non_finite: NaN/inf generator output): "
                     + _md_escape(", ".join(f"{k} ({'/'.join(v)})" for k, v in list(fl.items())[:20]))
                     + (" ..." if len(fl) > 20 else "") + ". Scores of a collapsed generator are not meaningful.")
    if (summary.get("run_manifest") or {}).get("checkpoint"):
        ck = summary["run_manifest"]["checkpoint"]
        lines.append(f"- Results of checkpoint set {_md_escape(ck.get('label'))} (set {_md_escape(ck.get('set_id'))}), "
                     f"listed in run_manifest.json.")
    if summary["psnr_n_infinite"]:
        lines.append(f"- {summary['psnr_n_infinite']} identical pair(s) (infinite PSNR) are excluded from the PSNR "
                     "mean and included in SSIM.")
    lines.append("- PSNR/SSIM: scikit-image on the saved uint8 RGB PNGs (BCI protocol, 7x7 SSIM window).")
    lines.append(f"- DAB: colour deconvolution (rgb2hed, Ruifrok & Johnston); DAB+ = area fraction with OD > "
                 f"{summary['dab_threshold_od']}; n/a = undefined.")
    if summary["n_left_out"]:
        lines.append(f"- --allow_partial: {summary['n_left_out']} item(s) left out: "
                     + _md_escape("; ".join(summary["left_out"][:20])) + (" ..." if summary["n_left_out"] > 20 else ""))
    return "\n".join(lines) + "\n"


def write_run_reports(run_dir: Path, summary: dict, scores: Sequence[PairScore]) -> List[Path]:
    """Write ``metrics.csv``, ``metrics.md`` and ``metrics.json`` into ``run_dir`` as one group (all written, then
    all renamed: a failed write leaves the earlier three as they were); returns their paths."""
    from util.fileio import atomic_write_texts

    run_dir = Path(run_dir)
    out = [run_dir / "metrics.csv", run_dir / "metrics.md", run_dir / "metrics.json"]
    atomic_write_texts({out[0]: to_csv(scores), out[1]: to_markdown(summary), out[2]: to_json(summary)})
    return out


def experiments_left_out(root: Path, run: str, included: Sequence[str]) -> List[Tuple[str, str]]:
    """``(name, reason)`` for each sub-folder of a results root that is not in ``included``: the experiments a
    comparison table leaves out, e.g. ``('exp_b', "no 'test_latest/images' (has: test_10)")``."""
    out = []
    for d in sorted(Path(root).iterdir()):
        if not d.is_dir() or d.name in included or d.name.startswith("."):
            continue
        have = sorted(e.name for e in d.iterdir() if (e / "images").is_dir())
        out.append((d.name, f"no '{run}/images'" + (f" (has: {', '.join(have)})" if have else
                                                     " (no <phase>_<epoch>/images folder)")))
    return out


def comparison_markdown(summaries: Sequence[dict], run: str, left_out: Sequence[Tuple[str, str]] = ()) -> str:
    """One table across experiments (rows sorted as given), then the experiments left out and why."""
    lines = [f"# Results: {_md_escape(run)}", "",
             "| Experiment | N | Resolution | PSNR (dB) | SSIM | IOD Pearson r | IOD MAE (OD*px) | FID | KID x10^3 |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        fk = s["fid_kid"]
        ok = fk.get("status") == "computed"
        res = f"{s['resolution'][0]}x{s['resolution'][1]}" if s["resolution"] else "mixed"
        lines.append(f"| {_md_escape(s['experiment'])} | {s['n_images']} | {res} | {_fmt(s['psnr'], '.2f')} | "
                     f"{_fmt(s['ssim'], '.4f')} | {_fmt(s['iod_pearson_r'], '.4f')} | {_fmt(s['iod_mae'], '.4g')} | "
                     f"{_fmt(fk.get('fid') if ok else None, '.2f')} | {_fmt(fk.get('kid_x1e3') if ok else None, '.2f')} |")
    if left_out:
        lines += ["", f"Left out ({len(left_out)}):"] + [f"- {_md_escape(n)}: {_md_escape(w)}" for n, w in left_out]
    lines += ["", "Per-experiment details (per HER2 level, stain metrics): `<experiment>/" + run + "/metrics.md`.", ""]
    return "\n".join(lines)


def write_comparison(root: Path, summaries: Sequence[dict], run: str,
                     left_out: Sequence[Tuple[str, str]] = ()) -> List[Path]:
    """Write ``<root>/metrics_<run>.md`` and ``.json`` (the experiments' summaries and ``left_out``: ``[{"experiment",
    "reason"}]``) atomically."""
    md = Path(root) / f"metrics_{run}.md"
    js = Path(root) / f"metrics_{run}.json"
    atomic_write_text(md, comparison_markdown(summaries, run, left_out))
    atomic_write_text(js, to_json({"run": run, "experiments": list(summaries),
                                   "left_out": [{"experiment": n, "reason": w} for n, w in left_out]}))
    return [md, js]
