"""Make a blinded HER2 review round from a test.py results folder (BCI paper, Table 5 protocol).

Samples ``--n_pairs`` real/generated IHC pairs, shuffles all their images under anonymous ids and writes into
``--out``: ``form/`` (an offline HTML form with the images; give this folder to each reviewer) and ``key.json``
(which id is which image; keep it). See docs/REVIEW.md.

Example::

    python scripts/review_make_form.py --results results/bci_pyramid/test_latest --out review/round1 --seed 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from review.make import make_round  # noqa: E402
from util.logging_setup import run_cli, setup_logging  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from util.logging_setup import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--results", required=True,
                   help="results folder of test.py: <results_dir>/<name>/<phase>_<epoch> or its images/ subfolder")
    p.add_argument("--out", required=True, help="round folder to create (absent or empty)")
    p.add_argument("--n_pairs", type=int, default=40, help="real/generated pairs to sample (BCI Table 5: 40)")
    p.add_argument("--seed", type=int, default=None, help="sampling/shuffling seed (default: random, saved in the key)")
    p.add_argument("--embed", action="store_true",
                   help="embed the images in index.html as data: URIs (one file) instead of form/images/")
    p.add_argument("--title", default="HER2 blinded review", help="title of the form")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    def body(opt):
        r = make_round(opt.results, opt.out, n_pairs=opt.n_pairs, seed=opt.seed, embed=opt.embed,
                       overwrite=opt.overwrite, title=opt.title)
        print(f"form: {r.form}  (give the folder {r.form.parent} to the reviewers)")
        print(f"key:  {r.key_path}  (keep it; form id {r.key['form_id']}, seed {r.key['seed']})")

    opt = build_parser().parse_args(argv)
    setup_logging()
    return run_cli(body, opt, prog="review_make_form")


if __name__ == "__main__":
    sys.exit(main())
