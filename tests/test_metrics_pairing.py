"""Strict pairing of *_fake_B.png with *_real_B.png, and locating <phase>_<epoch> folders."""
import numpy as np
import pytest
from PIL import Image

from metrics.pairing import PairingError, check_pairing, pair_images, resolve_runs


def _png(path, h=16, w=16, value=0):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def test_pairs_sorted_with_her2_and_size(tmp_path):
    for stem in ("00002_test_3+", "00001_test_0", "slide_7"):
        _png(tmp_path / f"{stem}_fake_B.png", 12, 20)
        _png(tmp_path / f"{stem}_real_B.png", 12, 20)
        _png(tmp_path / f"{stem}_real_A.png", 12, 20)
    res = pair_images(tmp_path)
    assert [p.stem for p in res.pairs] == ["00001_test_0", "00002_test_3+", "slide_7"]
    assert [p.her2 for p in res.pairs] == ["0", "3+", None]
    assert res.pairs[0].size == (12, 20)  # (H, W)
    assert res.problems == [] and res.n_other_files == 3
    check_pairing(res)


def test_every_problem_is_listed(tmp_path):
    _png(tmp_path / "a_fake_B.png")                      # missing real_B
    _png(tmp_path / "b_real_B.png")                      # real_B without fake_B
    _png(tmp_path / "c_fake_B.png", 16, 16)
    _png(tmp_path / "c_real_B.png", 16, 18)              # size mismatch
    (tmp_path / "d_fake_B.png").write_bytes(b"garbage")  # unreadable
    _png(tmp_path / "d_real_B.png")
    _png(tmp_path / "e_fake_B.png")
    _png(tmp_path / "e_real_B.png")                      # the one good pair
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "f_fake_B.jpg")
    _png(tmp_path / "g_real_A.png")                      # input without outputs
    res = pair_images(tmp_path)
    assert [p.stem for p in res.pairs] == ["e"]
    text = " ".join(res.problems)
    for needle in ("missing real_B for a_fake_B.png", "real_B without fake_B: b_real_B.png",
                   "size mismatch for c", "unreadable image d_fake_B.png", "not a PNG", "f_fake_B.jpg",
                   "g_real_A.png"):
        assert needle in text
    with pytest.raises(PairingError) as e:
        check_pairing(res)
    assert "--allow_partial" in str(e.value) and "a_fake_B.png" in str(e.value)
    check_pairing(res, allow_partial=True)  # one pair left: no error


def test_empty_and_nothing_left(tmp_path):
    with pytest.raises(PairingError, match="no \\*_fake_B.png"):
        check_pairing(pair_images(tmp_path))
    _png(tmp_path / "a_fake_B.png")
    with pytest.raises(PairingError, match="no complete"):
        check_pairing(pair_images(tmp_path), allow_partial=True)
    with pytest.raises(PairingError, match="does not exist"):
        pair_images(tmp_path / "missing")


def test_resolve_single_multi_and_wrong_folder(tmp_path):
    (tmp_path / "expA" / "test_latest" / "images").mkdir(parents=True)
    (tmp_path / "expB" / "test_latest" / "images").mkdir(parents=True)
    (tmp_path / "expB" / "val_10" / "images").mkdir(parents=True)
    assert resolve_runs(tmp_path / "expA") == [("expA", tmp_path / "expA" / "test_latest")]
    assert [n for n, _ in resolve_runs(tmp_path)] == ["expA", "expB"]
    assert resolve_runs(tmp_path, "val", "10") == [("expB", tmp_path / "expB" / "val_10")]
    with pytest.raises(PairingError) as e:
        resolve_runs(tmp_path / "expA", "test", "5")
    assert "test_5/images" in str(e.value) and "test_latest" in str(e.value)
    with pytest.raises(PairingError, match="not a folder"):
        resolve_runs(tmp_path / "nope")
    with pytest.raises(PairingError) as e:  # the run folder itself instead of the experiment
        resolve_runs(tmp_path / "expB" / "val_10", "val", "10")
    assert "pass its parent" in str(e.value) and str(tmp_path / "expB") in str(e.value)


def test_16bit_png_is_a_problem_not_clipped(tmp_path):
    # Pillow's 8-bit RGB conversion clips 16-bit grey to 255 (and keeps the high byte of 16-bit RGB): refuse both
    imagecodecs = pytest.importorskip("imagecodecs")
    grey = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200)
    Image.fromarray(grey).save(tmp_path / "a_fake_B.png")
    assert Image.open(tmp_path / "a_fake_B.png").mode == "I;16"
    _png(tmp_path / "a_real_B.png")
    rgb16 = np.repeat(grey[..., None], 3, axis=2)
    (tmp_path / "b_fake_B.png").write_bytes(imagecodecs.png_encode(rgb16))
    assert Image.open(tmp_path / "b_fake_B.png").mode == "RGB"  # Pillow hides the 16 bits
    _png(tmp_path / "b_real_B.png")
    _png(tmp_path / "c_fake_B.png")
    _png(tmp_path / "c_real_B.png")
    res = pair_images(tmp_path)
    assert [p.stem for p in res.pairs] == ["c"]
    text = " ".join(res.problems)
    assert "a_fake_B.png" in text and "b_fake_B.png" in text and "16-bit PNG" in text


def test_two_files_for_one_stem_and_role(tmp_path):
    _png(tmp_path / "a_fake_B.png", value=0)
    _png(tmp_path / "a_fake_B.PNG", value=9)  # which one would be scored depended on listing order
    _png(tmp_path / "a_real_B.png")
    res = pair_images(tmp_path)
    assert any("two fake_B files for a" in p for p in res.problems)
    with pytest.raises(PairingError):
        check_pairing(res)
