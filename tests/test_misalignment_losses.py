"""Pure functions of the misalignment work (issue 16): the spatial transformer, RegGAN's smoothness penalty, the
displacement statistics, the flow colour visual, the registration U-Net's shapes, and the DAB-aware loss against the
evaluator's numpy colour deconvolution and hand-computed tiny cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.stain import HED_FROM_RGB, dab_od
from models.dab_loss import (block_means, dab_block_l1, dab_histogram_l1, dab_loss, dab_od_map, focal_od,
                             soft_histogram)
from models.networks.registration import RegistrationUNet, warp
from models.registration_losses import correction_loss, displacement_stats, smoothness_loss
from util.flow_vis import flow_to_rgb
from util.image_io import read_rgb_uint8, uint8_to_tensor


def _img(n=2, c=3, h=7, w=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


# ---------------------------------------------------------------------------------------------------------- warp
def test_zero_field_is_identity():
    x = _img()
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 7, 9)), x, atol=1e-6, rtol=0)


def test_integer_shift_moves_pixels_exactly():
    x = _img(n=1)
    flow = torch.zeros(1, 2, 7, 9)
    flow[:, 0] = 2.0  # out(x, y) = in(x + 2, y)
    out = warp(x, flow)
    assert torch.equal(out[..., :, :7], x[..., :, 2:]) or torch.allclose(out[..., :, :7], x[..., :, 2:], atol=1e-6)
    # border padding: samples past the right edge take the last column
    torch.testing.assert_close(out[..., :, 7:], x[..., :, 8:9].expand(-1, -1, -1, 2), atol=1e-6, rtol=0)
    flow = torch.zeros(1, 2, 7, 9)
    flow[:, 1] = -1.0  # out(x, y) = in(x, y - 1)
    out = warp(x, flow)
    torch.testing.assert_close(out[..., 1:, :], x[..., :-1, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[..., :1, :], x[..., :1, :], atol=1e-6, rtol=0)


def test_half_pixel_shift_is_bilinear_mean_and_differentiable():
    x = _img(n=1)
    flow = torch.zeros(1, 2, 7, 9, requires_grad=True)
    with torch.no_grad():
        flow[:, 0] = 0.5
    out = warp(x, flow)
    torch.testing.assert_close(out[..., :, :8], (x[..., :, :8] + x[..., :, 1:]) / 2, atol=1e-6, rtol=0)
    out.sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0


def test_warp_rejects_bad_shapes():
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))


def test_correction_loss_is_l1_of_warped():
    fake, real = _img(seed=1), _img(seed=2)
    flow = torch.zeros(2, 2, 7, 9)
    flow[:, 0] = 1.0
    expected = (warp(fake, flow) - real).abs().mean()
    torch.testing.assert_close(correction_loss(fake, real, flow), expected)
    torch.testing.assert_close(correction_loss(fake, real, torch.zeros_like(flow)), (fake - real).abs().mean(),
                               atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ smoothness
def test_smoothness_hand_computed():
    # x-displacement [[0, 1, 3], [0, 1, 3]], y-displacement 0: vertical differences all 0 (6 of them);
    # horizontal differences 1, 2, 1, 2 (x channel) and four 0 (y channel): mean of squares = 10 / 8 = 1.25
    flow = torch.zeros(1, 2, 2, 3)
    flow[0, 0] = torch.tensor([[0.0, 1.0, 3.0], [0.0, 1.0, 3.0]])
    assert float(smoothness_loss(flow)) == pytest.approx((0.0 + 1.25) / 2)
    # a constant field (a pure translation) costs nothing
    assert float(smoothness_loss(torch.full((2, 2, 5, 4), 3.0))) == 0.0
    # vertical ramp of the y channel by 2 per row: vertical diffs 2 (y) and 0 (x) -> mean 4 / 2 = 2; horizontal 0
    ramp = torch.zeros(1, 2, 3, 3)
    ramp[0, 1] = torch.arange(3.0).view(3, 1) * 2
    assert float(smoothness_loss(ramp)) == pytest.approx((2.0 + 0.0) / 2)


def test_displacement_stats():
    flow = torch.zeros(1, 2, 2, 2)
    flow[0, 0, 0, 0], flow[0, 1, 0, 0] = 3.0, 4.0  # length 5 at one pixel, 0 elsewhere
    mean, mx = displacement_stats(flow)
    assert float(mx) == pytest.approx(5.0) and float(mean) == pytest.approx(5.0 / 4)


def test_flow_to_rgb_colours():
    flow = torch.zeros(1, 2, 1, 3)
    flow[0, 0, 0, 1] = 2.0  # +x: hue 0 -> red
    flow[0, 1, 0, 2] = 2.0  # +y: hue 0.25 -> (0.5, 1, 0)
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (1, 3, 1, 3) and rgb.min() >= -1 and rgb.max() <= 1
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([-1.0, -1.0, -1.0]))
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(rgb[0, :, 0, 2], torch.tensor([0.0, 1.0, -1.0]))
    assert float(flow_to_rgb(torch.zeros(1, 2, 3, 3)).max()) == -1.0


def test_registration_unet_any_size_near_identity_start():
    torch.manual_seed(0)
    net = RegistrationUNet(3, nf=4, depth=3)
    a, b = _img(h=30, w=22), _img(h=30, w=22, seed=3)
    flow = net(a, b)
    assert flow.shape == (2, 2, 30, 22)
    assert float(flow.detach().abs().max()) < 1e-2  # flow layer initialised at N(0, 1e-5)
    flow.sum().backward()
    assert net.flow.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------------ DAB loss
def test_dab_od_map_matches_evaluator_on_real_ihc():
    rgb = read_rgb_uint8("samples/ihc.png")[:96, :128]
    exact = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float64))[None] / 127.5 - 1.0
    ours = dab_od_map(exact)[0, 0].numpy()
    np.testing.assert_allclose(ours, dab_od(rgb), atol=1e-9, rtol=1e-9)
    ours32 = dab_od_map(uint8_to_tensor(rgb)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours32, dab_od(rgb), atol=2e-5)
    assert dab_od(rgb).max() > 0.3  # the crop does hold DAB


def test_dab_hand_computed_grey_and_white():
    # grey 0.1 in every channel: OD_c = -log10(0.1) = 1, so OD_DAB = sum of the DAB column of the stain matrix
    c = float(HED_FROM_RGB[:, 2].sum())
    x = torch.full((1, 3, 4, 4), 0.1 * 2 - 1, dtype=torch.float64)
    x[..., 2:] = 1.0  # right half white: OD 0
    od = dab_od_map(x)
    torch.testing.assert_close(od[0, 0, :, :2], torch.full((4, 2), c, dtype=torch.float64))
    assert float(od[..., 2:].abs().max()) == 0.0
    # focal gamma 2, 2x2 blocks against an all-white real image: blocks [[c^2, 0], [c^2, 0]] -> mean c^2 / 2
    white = torch.ones_like(x)
    assert float(dab_block_l1(x, white, block_size=2, gamma=2.0)) == pytest.approx(c * c / 2)
    assert float(dab_block_l1(x, white, block_size=4, gamma=1.0)) == pytest.approx(c / 2)
    assert float(dab_block_l1(x, x, block_size=2)) == 0.0


def test_block_means_partial_edge_blocks():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    torch.testing.assert_close(block_means(x, 2), torch.tensor([[[[2.0, 3.5], [6.5, 8.0]]]]))
    with pytest.raises(ValueError):
        block_means(x, 0)
    with pytest.raises(ValueError):
        focal_od(x, 0.5)


def test_soft_histogram_hand_computed():
    # bins 0, 1 (hist_max 1, s = 1): value 0 -> weights (1, e^-0.5); value 1 -> (e^-0.5, 1)
    h = soft_histogram(torch.tensor([[0.0, 0.0]]), bins=2, hist_max=1.0)
    e = np.exp(-0.5)
    torch.testing.assert_close(h, torch.tensor([[1 / (1 + e), e / (1 + e)]], dtype=torch.float32))
    h = soft_histogram(torch.tensor([[0.0, 1.0]]), bins=2, hist_max=1.0)
    torch.testing.assert_close(h, torch.tensor([[0.5, 0.5]]))


def test_dab_loss_differentiable_and_combines_terms():
    fake = _img(h=16, w=16, seed=4).requires_grad_(True)
    real = _img(h=16, w=16, seed=5)
    fake_dark = fake.detach().clone()
    fake_dark[0, :, 0, 0] = -1.0  # black pixel: the RGB floor keeps the logarithm finite
    total = dab_loss(fake, real, block_size=4, gamma=2.0, hist_bins=8, hist_max=2.0)
    expected = dab_block_l1(fake, real, 4, 2.0) + dab_histogram_l1(fake, real, 8, 2.0, 2.0)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0
    assert torch.isfinite(dab_loss(fake_dark, real)).all()
