"""scripts/table1.py: row commands, the smoke run end to end (two rows), the written tables, --reuse, errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from scripts import table1
from util.errors import OptionError
from util.image_io import read_rgb_uint8


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _args(*argv):
    return table1.build_parser().parse_args(list(argv))


def test_methods_and_row_commands(tmp_path):
    assert list(table1.METHODS) == ["cyclegan", "pix2pix_unet", "pix2pix_resnet", "pix2pixhd", "pyramidpix2pix",
                                    "cut", "fastcut", "asp"]
    with pytest.raises(OptionError, match="nope"):
        table1.select_methods("cyclegan,nope")
    args = _args("--dataroot", "d")
    train, test, ev = table1.row_commands(table1.METHODS["cyclegan"], args, Path("d"), tmp_path)
    s = " ".join(train)
    assert "--model cycle_gan" in s and "--preprocess crop --crop_size 512" in s  # the paper's 512 crops
    assert "--model cycle_gan" in " ".join(test) and "--results_dir" in test
    assert ev[:2] == ["--result_path", str(tmp_path / "results" / "table1_cyclegan")] and "--no_fid" not in ev
    hd, _, _ = table1.row_commands(table1.METHODS["pix2pixhd"], _args("--no_vgg_loss"), Path("d"), tmp_path)
    assert "--no_vgg_loss" in hd
    unet, _, _ = table1.row_commands(table1.METHODS["pix2pix_unet"], args, Path("d"), tmp_path)
    assert "--netG unet_256" in " ".join(unet)
    # the published figures, as printed in the BCI paper's Table 1 (Liu et al., CVPR-W 2022, arXiv:2204.11425)
    published = {"cyclegan": (16.203, 0.373), "pix2pix_unet": (18.654, 0.419), "pix2pix_resnet": (19.328, 0.44),
                 "pix2pixhd": (19.634, 0.471), "pyramidpix2pix": (21.16, 0.477), "cut": None, "fastcut": None,
                 "asp": None}
    assert {k: m.paper for k, m in table1.METHODS.items()} == published
    assert "arXiv:2204.11425" in table1.PAPER_SOURCE and "Table 1" in table1.PAPER_SOURCE


def test_smoke_two_rows_end_to_end_then_reuse(tmp_path, monkeypatch, capsys):
    out = tmp_path / "t1"
    rc = table1.main(["--smoke", "--out_dir", str(out), "--methods", "cyclegan,pix2pixhd", "--max_dataset_size", "2",
                      "--num_test", "2"])
    assert rc == 0
    with open(out / "table1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == ["cyclegan", "pix2pixhd"]
    # published reference cells, printed as in the paper (no invented trailing digits)
    assert [r["BCI paper Table 1 (PSNR dB / SSIM)"] for r in rows] == ["16.203 / 0.373", "19.634 / 0.471"]
    # Pearson r over 2 images is +-1 whatever the images: left empty, not reported as a perfect correlation
    assert all(r["IOD r"] == "" for r in rows)
    md = (out / "table1.md").read_text()
    assert "| cycleGAN |" in md and "| pix2pixHD |" in md and "Smoke run" in md
    assert "arXiv:2204.11425" in md
    # PSNR / SSIM recomputed from the written images with scikit-image (the BCI protocol)
    for r in rows:
        images = out / "results" / f"table1_{r['key']}" / "test_latest" / "images"
        fakes = sorted(images.glob("*_fake_B.png"))
        assert len(fakes) == 2
        psnr, ssim = [], []
        for fake in fakes:
            real = read_rgb_uint8(fake.with_name(fake.name.replace("_fake_B", "_real_B")))
            fk = read_rgb_uint8(fake)
            psnr.append(peak_signal_noise_ratio(real, fk, data_range=255))
            ssim.append(structural_similarity(real, fk, channel_axis=-1, data_range=255))
        assert float(r["PSNR (dB)"]) == pytest.approx(np.mean(psnr), abs=0.006)
        assert float(r["SSIM"]) == pytest.approx(np.mean(ssim), abs=6e-5)
        assert r["n"] == "2"
        metrics = json.loads((images.parent / "metrics.json").read_text())
        assert metrics["fid_kid"]["status"] == "skipped"
    # --reuse reads metrics.json instead of training again
    import train

    def no_training(argv=None):
        raise AssertionError("train.main must not run with --reuse")

    monkeypatch.setattr(train, "main", no_training)
    (out / "table1.csv").unlink()
    assert table1.main(["--smoke", "--out_dir", str(out), "--methods", "cyclegan,pix2pixhd", "--reuse"]) == 0
    with open(out / "table1.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [r["PSNR (dB)"] for r in again] == [r["PSNR (dB)"] for r in rows]


def test_iod_r_kept_from_three_images():
    m = {"psnr": 20.0, "ssim": 0.5, "iod_pearson_r": 0.25, "n_images": 3}
    _, rows = table1.table_rows([(table1.METHODS["cyclegan"], m)])
    assert rows[0][5] == "0.250" and rows[0][10] == "16.203 / 0.373"
    _, rows = table1.table_rows([(table1.METHODS["cyclegan"], dict(m, n_images=2, iod_pearson_r=1.0))])
    assert rows[0][5] == ""


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    assert table1.main(["--dataroot", str(tmp_path / "missing"), "--out_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dataroot" in err[0]
    assert table1.main(["--out_dir", str(tmp_path / "o")]) == 2  # no --dataroot without --smoke
    assert "--dataroot is required" in capsys.readouterr().err
    assert table1.main(["--smoke", "--out_dir", str(tmp_path / "o"), "--methods", "foo"]) == 2


def test_failed_step_names_the_row(tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.setattr(train, "main", lambda argv=None: 3)
    assert table1.main(["--smoke", "--out_dir", str(tmp_path / "o"), "--methods", "pyramidpix2pix"]) == 2
    err = capsys.readouterr().err
    assert "pyramidpix2pix" in err and "train.py exited with status 3" in err
    assert not (tmp_path / "o" / "table1.md").exists()  # no table from a failed run
