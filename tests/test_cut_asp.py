"""--model cut and --model asp end to end on CPU: recipe defaults, lazily built netF, train/test/evaluate, exact resume
with netF, TTA, wrong-model checkpoints, feature taps."""
from __future__ import annotations

import json

import pytest
import torch

import evaluate
import options
import test as test_script
import train
from models.networks import define_G
from models.networks.patch_sample import FeatureTap, encode_features
from tests.conftest import train_args

# 64 px images: a 3-layer D (the 5-layer one of ASP needs >= 96 px), two images
SMALL = ["--n_layers_D", "3", "--max_dataset_size", "2"]


def _weights(path):
    return torch.load(path, weights_only=True)


def test_recipes_cut_fastcut_asp_and_explicit_options_win(tmp_path):
    base = ["--dataroot", str(tmp_path), "--checkpoints_dir", str(tmp_path)]
    cut = options.parse_train(base + ["--model", "cut"])
    assert (cut.nce_idt, cut.lambda_NCE, cut.flip_equivariance, cut.n_epochs, cut.n_epochs_decay) == \
        (True, 1.0, False, 200, 200)
    assert (cut.netG, cut.netD, cut.norm, cut.gan_mode, cut.nce_layers, cut.nce_T, cut.num_patches, cut.netF_nc,
            cut.dataset_mode, cut.pool_size, cut.no_dropout) == \
        ("resnet_9blocks", "basic", "instance", "lsgan", "0,4,8,12,16", 0.07, 256, 256, "unaligned", 0, True)
    fast = options.parse_train(base + ["--model", "cut", "--CUT_mode", "FastCUT"])
    assert (fast.nce_idt, fast.lambda_NCE, fast.flip_equivariance, fast.n_epochs, fast.n_epochs_decay) == \
        (False, 10.0, True, 150, 50)
    over = options.parse_train(base + ["--model", "cut", "--CUT_mode", "FastCUT", "--lambda_NCE", "3",
                                       "--flip_equivariance", "false", "--n_epochs", "7"])
    assert (over.lambda_NCE, over.flip_equivariance, over.n_epochs, over.n_epochs_decay) == (3.0, False, 7, 50)
    asp = options.parse_train(base + ["--model", "asp"])
    assert (asp.nce_idt, asp.lambda_NCE, asp.flip_equivariance, asp.n_epochs, asp.n_epochs_decay) == \
        (False, 10.0, False, 30, 10)
    assert (asp.netG, asp.netD, asp.n_layers_D, asp.ndf, asp.norm, asp.weight_norm, asp.lambda_asp,
            asp.asp_loss_mode, asp.lambda_gp, asp.preprocess, asp.load_size, asp.crop_size, asp.dataset_mode) == \
        ("resnet_6blocks", "n_layers", 5, 32, "instance", "spectral", 10.0, "lambda_linear", 10.0, "crop", 1024,
         512, "aligned")
    assert [float(w) for w in asp.gp_weights.split(",")] == [0.015625, 0.03125, 0.0625, 0.125, 0.25, 1.0]


