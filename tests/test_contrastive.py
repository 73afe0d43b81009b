"""PatchNCE, ASP weighting and ASP's Gaussian-pyramid L1 against independent numbers: hand-computed tiny cases and
direct re-derivations (plain Python loops, scipy.ndimage) in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from models.contrastive import (asp_lookup, asp_progress, asp_weights, parse_asp_mode, patch_nce_logits,
                                patch_nce_loss, supervised_patch_nce_loss)
from models.networks.patch_sample import PatchSampleF, cut_to_local_layer, parse_nce_layers
from models.pyramid import (ASP_GP_WEIGHTS, BINOMIAL_TAPS_5, gaussian_pyramid, gaussian_pyramid_l1,
                            gaussian_pyramid_min_size, separable_blur)
from util.errors import OptionError


def _unit_rows(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _reference_nce(q, k, n_images, tau):
    """Loop re-derivation: for patch i of image b, logits [q_i.k_i, q_i.k_j (j in image b; -10 for j = i)] / tau."""
    m, _ = q.shape
    p = m // n_images
    out = []
    for b in range(n_images):
        for i in range(p):
            qi = q[b * p + i]
            logits = [float(qi @ k[b * p + i]) / tau]
            for j in range(p):
                logits.append((-10.0 if j == i else float(qi @ k[b * p + j])) / tau)
            mx = max(logits)
            lse = mx + math.log(sum(math.exp(v - mx) for v in logits))
            out.append(lse - logits[0])
    return torch.tensor(out, dtype=torch.float64)


def test_patch_nce_hand_computed_two_patches():
    # q1 = k1 = e1, q2 = k2 = e2, tau = 0.5: row 1 logits [1/0.5, -10/0.5, 0/0.5] -> loss log(1 + e^-22 + e^-2)
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    loss = patch_nce_loss(q, q.clone(), batch_size=1, nce_T=0.5)
    expected = math.log(1.0 + math.exp(-22.0) + math.exp(-2.0))
    torch.testing.assert_close(loss, torch.tensor([expected, expected], dtype=torch.float64), rtol=0, atol=1e-12)
    logits = patch_nce_logits(q, q, 1, 0.5)
    assert logits.tolist() == [[2.0, -20.0, 0.0], [2.0, 0.0, -20.0]]  # the diagonal of the negatives is -10 / tau


@pytest.mark.parametrize("tau", [0.07, 1.0])
def test_patch_nce_matches_loop_rederivation(tau):
    q, k = _unit_rows(2 * 5, 4, seed=1), _unit_rows(2 * 5, 4, seed=2)
    torch.testing.assert_close(patch_nce_loss(q, k, 2, tau), _reference_nce(q, k, 2, tau), rtol=0, atol=1e-6)


def test_patch_nce_negatives_stay_in_their_image_and_keys_get_no_gradient():
    q, k = _unit_rows(6, 3, seed=3).requires_grad_(), _unit_rows(6, 3, seed=4).requires_grad_()
    base = patch_nce_loss(q, k, 2, 0.07)
    k2 = k.detach().clone()
    k2[3:] = _unit_rows(3, 3, seed=5)  # another second image
    changed = patch_nce_loss(q, k2, 2, 0.07)
    torch.testing.assert_close(changed[:3], base[:3], rtol=0, atol=0)
    assert not torch.allclose(changed[3:], base[3:])
    base.sum().backward()
    assert k.grad is None and q.grad is not None and q.grad.abs().sum() > 0


def test_patch_nce_rejects_bad_shapes():
    with pytest.raises(ValueError):
        patch_nce_loss(_unit_rows(5, 3), _unit_rows(5, 3), 2, 0.07)
    with pytest.raises(ValueError):
        patch_nce_loss(_unit_rows(4, 3), _unit_rows(4, 2), 1, 0.07)


def test_asp_progress_start_and_end_of_training():
    # lambda: k = 1 - 10/40 = 0.75, m = 4: p = 1 until t = 0.75 (epoch 31), then 4 - 4t
    assert asp_progress("lambda", 1, 30, 10) == 1.0
    assert asp_progress("lambda", 30, 30, 10) == 1.0
    assert asp_progress("lambda", 31, 30, 10) == pytest.approx(1.0, abs=1e-12)
    assert asp_progress("lambda", 40, 30, 10) == pytest.approx(4 - 4 * 39 / 40, abs=1e-12)  # 0.1
    assert asp_progress("linear", 1, 30, 10) == 1.0
    assert asp_progress("linear", 40, 30, 10) == pytest.approx(1 / 40, abs=1e-12)
    assert asp_progress("sigmoid", 1, 30, 10) == pytest.approx(1 / (1 + math.exp(-5)), abs=1e-12)
    assert asp_progress("sigmoid", 21, 30, 10) == pytest.approx(0.5, abs=1e-12)
    assert asp_progress("zero", 40, 30, 10) == 1.0
    assert asp_progress("lambda", 5, 10, 0) == 1.0  # no decay epochs: never weighted


def test_asp_lookups_by_hand():
    x = torch.tensor([-0.3, 0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(asp_lookup("top", x), torch.tensor([0.0, 0.0, math.sqrt(0.75), 1.0],
                                                                  dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(asp_lookup("linear", x), torch.tensor([0.0, 0.0, 0.5, 1.0], dtype=torch.float64))
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    torch.testing.assert_close(asp_lookup("bell", x), torch.tensor([phi(-3.2), phi(-2.0), phi(0.0), phi(2.0)],
                                                                   dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(asp_lookup("uniform", x), torch.ones(4, dtype=torch.float64))


def test_asp_weights_by_hand_and_mean_one():
    # p = 0.5, linear lookup on cosines [1, 0, 0.5]: raw [1, 0.5, 0.75], sum 2.25, times 3 / 2.25
    w = asp_weights(torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64), "linear", 0.5)
    torch.testing.assert_close(w, torch.tensor([4 / 3, 2 / 3, 1.0], dtype=torch.float64), rtol=0, atol=1e-12)
    w = asp_weights(torch.rand(50, dtype=torch.float64) * 2 - 1, "top", 0.3)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(asp_weights(torch.rand(7), "bell", 1.0), torch.ones(7))  # p = 1: uniform


def test_supervised_nce_weighting_at_start_and_end():
    q, k = _unit_rows(8, 4, seed=6), _unit_rows(8, 4, seed=7)
    plain = _reference_nce(q, k, 2, 0.07)
    # start of training (p = 1): plain PatchNCE; 'none': plain at any epoch
    torch.testing.assert_close(supervised_patch_nce_loss(q, k, 2, 0.07, "lambda_linear", 1, 30, 10), plain,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(supervised_patch_nce_loss(q, k, 2, 0.07, "none", 40, 30, 10), plain, rtol=0, atol=1e-6)
    # last epoch: p = 0.1, w = p + (1 - p) relu(cos), normalised to mean 1 (re-derived here)
    cos = (q * k).sum(1)
    raw = 0.1 + 0.9 * cos.clamp(min=0)
    expected = plain * raw / raw.sum() * len(raw)
    torch.testing.assert_close(supervised_patch_nce_loss(q, k, 2, 0.07, "lambda_linear", 40, 30, 10), expected,
                               rtol=0, atol=1e-6)


def test_asp_mode_parsing():
    assert parse_asp_mode("lambda_linear") == ("lambda", "linear")
    assert parse_asp_mode("none") == (None, None)
    with pytest.raises(OptionError, match="asp_loss_mode"):
        parse_asp_mode("lambda_cubic")


# -------------------------------------------------------------------------------------- Gaussian pyramid (ASP "gp")
def test_binomial_blur_equals_scipy_mirror_correlation():
    x = torch.rand(1, 2, 9, 11, dtype=torch.float64)
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    for c in range(2):
        ref = ndimage.correlate(x[0, c].numpy(), kernel, mode="mirror")  # scipy 'mirror' = PyTorch 'reflect'
        np.testing.assert_allclose(separable_blur(x, BINOMIAL_TAPS_5)[0, c].numpy(), ref, rtol=0, atol=1e-12)


def test_gaussian_pyramid_levels_and_min_size():
    x = torch.rand(1, 3, 64, 48, dtype=torch.float64)
    levels = gaussian_pyramid(x, 6)
    assert [tuple(v.shape[-2:]) for v in levels] == [(64, 48), (32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    torch.testing.assert_close(levels[0], separable_blur(x, BINOMIAL_TAPS_5))  # the finest level is blurred
    torch.testing.assert_close(levels[1], separable_blur(levels[0][:, :, ::2, ::2], BINOMIAL_TAPS_5))
    torch.testing.assert_close(levels[5], levels[4][:, :, ::2, ::2])  # the coarsest is decimated, not blurred
    assert gaussian_pyramid_min_size(6) == 33
    gaussian_pyramid(torch.rand(1, 1, 33, 33), 6)
    with pytest.raises(ValueError, match="too small"):
        gaussian_pyramid(torch.rand(1, 1, 32, 32), 6)


def _conv_pyramid(x, n):
    """Independent path: F.pad reflect + conv2d with the explicit 5x5 kernel, depthwise."""
    k = torch.tensor([1.0, 4, 6, 4, 1], dtype=x.dtype)
    k2 = (torch.outer(k, k) / 256).expand(x.shape[1], 1, 5, 5)
    out, cur = [], x
    for _ in range(n - 1):
        f = F.conv2d(F.pad(cur, (2, 2, 2, 2), mode="reflect"), k2, groups=x.shape[1])
        out.append(f)
        cur = f[:, :, ::2, ::2]
    return out + [cur]


def test_gaussian_pyramid_l1_matches_rederivation():
    fake = torch.rand(2, 3, 40, 40, dtype=torch.float64) * 2 - 1
    real = torch.rand(2, 3, 40, 40, dtype=torch.float64) * 2 - 1
    pf, pr = _conv_pyramid(fake, 6), _conv_pyramid(real, 6)
    expected = sum(w * (a - b).abs().mean() for w, a, b in zip(ASP_GP_WEIGHTS, pf, pr)) / 6
    torch.testing.assert_close(gaussian_pyramid_l1(fake, real), expected, rtol=0, atol=1e-12)
    assert list(ASP_GP_WEIGHTS) == [1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0]
    # hand case: constant images differ by 0.5 everywhere -> every level differs by 0.5 (the kernel sums to 1)
    c = gaussian_pyramid_l1(torch.full((1, 1, 33, 33), 0.5), torch.zeros(1, 1, 33, 33), weights=[1.0, 0.5])
    assert float(c) == pytest.approx((0.5 + 0.25) / 2, abs=1e-7)


# -------------------------------------------------------------------------------------------------- netF and layers
def test_nce_layer_mapping_to_this_generator():
    assert [cut_to_local_layer(i, 6) for i in parse_nce_layers("0,4,8,12,16")] == [0, 4, 7, 10, 14]
    assert cut_to_local_layer(20, 9) == 18
    with pytest.raises(OptionError, match="encoder"):
        cut_to_local_layer(18, 6)
    with pytest.raises(OptionError):
        parse_nce_layers("0,4,4")


def test_patch_sample_shared_and_per_image_ids():
    f = PatchSampleF(nc=5)
    f.create_mlps([3, 4])
    feats = [torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)]
    torch.manual_seed(0)
    samples, ids = f(feats, num_patches=6)
    assert [s.shape for s in samples] == [(12, 5), (8, 5)]  # layer 2 has only 4 locations: all are used
    assert ids[0].shape == (6,) and sorted(ids[1].tolist()) == [0, 1, 2, 3]
    # the same locations given per image reproduce the shared sampling; the rows are the MLP of the located vectors
    per_image = [i.unsqueeze(0).expand(2, -1) for i in ids]
    again, _ = f(feats, patch_ids=per_image)
    torch.testing.assert_close(again[0], samples[0])
    for b in range(2):
        for j, loc in enumerate(ids[0].tolist()):
            h, w = divmod(loc, 4)
            v = f.mlp_0(feats[0][b, :, h, w])
            torch.testing.assert_close(samples[0][b * 6 + j], v / (v.norm() + 1e-7))  # CUT's Normalize(2)
