"""Tests for models/tta.py: dihedral transforms against numpy references, identity and averaging, options."""
import argparse

import numpy as np
import pytest
import torch

from models.tta import (
    TTA_MODES, TTAWrapper, add_tta_options, parse_tta_modes, transform, tta_apply, tta_modes_from_opt,
)
from util.errors import OptionError

# independent references: numpy's own functions on an (H, W) array
NP_REF = {
    "id": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flipH": np.fliplr,
    "flipV": np.flipud,
    "transpose": lambda a: a.T,
    "antitranspose": lambda a: np.rot90(a, 2).T,
}


def test_modes_are_the_eight_dihedral_transforms():
    assert set(TTA_MODES) == set(NP_REF) and len(TTA_MODES) == 8
    a = np.arange(15, dtype=np.float32).reshape(3, 5)
    images = {m: NP_REF[m](a) for m in TTA_MODES}
    # all 8 distinct views of an asymmetric image
    assert len({(v.shape, v.tobytes()) for v in images.values()}) == 8


@pytest.mark.parametrize("mode", TTA_MODES)
@pytest.mark.parametrize("hw", [(3, 5), (4, 4), (7, 2)])
def test_transform_matches_numpy_and_inverts(mode, hw):
    h, w = hw
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    y = transform(x, mode)
    for n in range(2):
        for c in range(3):
            np.testing.assert_array_equal(y[n, c].numpy(), NP_REF[mode](x[n, c].numpy()))
    assert torch.equal(transform(y, mode, inverse=True), x)


def test_antitranspose_formula():
    h, w = 3, 5
    a = torch.arange(h * w).reshape(1, 1, h, w)
    y = transform(a, "antitranspose")[0, 0]
    assert y.shape == (w, h)
    for i in range(w):
        for j in range(h):
            assert y[i, j] == a[0, 0, h - 1 - j, w - 1 - i]


@pytest.mark.parametrize("hw", [(5, 7), (6, 6), (1, 3)])
def test_identity_generator_is_exact(hw):
    x = torch.rand(2, 3, *hw) * 2 - 1
    out = tta_apply(lambda t: t, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, x)


def _non_equivariant(t):
    """Depends on absolute position: adds a ramp along the width, then scales channel 0."""
    ramp = torch.arange(t.shape[-1], dtype=t.dtype).view(1, 1, 1, -1)
    y = t + ramp
    y[:, 0] *= 2
    return y


def test_average_equals_hand_computed_mean_odd_nonsquare():
    h, w = 3, 5
    x = torch.randn(1, 2, h, w, dtype=torch.float64)
    out = tta_apply(_non_equivariant, x)
    # hand computation with numpy: view, apply f, undo, average
    xn = x[0].numpy()
    views = []
    inverse = {"rot90": lambda a: np.rot90(a, -1), "rot270": lambda a: np.rot90(a, 1)}
    for m in TTA_MODES:
        v = np.stack([NP_REF[m](c) for c in xn])
        fv = v + np.arange(v.shape[-1])[None, None, :]
        fv[0] *= 2
        undo = inverse.get(m, NP_REF[m])  # all others are self-inverse
        views.append(np.stack([undo(c) for c in fv]))
    expected = np.mean(views, axis=0)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-12)
    # the non-equivariant part does not vanish: TTA differs from the plain call
    assert not torch.allclose(out, _non_equivariant(x.clone()))


def test_subset_of_modes_hand_computed():
    x = torch.zeros(1, 1, 2, 3)
    # f adds the column index; with id the ramp is 0,1,2; with flipH it is reversed -> mean is constant 1
    out = tta_apply(lambda t: t + torch.arange(t.shape[-1], dtype=t.dtype), x, ["id", "flipH"])
    assert torch.equal(out, torch.ones(1, 1, 2, 3))
    out_v = tta_apply(lambda t: t + torch.arange(t.shape[-1], dtype=t.dtype), x, ["id", "flipV"])
    assert torch.equal(out_v, torch.arange(3, dtype=torch.float32).expand(1, 1, 2, 3))


def test_channel_change_and_float32_accumulation():
    x = torch.rand(1, 3, 4, 6).half()
    out = tta_apply(lambda t: t[:, :1] * 0 + 1, x)  # (N, 1, H, W) of ones in half
    assert out.shape == (1, 1, 4, 6) and out.dtype == torch.float16
    assert torch.equal(out, torch.ones_like(out))
    # identity in float16 is exact only if the sum is not accumulated in float16 (3x, 5x, 7x round there)
    xh = (torch.rand(1, 3, 8, 8) * 2 - 1).half()
    naive = xh.clone()
    for _ in range(7):
        naive = naive + xh
    assert not torch.equal(naive / 8, xh)  # the reference pitfall really exists for this input
    assert torch.equal(tta_apply(lambda t: t, xh), xh)


def test_generator_module_and_wrapper():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        a = tta_apply(net, x, ("id", "rot90"))
        b = TTAWrapper(net, ("id", "rot90"))(x)
        ref = (net(x) + torch.rot90(net(torch.rot90(x, 1, (2, 3))), -1, (2, 3))) / 2
    assert torch.equal(a, b)
    torch.testing.assert_close(a, ref)


def test_shape_changing_fn_is_rejected():
    x = torch.zeros(1, 1, 4, 6)
    with pytest.raises(ValueError, match="rot90"):
        tta_apply(lambda t: t[..., :4, :], x, ("id", "rot90"))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        tta_apply(lambda t: t, torch.zeros(3, 4, 4))


def test_parse_tta_modes():
    assert parse_tta_modes("all") == TTA_MODES
    assert parse_tta_modes("") == TTA_MODES
    assert parse_tta_modes(" flipH, id ") == ("flipH", "id")
    with pytest.raises(OptionError) as e:
        parse_tta_modes("id,rot45")
    assert "rot45" in str(e.value) and "antitranspose" in str(e.value)
    with pytest.raises(OptionError, match="more than once"):
        parse_tta_modes("id,flipH,id")
    with pytest.raises(OptionError):
        parse_tta_modes("id,")
    with pytest.raises(OptionError):
        tta_apply(lambda t: t, torch.zeros(1, 1, 2, 2), ())
    with pytest.raises(OptionError):
        tta_apply(lambda t: t, torch.zeros(1, 1, 2, 2), ("fliph",))


def test_add_tta_options(capsys):
    p = add_tta_options(argparse.ArgumentParser())
    opt = p.parse_args([])
    assert opt.tta is False and opt.tta_modes == "all" and tta_modes_from_opt(opt) is None
    opt = p.parse_args(["--tta"])
    assert tta_modes_from_opt(opt) == TTA_MODES
    opt = p.parse_args(["--tta", "--tta_modes", "id, rot180"])
    assert opt.tta_modes == "id,rot180" and tta_modes_from_opt(opt) == ("id", "rot180")
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--tta_modes", "id,bogus"])
    assert e.value.code == 2
    assert "bogus" in capsys.readouterr().err
