"""pix2pixHD networks and model: structure and key layout, multiscale discriminator, strides, one training step with
an injected VGG loss, the VGG-unavailable path, and the train/test/evaluate CLIs."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import data
import models
import options
from models.losses import PretrainedWeightsUnavailable, VGGPerceptualLoss
from models.networks import define_D, define_G, generator_stride
from models.networks.pix2pixhd_networks import GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator
from util.errors import OptionError, UserError



@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from scripts.make_sample_dataset import DEFAULT_SOURCE, build

    return build(tmp_path_factory.mktemp("hd") / "bci", 64, 2, 2, 0, DEFAULT_SOURCE)


TINY = ["--ngf", "4", "--ndf", "4", "--n_downsample_global", "2", "--n_blocks_global", "1", "--num_D", "2",
        "--n_epochs", "1", "--n_epochs_decay", "0", "--num_threads", "0", "--preprocess", "crop", "--crop_size", "32",
        "--seed", "0", "--no_html", "--print_freq", "1000"]


def small_vgg() -> VGGPerceptualLoss:
    """A tiny random VGG-like feature network (two conv-relu slices) standing in for VGG19."""
    torch.manual_seed(0)
    feats = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
    return VGGPerceptualLoss(features=feats, slice_ends=(2, 4), layer_weights=(0.5, 1.0))


# ---------------------------------------------------------------------------------------------------- networks
def test_global_generator_layout_and_shape():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        g = GlobalGenerator(3, 3, ngf=64, n_downsampling=4, n_blocks=9, norm_layer=nn.InstanceNorm2d)
    sd = g.state_dict()
    # c7s1 (pad 0, conv 1, norm 2, relu 3); 4 downsamplings (3 modules each: 4..15); 9 blocks (16..24);
    # 4 upsamplings (25..36); pad 37, conv 38, tanh 39 - hand-counted from the pix2pixHD description
    assert tuple(sd["model.1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(sd["model.13.weight"].shape) == (1024, 512, 3, 3)
    assert tuple(sd["model.16.conv_block.1.weight"].shape) == (1024, 1024, 3, 3)
    assert tuple(sd["model.24.conv_block.5.weight"].shape) == (1024, 1024, 3, 3)
    assert tuple(sd["model.25.weight"].shape) == (1024, 512, 3, 3)  # ConvTranspose2d: (in, out, k, k)
    assert tuple(sd["model.38.weight"].shape) == (3, 64, 7, 7)
    assert "model.16.conv_block.1.bias" in sd  # pix2pixHD convolutions always have biases
    small = GlobalGenerator(3, 3, ngf=4, n_downsampling=2, n_blocks=1)
    with torch.no_grad():
        y = small(torch.rand(2, 3, 12, 20) * 2 - 1)
    assert y.shape == (2, 3, 12, 20) and float(y.abs().max()) <= 1.0


def test_registered_builders_and_strides():
    g = define_G(3, 3, 4, "global", "instance", n_downsample_global=3, n_blocks_global=1)
    assert isinstance(g, GlobalGenerator) and g.stride == 8
    assert generator_stride("global") == 16
    assert generator_stride("global", n_downsample_global=3) == 8
    assert generator_stride("local", n_downsample_global=3, n_local_enhancers=2) == 32
    assert generator_stride("local", n_downsample_global=4, n_local_enhancers=1, n_blocks_local=3) == 32
    d = define_D(6, 4, "multiscale", 3, "instance", num_D=3)
    assert isinstance(d, MultiscaleDiscriminator) and d.num_D == 3


def test_local_enhancer_layout_and_shape():
    net = LocalEnhancer(3, 3, ngf=4, n_downsample_global=2, n_blocks_global=1, n_local_enhancers=1, n_blocks_local=2)
    sd = net.state_dict()
    assert tuple(sd["model.1.weight"].shape) == (8, 3, 7, 7)  # global part with ngf * 2**n_local_enhancers
    assert tuple(sd["model1_1.1.weight"].shape) == (4, 3, 7, 7)
    assert tuple(sd["model1_1.4.weight"].shape) == (8, 4, 3, 3)
    assert "model1_2.0.conv_block.1.weight" in sd
    assert not any(k.startswith("model.") and k.split(".")[1] == "16" for k in sd)  # final 3 layers dropped
    x = torch.rand(1, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0


def test_multiscale_discriminator_scales_and_downsampling():
    torch.manual_seed(0)
    d = MultiscaleDiscriminator(6, ndf=4, n_layers=3, num_D=2)
    assert "scale0_layer0.0.weight" in d.state_dict() and "scale1_layer4.0.weight" in d.state_dict()
    x = torch.randn(1, 6, 32, 32)
    with torch.no_grad():
        out = d(x)
    assert len(out) == 2 and all(len(o) == 5 for o in out)  # n_layers + 2 outputs per scale
    assert out[0][-1].shape[1] == 1
    # full resolution first, through scale1 (pix2pixHD order); the second scale sees the pooled input
    with torch.no_grad():
        h = x
        for j in range(5):
            h = getattr(d, f"scale1_layer{j}")(h)
        assert torch.allclose(out[0][-1], h)
        half = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        h = half
        for j in range(5):
            h = getattr(d, f"scale0_layer{j}")(h)
        assert torch.allclose(out[1][-1], h)
    # the pooling itself: a corner averages 2x2 pixels (padding not counted)
    t = torch.arange(16.0).view(1, 1, 4, 4)
    assert float(F.avg_pool2d(t, 3, 2, 1, count_include_pad=False)[0, 0, 0, 0]) == pytest.approx((0 + 1 + 4 + 5) / 4)


# ------------------------------------------------------------------------------------------------------- model
def test_one_training_iteration_with_injected_vgg(sample, tmp_path):
    opt = options.parse_train(["--dataroot", str(sample), "--name", "hd", "--model", "pix2pixhd",
                               "--checkpoints_dir", str(tmp_path), *TINY])
    assert (opt.netG, opt.netD, opt.norm, opt.gan_mode, opt.lambda_feat) == \
        ("global", "multiscale", "instance", "lsgan", 10.0)
    batch = next(iter(data.create_dataloader(opt, data.create_dataset(opt))))
    model = models.find_model_using_name("pix2pixhd")(opt, vgg_loss=small_vgg())
    model.setup(opt)
    g_before = [p.detach().clone() for p in model.netG.parameters()]
    model.set_input(batch)
    model.optimize_parameters()
    losses = model.get_current_losses()
    assert list(losses) == ["G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake"]
    assert all(np.isfinite(v) for v in losses.values())
    assert losses["G_GAN_Feat"] > 0
    with torch.no_grad():  # lambda_vgg defaults to lambda_feat (10), as pix2pixHD
        expect = 10.0 * float(small_vgg()(model.fake_B.detach(), model.real_B))
    assert losses["G_VGG"] == pytest.approx(expect, rel=1e-4)
    assert any(not torch.equal(a, b) for a, b in zip(g_before, model.netG.parameters()))


def test_no_vgg_loss_and_option_checks(tmp_path):
    base = ["--model", "pix2pixhd", "--dataroot", "x", "--checkpoints_dir", str(tmp_path), *TINY]
    model = models.create_model(options.parse_train(base + ["--no_vgg_loss"]))
    assert model.criterionVGG is None
    with pytest.raises(OptionError, match="multiscale"):
        options.parse_train(base + ["--netD", "basic"])
    options.parse_train(base + ["--netD", "basic", "--no_ganFeat_loss"])
    with pytest.raises(OptionError, match="n_local_enhancers"):
        options.parse_train(base + ["--netG", "local", "--n_local_enhancers", "0"])
    with pytest.raises(OptionError, match="multiples of 4"):
        model.validate_input_size(30, 32)
    model.validate_input_size(28, 32)


def test_vgg_unavailable_offline_is_a_clear_error(sample, tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    opt = options.parse_train(["--model", "pix2pixhd", "--dataroot", "x", "--checkpoints_dir", str(tmp_path), *TINY])
    with pytest.raises(PretrainedWeightsUnavailable) as info:
        models.create_model(opt)
    msg = str(info.value)
    assert isinstance(info.value, UserError)
    assert "--vgg_weights" in msg and "--no_vgg_loss" in msg and "offline (test)" in msg
    with pytest.raises(UserError, match="--vgg_weights"):  # a bad local file names the option too
        models.create_model(options.parse_train(["--model", "pix2pixhd", "--dataroot", "x", "--vgg_weights",
                                                 str(tmp_path / "missing.pth"), *TINY]))
    capsys.readouterr()
    rc = train.main(["--dataroot", str(sample), "--name", "novgg", "--model", "pix2pixhd", "--checkpoints_dir",
                     str(tmp_path / "ck"), *TINY])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train.py: error:")]
    assert rc == 2 and len(errors) == 1 and "--no_vgg_loss" in errors[0]
    assert not list((tmp_path / "ck").glob("*/*.pth"))  # nothing trained, no checkpoint


def test_test_time_pads_to_the_stride():
    opt = options.parse_test(["--model", "pix2pixhd", "--dataroot", "x", "--ngf", "4", "--n_downsample_global", "3",
                              "--n_blocks_global", "1"])
    model = models.create_model(opt)
    assert model.model_names == ["G"] and model.generator_stride() == 8
    model.eval()
    x = torch.rand(1, 3, 37, 45) * 2 - 1
    model.set_input({"A": x, "A_paths": ["a.png"]})
    model.test()
    assert model.fake_B.shape == x.shape


def test_train_test_evaluate_end_to_end(sample, tmp_path):
    import evaluate
    import test as test_cli
    import train
    from models.inference import load_generator
    from util.image_io import read_rgb_uint8, uint8_to_tensor

    ck, res = tmp_path / "ck", tmp_path / "res"
    assert train.main(["--dataroot", str(sample), "--name", "hd", "--model", "pix2pixhd", "--checkpoints_dir",
                       str(ck), "--no_vgg_loss", *TINY]) == 0
    exp = ck / "hd"
    assert {"latest_net_G.pth", "latest_net_D.pth", "latest_state.pth"} <= {p.name for p in exp.iterdir()}
    d_keys = torch.load(exp / "latest_net_D.pth", weights_only=True)
    assert "scale1_layer4.0.weight" in d_keys
    assert test_cli.main(["--dataroot", str(sample), "--name", "hd", "--model", "pix2pixhd", "--checkpoints_dir",
                          str(ck), "--results_dir", str(res), "--num_threads", "0"]) == 0
    images = res / "hd" / "test_latest" / "images"
    fakes = sorted(images.glob("*_fake_B.png"))
    assert len(fakes) == 2
    netG, train_opt = load_generator(ck, "hd")
    assert train_opt["n_downsample_global"] == 2
    stem = fakes[0].name[: -len("_fake_B.png")]
    real_A = uint8_to_tensor(read_rgb_uint8(images / f"{stem}_real_A.png")).unsqueeze(0)
    with torch.no_grad():
        expect = ((netG(real_A)[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.abs(read_rgb_uint8(fakes[0]).astype(np.float64) - expect).max() <= 1.0
    assert evaluate.main(["--result_path", str(res / "hd"), "--no_fid", "--num_workers", "1", "--no_progress"]) == 0
    metrics = json.loads((res / "hd" / "test_latest" / "metrics.json").read_text())
    assert metrics["n_images"] == 2
