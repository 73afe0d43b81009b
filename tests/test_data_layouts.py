"""Layout detection, pairing, direction, HER2 and bad-data errors of the aligned dataset (tiny folders in tmp_path)."""
import argparse
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data.base_dataset import validate
from util.errors import DataError, OptionError


def make_opt(root, **kw):
    base = dict(dataroot=str(root), phase="train", direction="AtoB", input_nc=3, output_nc=3, preprocess="none",
                load_size=64, crop_size=32, no_flip=True, serial_batches=True, batch_size=1, num_threads=0,
                max_dataset_size=sys.maxsize, isTrain=False, seed=None, dataset_mode="aligned", A_dir="HE",
                B_dir="IHC", gpu_ids=[])
    base.update(kw)
    return argparse.Namespace(**base)


def rand_rgb(seed, h=20, w=24):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def as_u8(t):
    """(C, H, W) in [-1, 1] -> (H, W, C) uint8 (exact for 8-bit sources)."""
    return np.round((t.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)


def make_bci(root, names=("00000_train_0.png", "00001_train_2+.png", "00002_train_3+.png"), phase="train",
             A_dir="HE", B_dir="IHC"):
    pairs = {}
    for i, n in enumerate(names):
        a = save(rand_rgb(2 * i), root / A_dir / phase / n)
        b = save(rand_rgb(2 * i + 1), root / B_dir / phase / n)
        pairs[n] = (a, b)
    return pairs


# ---------------------------------------------------------------- layouts
def test_bci_layout_pairs_by_name_sorted_with_her2(tmp_path):
    pairs = make_bci(tmp_path, names=("00002_train_3+.png", "00000_train_0.png", "00001_train_2+.png"))
    (tmp_path / "HE" / "train" / "notes.txt").write_text("not an image")
    ds = data.create_dataset(make_opt(tmp_path))
    assert ds.layout.kind == "folders"
    assert len(ds) == 3
    names = [ds[i]["A_paths"].rsplit("/", 1)[1] for i in range(3)]
    assert names == sorted(pairs)
    for i in range(3):
        item = ds[i]
        n = names[i]
        assert item["A_paths"].endswith(f"HE/train/{n}") and item["B_paths"].endswith(f"IHC/train/{n}")
        assert item["A"].dtype == torch.float32 and item["A"].shape == (3, 20, 24)
        np.testing.assert_array_equal(as_u8(item["A"]), pairs[n][0])
        np.testing.assert_array_equal(as_u8(item["B"]), pairs[n][1])
    assert [ds[i]["her2"] for i in range(3)] == ["0", "2+", "3+"]


def test_extensions_case_insensitive_and_her2_absent(tmp_path):
    for sub in ("HE", "IHC"):
        save(rand_rgb(0), tmp_path / sub / "train" / "slide_7.PNG")
    ds = data.create_dataset(make_opt(tmp_path))
    assert len(ds) == 1 and ds[0]["her2"] == ""


def test_combined_layout_splits_halves(tmp_path):
    a, b = rand_rgb(1, 16, 10), rand_rgb(2, 16, 10)
    save(np.concatenate([a, b], axis=1), tmp_path / "train" / "00005_train_1+.png")
    ds = data.create_dataset(make_opt(tmp_path))
    assert ds.layout.kind == "combined"
    item = ds[0]
    np.testing.assert_array_equal(as_u8(item["A"]), a)
    np.testing.assert_array_equal(as_u8(item["B"]), b)
    assert item["A_paths"] == item["B_paths"] and item["her2"] == "1+"
    assert ds.sizes == [(10, 16)]  # (width, height) of one half, as the items have
    swapped = data.create_dataset(make_opt(tmp_path, direction="BtoA"))[0]
    np.testing.assert_array_equal(as_u8(swapped["A"]), b)
    np.testing.assert_array_equal(as_u8(swapped["B"]), a)


def test_mist_layout_with_val_phase(tmp_path):
    root = tmp_path / "TrainValAB"
    for phase, n in (("train", 3), ("val", 2)):
        for i in range(n):
            save(rand_rgb(i), root / f"{phase}A" / f"img{i}.jpg")
            save(rand_rgb(10 + i), root / f"{phase}B" / f"img{i}.jpg")
    ds = data.create_dataset(make_opt(root, phase="val"))
    assert ds.layout.kind == "phase_ab" and len(ds) == 2
    assert ds[1]["A_paths"].endswith("valA/img1.jpg") and ds[1]["B_paths"].endswith("valB/img1.jpg")
    assert len(data.create_dataset(make_opt(root, phase="train"))) == 3


def test_llvip_like_jpeg_layout_with_A_dir_B_dir(tmp_path):
    for phase in ("train", "test"):
        for i in range(2):
            save(rand_rgb(i, 40, 50), tmp_path / "visible" / phase / f"{i:06d}.jpg")
            ir = np.repeat(rand_rgb(5 + i, 40, 50)[..., :1], 3, axis=2)
            save(ir, tmp_path / "infrared" / phase / f"{i:06d}.jpg")
    with pytest.raises(DataError, match="matches no dataset layout"):
        data.create_dataset(make_opt(tmp_path, phase="test"))  # default HE/IHC names
    ds = data.create_dataset(make_opt(tmp_path, phase="test", A_dir="visible", B_dir="infrared", output_nc=1))
    item = ds[0]
    assert item["A_paths"].endswith("visible/test/000000.jpg")
    assert item["B_paths"].endswith("infrared/test/000000.jpg")
    assert item["A"].shape == (3, 40, 50) and item["B"].shape == (1, 40, 50)
    # JPEG decoded by Pillow is the reference
    ref = np.asarray(Image.open(tmp_path / "visible" / "test" / "000000.jpg").convert("RGB"))
    np.testing.assert_array_equal(as_u8(item["A"]), ref)


def test_direction_swap_applies_channels_to_swapped_images(tmp_path):
    pairs = make_bci(tmp_path, names=("x.png",))
    a, b = pairs["x.png"]
    item = data.create_dataset(make_opt(tmp_path, direction="BtoA", input_nc=1, output_nc=3))[0]
    assert item["A_paths"].endswith("IHC/train/x.png") and item["B_paths"].endswith("HE/train/x.png")
    assert item["A"].shape == (1, 20, 24) and item["B"].shape == (3, 20, 24)
    np.testing.assert_array_equal(as_u8(item["B"]), a)
    luma = b.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Pillow's convert("L")
    np.testing.assert_allclose((item["A"][0].numpy() + 1) * 127.5, luma, atol=1e-3)


def test_max_dataset_size_caps_in_name_order(tmp_path):
    make_bci(tmp_path)
    ds = data.create_dataset(make_opt(tmp_path, max_dataset_size=2))
    assert len(ds) == 2 and ds[1]["A_paths"].endswith("00001_train_2+.png")
    with pytest.raises(OptionError, match="max_dataset_size"):
        data.create_dataset(make_opt(tmp_path, max_dataset_size=0))


# ---------------------------------------------------------------- bad data
def test_no_layout_names_dataroot_found_entries_and_layouts(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError) as e:
        data.create_dataset(make_opt(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "images/" in msg
    assert "(a)" in msg and "(b)" in msg and "(c)" in msg and "HE" in msg and "trainA" in msg


def test_missing_dataroot(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.create_dataset(make_opt(tmp_path / "nope"))


def test_several_layouts_is_ambiguous(tmp_path):
    make_bci(tmp_path)
    save(rand_rgb(0, 8, 8), tmp_path / "trainA" / "x.png")
    with pytest.raises(DataError, match="several dataset layouts") as e:
        data.create_dataset(make_opt(tmp_path))
    assert "folders" in str(e.value) and "phase_ab" in str(e.value)


def test_missing_partner_folder(tmp_path):
    save(rand_rgb(0), tmp_path / "HE" / "train" / "a.png")
    with pytest.raises(DataError, match="missing") as e:
        data.create_dataset(make_opt(tmp_path))
    assert str(tmp_path / "IHC" / "train") in str(e.value)


def test_empty_folder(tmp_path):
    save(rand_rgb(0), tmp_path / "trainA" / "a.png")
    (tmp_path / "trainB").mkdir()
    with pytest.raises(DataError, match="holds no image files") as e:
        data.create_dataset(make_opt(tmp_path))
    assert str(tmp_path / "trainB") in str(e.value)


def test_unpartnered_files_are_listed(tmp_path):
    make_bci(tmp_path)
    save(rand_rgb(0), tmp_path / "HE" / "train" / "only_in_he.png")
    save(rand_rgb(0), tmp_path / "IHC" / "train" / "only_in_ihc_1.png")
    save(rand_rgb(0), tmp_path / "IHC" / "train" / "only_in_ihc_2.png")
    with pytest.raises(DataError, match="no partner") as e:
        data.create_dataset(make_opt(tmp_path))
    msg = str(e.value)
    assert "only_in_he.png" in msg and "only_in_ihc_1.png" in msg and "only_in_ihc_2.png" in msg


def test_size_mismatch_names_both_files_and_sizes(tmp_path):
    save(rand_rgb(0, 20, 24), tmp_path / "HE" / "train" / "p.png")
    save(rand_rgb(0, 21, 24), tmp_path / "IHC" / "train" / "p.png")
    with pytest.raises(DataError) as e:
        data.create_dataset(make_opt(tmp_path))
    msg = str(e.value)
    assert "HE/train/p.png" in msg and "IHC/train/p.png" in msg and "24x20" in msg and "24x21" in msg


def test_combined_odd_width(tmp_path):
    save(rand_rgb(0, 8, 9), tmp_path / "train" / "ab.png")
    with pytest.raises(DataError, match="odd width") as e:
        data.create_dataset(make_opt(tmp_path))
    assert "ab.png" in str(e.value) and "9x8" in str(e.value)


def test_garbage_file_fails_at_construction(tmp_path):
    make_bci(tmp_path)
    (tmp_path / "IHC" / "train" / "00001_train_2+.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="unreadable") as e:
        data.create_dataset(make_opt(tmp_path))
    assert "IHC/train/00001_train_2+.png" in str(e.value)


def test_truncated_file_fails_when_loaded_and_in_validate(tmp_path):
    # a PNG with a valid header whose compressed pixel data is cut short
    rng = np.random.default_rng(0)
    make_bci(tmp_path)
    big = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    p = tmp_path / "HE" / "train" / "00002_train_3+.png"
    Image.fromarray(big).save(p)
    save(big, tmp_path / "IHC" / "train" / "00002_train_3+.png")
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    ds = data.create_dataset(make_opt(tmp_path))  # header is intact
    ds[0]
    with pytest.raises(DataError, match="cannot decode") as e:
        ds[2]
    assert str(p) in str(e.value)
    with pytest.raises(DataError, match="1 of 6") as e:
        validate(ds, progress=False)
    assert str(p) in str(e.value)


def test_validate_counts_every_file(tmp_path):
    make_bci(tmp_path)
    assert validate(data.create_dataset(make_opt(tmp_path)), progress=False) == 6


def test_bad_direction_and_channels(tmp_path):
    make_bci(tmp_path)
    with pytest.raises(OptionError, match="direction"):
        data.create_dataset(make_opt(tmp_path, direction="AB"))
    with pytest.raises(OptionError, match="input_nc"):
        data.create_dataset(make_opt(tmp_path, input_nc=4))



@pytest.mark.parametrize("dataset_mode", ["aligned", "single"])
def test_broken_link_named_like_an_image_is_an_error_not_skipped(tmp_path, dataset_mode):
    """A broken symbolic link 'x.png' (or a folder 'y.PNG') looks like an image: it must stop the run, named,
    instead of being dropped with the non-image entries (combined layout / single folder have no partner check)."""
    for n in ("a.png", "b.png"):
        save(np.zeros((8, 16, 3), np.uint8), tmp_path / "train" / n)
    (tmp_path / "train" / "c.png").symlink_to(tmp_path / "moved_away.png")
    (tmp_path / "train" / "d.PNG").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("not an image, ignored")
    root = tmp_path if dataset_mode == "aligned" else tmp_path / "train"
    with pytest.raises(DataError, match="not files") as e:
        data.create_dataset(make_opt(root, dataset_mode=dataset_mode))
    assert "c.png" in str(e.value) and "d.PNG" in str(e.value) and "notes.txt" not in str(e.value)
    (tmp_path / "train" / "c.png").unlink()
    (tmp_path / "train" / "d.PNG").rmdir()
    assert len(data.create_dataset(make_opt(root, dataset_mode=dataset_mode))) == 2
