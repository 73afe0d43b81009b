"""Tests for the blinded HER2 review kit (review/, scripts/review_make_form.py, scripts/review_score.py)."""
import base64
import csv
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from review import LEVELS
from review.answers import AnswerFileError, read_answers
from review.make import make_round
from review.sample import find_pairs, read_key
from review.score import kappa
from scripts import review_make_form, review_score
from util.errors import DataError, OptionError

N_STEMS = 10
H, W = 24, 40  # non-square, small


@pytest.fixture(autouse=True)
def _drop_cli_log_handlers():
    """The CLIs attach a stderr handler (util.logging_setup); drop it so later tests do not log to a closed capture."""
    yield
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_virtual_ihc", False)]:
        root.removeHandler(h)


def _stem(i):
    return f"{i:05d}_test_{LEVELS[i % 4]}"


def _save(path, pixels, meta=None):
    info = None
    if meta:
        info = PngImagePlugin.PngInfo()
        for k, v in meta.items():
            info.add_text(k, v)
    Image.fromarray(pixels).save(path, pnginfo=info)


@pytest.fixture
def results(tmp_path):
    """A test.py-like results folder: N_STEMS full triplets, one lonely fake, one unrelated file."""
    images = tmp_path / "results" / "exp" / "test_latest" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N_STEMS):
        for kind in ("real_A", "real_B", "fake_B"):
            meta = {"Software": "virtual-ihc generator", "Source": _stem(i)} if kind == "fake_B" else None
            _save(images / f"{_stem(i)}_{kind}.png", rng.integers(0, 256, (H, W, 3), dtype=np.uint8), meta)
    _save(images / "99999_test_3+_fake_B.png", np.zeros((H, W, 3), np.uint8))
    (images.parent / "index.html").write_text("<html></html>")
    return images


def _png_chunks(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, names = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        names.append(data[pos + 4:pos + 8].decode("ascii"))
        pos += 12 + n
    return names


class FormParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.radios, self.imgs, self.scripts, self.links = {}, [], [], []
        self._in_script, self._script_attrs, self._buf = False, None, []
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("type") == "radio":
            self.radios.setdefault(a["name"], []).append(a["value"])
        elif tag == "img":
            self.imgs.append(a)
        elif tag == "script":
            self._in_script, self._script_attrs, self._buf = True, a, []
        elif tag == "link":
            self.links.append(a)

    def handle_endtag(self, tag):
        if tag == "script":
            self.scripts.append((self._script_attrs, "".join(self._buf)))
            self._in_script = False

    def handle_data(self, data):
        (self._buf if self._in_script else self.text).append(data)


def _parse_form(path):
    p = FormParser()
    p.feed(Path(path).read_text(encoding="utf-8"))
    p.close()
    return p


def _config(parser):
    return json.loads(next(body for attrs, body in parser.scripts if attrs.get("id") == "review-config"))


# ----------------------------------------------------------------------------------------------------------- form

def test_make_round_layout_key_and_blinding(results, tmp_path, caplog):
    caplog.set_level("WARNING")
    out = tmp_path / "round1"
    make_round(results.parent, out, n_pairs=6, seed=7)  # the <phase>_<epoch> parent works
    assert "99999_test_3+_fake_B.png" in caplog.text  # the unpaired image is reported, not dropped silently
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "form", "key.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    key = read_key(out / "key.json")
    assert key == json.loads((out / "key.json").read_text()) and key["seed"] == 7 and key["n_pairs"] == 6
    imgs = key["images"]
    assert len(imgs) == 12 and len({i["id"] for i in imgs}) == 12
    per_pair = Counter(i["pair"] for i in imgs)
    assert set(per_pair.values()) == {2} and len(per_pair) == 6
    assert set(per_pair) <= {_stem(i) for i in range(N_STEMS)}
    for im in imgs:
        suffix = "_real_B.png" if im["kind"] == "real" else "_fake_B.png"
        assert im["file"] == im["pair"] + suffix and im["level"] == im["pair"].split("_")[-1]
    # the shuffle interleaves kinds: the form order is not all-real-then-all-generated nor strictly alternating pairs
    kinds = [im["kind"] for im in imgs]
    assert kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)

    html = (out / "form" / "index.html").read_text(encoding="utf-8")
    for im in imgs:  # nothing of the key leaks into the page
        assert im["pair"] not in html and im["file"] not in html
    for word in ("real_B", "fake_B", "key.json", '"kind"', "her2-review-key"):
        assert word not in html
    p = _parse_form(out / "form" / "index.html")
    ids = [im["id"] for im in imgs]
    assert list(p.radios) == ids and all(v == list(LEVELS) for v in p.radios.values())
    assert not any("src" in a for a, _ in p.scripts) and not p.links  # no external scripts or stylesheets
    assert [a["src"] for a in p.imgs] == [f"images/{i}.png" for i in ids]
    cfg = _config(p)
    assert cfg["ids"] == ids and cfg["form_id"] == key["form_id"] and cfg["levels"] == list(LEVELS)
    assert cfg["answers_format"] == "her2-review-answers" and cfg["csv_columns"] == ["form_id", "reviewer",
                                                                                        "image_id", "level"]
    # images: bare PNGs (no metadata), same encoding for both kinds, pixels identical to the source
    files = sorted((out / "form" / "images").iterdir())
    assert [f.name for f in files] == sorted(f"{i}.png" for i in ids)
    modes = set()
    for im in imgs:
        data = (out / "form" / "images" / f"{im['id']}.png").read_bytes()
        assert _png_chunks(data) == ["IHDR", "IDAT", "IEND"]
        with Image.open(io.BytesIO(data)) as a:
            modes.add((a.mode, a.size, a.format, tuple(sorted(a.info))))
            np.testing.assert_array_equal(np.asarray(a), np.asarray(Image.open(results / im["file"])))
    assert len(modes) == 1


