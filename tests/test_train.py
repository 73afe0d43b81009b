"""train.py end to end on CPU: outputs, logs, checkpoints, exact resume, seeds, errors."""
from __future__ import annotations

import json

import torch

import train
from models.pix2pix_model import Pix2PixModel
from tests.conftest import train_args


def _weights(path):
    return torch.load(path, weights_only=True)


def test_pix2pix_run_writes_everything(sample_bci, tmp_path):
    ck = tmp_path / "ck"
    assert train.main(train_args(sample_bci, ck, extra=["--save_epoch_freq", "1"])) == 0
    exp = ck / "run"
    for f in ("latest_net_G.pth", "latest_net_D.pth", "1_net_G.pth", "1_net_D.pth", "latest_state.pth",
              "train_opt.txt", "train_opt.json", "loss_log.txt", "web/index.html"):
        assert (exp / f).is_file(), f
    log = (exp / "loss_log.txt").read_text()
    for name in ("G_GAN", "G_L1", "D_real", "D_fake"):
        assert name in log
    saved = json.loads((exp / "train_opt.json").read_text())
    assert saved["model"] == "pix2pix" and saved["ngf"] == 8 and saved["netG"] == "resnet_6blocks"
    assert "lambda_L1: 100.0" in (exp / "train_opt.txt").read_text().replace(" ", "").replace("lambda_L1:", "lambda_L1: ")
    assert list((exp / "web" / "images").glob("*.png"))
    assert not list(exp.glob(".*partial*")), "temporary files left behind"


def _run(root, ck, name, n, m, extra=()):
    return train.main(train_args(root, ck, name=name, extra=["--n_epochs", str(n), "--n_epochs_decay", str(m),
                                                              "--max_dataset_size", "4", "--batch_size", "2",
                                                              "--norm", "batch", *extra]))


def test_resume_equals_straight_run(sample_bci, tmp_path, caplog):
    ck = tmp_path / "ck"
    caplog.set_level("INFO")
    assert _run(sample_bci, ck, "straight", 2, 2) == 0
    straight_lrs = [r.getMessage() for r in caplog.records if "learning rate" in r.getMessage()]
    caplog.clear()
    assert _run(sample_bci, ck, "resumed", 2, 0) == 0
    assert _run(sample_bci, ck, "resumed", 2, 2, ["--continue_train"]) == 0
    resumed_lrs = [r.getMessage() for r in caplog.records if "learning rate" in r.getMessage()]
    # epochs 1-2 at lr, 3 at lr*2/3, 4 at lr/3: the schedule seen after the resume matches the straight run's
    assert resumed_lrs[-2:] == straight_lrs[-2:]
    assert straight_lrs[-3].endswith("0.0002000 -> 0.0001333")
    for net in ("G", "D"):
        a = _weights(ck / "straight" / f"latest_net_{net}.pth")
        b = _weights(ck / "resumed" / f"latest_net_{net}.pth")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{net} {k}")
    sa = torch.load(ck / "straight" / "latest_state.pth", weights_only=True)
    sb = torch.load(ck / "resumed" / "latest_state.pth", weights_only=True)
    assert sa["epoch"] == sb["epoch"] == 4 and sa["total_iters"] == sb["total_iters"] == 16


def test_seed_repeatable_and_different_seeds_differ(sample_bci, tmp_path):
    ck = tmp_path / "ck"
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert _run(sample_bci, ck, name, 1, 0, ["--seed", seed]) == 0
    a, b, c = (_weights(ck / n / "latest_net_G.pth") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_non_finite_loss_stops_without_checkpoint(sample_bci, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    orig = Pix2PixModel.compute_G_loss

    def poisoned(self):
        loss = orig(self)
        calls["n"] += 1
        if calls["n"] == 2:
            self.loss_G_L1 = self.loss_G_L1 * float("nan")
            return self.loss_G_L1
        return loss

    monkeypatch.setattr(Pix2PixModel, "compute_G_loss", poisoned)
    ck = tmp_path / "ck"
    rc = _run(sample_bci, ck, "nan", 1, 0, ["--batch_size", "1"])
    err = capsys.readouterr().err
    assert rc == 3
    assert "G_L1" in err and "iteration 2" in err and "epoch 1" in err
    assert not list((ck / "nan").glob("*.pth"))


def test_missing_gpu_is_a_clear_error(sample_bci, tmp_path, capsys):
    rc = train.main(train_args(sample_bci, tmp_path, extra=["--gpu_ids", "7"]))
    assert rc == 2
    assert "--gpu_ids" in capsys.readouterr().err


def test_unknown_model_lists_valid_names(sample_bci, tmp_path, capsys):
    rc = train.main(train_args(sample_bci, tmp_path, model="pix3pix"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "pix3pix" in err and "pyramidpix2pix" in err and "cycle_gan" in err


def test_bad_choice_is_a_clear_error(sample_bci, tmp_path, capsys):
    assert train.main(train_args(sample_bci, tmp_path, extra=["--norm", "group"])) == 2
    assert "--norm" in capsys.readouterr().err
