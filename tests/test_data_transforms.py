"""Preprocessing modes, shared random parameters for A and B, train/test behaviour, crop errors."""
import argparse
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data.transforms import TransformParams, apply_transform, get_params, resized_size
from util.errors import DataError, OptionError

W, H = 61, 75  # odd, non-square source size


def make_opt(root, **kw):
    base = dict(dataroot=str(root), phase="train", direction="AtoB", input_nc=3, output_nc=3, preprocess="crop",
                load_size=40, crop_size=32, no_flip=False, serial_batches=True, batch_size=1, num_threads=0,
                max_dataset_size=sys.maxsize, isTrain=True, seed=None, dataset_mode="aligned", A_dir="HE",
                B_dir="IHC", gpu_ids=[])
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture()
def inverted_pair(tmp_path):
    """B is the photographic negative of A, so any shared geometric transform keeps B == -A in [-1, 1]."""
    a = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    for sub, arr in (("HE", a), ("IHC", 255 - a)):
        (tmp_path / sub / "train").mkdir(parents=True)
        Image.fromarray(arr).save(tmp_path / sub / "train" / "p.png")
    return tmp_path, a


@pytest.mark.parametrize("mode, expected_hw", [
    ("resize_and_crop", (32, 32)),
    ("crop", (32, 32)),
    ("scale_width", (int(40 * H / W), 40)),  # width load_size, height int(40 * 75 / 61) = 49
    ("scale_width_and_crop", (32, 32)),
    ("none", (H, W)),
])
def test_output_size_of_each_mode(inverted_pair, mode, expected_hw):
    root, _ = inverted_pair
    item = data.create_dataset(make_opt(root, preprocess=mode))[0]
    assert tuple(item["A"].shape) == (3, *expected_hw) and tuple(item["B"].shape) == (3, *expected_hw)
    assert item["A"].dtype == torch.float32
    assert float(item["A"].min()) >= -1.0 and float(item["A"].max()) <= 1.0


def test_scale_width_keeps_crop_size_as_minimum_height():
    # reference code: h = max(load_size * oh / ow, crop_size)
    assert resized_size("scale_width", 200, 20, 100, 64) == (64, 100)
    assert resized_size("scale_width", 100, 80, 100, 64) == (80, 100)  # already at width, tall enough: unchanged


@pytest.mark.parametrize("mode", ["crop", "resize_and_crop", "scale_width_and_crop"])
def test_a_and_b_share_crop_and_flip(inverted_pair, mode):
    root, a = inverted_pair
    ds = data.create_dataset(make_opt(root, preprocess=mode))
    torch.manual_seed(0)
    crops, flips = set(), set()
    for _ in range(30):
        item = ds[0]
        # 8-bit resizing rounds: round(255 - x) and 255 - round(x) may differ by one grey level (2/255 here)
        torch.testing.assert_close(item["B"], -item["A"], atol=1e-5 if mode == "crop" else 2.01 / 255, rtol=0)
        crops.add(tuple(item["A"][0, 0, :4].tolist()))
    assert len(crops) > 5  # the parameters really vary between draws
    if mode == "crop":  # exact reference: the output is numpy's slice of `a` at the drawn window, maybe mirrored
        opt = make_opt(root)
        for seed in range(30):
            torch.manual_seed(seed)
            p = get_params(opt, (W, H))
            torch.manual_seed(seed)
            out = np.round((ds[0]["A"].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
            top, left = p.crop
            win = a[top:top + 32, left:left + 32]
            np.testing.assert_array_equal(out, win[:, ::-1] if p.flip else win)
            flips.add(p.flip)
        assert flips == {True, False}

def test_test_time_is_center_crop_without_flip(inverted_pair):
    root, a = inverted_pair
    ds = data.create_dataset(make_opt(root, isTrain=False, no_flip=False))
    top, left = (H - 32) // 2, (W - 32) // 2  # 21, 14
    for _ in range(5):
        out = np.round((ds[0]["A"].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        np.testing.assert_array_equal(out, a[top:top + 32, left:left + 32])


def test_no_flip_in_training():
    opt = make_opt(".", preprocess="none", no_flip=True)
    assert not any(get_params(opt, (W, H)).flip for _ in range(50))
    opt.no_flip = False
    torch.manual_seed(0)
    assert {get_params(opt, (W, H)).flip for _ in range(50)} == {True, False}


def test_crop_position_covers_all_offsets():
    opt = make_opt(".", crop_size=30)
    torch.manual_seed(0)
    tops = {get_params(opt, (32, 33)).crop[0] for _ in range(200)}
    assert tops == {0, 1, 2, 3}  # uniform over all valid offsets, both borders included


def test_resize_matches_pillow_bicubic():
    a = np.asarray(Image.open("samples/ihc.png").convert("RGB"))[:H, :W]
    ref = np.asarray(Image.fromarray(a).resize((40, 40), Image.BICUBIC)).astype(np.float64) / 127.5 - 1
    params = TransformParams(size=(40, 40), crop=None, crop_size=0, flip=False)
    for t in (torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1), torch.from_numpy(a.copy()).permute(2, 0, 1)):
        out = apply_transform(t, params)
        assert out.dtype == torch.float32 and out.shape == (3, 40, 40)
        diff = np.abs(out.permute(1, 2, 0).numpy() - ref) * 127.5
        assert diff.max() < 1.5 and diff.mean() < 0.5  # grey levels of 255


def test_crop_larger_than_image_names_file_sizes_and_option(inverted_pair):
    root, _ = inverted_pair
    ds = data.create_dataset(make_opt(root, crop_size=64))
    with pytest.raises(DataError) as e:
        ds[0]
    msg = str(e.value)
    assert "HE/train/p.png" in msg and "61x75" in msg and "--crop_size 64" in msg


def test_option_errors(inverted_pair):
    root, _ = inverted_pair
    with pytest.raises(OptionError, match="load_size 20 is smaller than --crop_size 32"):
        data.create_dataset(make_opt(root, preprocess="resize_and_crop", load_size=20))
    with pytest.raises(OptionError, match="not one of"):
        data.create_dataset(make_opt(root, preprocess="zoom"))
