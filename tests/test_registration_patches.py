"""Patches, blocks and report pieces: scores against direct numpy/scikit-image references, filtering reasons, names."""
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import normalized_mutual_information

from registration.blocks import Block, Mosaic, blend_alpha, block_grid, parse_grid
from registration.patches import (PatchCriteria, PatchRecord, alignment_score, assess_patch, bci_name,
                                  next_free_index, patch_grid, read_patch_csv, write_patch_csv)
from registration.report import checkerboard, red_green_overlay, score_histogram
from registration.stains import grey_channel, normalised_cross_correlation
from util.errors import OptionError

HISTO = "samples/histo.jpg"


@pytest.fixture(scope="module")
def he():
    return np.asarray(Image.open(HISTO).convert("RGB"))


def test_ncc_matches_numpy_corrcoef():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 30)), rng.normal(size=(20, 30))
    b = b + 0.5 * a
    assert normalised_cross_correlation(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert np.isnan(normalised_cross_correlation(np.ones((4, 4)), a[:4, :4]))


def test_alignment_score_references(he):
    p = he[:128, :128]
    q = he[3:131, 5:133]
    ha, hb = grey_channel(p), grey_channel(q)
    ref = np.corrcoef(ha.reshape(64, 2, 64, 2).mean((1, 3)).ravel(), hb.reshape(64, 2, 64, 2).mean((1, 3)).ravel())
    assert alignment_score(p, q, "ncc", downsample=2) == pytest.approx(ref[0, 1], rel=1e-5)
    assert alignment_score(p, q, "nmi", downsample=1) == pytest.approx(
        normalized_mutual_information(ha, hb, bins=32) - 1, rel=1e-6)
    assert alignment_score(p, p, "ncc", downsample=1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="metric"):
        alignment_score(p, p, "psnr")


def test_assess_reasons(he):
    crit = PatchCriteria(min_tissue=0.5, min_score=0.5, min_coverage=0.99, score_downsample=2)
    p = he[100:228, 150:278]
    full = np.full(p.shape[:2], 255, np.uint8)
    assert assess_patch(p, p, full, crit)[3] == "kept"
    white = np.full_like(p, 255)
    assert assess_patch(white, white, full, crit)[3] == "background"
    # misaligned: IHC content from elsewhere in the slide
    other = he[0:128, 350:478]
    t, c, s, reason = assess_patch(p, other, full, crit)
    assert reason == "misaligned" and s < 0.5
    half = full.copy()
    half[:, :10] = 0
    t, c, s, reason = assess_patch(p, p, half, crit)
    assert reason == "outside_ihc" and c == pytest.approx(118 / 128)


def test_patch_grid_only_whole_patches():
    g = patch_grid(300, 500, 128)
    assert g == [(y, x) for y in (0, 128) for x in (0, 128, 256)]
    assert patch_grid(100, 100, 128) == []
    assert len(patch_grid(256, 256, 128, stride=64)) == 9


def test_bci_names_and_next_index(tmp_path):
    assert bci_name(12, "test", "2+") == "00012_test_2+.png"
    from data.her2 import parse_her2
    assert parse_her2(bci_name(3, "train", "1+")) == "1+"
    with pytest.raises(OptionError, match="phase"):
        bci_name(1, "val", "0")
    with pytest.raises(OptionError, match="HER2"):
        bci_name(1, "train", "4+")
    assert next_free_index(tmp_path, "train") == 0
    (tmp_path / "HE" / "train").mkdir(parents=True)
    (tmp_path / "HE" / "train" / "00007_train_0.png").write_bytes(b"")
    (tmp_path / "HE" / "train" / "notes.txt").write_bytes(b"")
    assert next_free_index(tmp_path, "train") == 8
    assert next_free_index(tmp_path, "test") == 0


def test_patch_csv_round_trip(tmp_path):
    recs = [PatchRecord(0, 0, 0, 0, 64, 0.9, 1.0, 0.8, "kept", "kept", "00000_train_0.png"),
            PatchRecord(64, 0, 128, 0, 64, 0.0, 1.0, float("nan"), "dropped", "background")]
    rows = read_patch_csv(write_patch_csv(tmp_path / "p.csv", recs))
    assert [r["reason"] for r in rows] == ["kept", "background"]
    assert rows[1]["score"] == "" and rows[0]["x0"] == "0" and rows[1]["x0"] == "128"


def test_block_grid_tiles_frame_and_respects_max():
    blocks = block_grid(301, 517, 4, 4)
    cover = np.zeros((301, 517), int)
    for b in blocks:
        cover[b.y0:b.y1, b.x0:b.x1] += 1
    assert (cover == 1).all() and len(blocks) == 16
    assert len(block_grid(1000, 1000, 2, 2, max_block=300)) == 16
    assert parse_grid("3x5") == (3, 5)
    with pytest.raises(OptionError, match="--blocks"):
        parse_grid("four")


def test_blend_is_seamless_partition(tmp_path):
    """Blending constant blocks 0 and 200 across a seam gives a linear ramp, weights summing to 1."""
    blocks = block_grid(40, 80, 1, 2)
    m = Mosaic(tmp_path / "r.tif", tmp_path / "c.tif", 40, 80)
    ov = 8
    for b, val in zip(blocks, (0, 200)):
        y0, y1, x0, x1 = b.expanded(ov, 40, 80)
        m.write(b, y0, y1, x0, x1, np.full((y1 - y0, x1 - x0, 3), val, np.uint8), np.ones((y1 - y0, x1 - x0), bool),
                ov)
    row = np.asarray(m.rgb[20, :, 0], float)
    seam = blocks[1].x0
    assert (row[:seam - ov] == 0).all() and (row[seam + ov:] == 200).all()
    ramp = row[seam - ov:seam + ov]
    assert np.all(np.diff(ramp) > 0)
    np.testing.assert_allclose(ramp, 200 * (np.arange(2 * ov) + 0.5) / (2 * ov), atol=0.6)
    assert (np.asarray(m.cov) == 255).all()
    a = blend_alpha(Block(1, 1, 10, 20, 10, 20), 2, 28, 2, 28, 8)
    assert a[0, 0] == pytest.approx((0.5 / 16) ** 2) and a[-1, -1] == 1.0
    m.close()


def test_overlays_and_histogram(he):
    p = he[:64, :96]
    rg = red_green_overlay(p, p)
    np.testing.assert_array_equal(rg[..., 0], rg[..., 1])  # identical inputs: pure yellow/black
    assert (rg[..., 2] == 0).all()
    cb = checkerboard(p, np.zeros_like(p), squares=4)
    np.testing.assert_array_equal(cb[:24, :24], p[:24, :24])
    assert (cb[:24, 24:48] == 0).all()
    img = score_histogram([0.1, 0.5, float("nan")], ["misaligned", "kept", "background"], 0.3, "ncc")
    assert img.shape == (320, 640, 3) and img.dtype == np.uint8
