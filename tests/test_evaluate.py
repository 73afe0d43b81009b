"""evaluate.py command line: results, outputs, every pairing error with its exit code and message."""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluate

LEVELS = ["0", "1+", "2+", "3+", "3+"]


@pytest.fixture(autouse=True)
def _no_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no Inception weights: FID/KID skipped


def _make_run(root, n=5, size=(40, 48), seed=0, identical=(0,)):
    """Write <root>/test_latest/images with BCI-style names; returns {stem: (real, fake)}."""
    rng = np.random.default_rng(seed)
    img_dir = root / "test_latest" / "images"
    img_dir.mkdir(parents=True)
    base = np.asarray(Image.open("samples/ihc.png").convert("RGB"))
    out = {}
    for i in range(n):
        stem = f"{i:05d}_test_{LEVELS[i % len(LEVELS)]}"
        real = np.ascontiguousarray(base[i * 7:i * 7 + size[0], :size[1]])
        fake = real if i in identical else np.clip(real + rng.normal(0, 10 + 3 * i, real.shape), 0, 255).astype(np.uint8)
        Image.fromarray(real).save(img_dir / f"{stem}_real_B.png")
        Image.fromarray(fake).save(img_dir / f"{stem}_fake_B.png")
        Image.fromarray(real[..., ::-1].copy()).save(img_dir / f"{stem}_real_A.png")
        out[stem] = (real, fake)
    return img_dir


def _strict_json(path):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _run(argv, capsys):
    rc = evaluate.main(argv + ["--no_progress", "--num_workers", "1"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_scores_equal_skimage_with_levels_and_infinite_psnr(tmp_path, capsys):
    exp = tmp_path / "exp"
    img_dir = _make_run(exp)
    rc, out, err = _run(["--result_path", str(exp)], capsys)
    assert rc == 0, err
    assert "5 image pair(s) (found in images/, no run_manifest.json), resolution 40x48" in out and "1 identical pair(s) excluded" in out
    run = exp / "test_latest"
    js = _strict_json(run / "metrics.json")
    ps, ss = {}, {}
    for stem in sorted({p.name.rsplit("_fake_B", 1)[0] for p in img_dir.glob("*_fake_B.png")}):
        r = np.asarray(Image.open(img_dir / f"{stem}_real_B.png").convert("RGB"))
        f = np.asarray(Image.open(img_dir / f"{stem}_fake_B.png").convert("RGB"))
        with np.errstate(divide="ignore"):
            ps[stem] = peak_signal_noise_ratio(r, f, data_range=255)
        ss[stem] = structural_similarity(r, f, channel_axis=-1, data_range=255)
    finite = [v for v in ps.values() if math.isfinite(v)]
    assert js["n_images"] == 5 and js["psnr_n_infinite"] == 1
    assert abs(js["psnr"] - np.mean(finite)) <= 1e-9
    assert abs(js["ssim"] - np.mean(list(ss.values()))) <= 1e-9
    assert js["resolution"] == [40, 48]
    assert set(js["per_level"]) == {"0", "1+", "2+", "3+"}
    assert js["per_level"]["0"]["psnr"] is None and js["per_level"]["0"]["n_images"] == 1  # only the identical pair
    three = [s for s in ps if s.endswith("_3+")]
    assert js["per_level"]["3+"]["n_images"] == 2
    assert abs(js["per_level"]["3+"]["psnr"] - np.mean([ps[s] for s in three])) <= 1e-9
    assert abs(js["per_level"]["3+"]["ssim"] - np.mean([ss[s] for s in three])) <= 1e-9
    assert js["fid_kid"]["status"] == "skipped" and "--inception_weights" in js["fid_kid"]["reason"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["her2"] for r in rows] == LEVELS
    assert rows[0]["psnr_db"] == "inf" and float(rows[1]["psnr_db"]) == pytest.approx(ps[rows[1]["name"]], abs=1e-9)
    assert float(rows[1]["iod_real"]) > 0 and 0 <= float(rows[1]["dab_pos_fake"]) <= 1
    md = (run / "metrics.md").read_text()
    assert "| 3+ | 2 |" in md and "skipped" in md and "identical pair" in md
    assert not [p for p in run.iterdir() if ".partial" in p.name]


def _assert_fails(tmp_path, capsys, argv, *needles):
    rc, out, err = _run(argv, capsys)
    assert rc == 2
    assert err.startswith("evaluate.py: error:") and err.count("\n") == 1
    for n in needles:
        assert n in err
    assert not list(tmp_path.rglob("metrics.json"))
    return err


def test_missing_real_b(tmp_path, capsys):
    img = _make_run(tmp_path / "exp")
    (img / "00002_test_2+_real_B.png").unlink()
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp")],
                  "missing real_B for 00002_test_2+_fake_B.png", "--allow_partial")


def test_extra_real_b(tmp_path, capsys):
    img = _make_run(tmp_path / "exp")
    (img / "00001_test_1+_fake_B.png").unlink()
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp")],
                  "real_B without fake_B: 00001_test_1+_real_B.png")


