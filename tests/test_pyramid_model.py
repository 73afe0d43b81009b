"""pyramidpix2pix: one real training iteration per pattern on derived real-tissue pairs, logged loss names, the
objective wired as eq. 5, and the too-small-image error before training."""
from __future__ import annotations

import pytest
import torch

import options
import train
from models import create_model
from models.pyramid import pyramid_l1
from tests.conftest import train_args


@pytest.mark.parametrize("pattern,names", [
    ("L1", ["G_L1"]),
    ("L1_L2", ["G_L1", "G_L2"]),
    ("L2_L1_L3", ["G_L1", "G_L2", "G_L3"]),
    ("L1_L2_L3_L4", ["G_L1", "G_L2", "G_L3", "G_L4"]),
])
def test_one_iteration_per_pattern(sample_bci, tmp_path, pattern, names):
    args = train_args(sample_bci, tmp_path, model="pyramidpix2pix",
                      extra=["--pattern", pattern, "--max_dataset_size", "2", "--batch_size", "2", "--print_freq", "2"])
    assert train.main(args) == 0
    log = (tmp_path / "run" / "loss_log.txt").read_text().splitlines()[-1]
    logged = [tok.rstrip(":") for tok in log.split() if tok.startswith(("G_", "D_"))]
    assert logged == ["G_GAN", *names, "D_real", "D_fake"]


def test_generator_objective_is_eq5(sample_bci):
    opt = options.parse_train(["--dataroot", str(sample_bci), "--model", "pyramidpix2pix", "--ngf", "4", "--ndf", "4",
                               "--pattern", "L1_L3", "--lambda_L1", "7", "--weight_L3", "3", "--netG", "resnet_6blocks"])
    model = create_model(opt)
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    model.set_input({"A": a, "B": b, "A_paths": ["x", "y"], "B_paths": ["x", "y"]})
    model.forward()
    total = model.compute_G_loss()
    _, (s1, s3) = pyramid_l1(model.fake_B.detach(), b, [1, 3])
    torch.testing.assert_close(model.loss_G_L1.detach(), 7 * s1)
    torch.testing.assert_close(model.loss_G_L3.detach(), 3 * s3)
    torch.testing.assert_close(total.detach(), (model.loss_G_GAN + 7 * s1 + 3 * s3).detach())
    assert not hasattr(model, "loss_G_L2")


def test_too_small_images_fail_before_training(bci_copy, tmp_path, capsys):
    from PIL import Image

    for p in bci_copy.rglob("*.png"):
        Image.open(p).crop((0, 0, 4, 4)).save(p)
    rc = train.main(train_args(bci_copy, tmp_path / "ck", model="pyramidpix2pix", extra=["--netG", "resnet_6blocks"]))
    assert rc == 2
    err = capsys.readouterr().err
    assert "L4" in err and "--pattern" in err
    assert not (tmp_path / "ck" / "run" / "latest_net_G.pth").exists()
