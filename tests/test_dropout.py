"""The generators' dropout: nn.Dropout's semantics with a cheaper CPU mask (models/networks/dropout.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.networks import define_G
from models.networks.dropout import Dropout, bernoulli_mask, dropout


@pytest.mark.parametrize("keep", [0.5, 0.8, 0.1])
def test_mask_is_bernoulli_with_the_keep_probability(keep):
    torch.manual_seed(0)
    x = torch.empty(4, 16, 33, 65)  # odd sizes: the bit buffer is longer than the tensor
    m = bernoulli_mask(x, keep)
    assert m.dtype == torch.bool and m.shape == x.shape
    n = m.numel()
    frac = m.float().mean().item()
    assert abs(frac - keep) < 5 * math.sqrt(keep * (1 - keep) / n)  # 5 sigma of a binomial proportion
    # independence: neighbouring elements agree as often as two independent draws would
    a, b = m.flatten()[:-1].float(), m.flatten()[1:].float()
    agree = (a == b).float().mean().item()
    expected = keep ** 2 + (1 - keep) ** 2
    assert abs(agree - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


def test_bit_mask_uses_every_bit_of_each_byte():
    # each of the 8 bit positions must be kept ~half the time (an unpacking bug would pin one position)
    torch.manual_seed(1)
    m = bernoulli_mask(torch.empty(8 * 20000), 0.5).view(-1, 8).float().mean(0)
    assert torch.all((m - 0.5).abs() < 5 * math.sqrt(0.25 / 20000)), m


def test_mask_follows_channels_last_layout():
    x = torch.empty(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    m = bernoulli_mask(x, 0.5)
    assert m.shape == x.shape and m.is_contiguous(memory_format=torch.channels_last)
    y = dropout(torch.ones_like(x), 0.5)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_reproducible_under_manual_seed():
    x = torch.randn(3, 4, 9, 9)
    torch.manual_seed(7)
    a = dropout(x, 0.5)
    torch.manual_seed(7)
    b = dropout(x, 0.5)
    torch.manual_seed(8)
    c = dropout(x, 0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_values_and_gradient_match_the_inverted_dropout_formula(p):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11, 13, dtype=torch.float64, requires_grad=True)
    y = dropout(x, p)
    kept = y != 0
    # every kept element is scaled by 1/(1-p), every other one is zero (x has no exact zeros)
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, torch.where(kept, g / (1 - p), torch.zeros_like(g)))


def test_eval_zero_and_one_follow_functional_dropout():
    x = torch.randn(2, 3, 4, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    torch.testing.assert_close(dropout(x, 1.0), F.dropout(x, 1.0, True))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dropout(x, 1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Dropout(-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bernoulli_mask(x, 2.0)


def test_module_is_a_parameterless_drop_in():
    d, ref = Dropout(0.5), nn.Dropout(0.5)
    assert list(d.state_dict()) == list(ref.state_dict()) == []
    assert "p=0.5" in repr(d)
    d.eval()
    x = torch.randn(2, 2)
    assert torch.equal(d(x), x)


def test_generators_use_it_and_keep_expected_statistics():
    net = define_G(3, 3, 8, "resnet_6blocks", "batch", True, "normal", 0.02)
    drops = [m for m in net.modules() if isinstance(m, Dropout)]
    assert len(drops) == 6 and not any(isinstance(m, nn.Dropout) for m in net.modules())
    # the mean of inverted dropout is the identity: E[dropout(x)] == x
    torch.manual_seed(0)
    x = torch.full((1, 64, 64, 64), 3.0)
    assert abs(dropout(x, 0.5).mean().item() - 3.0) < 0.05
