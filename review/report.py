"""Writing review scores as markdown, CSV and JSON (all atomically).

Files in the output folder:

* ``review_scores.json``  everything :func:`review.score.score_round` returns.
* ``review_scores.csv``   one row per reviewer: accuracy, accuracy per level (given / file name), agreement with the
  file-name level. Fractions in [0, 1]; empty cells for empty groups.
* ``review_agreement.csv`` one row per reviewer pair: n_images, percent_agreement, kappa, kappa_quadratic,
  kappa_real, kappa_generated.
* ``review_scores.md``    the same for people: Table 5 (accuracy in %), per-level tables, confusion matrices, kappas.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

from review import LEVELS
from util.fileio import atomic_write_text

PathLike = Union[str, os.PathLike]


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: Optional[float], digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _csv_val(x) -> str:
    return "" if x is None else (f"{x:.6f}" if isinstance(x, float) else str(x))


def scores_csv(result: dict) -> str:
    """Per-reviewer CSV text (see module docstring)."""
    header = ["reviewer", "file", "n_pairs", "n_accurate", "accuracy"]
    header += [f"accuracy_given_{lvl}" for lvl in LEVELS] + [f"n_given_{lvl}" for lvl in LEVELS]
    name_groups = list(LEVELS) + ["unknown"]
    header += [f"accuracy_name_{g}" for g in name_groups] + [f"n_name_{g}" for g in name_groups]
    header += ["real_vs_name", "generated_vs_name"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in result["reviewers"]:
        bn: Dict[str, dict] = r["by_name_level"]
        row = [r["reviewer"], r["file"], r["n_pairs"], r["n_accurate"], r["accuracy"]]
        row += [r["by_given_level"][lvl]["accuracy"] for lvl in LEVELS]
        row += [r["by_given_level"][lvl]["n"] for lvl in LEVELS]
        row += [bn.get(g, {}).get("accuracy") for g in name_groups] + [bn.get(g, {}).get("n", 0) for g in name_groups]
        row += [r["real_vs_name"]["accuracy"], r["generated_vs_name"]["accuracy"]]
        w.writerow([_csv_val(v) for v in row])
    return buf.getvalue()


AGREEMENT_COLUMNS = ["reviewer_a", "reviewer_b", "n_images", "percent_agreement", "kappa", "kappa_quadratic",
                     "kappa_real", "kappa_generated"]


def agreement_csv(result: dict) -> str:
    """Pairwise agreement CSV text (see module docstring)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(AGREEMENT_COLUMNS)
    for a in result["agreement"]:
        w.writerow([_csv_val(a[c]) for c in AGREEMENT_COLUMNS])
    return buf.getvalue()


def scores_markdown(result: dict) -> str:
    """Markdown report (accuracy in %)."""
    L: List[str] = [f"# HER2 blinded review, form {result['form_id']}", "",
                    f"{result['n_pairs']} real/generated pairs. A generated image is accurate when the reviewer gave it "
                    "the level they gave its real image (BCI paper, Table 5 protocol).", "",
                    "| reviewer | pairs | accurate | accuracy (%) | real = name level (%) | generated = name level (%) |",
                    "|---|---:|---:|---:|---:|---:|"]
    for r in result["reviewers"]:
        L.append(f"| {_md_cell(r['reviewer'])} | {r['n_pairs']} | {r['n_accurate']} | {_pct(r['accuracy'])} | "
                 f"{_pct(r['real_vs_name']['accuracy'])} | {_pct(r['generated_vs_name']['accuracy'])} |")
    if len(result["reviewers"]) > 1:
        L.append(f"| mean | | | {_pct(result['mean_accuracy'])} | | |")
    L += ["", "## Accuracy (%) by the level the reviewer gave the real image (n in brackets)", "",
          "| reviewer | " + " | ".join(LEVELS) + " |", "|---|" + "---:|" * len(LEVELS)]
    for r in result["reviewers"]:
        cells = [f"{_pct(r['by_given_level'][lvl]['accuracy'])} ({r['by_given_level'][lvl]['n']})" for lvl in LEVELS]
        L.append(f"| {_md_cell(r['reviewer'])} | " + " | ".join(cells) + " |")
    groups = [g for g in list(LEVELS) + ["unknown"] if any(g in r["by_name_level"] for r in result["reviewers"])]
    L += ["", "## Accuracy (%) by the level in the file name (n in brackets)", "",
          "| reviewer | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    for r in result["reviewers"]:
        cells = []
        for g in groups:
            s = r["by_name_level"].get(g)
            cells.append(f"{_pct(s['accuracy'])} ({s['n']})" if s else "n/a (0)")
        L.append(f"| {_md_cell(r['reviewer'])} | " + " | ".join(cells) + " |")
    L += ["", "## Confusion matrices (rows: level given to the real image, columns: to the generated image)"]
    for r in result["reviewers"]:
        L += ["", f"### {_md_cell(r['reviewer'])}", "", "| real \\ generated | " + " | ".join(LEVELS) + " |",
              "|---|" + "---:|" * len(LEVELS)]
        for lvl, row in zip(LEVELS, r["confusion"]):
            L.append(f"| {lvl} | " + " | ".join(str(v) for v in row) + " |")
    if result["agreement"]:
        L += ["", "## Agreement between reviewers (Cohen's kappa, sklearn; n/a = undefined)", "",
              "| reviewer A | reviewer B | images | same level (%) | kappa | quadratic kappa | kappa real | "
              "kappa generated |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for a in result["agreement"]:
            L.append(f"| {_md_cell(a['reviewer_a'])} | {_md_cell(a['reviewer_b'])} | {a['n_images']} | "
                     f"{_pct(a['percent_agreement'])} | {_num(a['kappa'])} | {_num(a['kappa_quadratic'])} | "
                     f"{_num(a['kappa_real'])} | {_num(a['kappa_generated'])} |")
    return "\n".join(L) + "\n"


def write_report(result: dict, out_dir: PathLike) -> List[Path]:
    """Write the four report files into ``out_dir`` (created if missing); returns their paths."""
    out_dir = Path(out_dir)
    return [
        atomic_write_text(out_dir / "review_scores.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n"),
        atomic_write_text(out_dir / "review_scores.csv", scores_csv(result)),
        atomic_write_text(out_dir / "review_agreement.csv", agreement_csv(result)),
        atomic_write_text(out_dir / "review_scores.md", scores_markdown(result)),
    ]