def test_same_seed_same_round_and_other_seed_differs(results, tmp_path):
    a = make_round(results, tmp_path / "a", n_pairs=5, seed=3).key
    b = make_round(results, tmp_path / "b", n_pairs=5, seed=3).key
    c = make_round(results, tmp_path / "c", n_pairs=5, seed=4).key
    assert a["images"] == b["images"] and a["form_id"] == b["form_id"]
    assert c["images"] != a["images"] and c["form_id"] != a["form_id"]


def test_embedded_form_is_one_file(results, tmp_path):
    out = tmp_path / "r"
    r = make_round(results, out, n_pairs=3, seed=1, embed=True, title="<b>Round & 1</b>")
    assert sorted(p.name for p in (out / "form").iterdir()) == ["index.html"]
    html = r.form.read_text(encoding="utf-8")
    assert "&lt;b&gt;Round &amp; 1&lt;/b&gt;" in html and "<b>Round" not in html
    p = _parse_form(r.form)
    by_id = {im["id"]: im for im in r.key["images"]}
    assert len(p.imgs) == 6
    for a in p.imgs:
        assert a["src"].startswith("data:image/png;base64,")
        data = base64.b64decode(a["src"].split(",", 1)[1])
        image_id = a["alt"].split()[-1]
        with Image.open(io.BytesIO(data)) as im:
            np.testing.assert_array_equal(np.asarray(im), np.asarray(Image.open(results / by_id[image_id]["file"])))


