"""test.py: every image by default, --num_test, native resolution with stride padding, lossless identical outputs,
options rebuilt from the training run, single-folder staining, train-mode inference."""
from __future__ import annotations

import hashlib
import html.parser
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import test as test_script
import train
from tests.conftest import train_args


@pytest.fixture(scope="module")
def trained(sample_bci, tmp_path_factory):
    ck = tmp_path_factory.mktemp("ck")
    assert train.main(train_args(sample_bci, ck, name="p2p", extra=["--max_dataset_size", "2", "--norm", "batch"])) == 0
    return ck


def _test_args(root, ck, results, extra=()):
    return ["--dataroot", str(root), "--checkpoints_dir", str(ck), "--name", "p2p", "--results_dir", str(results),
            "--num_threads", "0", *extra]


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def test_all_images_written_with_page(sample_bci, trained, tmp_path, caplog):
    caplog.set_level("INFO")
    assert test_script.main(_test_args(sample_bci, trained, tmp_path / "r")) == 0
    out = tmp_path / "r" / "p2p" / "test_latest"
    stems = sorted(p.stem for p in (sample_bci / "HE" / "test").glob("*.png"))
    assert len(stems) == 3
    for s in stems:
        for label in ("real_A", "fake_B", "real_B"):
            assert (out / "images" / f"{s}_{label}.png").is_file()
    assert any("3 of 3" in r.getMessage() for r in caplog.records)
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) == 9
    html.parser.HTMLParser().feed(page)
    # lossless: the saved real images are the input files, pixel for pixel
    for s in stems:
        a = np.asarray(Image.open(sample_bci / "HE" / "test" / f"{s}.png").convert("RGB"))
        b = np.asarray(Image.open(out / "images" / f"{s}_real_A.png"))
        assert np.array_equal(a, b)


def test_num_test_caps_and_says_so(sample_bci, trained, tmp_path, caplog):
    caplog.set_level("INFO")
    assert test_script.main(_test_args(sample_bci, trained, tmp_path / "r", ["--num_test", "2"])) == 0
    assert len(list((tmp_path / "r" / "p2p" / "test_latest" / "images").glob("*_fake_B.png"))) == 2
    assert any("2 of 3" in r.getMessage() for r in caplog.records)


def test_native_odd_size_is_padded_not_resampled(sample_bci, trained, tmp_path):
    root = tmp_path / "odd"
    for d in ("HE", "IHC"):
        (root / d / "test").mkdir(parents=True)
        src = Image.open(sample_bci / d / "test" / sorted(p.name for p in (sample_bci / d / "test").iterdir())[0])
        src.crop((0, 0, 61, 45)).save(root / d / "test" / "00001_test_2+.png")
    assert test_script.main(_test_args(root, trained, tmp_path / "r")) == 0
    img_dir = tmp_path / "r" / "p2p" / "test_latest" / "images"
    fake = Image.open(img_dir / "00001_test_2+_fake_B.png")
    assert fake.size == (61, 45)
    real = np.asarray(Image.open(img_dir / "00001_test_2+_real_A.png"))
    assert np.array_equal(real, np.asarray(Image.open(root / "HE" / "test" / "00001_test_2+.png").convert("RGB")))


def test_repeated_runs_identical(sample_bci, trained, tmp_path):
    for r in ("r1", "r2"):
        assert test_script.main(_test_args(sample_bci, trained, tmp_path / r)) == 0
    a = _digest(tmp_path / "r1" / "p2p" / "test_latest" / "images")
    b = _digest(tmp_path / "r2" / "p2p" / "test_latest" / "images")
    assert a == b and len(a) == 9


def test_contradicting_training_options_is_an_error(sample_bci, trained, tmp_path, capsys):
    assert test_script.main(_test_args(sample_bci, trained, tmp_path / "r", ["--netG", "unet_128"])) == 2
    err = capsys.readouterr().err
    assert "--netG unet_128" in err and "resnet_6blocks" in err
    assert not (tmp_path / "r").exists()


def test_missing_run_is_an_error(sample_bci, tmp_path, capsys):
    rc = test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(tmp_path), "--name", "nope"])
    assert rc == 2 and "train_opt.json" in capsys.readouterr().err


def test_single_folder_staining(sample_bci, trained, tmp_path):
    he = tmp_path / "he_only"
    shutil.copytree(sample_bci / "HE" / "test", he)
    args = ["--dataroot", str(he), "--checkpoints_dir", str(trained), "--name", "p2p", "--model", "test",
            "--results_dir", str(tmp_path / "r"), "--num_threads", "0"]
    assert test_script.main(args) == 0
    out = tmp_path / "r" / "p2p" / "test_latest" / "images"
    assert len(list(out.glob("*_fake_B.png"))) == 3 and not list(out.glob("*_real_B.png"))


def test_train_mode_inference_differs_from_eval(sample_bci, trained, tmp_path):
    assert test_script.main(_test_args(sample_bci, trained, tmp_path / "e", ["--num_test", "1"])) == 0
    assert test_script.main(_test_args(sample_bci, trained, tmp_path / "t", ["--num_test", "1",
                                                                                "--train_mode_inference"])) == 0
    e = _digest(tmp_path / "e" / "p2p" / "test_latest" / "images")
    t = _digest(tmp_path / "t" / "p2p" / "test_latest" / "images")
    fake = [k for k in e if k.endswith("fake_B.png")][0]
    assert e[fake] != t[fake]  # batch statistics instead of running averages


def test_tta_identity_keeps_size(sample_bci, trained, tmp_path):
    assert test_script.main(_test_args(sample_bci, trained, tmp_path / "r", ["--num_test", "1", "--tta",
                                                                               "--tta_modes", "id,flipH"])) == 0
    fakes = list((tmp_path / "r" / "p2p" / "test_latest" / "images").glob("*_fake_B.png"))
    assert len(fakes) == 1 and Image.open(fakes[0]).size == (64, 64)