@pytest.mark.parametrize("argv, message", [
    (["--model", "cut", "--netG", "unet_256"], "ResNet generator"),
    (["--model", "cut", "--nce_layers", "0,4,30"], "not an encoder layer"),
    (["--model", "asp", "--asp_loss_mode", "fast_linear"], "asp_loss_mode"),
    (["--model", "asp", "--gp_weights", "1,-1"], "gp_weights"),
    (["--model", "asp", "--crop_size", "32"], "too small"),
])
def test_bad_options_are_clear_errors(tmp_path, capsys, argv, message):
    assert train.main(["--dataroot", str(tmp_path), "--checkpoints_dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_feature_tap_equals_encoder_pass():
    torch.manual_seed(0)
    g = define_G(3, 3, 8, "resnet_6blocks", "instance")
    x = torch.randn(2, 3, 32, 32)
    layers = [0, 4, 7, 10, 14]
    with FeatureTap(g, layers) as tap:
        g(x)
    for a, b in zip(tap.features, encode_features(g, x, layers)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [f.shape[1] for f in tap.features] == [3, 16, 32, 32, 32]
    assert all(not any(True for _ in m._forward_hooks) for m in g.model)  # hooks removed


def test_cut_trains_builds_netF_and_tests(sample_bci, tmp_path):
    ck, res = tmp_path / "ck", tmp_path / "res"
    assert train.main(train_args(sample_bci, ck, name="cut", model="cut", extra=SMALL)) == 0
    exp = ck / "cut"
    f = _weights(exp / "latest_net_F.pth")
    # one MLP per --nce_layers entry; input channels of the layers (ngf 8): image 3, 16, 32, 32, 32
    assert [f[f"mlp_{i}.0.weight"].shape[1] for i in range(5)] == [3, 16, 32, 32, 32]
    assert f["mlp_0.2.weight"].shape == (256, 256)
    log = (exp / "loss_log.txt").read_text()
    for name in ("G_GAN", "NCE", "NCE_Y", "D_real"):
        assert name in log
    assert test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(ck), "--name", "cut",
                             "--results_dir", str(res), "--num_threads", "0", "--gpu_ids", "-1", "--tta"]) == 0
    assert len(list((res / "cut" / "test_latest" / "images").glob("*_fake_B.png"))) == 3


def test_asp_train_test_evaluate(sample_bci, tmp_path):
    ck, res = tmp_path / "ck", tmp_path / "res"
    assert train.main(train_args(sample_bci, ck, name="asp", model="asp", extra=SMALL)) == 0
    exp = ck / "asp"
    d = _weights(exp / "latest_net_D.pth")
    assert any(k.endswith("parametrizations.weight.original") for k in d)  # spectral norm on D
    log = (exp / "loss_log.txt").read_text()
    for name in ("NCE", "ASP", "GP", "G_GAN"):
        assert f"{name}:" in log
    assert test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(ck), "--name", "asp",
                             "--results_dir", str(res), "--num_threads", "0", "--gpu_ids", "-1"]) == 0
    out = res / "asp" / "test_latest"
    assert evaluate.main(["--result_path", str(res / "asp"), "--no_fid"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "psnr" in json.dumps(metrics)
    # whole-slide staining rebuilds the run's generator (resnet_6blocks, instance norm) from train_opt.json
    import stain_slide

    he = sorted((sample_bci / "HE" / "test").glob("*.png"))[0]
    assert stain_slide.main(["--name", "asp", "--checkpoints_dir", str(ck), "--input", str(he), "--output",
                             str(tmp_path / "wsi"), "--tile_size", "64", "--overlap", "16", "--slide_mpp", "0.5",
                             "--no_progress", "--no_tissue_mask"]) == 0
    assert list((tmp_path / "wsi").glob("*_ihc.tiff"))


def _asp_run(root, ck, name, n, m, extra=()):
    return train.main(train_args(root, ck, name=name, model="asp", extra=[
        "--n_epochs", str(n), "--n_epochs_decay", str(m), *SMALL, *extra]))


def test_asp_resume_equals_straight_run_including_netF(sample_bci, tmp_path):
    ck = tmp_path / "ck"
    # linear_linear: p = 1 in epoch 1 and 0.5 in epoch 2, so the resumed run must know its epoch
    mode = ["--asp_loss_mode", "linear_linear"]
    assert _asp_run(sample_bci, ck, "straight", 1, 1, mode) == 0
    assert _asp_run(sample_bci, ck, "resumed", 1, 0, mode) == 0
    assert _asp_run(sample_bci, ck, "resumed", 1, 1, mode + ["--continue_train"]) == 0
    for net in ("G", "F", "D"):
        a = _weights(ck / "straight" / f"latest_net_{net}.pth")
        b = _weights(ck / "resumed" / f"latest_net_{net}.pth")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{net} {k}")


def test_cut_checkpoint_into_pix2pix_and_back_is_a_clear_error(sample_bci, tmp_path, capsys):
    ck = tmp_path / "ck"
    same_g = ["--norm", "instance", "--no_dropout", "--max_dataset_size", "2"]
    assert train.main(train_args(sample_bci, ck, name="c", model="cut", extra=same_g + ["--n_layers_D", "3"])) == 0
    assert train.main(train_args(sample_bci, ck, name="p", model="pix2pix", extra=same_g)) == 0
    capsys.readouterr()
    # the checkpoint set names the model that wrote it (the CUT run's D also sees B alone, pix2pix's D sees A and B;
    # a pix2pix run has no netF)
    assert train.main(train_args(sample_bci, ck, name="c", model="pix2pix", extra=same_g + ["--continue_train"])) == 2
    err = capsys.readouterr().err
    assert "written by --model cut" in err and "not --model pix2pix" in err and "Traceback" not in err
    assert train.main(train_args(sample_bci, ck, name="p", model="cut",
                                 extra=same_g + ["--n_layers_D", "3", "--continue_train"])) == 2
    err = capsys.readouterr().err
    assert "written by --model pix2pix" in err and "not --model cut" in err and "Traceback" not in err


def test_fastcut_flip_equivariance_under_bf16_autocast(sample_bci, tmp_path):
    ck = tmp_path / "ck"
    assert train.main(train_args(sample_bci, ck, name="fast", model="cut", extra=SMALL + [
        "--CUT_mode", "FastCUT", "--amp", "bf16", "--channels_last", "--winograd"])) == 0
    saved = json.loads((ck / "fast" / "train_opt.json").read_text())
    assert saved["flip_equivariance"] is True and saved["nce_idt"] is False
    assert (ck / "fast" / "latest_net_F.pth").is_file()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_cut_ddp_two_processes_equal_one_process(sample_bci, tmp_path):
    """The NCE queries go through G's encoder outside the DDP forward; their gradients must still be averaged over
    the processes. With every patch location sampled (--num_patches above the largest layer's 38x38 positions) the
    loss does not depend on the sampling order, so 2 processes x batch 1 must train to the weights of 1 x batch 2
    (Adam moves every weight by about lr = 2e-4 per step, far above the 1e-5 tolerance)."""
    from scripts import make_sample_dataset
    from tests.test_ddp import SAME, _torchrun

    ck, root = tmp_path / "ck", tmp_path / "s32"
    # 32 px pairs, full images (a random crop would draw from the RNG a different number of times in the two runs)
    assert make_sample_dataset.main(["--out", str(root), "--tile_size", "32", "--n_train", "4", "--n_test", "1",
                                     "--seed", "1"]) == 0

    def args(name, batch):
        return train_args(root, ck, name=name, model="cut", extra=[
            "--batch_size", str(batch), *SAME, "--n_layers_D", "2", "--num_patches", "1500", "--netF_nc", "16"])

    assert train.main(args("single", 2)) == 0
    _torchrun(args("ddp", 1))
    for net in ("G", "F", "D"):
        a = _weights(ck / "single" / f"latest_net_{net}.pth")
        b = _weights(ck / "ddp" / f"latest_net_{net}.pth")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=f"{net} {k}")