def test_make_form_errors(results, tmp_path, capsys):
    with pytest.raises(DataError, match="is not a folder"):
        make_round(tmp_path / "nope", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no"):
        make_round(empty, tmp_path / "o")
    with pytest.raises(DataError, match=r"has 10 real/generated pair\(s\), fewer than --n_pairs 11"):
        make_round(results, tmp_path / "o", n_pairs=11, seed=0)
    with pytest.raises(OptionError, match="at least 1"):
        make_round(results, tmp_path / "o", n_pairs=0, seed=0)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(OptionError, match="not empty"):
        make_round(results, full, n_pairs=2, seed=0)
    make_round(results, full, n_pairs=2, seed=0, overwrite=True)
    assert not (full / "x").exists() and (full / "key.json").is_file()
    # a size mismatch would reveal the generated image: refused, and nothing is left behind
    _save(results / f"{_stem(0)}_fake_B.png", np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(DataError, match="size would reveal"):
        make_round(results, tmp_path / "mismatch", n_pairs=N_STEMS, seed=0)
    assert not (tmp_path / "mismatch").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # two files for one stem and kind
    _save(results / f"{_stem(1)}_fake_B.jpg", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(DataError, match="two fake_B images"):
        find_pairs(results)
    # the CLI: one line on stderr, exit status 2
    capsys.readouterr()
    rc = review_make_form.main(["--results", str(empty), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(empty) in err[0]


# ------------------------------------------------------------------------------------------------------- scoring

def _answers_json(key, reviewer, levels):
    """An answer file exactly as the form's JavaScript builds it (review/assets.py)."""
    return json.dumps({"format": "her2-review-answers", "version": 1, "form_id": key["form_id"],
                       "reviewer": reviewer, "saved": "2024-01-01T00:00:00.000Z", "answers": levels}, indent=1)


def _answers_csv(key, reviewer, levels):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["form_id", "reviewer", "image_id", "level"])
    for i, lvl in levels.items():
        w.writerow([key["form_id"], reviewer, i, lvl])
    return buf.getvalue()


def _shift(level):
    return LEVELS[(LEVELS.index(level) + 1) % 4]


def _reviewer_levels(key, n_wrong):
    """Real images get their name level; generated images too, except in the first n_wrong pairs (by stem)."""
    stems = sorted({im["pair"] for im in key["images"]})
    wrong = set(stems[:n_wrong])
    return {im["id"]: (_shift(im["level"]) if im["kind"] == "generated" and im["pair"] in wrong else im["level"])
            for im in key["images"]}


def _kappa_by_hand(a, b, quadratic=False):
    """Cohen (1960) / Fleiss-Cohen weighted kappa from the 4x4 contingency table."""
    k = len(LEVELS)
    o = np.zeros((k, k))
    for x, y in zip(a, b):
        o[LEVELS.index(x), LEVELS.index(y)] += 1
    o /= o.sum()
    e = np.outer(o.sum(1), o.sum(0))
    i, j = np.indices((k, k))
    w = (i - j) ** 2 if quadratic else (i != j).astype(float)
    return 1 - (w * o).sum() / (w * e).sum()


def test_kappa_hand_values():
    assert kappa(["0", "0", "1+", "1+"], ["0", "1+", "1+", "1+"]) == pytest.approx(0.5)  # po 3/4, pe 1/2
    assert kappa(["0", "1+", "2+"], ["0", "1+", "2+"]) == pytest.approx(1.0)
    assert kappa(["2+", "2+"], ["2+", "2+"]) is None  # undefined, not NaN
    a, b = ["0", "1+", "2+", "3+", "3+", "0"], ["0", "2+", "2+", "1+", "3+", "1+"]
    assert kappa(a, b, "quadratic") == pytest.approx(_kappa_by_hand(a, b, quadratic=True))
    assert kappa(a, b) == pytest.approx(_kappa_by_hand(a, b))


def test_round_trip_scores(results, tmp_path):
    r = make_round(results, tmp_path / "round", n_pairs=8, seed=5)
    key = r.key
    la, lb = _reviewer_levels(key, 2), _reviewer_levels(key, 4)
    fa, fb = tmp_path / "a.json", tmp_path / "b.csv"
    fa.write_text(_answers_json(key, "Dr A", la), encoding="utf-8")
    fb.write_text(_answers_csv(key, 'Dr "B", MD', lb), encoding="utf-8")
    out = tmp_path / "scores"
    assert review_score.main(["--key", str(r.key_path), str(fa), str(fb), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["review_agreement.csv", "review_scores.csv",
                                                     "review_scores.json", "review_scores.md"]
    res = json.loads((out / "review_scores.json").read_text())
    ra, rb = res["reviewers"]
    assert (ra["reviewer"], rb["reviewer"]) == ("Dr A", 'Dr "B", MD')
    assert (ra["n_accurate"], ra["accuracy"]) == (6, 0.75) and (rb["n_accurate"], rb["accuracy"]) == (4, 0.5)
    assert res["mean_accuracy"] == pytest.approx(0.625)
    assert ra["real_vs_name"]["accuracy"] == 1.0 and ra["generated_vs_name"]["accuracy"] == 0.75
    # confusion matrix by hand: rows = real level given, cols = generated level given
    pairs = {}
    for im in key["images"]:
        pairs.setdefault(im["pair"], {})[im["kind"]] = im["id"]
    conf = np.zeros((4, 4), int)
    for p in pairs.values():
        conf[LEVELS.index(la[p["real"]]), LEVELS.index(la[p["generated"]])] += 1
    assert ra["confusion"] == conf.tolist() and conf.sum() == 8 and np.trace(conf) == 6
    for lvl in LEVELS:  # by the level given to the real image = diagonal share of the row
        n = conf[LEVELS.index(lvl)].sum()
        exp = conf[LEVELS.index(lvl), LEVELS.index(lvl)] / n if n else None
        assert ra["by_given_level"][lvl] == {"n": int(n), "accurate": int(n and exp * n), "accuracy": exp}
    # by file-name level: reviewer A's wrong pairs are the 2 smallest stems
    stems = sorted(pairs)
    for lvl, s in ra["by_name_level"].items():
        group = [st for st in stems if st.endswith("_" + lvl)]
        assert s["n"] == len(group) and s["accurate"] == len([st for st in group if st not in stems[:2]])
    # agreement on all 16 images
    ids = [im["id"] for im in key["images"]]
    (ag,) = res["agreement"]
    assert ag["n_images"] == 16
    assert ag["percent_agreement"] == pytest.approx(np.mean([la[i] == lb[i] for i in ids])) == 14 / 16
    assert ag["kappa"] == pytest.approx(_kappa_by_hand([la[i] for i in ids], [lb[i] for i in ids]))
    assert ag["kappa_quadratic"] == pytest.approx(
        _kappa_by_hand([la[i] for i in ids], [lb[i] for i in ids], quadratic=True))
    assert ag["kappa_real"] == pytest.approx(1.0)
    # CSV and markdown carry the same numbers
    rows = list(csv.DictReader(open(out / "review_scores.csv", encoding="utf-8")))
    assert [float(x["accuracy"]) for x in rows] == [0.75, 0.5] and rows[1]["reviewer"] == 'Dr "B", MD'
    (arow,) = list(csv.DictReader(open(out / "review_agreement.csv", encoding="utf-8")))
    assert float(arow["kappa"]) == pytest.approx(ag["kappa"], abs=1e-6)
    md = (out / "review_scores.md").read_text()
    assert "| Dr A | 8 | 6 | 75.0 |" in md and "| mean | | | 62.5 |" in md


def test_answer_file_errors(results, tmp_path, capsys):
    r = make_round(results, tmp_path / "round", n_pairs=3, seed=2)
    key = r.key
    good = _reviewer_levels(key, 0)
    ids = list(good)

    def write(name, text):
        p = tmp_path / name
        p.write_text(text, encoding="utf-8")
        return p

    cases = {
        "bad.json": ("{not json", "not valid JSON"),
        "other.json": (json.dumps({"format": "something"}), "not a review answer file"),
        "level.json": (_answers_json(key, "X", {**good, ids[0]: "2"}), "has level '2'"),
        "missing.json": (_answers_json(key, "X", {i: good[i] for i in ids[1:]}), "incomplete: 1 of 6"),
        "extra.json": (_answers_json(key, "X", {**good, "img99": "0"}), "not in the key: img99"),
        "form.json": (_answers_json({"form_id": "0123456789ab"}, "X", good), "is for form '0123456789ab'"),
        "header.csv": ("a,b,c,d\r\n", "first CSV row"),
        "short.csv": (_answers_csv(key, "X", good) + "x,y\r\n", "expected 4 fields"),
        "twice.csv": (_answers_csv(key, "X", good) + f"{key['form_id']},X,{ids[0]},0\r\n", "scored twice"),
        "mixed.csv": (_answers_csv(key, "X", good).replace(f",X,{ids[1]},", f",Y,{ids[1]},"), "mixes"),
        "quote.csv": (_answers_csv(key, "X", good) + '"unterminated\r\n', "CSV"),
    }
    for name, (text, msg) in cases.items():
        p = write(name, text)
        with pytest.raises(AnswerFileError, match=msg) as e:
            read_answers(p, key)
        assert str(p) in str(e.value), name
    # a good file passes, in both formats, with the same levels
    ja = read_answers(write("ok.json", _answers_json(key, "  Dr C ", good)), key)
    ca = read_answers(write("ok.csv", "\ufeff" + _answers_csv(key, "Dr C", good)), key)  # Excel BOM
    assert ja.reviewer == ca.reviewer == "Dr C" and ja.levels == ca.levels == good
    # two files of one reviewer, the CLI error path, and a broken key
    capsys.readouterr()
    rc = review_score.main(["--key", str(r.key_path), str(tmp_path / "ok.json"), str(tmp_path / "ok.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "both from reviewer 'Dr C'" in err[0]
    rc = review_score.main(["--key", str(r.key_path), str(tmp_path / "missing.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.json" in err[0]
    broken = write("key.json", "[]")
    with pytest.raises(DataError, match="not a review key"):
        read_key(broken)
    rc = review_score.main(["--key", str(tmp_path / "absent.json"), str(tmp_path / "ok.json")])
    assert rc == 2 and "absent.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the form in a real browser

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

_DRIVER = """
<script>
(function () {
  var cfg = JSON.parse(document.getElementById("review-config").textContent);
  // --virtual-time-budget makes the form's 2 s revoke timer fire at once, racing the real-time download
  URL.revokeObjectURL = function () {};
  var wanted = %s;
  document.getElementById("reviewer").value = %s;
  cfg.ids.forEach(function (id) { document.getElementById(id + "-" + wanted[id]).click(); });
  var pre = document.createElement("pre"); pre.id = "progress-copy";
  pre.textContent = document.getElementById("progress").textContent; document.body.appendChild(pre);
  document.getElementById(%s).click();
})();
</script>
"""


def _click_in_chromium(form, wanted, reviewer, button, workdir):
    """Open a copy of the form with a driver script that fills it and clicks ``button``; return (DOM, download)."""
    driver = form.parent / f"driver-{button}.html"
    driver.write_text(form.read_text(encoding="utf-8")
                      + _DRIVER % (json.dumps(wanted), json.dumps(reviewer), json.dumps(button)), encoding="utf-8")
    # Headless chromium is racy here (seen on a loaded 2-core machine, while a normal run takes ~4 s): it may stay
    # alive after printing the DOM, or exit (virtual time spent) before the download is written. So the DOM goes to
    # a file, a lingering browser is stopped once the DOM and the download are there, and a run that ended without
    # a download is repeated (at most 3 runs, each with a fresh profile).
    for attempt in range(3):
        dom, download = _chromium_run(driver, workdir / f"{button}-{attempt}")
        if download is not None:
            return dom, download
    raise AssertionError(f"chromium saved no file in 3 runs of {driver}")


def _chromium_run(driver, run_dir):
    """One headless run of ``driver``: ``(DOM text, downloaded file or None)``."""
    home, dom_path = run_dir / "home", run_dir / "dom.html"
    run_dir.mkdir(parents=True)

    def saved():
        return [p for p in (home / "Downloads").glob("her2_review_*") if not p.name.endswith(".crdownload")]

    with open(dom_path, "w", encoding="utf-8") as dom_file:
        proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                 f"--user-data-dir={run_dir / 'profile'}", "--virtual-time-budget=3000",
                                 "--dump-dom", driver.as_uri()],
                                stdout=dom_file, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": str(home)},
                                start_new_session=True)  # its own process group: the browser's helpers stop with it
        try:
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None:
                if saved() and "</html>" in dom_path.read_text(encoding="utf-8"):
                    time.sleep(0.5)  # let a normal exit happen
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    dom = dom_path.read_text(encoding="utf-8")
    assert "</html>" in dom, f"chromium printed no DOM (exit status {proc.returncode})"
    files = saved()
    assert len(files) <= 1, files
    return dom, (files[0] if files else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_form_in_headless_chromium(results, tmp_path):
    """Clicks the radio buttons and a Save button in a real browser; the downloaded files score as expected."""
    r = make_round(results, tmp_path / "round", n_pairs=4, seed=9)
    wanted = _reviewer_levels(r.key, 1)
    reviewer = 'Dr "Z", PhD'
    dom, fj = _click_in_chromium(r.form, wanted, reviewer, "save-json", tmp_path)
    assert '<pre id="progress-copy">8 / 8 scored</pre>' in dom
    _, fc = _click_in_chromium(r.form, wanted, reviewer, "save-csv", tmp_path)
    assert (fj.name, fc.name) == (f"her2_review_{r.key['form_id']}_Dr_Z_PhD.json",
                                  f"her2_review_{r.key['form_id']}_Dr_Z_PhD.csv")
    ja, ca = read_answers(fj, r.key), read_answers(fc, r.key)
    assert ja.reviewer == ca.reviewer == reviewer and ja.levels == ca.levels == wanted
    rc = review_score.main(["--key", str(r.key_path), str(fj), "--out", str(tmp_path / "s")])
    res = json.loads((tmp_path / "s" / "review_scores.json").read_text())
    assert rc == 0 and res["reviewers"][0]["accuracy"] == 0.75
