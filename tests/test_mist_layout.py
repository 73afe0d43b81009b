"""The MIST stain-folder layout (``MIST/HER2/TrainValAB/trainA|trainB|valA|valB``): detection, errors naming the
missing folder, mixed layouts refused, and test.py falling back to the val split (and saying so)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import data
import test as test_script
import train
from data.layouts import MIST, default_test_phase, detect_layout
from tests.conftest import train_args
from tests.test_data_layouts import make_opt
from util.errors import DataError


def _make_mist(root, n=2, size=64, splits=("train", "val")):
    stain = root / "MIST" / "HER2"
    rng = np.random.default_rng(0)
    for split in splits:
        for side in "AB":
            folder = stain / "TrainValAB" / f"{split}{side}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"1M0{i}_{i}.jpg")
    return stain


def test_mist_layout_detected_and_paired(tmp_path):
    stain = _make_mist(tmp_path)
    layout = detect_layout(stain, "train")
    assert layout.kind == MIST and layout.A_folder == stain / "TrainValAB" / "trainA"
    ds = data.create_dataset(make_opt(stain, phase="val"))
    assert len(ds) == 2
    assert ds[0]["A_paths"].endswith("valA/1M00_0.jpg") and ds[0]["B_paths"].endswith("valB/1M00_0.jpg")


def test_missing_split_folder_is_named(tmp_path):
    stain = _make_mist(tmp_path)
    shutil.rmtree(stain / "TrainValAB" / "valB")
    with pytest.raises(DataError, match=r"TrainValAB/valB' is missing"):
        detect_layout(stain, "val")
    with pytest.raises(DataError, match=r"TrainValAB/testA' is missing"):
        detect_layout(stain, "test")


def test_mixed_layouts_are_refused(tmp_path):
    stain = _make_mist(tmp_path)
    (stain / "HE" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="several dataset layouts"):
        detect_layout(stain, "train")


def test_default_test_phase(tmp_path, sample_bci):
    stain = _make_mist(tmp_path)
    assert default_test_phase(stain) == "val"
    assert default_test_phase(stain, "train") == "train"
    assert default_test_phase(sample_bci) == "test"  # BCI has a test split
    (stain / "TrainValAB" / "testA").mkdir()
    assert default_test_phase(stain) == "test"


def test_same_commands_train_and_test_on_mist(tmp_path, caplog):
    stain = _make_mist(tmp_path)
    ck, res = tmp_path / "ck", tmp_path / "res"
    assert train.main(train_args(stain, ck, name="mist", model="asp", extra=["--n_layers_D", "3"])) == 0
    caplog.set_level("INFO")
    assert test_script.main(["--dataroot", str(stain), "--checkpoints_dir", str(ck), "--name", "mist",
                             "--results_dir", str(res), "--num_threads", "0", "--gpu_ids", "-1"]) == 0
    assert any("without a test split: testing on its 'val' split" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in (res / "mist" / "val_latest" / "images").glob("*_fake_B.png")) == \
        ["1M00_0_fake_B.png", "1M01_1_fake_B.png"]