def test_shape_mismatch(tmp_path, capsys):
    img = _make_run(tmp_path / "exp")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img / "00003_test_3+_fake_B.png")
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp")],
                  "size mismatch for 00003_test_3+", "40x48", "40x40")


def test_unreadable_header(tmp_path, capsys):
    img = _make_run(tmp_path / "exp")
    (img / "00004_test_3+_fake_B.png").write_bytes(b"\x89PNG but not really")
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp")],
                  "unreadable image 00004_test_3+_fake_B.png")


def test_truncated_png_data(tmp_path, capsys):
    img = _make_run(tmp_path / "exp")
    p = img / "00001_test_1+_real_B.png"
    p.write_bytes(p.read_bytes()[:200])  # header intact, pixel data cut
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp")],
                  "could not be scored", "00001_test_1+_real_B.png")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "exp" / "test_latest" / "images").mkdir(parents=True)
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp")], "holds no *_fake_B.png")


def test_wrong_phase_epoch(tmp_path, capsys):
    _make_run(tmp_path / "exp")
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp"), "--epoch", "20"],
                  "test_20/images", "found: test_latest")
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "nowhere")], "is not a folder")


def test_missing_inception_weights_file(tmp_path, capsys):
    _make_run(tmp_path / "exp")
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp"),
                                     "--inception_weights", str(tmp_path / "w.pth")],
                  "--inception_weights", "w.pth", "does not exist")


def test_bad_options(tmp_path, capsys):
    _make_run(tmp_path / "exp")
    _assert_fails(tmp_path, capsys, ["--result_path", str(tmp_path / "exp"), "--dab_threshold", "-1"],
                  "--dab_threshold")


def test_allow_partial_reports_left_out(tmp_path, capsys):
    img = _make_run(tmp_path / "exp")
    (img / "00002_test_2+_real_B.png").unlink()
    rc, out, err = _run(["--result_path", str(tmp_path / "exp"), "--allow_partial"], capsys)
    assert rc == 0, err
    assert "4 image pair(s)" in out and "1 problem(s), left out" in out
    js = _strict_json(tmp_path / "exp" / "test_latest" / "metrics.json")
    assert js["n_images"] == 4 and js["n_left_out"] == 1 and "00002_test_2+" in js["left_out"][0]
    assert js["per_level"]["2+"] == {**js["per_level"]["2+"], "n_images": 0, "psnr": None, "ssim": None}


def test_multi_experiment_table_and_parallel_equals_serial(tmp_path, capsys):
    _make_run(tmp_path / "expA", seed=1)
    _make_run(tmp_path / "expB", seed=2, identical=())
    rc, out, err = _run(["--result_path", str(tmp_path)], capsys)
    assert rc == 0, err
    serial = {e: _strict_json(tmp_path / e / "test_latest" / "metrics.json") for e in ("expA", "expB")}
    table = (tmp_path / "metrics_test_latest.md").read_text()
    assert "| expA | 5 | 40x48 |" in table and "| expB | 5 | 40x48 |" in table
    assert f"{serial['expB']['psnr']:.2f}" in table
    both = _strict_json(tmp_path / "metrics_test_latest.json")
    assert [e["experiment"] for e in both["experiments"]] == ["expA", "expB"]
    # the same with two worker processes (one experiment, to start one pool): identical numbers
    assert evaluate.main(["--result_path", str(tmp_path / "expB"), "--no_progress", "--num_workers", "2"]) == 0
    capsys.readouterr()
    par = _strict_json(tmp_path / "expB" / "test_latest" / "metrics.json")
    assert par["psnr"] == serial["expB"]["psnr"] and par["ssim"] == serial["expB"]["ssim"]
    assert par["per_level"] == serial["expB"]["per_level"]
