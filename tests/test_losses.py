"""Tests of models/losses.py against direct torch.nn.functional calls and hand computations."""
from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import make_layers

from models import losses as L
from util.errors import CheckpointError, OptionError, UserError


def rand(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)


# --------------------------------------------------------------------------------------------------------- GANLoss
@pytest.mark.parametrize("is_real", [True, False])
def test_gan_loss_matches_functional(is_real):
    pred = rand((2, 1, 7, 6), 0)
    target = torch.ones_like(pred) if is_real else torch.zeros_like(pred)
    vanilla = L.GANLoss("vanilla")(pred, is_real)
    assert vanilla.item() == pytest.approx(F.binary_cross_entropy_with_logits(pred, target).item(), rel=1e-6)
    lsgan = L.GANLoss("lsgan")(pred, is_real)
    assert lsgan.item() == pytest.approx(F.mse_loss(pred, target).item(), rel=1e-6)
    wgan = L.GANLoss("wgangp")(pred, is_real)
    assert wgan.item() == pytest.approx((-pred.mean() if is_real else pred.mean()).item(), rel=1e-6)


def test_gan_loss_hand_values_and_dtype():
    pred = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    # BCE with logits, target 1: mean(log(1 + exp(-x))); LSGAN, target 0: mean(x^2)
    assert L.GANLoss("vanilla")(pred, True).item() == pytest.approx((np.log(2) + np.log1p(np.exp(-2.0))) / 2)
    out = L.GANLoss("lsgan")(pred, False)
    assert out.dtype == torch.float64 and out.item() == pytest.approx(2.0)
    crit = L.GANLoss("lsgan", target_real_label=0.9)
    assert crit(pred, True).item() == pytest.approx(((0.0 - 0.9) ** 2 + (2.0 - 0.9) ** 2) / 2)
    assert crit.get_target_tensor(pred, True).dtype == torch.float64
    assert len(crit.state_dict()) == 0  # label buffers are not saved
    assert {n for n, _ in crit.named_buffers()} == {"real_label", "fake_label"}


def test_gan_loss_gradient_flows():
    pred = rand((1, 1, 4, 4), 1).requires_grad_(True)
    L.GANLoss("vanilla")(pred, True).backward()
    # d/dx mean(log(1+exp(-x))) = -(1 - sigmoid(x)) / n
    assert torch.allclose(pred.grad, -(1 - torch.sigmoid(pred.detach())) / pred.numel(), atol=1e-7)


def test_gan_loss_multiscale_sum_and_mean():
    preds = [rand((2, 1, 8, 8), 2), rand((2, 1, 4, 4), 3), rand((2, 1, 2, 2), 4)]
    per = [F.mse_loss(p, torch.ones_like(p)).item() for p in preds]
    assert L.GANLoss("lsgan")(preds, True).item() == pytest.approx(sum(per), rel=1e-6)
    assert L.GANLoss("lsgan", multiscale_reduction="mean")(preds, True).item() == pytest.approx(sum(per) / 3, rel=1e-6)
    # pix2pixHD layout: features first, prediction last; features are ignored
    nested = [[torch.full((2, 8, 5, 5), 1e3), p] for p in preds]
    assert L.GANLoss("lsgan")(nested, True).item() == pytest.approx(sum(per), rel=1e-6)


def test_gan_loss_bad_inputs():
    with pytest.raises(OptionError, match="--gan_mode"):
        L.GANLoss("hinge")
    with pytest.raises(ValueError):
        L.GANLoss("lsgan")([], True)
    with pytest.raises(TypeError):
        L.GANLoss("lsgan")([np.zeros(3)], True)


