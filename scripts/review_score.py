"""Score a blinded HER2 review round: Table 5 accuracy per reviewer, confusion matrices, Cohen's kappa.

Reads the round's ``key.json`` and one answer file (JSON or CSV, as saved by the form) per reviewer; writes
``review_scores.md``, ``review_scores.csv``, ``review_agreement.csv`` and ``review_scores.json`` into ``--out``
(default: the key's folder). See docs/REVIEW.md.

Example::

    python scripts/review_score.py --key review/round1/key.json answers/*.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review.answers import read_all_answers  # noqa: E402
from review.report import write_report  # noqa: E402
from review.sample import read_key  # noqa: E402
from review.score import score_round  # noqa: E402
from util.logging_setup import run_cli, setup_logging  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("answers", nargs="+", help="answer files saved by the form (.json or .csv), one per reviewer")
    p.add_argument("--key", required=True, help="key.json of the round (written by review_make_form.py)")
    p.add_argument("--out", default=None, help="folder for the reports (default: the key's folder)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body(opt):
        key = read_key(opt.key)
        answers = read_all_answers(opt.answers, key)
        result = score_round(answers, key)
        paths = write_report(result, opt.out if opt.out else Path(opt.key).parent)
        for r in result["reviewers"]:
            acc = "n/a" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}%"
            print(f"{r['reviewer']}: {r['n_accurate']}/{r['n_pairs']} accurate ({acc})")
        for a in result["agreement"]:
            k = "n/a" if a["kappa"] is None else f"{a['kappa']:.3f}"
            print(f"kappa {a['reviewer_a']} vs {a['reviewer_b']}: {k}")
        print("wrote " + ", ".join(str(p) for p in paths))

    opt = build_parser().parse_args(argv)
    setup_logging()
    return run_cli(body, opt, prog="review_score")


if __name__ == "__main__":
    sys.exit(main())
