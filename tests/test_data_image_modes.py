"""Every Pillow image mode becomes the requested 1 or 3 channels in [-1, 1] (files written here, read back)."""
import argparse
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

import data
from data.image_modes import load_array
from util.errors import DataError


def rng_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def single_opt(root, nc=3):
    return argparse.Namespace(dataroot=str(root), phase="test", direction="AtoB", input_nc=nc, output_nc=nc,
                              preprocess="none", load_size=8, crop_size=8, no_flip=True, serial_batches=True,
                              batch_size=1, num_threads=0, max_dataset_size=sys.maxsize, isTrain=False, seed=None,
                              dataset_mode="single", A_dir="HE", B_dir="IHC", gpu_ids=[])


def test_mode_L_and_RGB(tmp_path):
    g, c = rng_u8((5, 7)), rng_u8((5, 7, 3))
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(c).save(tmp_path / "c.bmp")
    np.testing.assert_allclose(load_array(tmp_path / "g.png", 1)[..., 0], g / 255.0, atol=1e-7)
    np.testing.assert_allclose(load_array(tmp_path / "c.bmp", 3), c / 255.0, atol=1e-7)


def test_mode_1_bilevel(tmp_path):
    bits = rng_u8((6, 9)) > 127
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    np.testing.assert_array_equal(load_array(tmp_path / "b.png", 1)[..., 0], bits.astype(np.float32))


def test_mode_P_goes_through_rgb(tmp_path):
    im = Image.fromarray(rng_u8((6, 9, 3))).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    ref = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")) / 255.0
    np.testing.assert_allclose(load_array(tmp_path / "p.png", 3), ref, atol=1e-7)


def test_mode_RGBA_composited_on_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (200, 100, 0, 255)   # opaque: colour kept
    rgba[0, 1] = (200, 100, 0, 0)     # transparent: white
    rgba[0, 2] = (200, 100, 0, 51)    # 20 % alpha
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_array(tmp_path / "a.png", 3)[0]
    np.testing.assert_allclose(out[0], np.array([200, 100, 0]) / 255, atol=1e-6)
    np.testing.assert_allclose(out[1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(out[2], 0.2 * np.array([200, 100, 0]) / 255 + 0.8, atol=1e-6)


def test_mode_LA_composited_on_white(tmp_path):
    la = np.array([[[0, 0], [0, 255], [100, 102]]], np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = load_array(tmp_path / "la.png", 1)[0, :, 0]
    np.testing.assert_allclose(out, [1.0, 0.0, (100 / 255) * 0.4 + 0.6], atol=1e-6)


def test_mode_CMYK_converted_by_pillow(tmp_path):
    Image.fromarray(rng_u8((5, 6, 4)), "CMYK").save(tmp_path / "k.tif")
    ref = np.asarray(Image.open(tmp_path / "k.tif").convert("RGB")) / 255.0
    np.testing.assert_allclose(load_array(tmp_path / "k.tif", 3), ref, atol=1e-7)


@pytest.mark.parametrize("fmt, mode", [("png", "I;16"), ("tif", "I;16B")])
def test_16bit_ramp_maps_monotonically_to_full_range(tmp_path, fmt, mode):
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(1, 256)  # 0, 257, ..., 65535
    path = tmp_path / f"r.{fmt}"
    if mode == "I;16":
        Image.fromarray(ramp).save(path)
    else:
        Image.frombytes("I;16B", (256, 1), ramp.astype(">u2").tobytes()).save(path)
    assert Image.open(path).mode == mode
    ds = data.create_dataset(single_opt(tmp_path, nc=1))
    a = ds[0]["A"][0, 0].numpy()
    assert a[0] == -1.0 and a[-1] == 1.0
    assert np.all(np.diff(a) > 0)  # strictly increasing: nothing clipped
    np.testing.assert_allclose(a, np.arange(256) / 255 * 2 - 1, atol=1e-6)  # value / 257 on the 8-bit scale
    rgb = data.create_dataset(single_opt(tmp_path, nc=3))[0]["A"]
    assert rgb.shape == (3, 1, 256) and np.array_equal(rgb[0].numpy(), rgb[2].numpy())


def test_mode_I_32bit_with_16bit_values(tmp_path):
    vals = np.array([[0, 1000, 65535]], np.int32)
    Image.fromarray(vals, "I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(load_array(tmp_path / "i.tif", 1)[0, :, 0], vals[0] / 65535, atol=1e-7)
    Image.fromarray(np.array([[0, 70000]], np.int32), "I").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match="big.tif.*0..70000"):
        load_array(tmp_path / "big.tif", 1)


def test_mode_F(tmp_path):
    vals = np.array([[0.0, 0.25, 1.0]], np.float32)
    Image.fromarray(vals, "F").save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    np.testing.assert_allclose(load_array(tmp_path / "f.tif", 3)[0], np.repeat(vals[0][:, None], 3, 1))
    Image.fromarray(np.array([[0.0, 255.0]], np.float32), "F").save(tmp_path / "f255.tif")
    with pytest.raises(DataError, match=r"f255.tif.*expected intensities in \[0, 1\]"):
        load_array(tmp_path / "f255.tif", 1)
    Image.fromarray(np.array([[0.0, np.nan]], np.float32), "F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match="nan.tif.*NaN"):
        load_array(tmp_path / "nan.tif", 1)


def test_rgb_to_one_channel_matches_pillow_luma(tmp_path):
    c = rng_u8((9, 11, 3), seed=3)
    Image.fromarray(c).save(tmp_path / "c.png")
    ref = np.asarray(Image.fromarray(c).convert("L"), dtype=np.float64)  # Pillow rounds to uint8
    out = load_array(tmp_path / "c.png", 1)[..., 0] * 255
    assert np.abs(out - ref).max() <= 0.5 + 1e-3


def test_16bit_rgb_tiff_is_rescaled_not_clipped(tmp_path):
    a = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", a, photometric="rgb")
    out = load_array(tmp_path / "rgb16.tif", 3)
    np.testing.assert_allclose(out, (a >> 8) / 255.0, atol=1e-7)  # Pillow keeps the high byte
    assert out.max() < 1.0  # 51000 is not clipped to white


def test_unidentifiable_tiff_names_file(tmp_path):
    tifffile.imwrite(tmp_path / "f64.tif", np.ones((3, 4), np.float64))
    with pytest.raises(DataError, match="f64.tif"):
        load_array(tmp_path / "f64.tif", 1)


def test_bad_channel_count(tmp_path):
    Image.fromarray(rng_u8((2, 2))).save(tmp_path / "g.png")
    with pytest.raises(DataError, match="must be 1 or 3"):
        load_array(tmp_path / "g.png", 2)