# -------------------------------------------------------------------------------------------------- gradient penalty
class LinearD(nn.Module):
    """D(x) = <w, x> per sample: grad_x D = w for every x, so the penalty is lambda * (||w|| - c)^2 exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


@pytest.mark.parametrize("kind", ["real", "fake", "mixed"])
def test_gradient_penalty_linear_d_hand_value(kind):
    w = rand((1, 3, 4, 4), 5, torch.float64)
    netD = LinearD(w)
    real, fake = rand((3, 3, 4, 4), 6, torch.float64), rand((3, 3, 4, 4), 7, torch.float64)
    penalty, grads = L.gradient_penalty(netD, real, fake, type=kind, constant=1.0, lambda_gp=10.0)
    norm = float(np.sqrt((w.numpy() ** 2).sum()))
    assert penalty.item() == pytest.approx(10.0 * (norm - 1.0) ** 2, rel=1e-9)
    assert grads.shape == (3, 48)
    assert torch.allclose(grads, w.reshape(1, -1).expand(3, -1))


def test_gradient_penalty_tiny_conv_d_is_positive_and_trains_d():
    torch.manual_seed(0)
    netD = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 3, stride=2))
    real, fake = rand((2, 3, 16, 16), 8), rand((2, 3, 16, 16), 9).requires_grad_(True)
    penalty, grads = L.gradient_penalty(netD, real, fake, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(penalty) and penalty.item() > 0
    assert grads.shape == (2, 3 * 16 * 16)
    penalty.backward()
    # every weight gets a gradient (the last bias does not affect grad_x D)
    assert all(netD[i].weight.grad is not None and netD[i].weight.grad.abs().sum() > 0 for i in (0, 2))
    assert fake.grad is None  # the inputs are detached


def test_gradient_penalty_multiscale_output_and_disabled():
    w1, w2 = rand((1, 2, 3, 3), 10, torch.float64), rand((1, 2, 3, 3), 11, torch.float64)

    class TwoScale(nn.Module):
        def forward(self, x):
            return [[x * 0, (x * w1).flatten(1).sum(1)], [(x * w2).flatten(1).sum(1)]]

    real = rand((2, 2, 3, 3), 12, torch.float64)
    penalty, _ = L.gradient_penalty(TwoScale(), real, real.clone(), type="real", lambda_gp=1.0)
    norm = float(np.sqrt(((w1 + w2).numpy() ** 2).sum()))
    assert penalty.item() == pytest.approx((norm - 1) ** 2, rel=1e-9)
    zero, grads = L.gradient_penalty(TwoScale(), real, real, lambda_gp=0.0)
    assert zero.item() == 0.0 and grads is None
    with pytest.raises(ValueError):
        L.gradient_penalty(TwoScale(), real, real, type="middle")
    with pytest.raises(ValueError):
        L.gradient_penalty(TwoScale(), real, real[:1], type="mixed")


# --------------------------------------------------------------------------------------------------- feature matching
def test_feature_matching_hand_computation():
    num_D, n_layers = 2, 3
    shapes = [(1, 4, 8, 8), (1, 8, 4, 4), (1, 1, 3, 3)]  # two features then the prediction, per scale
    fake = [[rand(s, 20 + 10 * i + j).requires_grad_(True) for j, s in enumerate(shapes)] for i in range(num_D)]
    real = [[rand(s, 40 + 10 * i + j).requires_grad_(True) for j, s in enumerate(shapes)] for i in range(num_D)]
    want = 0.0
    for i in range(num_D):
        for j in range(len(shapes) - 1):  # the prediction (last) is not matched
            diff = np.abs(fake[i][j].detach().numpy() - real[i][j].detach().numpy()).mean()
            want += (1.0 / num_D) * (4.0 / (n_layers + 1)) * 10.0 * diff
    got = L.feature_matching_loss(fake, real, num_D, n_layers, lambda_feat=10.0)
    assert got.item() == pytest.approx(want, rel=1e-5)
    got.backward()
    assert all(r.grad is None for scale in real for r in scale)
    assert fake[0][0].grad is not None and fake[0][-1].grad is None


def test_feature_matching_bad_structure():
    a = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 2, 2)]]
    with pytest.raises(ValueError, match="num_D"):
        L.feature_matching_loss(a, a, 2, 3)
    with pytest.raises(ValueError):
        L.feature_matching_loss([[torch.zeros(1, 1, 2, 2)]], [[torch.zeros(1, 1, 2, 2)]], 1, 3)


# ---------------------------------------------------------------------------------------------------------- VGG loss
def tiny_vgg19_features():
    """VGG19 layer layout (same indices as torchvision's vgg19().features) with tiny random channels."""
    torch.manual_seed(0)
    return make_layers([4, 4, "M", 8, 8, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8, "M"])


def test_vgg_loss_zero_for_identical_positive_otherwise():
    loss = L.VGGPerceptualLoss(features=tiny_vgg19_features())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(x, x.clone()).item() == 0.0
    y = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = loss(xg, y)
    assert out.item() > 0
    out.backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert y.grad is None
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.slices.training


def test_vgg_loss_slices_weights_and_normalisation_by_hand():
    # identity "features": every slice outputs the normalised input, so the loss is
    # sum(weights) * mean(|x - y| / 2 / std_c)
    loss = L.VGGPerceptualLoss(features=nn.Sequential(*[nn.Identity() for _ in range(30)]))
    x, y = torch.rand(1, 3, 5, 6) * 2 - 1, torch.rand(1, 3, 5, 6) * 2 - 1
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    want = (1 / 32 + 1 / 16 + 1 / 8 + 1 / 4 + 1) * np.mean(np.abs(x.numpy() - y.numpy()) / 2 / std)
    assert loss(x, y).item() == pytest.approx(want, rel=1e-5)
    # the mean maps to zero: (x + 1) / 2 == ImageNet mean
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 2 - 1
    assert torch.allclose(loss._normalise(mean), torch.zeros(1, 3, 1, 1), atol=1e-6)
    slices = [len(s) for s in L.VGGPerceptualLoss(features=tiny_vgg19_features()).slices]
    assert slices == [2, 5, 5, 9, 9]  # [0:2], [2:7], [7:12], [12:21], [21:30]


def test_vgg_loss_bad_arguments():
    with pytest.raises(ValueError):
        L.VGGPerceptualLoss(features=nn.Sequential(nn.Identity()))  # fewer than 30 layers
    with pytest.raises(ValueError):
        L.VGGPerceptualLoss(weights_path="x.pth", features=tiny_vgg19_features())
    loss = L.VGGPerceptualLoss(features=tiny_vgg19_features())
    with pytest.raises(ValueError):
        loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_vgg_weights_path_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth"):
        L.VGGPerceptualLoss(weights_path=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(2, 3, 3, 3)}, bad)
    with pytest.raises(CheckpointError, match="bad.pth"):
        L.VGGPerceptualLoss(weights_path=bad)


def test_vgg_weights_path_loads_torchvision_layout(tmp_path):
    feats = L._vgg19_features_module()
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.0.bias"] = torch.zeros(4)  # a full vgg19 dict also holds the classifier: ignored
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    loss = L.VGGPerceptualLoss(weights_path=path)
    assert torch.equal(loss.slices[0][0].weight, feats[0].weight)
    assert torch.equal(loss.slices[4][-2].weight, feats[28].weight)  # conv5_1


def test_vgg_pretrained_unavailable_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(L.PretrainedWeightsUnavailable) as info:
        L.VGGPerceptualLoss()
    msg = str(info.value)
    assert isinstance(info.value, UserError)
    assert "--no_vgg_loss" in msg and "weights_path" in msg
    assert str(tmp_path) in msg and "vgg19-dcbb9e9d.pth" in msg
    assert "offline (test)" in msg  # the patched download was the one that failed
