"""report.html and the comparison report: plots, galleries, per-image table, escaping, experiments left out."""
import csv
import html
import math
import re
from urllib.parse import unquote

import pytest
from PIL import Image

import evaluate
from tests.test_evaluate import _make_run

pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True)
def _no_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _evaluate(argv, capsys):
    rc = evaluate.main(argv + ["--no_progress", "--num_workers", "1"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_report_plots_galleries_table_and_links(tmp_path, capsys):
    exp = tmp_path / "exp<script>"
    _make_run(exp, n=7, identical=())
    _evaluate(["--result_path", str(exp), "--report_gallery", "2"], capsys)
    run = exp / "test_latest"
    page = (run / "report.html").read_text()
    for png in ("report_by_level.png", "report_iod.png", "report_psnr_hist.png"):
        with Image.open(run / png) as im:
            assert im.format == "PNG" and im.size[0] > 300
        assert f'src="{png}"' in page
    assert "exp<script>" not in page and html.escape("exp<script>") in page  # escaped name
    rows = _csv(run / "metrics.csv")
    by_psnr = sorted(rows, key=lambda r: -float(r["psnr_db"]))
    best = re.search(r'<table class="gallery best">(.*?)</table>', page, re.S).group(1)
    worst = re.search(r'<table class="gallery worst">(.*?)</table>', page, re.S).group(1)
    assert [r["name"] for r in by_psnr[:2]] == re.findall(r"<b>([^<]+)</b>", best)
    assert [r["name"] for r in by_psnr[::-1][:2]] == re.findall(r"<b>([^<]+)</b>", worst)
    assert "H&amp;E" in best and "virtual IHC" in best and "real IHC" in best
    assert f"PSNR {float(by_psnr[0]['psnr_db']):.2f} dB" in best
    table = re.search(r'<table class="sortable" id="per-image">(.*?)</table>', page, re.S).group(1)
    assert table.count("<tr>") == 1 + len(rows)
    for src in re.findall(r'(?:src|href)="([^"]+)"', page):  # every local link resolves
        assert (run / unquote(src)).exists() or src in ("index.html",), src
    assert "<script>" in page and "sortTable" in page  # the inline sorter, and no external script
    assert not re.search(r"<script[^>]+src=", page)


def test_identical_pairs_rank_best_and_show_inf(tmp_path, capsys):
    exp = tmp_path / "exp"
    _make_run(exp, n=4, identical=(2,))
    _evaluate(["--result_path", str(exp), "--report_gallery", "1"], capsys)
    page = (exp / "test_latest" / "report.html").read_text()
    best = re.search(r'<table class="gallery best">(.*?)</table>', page, re.S).group(1)
    assert "00002_test_2+" in best and "PSNR inf dB" in best
    assert 'data-v="1e308"' in page
    assert math.isinf(float([r for r in _csv(exp / "test_latest" / "metrics.csv")
                             if r["name"] == "00002_test_2+"][0]["psnr_db"]))


def test_comparison_report_lists_experiments_left_out(tmp_path, capsys):
    _make_run(tmp_path / "a", n=4, seed=1)
    _make_run(tmp_path / "b", n=4, seed=2)
    (tmp_path / "c" / "test_10" / "images").mkdir(parents=True)
    (tmp_path / "d").mkdir()
    out = _evaluate(["--result_path", str(tmp_path)], capsys)
    assert "2 left out" in out
    page = (tmp_path / "report_test_latest.html").read_text()
    for png in ("report_test_latest_by_level.png", "report_test_latest_iod.png", "report_test_latest_psnr_hist.png"):
        assert (tmp_path / png).is_file() and png in page
    assert 'href="a/test_latest/report.html"' in page and 'href="b/test_latest/report.html"' in page
    assert "c: no &#x27;test_latest/images&#x27; (has: test_10)" in page or "c: no 'test_latest/images' (has: test_10)" in page
    md = (tmp_path / "metrics_test_latest.md").read_text()
    assert "Left out (2):" in md and "\n- c: no " in md and "\n- d: no " in md  # (names markdown-escaped)
    import json

    js = json.loads((tmp_path / "metrics_test_latest.json").read_text())
    assert [e["experiment"] for e in js["left_out"]] == ["c", "d"]


def test_no_report_option(tmp_path, capsys):
    exp = tmp_path / "exp"
    _make_run(exp, n=3)
    _evaluate(["--result_path", str(exp), "--no_report"], capsys)
    assert not (exp / "test_latest" / "report.html").exists()
    assert (exp / "test_latest" / "metrics.json").exists()
