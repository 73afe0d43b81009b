"""scripts/ablation.py: trains, tests and evaluates each pattern and writes the table as markdown and CSV."""
import csv
import json

import pytest

from scripts import ablation


def test_smoke_two_patterns(tmp_path, sample_bci):
    out = tmp_path / "table"
    rc = ablation.main(["--dataroot", str(sample_bci), "--smoke", "--patterns", "L1,L1_L2_L3",
                        "--checkpoints_dir", str(tmp_path / "ck"), "--results_dir", str(tmp_path / "res"),
                        "--out", str(out), "--", "--max_dataset_size", "2", "--n_epochs_decay", "0"])
    assert rc == 0
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["pattern"] for r in rows] == ["L1", "L1_L2_L3"]
    assert [r["method"] for r in rows] == ["pix2pix", "pix2pix+S1+S2"]
    for r in rows:
        assert int(r["n_images"]) == 3 and 0 < float(r["psnr"]) < 60 and -1 <= float(r["ssim"]) <= 1
    md = (out / "ablation.md").read_text()
    assert md.count("\n") == 4 and "pix2pix+S1+S2" in md
    saved = json.loads((tmp_path / "ck" / "ablation_L1_L2_L3" / "train_opt.json").read_text())
    assert saved["pattern"] == "L1_L2_L3" and saved["model"] == "pyramidpix2pix"


def test_bad_pattern_fails_before_training(tmp_path, sample_bci, capsys):
    rc = ablation.main(["--dataroot", str(sample_bci), "--patterns", "L1,L7", "--checkpoints_dir", str(tmp_path)])
    assert rc == 2 and "L7" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_tta_columns_keep_plain_results(tmp_path, sample_bci):
    """--tta adds psnr_tta/ssim_tta from a second test run in <results_dir>/tta; the plain results stay intact."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from util.image_io import read_rgb_uint8

    out, res = tmp_path / "table", tmp_path / "res"
    rc = ablation.main(["--dataroot", str(sample_bci), "--smoke", "--patterns", "L1", "--tta",
                        "--checkpoints_dir", str(tmp_path / "ck"), "--results_dir", str(res), "--out", str(out),
                        "--", "--max_dataset_size", "2", "--n_epochs_decay", "0"])
    assert rc == 0
    (row,) = list(csv.DictReader((out / "ablation.csv").open()))
    assert list(row)[-2:] == ["psnr_tta", "ssim_tta"]
    for folder, psnr_key, ssim_key in ((res, "psnr", "ssim"), (res / "tta", "psnr_tta", "ssim_tta")):
        fakes = sorted((folder / "ablation_L1" / "test_latest" / "images").glob("*_fake_B.png"))
        assert len(fakes) == 3
        pairs = [(read_rgb_uint8(f.with_name(f.name.replace("_fake_B", "_real_B"))), read_rgb_uint8(f)) for f in fakes]
        psnr = np.mean([peak_signal_noise_ratio(r, f, data_range=255) for r, f in pairs])
        ssim = np.mean([structural_similarity(r, f, channel_axis=-1, data_range=255) for r, f in pairs])
        assert float(row[psnr_key]) == pytest.approx(psnr, abs=1e-4)
        assert float(row[ssim_key]) == pytest.approx(ssim, abs=1e-5)
    plain = read_rgb_uint8(sorted((res / "ablation_L1" / "test_latest" / "images").glob("*_fake_B.png"))[0])
    tta = read_rgb_uint8(sorted((res / "tta" / "ablation_L1" / "test_latest" / "images").glob("*_fake_B.png"))[0])
    assert not np.array_equal(plain, tta)  # a resnet generator is not equivariant: TTA changed the output
    assert "psnr_tta" in (out / "ablation.md").read_text()


def test_bad_tta_modes_fail_before_training(tmp_path, sample_bci, capsys):
    rc = ablation.main(["--dataroot", str(sample_bci), "--patterns", "L1", "--tta", "--tta_modes", "rot45",
                        "--checkpoints_dir", str(tmp_path)])
    assert rc == 2 and "rot45" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_everything_under_out_dir(tmp_path, sample_bci, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "abl"
    rc = ablation.main(["--dataroot", str(sample_bci), "--smoke", "--patterns", "L1", "--out_dir", str(out), "--no_fid",
                        "--", "--max_dataset_size", "2", "--n_epochs_decay", "0"])
    assert rc == 0
    assert not any(cwd.iterdir())  # no ./checkpoints or ./results in the working folder
    assert (out / "checkpoints" / "ablation_L1" / "latest_net_G.pth").is_file()
    assert (out / "results" / "ablation_L1" / "test_latest" / "metrics.json").is_file()
    assert (out / "ablation.csv").is_file() and (out / "ablation.md").is_file()
