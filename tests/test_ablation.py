"""scripts/ablation.py: trains, tests and evaluates each pattern and writes the table as markdown and CSV."""
import csv
import json

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
