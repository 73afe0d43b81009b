"""The displacement generator (max length = request, seeded, nested in max_px, exact integer shifts) and the
misalignment benchmark's path on a tiny dataset: CSV/markdown/plot, aligned test targets untouched, resumable."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from data.displacement import displace_image, displacement_length, random_smooth_field
from util.image_io import read_rgb_uint8


@pytest.mark.parametrize("h,w,d", [(64, 64, 2.0), (48, 80, 8.0), (128, 128, 16.0), (30, 20, 0.5)])
def test_field_max_matches_request(h, w, d):
    f = random_smooth_field(h, w, d, seed=(3, 1))
    assert f.shape == (2, h, w)
    length = np.sqrt(f[0] ** 2 + f[1] ** 2)
    assert length.max() == pytest.approx(d, rel=1e-12)
    assert length.mean() < d  # a field, not a translation of length d everywhere


def test_field_seeded_smooth_and_nested():
    a = random_smooth_field(64, 64, 4.0, seed=(0, 5))
    np.testing.assert_array_equal(a, random_smooth_field(64, 64, 4.0, seed=(0, 5)))
    assert not np.allclose(a, random_smooth_field(64, 64, 4.0, seed=(1, 5)))
    np.testing.assert_allclose(random_smooth_field(64, 64, 8.0, seed=(0, 5)), 2 * a, rtol=1e-12)
    assert not np.any(random_smooth_field(16, 16, 0.0, seed=0))
    # smooth: neighbouring displacements differ by far less than the maximum
    assert np.abs(np.diff(a, axis=2)).max() < 0.5
    with pytest.raises(ValueError):
        random_smooth_field(8, 8, -1.0, seed=0)


def test_displace_image_integer_shift_and_identity():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    np.testing.assert_array_equal(displace_image(img, np.zeros((2, 12, 10))), img)
    field = np.zeros((2, 12, 10))
    field[0] = 2.0  # out(x, y) = img(x + 2, y)
    np.testing.assert_array_equal(displace_image(img, field)[:, :8], img[:, 2:])
    field = np.zeros((2, 12, 10))
    field[1] = -3.0  # out(x, y) = img(x, y - 3)
    np.testing.assert_array_equal(displace_image(img, field)[3:], img[:-3])
    assert displacement_length(field).max() == 3.0
    with pytest.raises(ValueError):
        displace_image(img, np.zeros((2, 10, 12)))


def test_benchmark_tiny_run_and_resume(sample_bci, tmp_path, monkeypatch, capsys):
    from scripts import misalignment_benchmark as mb

    out = tmp_path / "mb"
    argv = ["--dataroot", str(sample_bci), "--out_dir", str(out), "--smoke", "--image_size", "0", "--max_train", "2",
            "--methods", "pyramidpix2pix_reg,asp", "--displacements", "2,0", "--seeds", "0,1"]
    assert mb.main(argv) == 0
    rows = list(csv.DictReader((out / "misalignment.csv").open()))
    assert list(rows[0])[:5] == ["method", "displacement_px", "seed", "psnr", "ssim"]
    cells = {(r["method"], r["displacement_px"], r["seed"]) for r in rows}
    methods = {"pyramidpix2pix_reg"}
    import models

    if "asp" in models.available_models():
        methods.add("asp")
    assert cells == {(m, d, s) for m in methods for d in ("0", "2") for s in ("0", "1")}
    assert all(0 < float(r["psnr"]) < 100 and -1 <= float(r["ssim"]) <= 1 for r in rows)
    md = (out / "misalignment.md").read_text()
    assert "loss 0->2 px" in md and "+-" in md
    assert (out / "misalignment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # test targets: the aligned files, byte for byte; training targets displaced by exactly 2 px at most
    for src in sorted((sample_bci / "IHC" / "test").iterdir()):
        assert (out / "data" / "aligned" / "IHC" / "test" / src.name).read_bytes() == src.read_bytes()
    import json

    fields = json.loads((out / "data" / "d2_s0" / "fields.json").read_text())
    assert [r["max_px"] for r in fields["images"]] == pytest.approx([2.0, 2.0])
    for r in fields["images"]:
        name = r["name"]
        field = random_smooth_field(64, 64, 2.0, seed=tuple(r["field_seed"]))
        expected = displace_image(read_rgb_uint8(out / "data" / "aligned" / "IHC" / "train" / name), field)
        np.testing.assert_array_equal(read_rgb_uint8(out / "data" / "d2_s0" / "IHC" / "train" / name), expected)
        assert (out / "data" / "d2_s0" / "HE" / "train" / name).read_bytes() == \
            (out / "data" / "aligned" / "HE" / "train" / name).read_bytes()

    # resumable: finished cells are read, never retrained
    import train

    def no_training(argv=None):
        raise AssertionError("a finished cell was retrained")

    monkeypatch.setattr(train, "main", no_training)
    before = (out / "misalignment.csv").read_text()
    assert mb.main(argv) == 0
    assert (out / "misalignment.csv").read_text() == before
    # data built with other settings is never reused silently
    other = list(argv)
    other[other.index("--image_size") + 1] = "32"
    assert mb.main(other) == 2
    assert "other settings" in capsys.readouterr().err


def test_benchmark_bad_method_is_an_error(tmp_path, capsys):
    from scripts import misalignment_benchmark as mb

    assert mb.main(["--out_dir", str(tmp_path), "--smoke", "--methods", "nope"]) == 2
    assert "--methods" in capsys.readouterr().err
