"""metrics.report: summaries against scipy on the written CSV, and what the Markdown table shows."""
import csv
import io

import pytest
from scipy import stats

from metrics.report import summarize, to_csv, to_markdown
from metrics.scoring import PairScore

# real/fake IOD of a pyramid run on the embedded samples (two HER2 levels far apart in DAB)
IOD = [("0", 873.5, 2798.3), ("0", 899.3, 2763.3), ("0", 1559.8, 3437.0), ("0", 903.8, 2783.1),
       ("2+", 5600.9, 6906.1), ("2+", 5550.2, 6721.4), ("2+", 5791.0, 7045.8), ("1+", 5349.4, 6522.3)]


def _scores():
    return [PairScore(stem=f"{i:05d}_test_{lv}", her2=lv, height=8, width=8, psnr=18.0 + i, ssim=0.3,
                      iod_real=r, iod_fake=f, dab_pos_real=0.1, dab_pos_fake=0.2, dab_mean_od_real=r / 64,
                      dab_mean_od_fake=f / 64) for i, (lv, r, f) in enumerate(IOD)]


def test_iod_pearson_overall_and_per_level_equal_scipy_on_the_csv():
    scores = _scores()
    summary = summarize(scores, "exp", "test_latest")
    rows = list(csv.DictReader(io.StringIO(to_csv(scores))))

    def r_of(rs):
        return stats.pearsonr([float(r["iod_real"]) for r in rs], [float(r["iod_fake"]) for r in rs])[0]

    assert summary["iod_pearson_r"] == pytest.approx(r_of(rows), abs=1e-12)
    for lv in ("0", "2+"):
        assert summary["per_level"][lv]["iod_pearson_r"] == pytest.approx(
            r_of([r for r in rows if r["her2"] == lv]), abs=1e-12)
    assert summary["per_level"]["1+"]["iod_pearson_r"] is None  # one image: undefined
    # pooled r is dominated by the gap between levels: higher than within every level, but not 1
    assert summary["iod_pearson_r"] > max(summary["per_level"][lv]["iod_pearson_r"] for lv in ("0", "2+"))
    assert summary["iod_pearson_r"] < 0.9999


def test_markdown_does_not_round_a_pooled_r_to_one():
    md = to_markdown(summarize(_scores(), "exp", "test_latest"))
    all_row = next(line for line in md.splitlines() if line.startswith("| **all**"))
    r = stats.pearsonr([x[1] for x in IOD], [x[2] for x in IOD])[0]
    assert f"{r:.4f}" in all_row and "1.000" not in all_row
    assert [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")][1:] == \
        ["0", "1+", "2+", "3+", "**all**"]
