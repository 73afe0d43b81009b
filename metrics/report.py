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
from typing import Dict, List, Optional, Sequence

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
}


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def group_summary(scores: Sequence[PairScore]) -> Dict[str, object]:
    """Summary of one group of images: n_images, psnr (finite mean), psnr_n_infinite, ssim, stain agreement."""
    p, _, n_inf = mean_psnr(s.psnr for s in scores)
    out: Dict[str, object] = {
        "n_images": len(scores), "psnr": p, "psnr_n_infinite": n_inf, "ssim": _mean([s.ssim for s in scores])}
    stain = [s for s in scores if math.isfinite(s.iod_real) and math.isfinite(s.iod_fake)]
    agree = iod_agreement([s.iod_real for s in stain], [s.iod_fake for s in stain])
    out.update(agree)
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
    text = (f"FID {_fmt(fk['fid'], '.2f')}, KID x10^3 {_fmt(fk['kid_x1e3'], '.2f')} +- {_fmt(fk['kid_std_x1e3'], '.2f')}"
            f" ({fk['kid_subsets']} subsets of {fk['kid_subset_size']}; {fk['n_images']} images; {fk['extractor']})")
    if fk.get("note"):
        text += f". Note: {fk['note']}"
    return text


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
    lines += ["", fid_kid_text(summary["fid_kid"]), ""]
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
    """Write ``metrics.csv``, ``metrics.md`` and ``metrics.json`` into ``run_dir`` atomically; returns their paths."""
    run_dir = Path(run_dir)
    out = [run_dir / "metrics.csv", run_dir / "metrics.md", run_dir / "metrics.json"]
    atomic_write_text(out[0], to_csv(scores))
    atomic_write_text(out[1], to_markdown(summary))
    atomic_write_text(out[2], to_json(summary))
    return out


def comparison_markdown(summaries: Sequence[dict], run: str) -> str:
    """One table across experiments (rows sorted as given)."""
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
    lines += ["", "Per-experiment details (per HER2 level, stain metrics): `<experiment>/" + run + "/metrics.md`.", ""]
    return "\n".join(lines)


def write_comparison(root: Path, summaries: Sequence[dict], run: str) -> List[Path]:
    """Write ``<root>/metrics_<run>.md`` and ``.json`` (list of the experiments' summaries) atomically."""
    md = Path(root) / f"metrics_{run}.md"
    js = Path(root) / f"metrics_{run}.json"
    atomic_write_text(md, comparison_markdown(summaries, run))
    atomic_write_text(js, to_json({"run": run, "experiments": list(summaries)}))
    return [md, js]
