"""Tests of models/pyramid.py: the pyramid pix2pix octave chain and losses (BCI paper section 4.1).

References: tests/data/pyramid_reference.json (independent implementation, see its "source" key) and a NumPy/SciPy
re-implementation written here (scipy.ndimage.convolve1d, mode='mirror' = torch 'reflect').
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from models import pyramid as P
from util.errors import OptionError, UserError

REF_JSON = Path(__file__).parent / "data" / "pyramid_reference.json"


# ------------------------------------------------------------------------------------------- independent references
def ref_kernel(sigma=1.0):
    x = np.array([-1.0, 0.0, 1.0])
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ref_blur(img: np.ndarray) -> np.ndarray:
    """3x3 sigma-1 Gaussian on the last two axes, border 'mirror' (edge pixel not repeated)."""
    k = ref_kernel()
    out = ndi.convolve1d(img, k, axis=-2, mode="mirror")
    return ndi.convolve1d(out, k, axis=-1, mode="mirror")


def ref_levels(img: np.ndarray, n: int):
    levels = [img]
    cur = img
    for _ in range(n - 1):
        for _ in range(4):
            cur = ref_blur(cur)
        cur = cur[..., ::2, ::2]
        levels.append(cur)
    return levels


def ref_l1(fake: np.ndarray, real: np.ndarray, n: int):
    return [float(np.mean(np.abs(a - b))) for a, b in zip(ref_levels(fake, n), ref_levels(real, n))]


def formula_input(shape, phase):
    """The input formula of pyramid_reference.json, evaluated with NumPy in float64."""
    N, C, H, W = shape
    b, c, i, j = np.meshgrid(np.arange(N), np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    return np.sin(0.37 * i + 0.11 * j * (c + 1) + phase) * np.cos(0.05 * i * j / (W + 1) + b)


def rand(shape, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


# ------------------------------------------------------------------------------------------------ reference values
@pytest.mark.parametrize("case_index", [0, 1])
def test_matches_pyramid_reference_json(case_index):
    ref = json.loads(REF_JSON.read_text())
    case = ref["cases"][case_index]
    assert "phase=0.0" in ref["input_formula"] and "real: phase=0.5" in ref["input_formula"]
    fake = torch.from_numpy(formula_input(case["shape"], 0.0))
    real = torch.from_numpy(formula_input(case["shape"], 0.5))
    levels = P.pyramid_levels(fake, 4)
    assert [list(t.shape) for t in levels] == case["level_shapes"]
    total, per_level = P.pyramid_l1(fake, real, [1, 2, 3, 4])
    for got, want in zip(per_level, case["l1_per_level"]):
        assert got.dtype == torch.float64
        assert abs(got.item() - want) < 1e-6
    assert abs(total.item() - sum(case["l1_per_level"])) < 1e-6


def test_kernel_is_hand_computed_gaussian():
    e = math.exp(-0.5)
    want = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)
    got = P.gaussian_kernel1d(3, 1.0)
    assert torch.allclose(got, want, rtol=0, atol=1e-15)
    assert P.gaussian_kernel1d(5, 2.0).sum().item() == pytest.approx(1.0, abs=1e-15)


# ----------------------------------------------------------------------------------------- border convention pinned
def test_reflect_border_is_scipy_mirror_not_scipy_reflect():
    x = rand((1, 1, 6, 7), 0)
    got = P.gaussian_blur(x).numpy()[0, 0]
    k2 = np.outer(ref_kernel(), ref_kernel())
    mirror = ndi.convolve(x.numpy()[0, 0], k2, mode="mirror")
    scipy_reflect = ndi.convolve(x.numpy()[0, 0], k2, mode="reflect")
    np.testing.assert_allclose(got, mirror, rtol=0, atol=1e-13)
    # the borders differ with scipy's 'reflect' (edge repeated); the interior does not
    assert np.abs(got[0, :] - scipy_reflect[0, :]).max() > 1e-4
    np.testing.assert_allclose(got[1:-1, 1:-1], scipy_reflect[1:-1, 1:-1], rtol=0, atol=1e-13)
    # and it is numpy.pad(mode='reflect') followed by a 'valid' correlation, computed by hand at the corner
    padded = np.pad(x.numpy()[0, 0], 1, mode="reflect")
    assert got[0, 0] == pytest.approx(float((padded[0:3, 0:3] * k2).sum()), abs=1e-13)


@pytest.mark.parametrize("pad,size", [(1, 2), (1, 5), (2, 3), (2, 6)])
def test_reflect_pad_equals_torch_and_numpy_reflect(pad, size):
    x = rand((2, 3, size, size + 1), 20)
    got = P._reflect_pad_axis(P._reflect_pad_axis(x, pad, dim=2), pad, dim=3)
    assert torch.equal(got, torch.nn.functional.pad(x, (pad,) * 4, mode="reflect"))
    np.testing.assert_array_equal(got.numpy(), np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), "reflect"))


def test_blur_other_kernel_matches_scipy_mirror():
    x = rand((1, 2, 7, 9), 21)
    xx = np.arange(-2, 3)
    k = np.exp(-xx ** 2 / (2 * 1.5 ** 2))
    k /= k.sum()
    want = ndi.convolve1d(ndi.convolve1d(x.numpy(), k, axis=-2, mode="mirror"), k, axis=-1, mode="mirror")
    np.testing.assert_allclose(P.gaussian_blur(x, 5, 1.5).numpy(), want, rtol=0, atol=1e-13)
    assert torch.equal(P.gaussian_blur(x, 1, 0.7), x)


def test_conv_path_used_off_cpu_matches_shift_path():
    # the accelerator path (pad + conv2d) is exercised here on CPU by calling it directly
    for shape in [(1, 2, 37, 53), (2, 3, 2, 5)]:
        x = rand(shape, 22)
        want = ref_blur(x.numpy())
        np.testing.assert_allclose(P._blur_conv(x, 3, 1.0, 1).numpy(), want, rtol=0, atol=1e-13)
        np.testing.assert_allclose(P._blur_shift_add(x, P._cached_taps(3, 1.0), 1).numpy(), want, rtol=0, atol=1e-13)
    x32 = rand((1, 3, 8, 8), 23, torch.float32)
    assert P._blur_conv(x32, 3, 1.0, 1).dtype == torch.float32
    assert P._cached_kernel2d(3, 1.0, torch.float32, x32.device) is P._cached_kernel2d(3, 1.0, torch.float32,
                                                                                        x32.device)


def test_blur_of_constant_is_constant_and_keeps_shape_dtype():
    x = torch.full((2, 3, 5, 4), 0.25, dtype=torch.float32)
    y = P.gaussian_blur(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.allclose(y, x, atol=1e-6)


# ----------------------------------------------------------------------------------------- independent comparisons
@pytest.mark.parametrize("shape", [(1, 2, 37, 53), (1, 1, 5, 5), (3, 1, 16, 9), (2, 4, 8, 33), (2, 3, 33, 70)])
def test_levels_and_l1_match_scipy_reference(shape):
    fake, real = rand(shape, 1), rand(shape, 2)
    got_levels = P.pyramid_levels(fake, 4)
    want_levels = ref_levels(fake.numpy(), 4)
    for g, w in zip(got_levels, want_levels):
        assert tuple(g.shape) == w.shape
        np.testing.assert_allclose(g.numpy(), w, rtol=0, atol=1e-12)
    _, per_level = P.pyramid_l1(fake, real, [1, 2, 3, 4])
    np.testing.assert_allclose([s.item() for s in per_level], ref_l1(fake.numpy(), real.numpy(), 4),
                               rtol=0, atol=1e-12)


def test_level_sizes_are_ceil_halves():
    x = rand((1, 1, 37, 53), 3)
    assert [tuple(t.shape[-2:]) for t in P.pyramid_levels(x, 4)] == [(37, 53), (19, 27), (10, 14), (5, 7)]
    assert P.pyramid_levels(x, 1)[0] is x


def test_downsample_keeps_index_zero():
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 1, 5, 7)
    y = P.downsample2(x)
    assert y.shape == (1, 1, 3, 4)
    assert y[0, 0].tolist() == [[0, 2, 4, 6], [14, 16, 18, 20], [28, 30, 32, 34]]


def test_weighted_total_and_level_order():
    fake, real = rand((2, 3, 20, 18), 4), rand((2, 3, 20, 18), 5)
    ref = ref_l1(fake.numpy(), real.numpy(), 4)
    total, per_level = P.pyramid_l1(fake, real, [3, 1, 4], weights=[2.0, 0.5, 25.0])
    assert [s.item() for s in per_level] == pytest.approx([ref[2], ref[0], ref[3]], abs=1e-12)
    assert total.item() == pytest.approx(2.0 * ref[2] + 0.5 * ref[0] + 25.0 * ref[3], abs=1e-11)
    module_total, _ = P.PyramidL1Loss([3, 1, 4], [2.0, 0.5, 25.0])(fake, real)
    assert module_total.item() == pytest.approx(total.item(), abs=1e-14)


def test_only_needed_levels_are_computed():
    # a 2x2 image supports levels 1-2 only; asking for [2, 1] must not try to blur a 1x1 octave
    fake, real = rand((1, 1, 2, 2), 6), rand((1, 1, 2, 2), 7)
    _, per_level = P.pyramid_l1(fake, real, [2, 1])
    assert [s.item() for s in per_level] == pytest.approx(ref_l1(fake.numpy(), real.numpy(), 2)[::-1], abs=1e-12)
    with pytest.raises(ValueError, match="too small"):
        P.pyramid_l1(fake, real, [1, 3])


def test_identical_inputs_give_exact_zero():
    x = rand((2, 3, 17, 23), 8)
    total, per_level = P.pyramid_l1(x, x.clone(), [1, 2, 3, 4], weights=[1, 25, 25, 25])
    assert total.item() == 0.0 and all(s.item() == 0.0 for s in per_level)


# ------------------------------------------------------------------------------------------------------- gradients
def test_gradcheck_wrt_fake_and_real_gets_no_grad():
    fake = rand((1, 2, 6, 7), 9).requires_grad_(True)
    real = rand((1, 2, 6, 7), 10).requires_grad_(True)

    def f(fk):
        return P.pyramid_l1(fk, real, [1, 2, 3, 4], weights=[1.0, 2.0, 3.0, 4.0])[0]

    assert torch.autograd.gradcheck(f, (fake,), eps=1e-6, atol=1e-6)
    total, _ = P.pyramid_l1(fake, real, [2, 4])
    total.backward()
    assert real.grad is None
    assert fake.grad is not None and fake.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_low_precision_dtypes_run(dtype, atol):
    fake64, real64 = rand((2, 3, 32, 24), 11), rand((2, 3, 32, 24), 12)
    ref = ref_l1(fake64.numpy(), real64.numpy(), 4)
    fake = fake64.to(dtype).requires_grad_(True)
    total, per_level = P.pyramid_l1(fake, real64.to(dtype), [1, 2, 3, 4])
    assert total.dtype == dtype and all(s.dtype == dtype for s in per_level)
    assert [s.float().item() for s in per_level] == pytest.approx(ref, abs=atol)
    total.backward()
    assert fake.grad.dtype == dtype and torch.isfinite(fake.grad.float()).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    fake, real = rand((1, 3, 31, 30), 13), rand((1, 3, 31, 30), 14)
    cpu = P.pyramid_l1(fake, real, [1, 2, 3, 4])[0]
    gpu = P.pyramid_l1(fake.cuda(), real.cuda(), [1, 2, 3, 4])[0]
    assert gpu.device.type == "cuda" and gpu.item() == pytest.approx(cpu.item(), abs=1e-10)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        fk = fake.cuda().to(dtype).requires_grad_(True)
        total, _ = P.pyramid_l1(fk, real.cuda().to(dtype), [1, 2, 3, 4])
        total.backward()
        assert total.dtype == dtype and total.float().item() == pytest.approx(cpu.item(), abs=3e-2)


# ------------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("levels,weights", [([], None), ([1, 1], None), ([0, 2], None), ([1, 2], [1.0])])
def test_bad_levels_or_weights_raise(levels, weights):
    x = rand((1, 1, 8, 8), 15)
    with pytest.raises(ValueError):
        P.pyramid_l1(x, x, levels, weights)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ"):
        P.pyramid_l1(rand((1, 3, 8, 8), 0), rand((1, 3, 8, 9), 1), [1, 2])


# --------------------------------------------------------------------------------------------------------- pattern
@pytest.mark.parametrize("pattern,want", [("L1", [1]), ("L1_L2_L3_L4", [1, 2, 3, 4]), ("L4_L2", [2, 4]),
                                          ("L3_L1_L2", [1, 2, 3])])
def test_parse_pattern_valid(pattern, want):
    assert P.parse_pattern(pattern) == want


@pytest.mark.parametrize("pattern,bad", [("", "''"), ("L1__L2", "''"), ("L5", "'L5'"), ("L1_L1", "'L1'"),
                                         ("l1", "'l1'"), ("L1_", "''"), ("_L2", "''"), ("L1_L2_X", "'X'"),
                                         ("L1 ", "'L1 '")])
def test_parse_pattern_errors(pattern, bad):
    with pytest.raises(OptionError) as info:
        P.parse_pattern(pattern)
    msg = str(info.value)
    assert "--pattern" in msg
    assert all(t in msg for t in P.PYRAMID_TOKENS)
    if bad != "''":
        assert bad in msg
    else:
        assert "empty token" in msg
    assert isinstance(info.value, UserError)


# ----------------------------------------------------------------------------------------------- image-size rules
def _smallest_working_side(max_level: int) -> int:
    """Brute force: the smallest square side the chain accepts (a ValueError from torch's reflect pad otherwise)."""
    for n in range(1, 64):
        x = torch.zeros(1, 1, n, n)
        try:
            cur = x
            for _ in range(max_level - 1):  # bypass pyramid_levels' own check: call the primitives
                for _ in range(4):
                    cur = torch.nn.functional.pad(cur, (1, 1, 1, 1), mode="reflect")[..., 1:-1, 1:-1]
                cur = cur[..., ::2, ::2]
            return n
        except RuntimeError:
            continue
    raise AssertionError("no size works")


@pytest.mark.parametrize("max_level", [1, 2, 3, 4, 5])
def test_min_image_size_is_the_smallest_that_works(max_level):
    need = P.min_image_size(max_level)
    assert need == _smallest_working_side(max_level)
    P.pyramid_levels(torch.zeros(1, 1, need, need + 3), max_level)  # works at the bound
    P.check_image_size(need, need, max_level)
    if need > 1:
        with pytest.raises(OptionError) as info:
            P.check_image_size(need + 10, need - 1, max_level)
        msg = str(info.value)
        for part in (f"{need + 10}x{need - 1}", f"at least {need}", "--crop_size", "--load_size", "--pattern",
                     f"L{max_level}"):
            assert part in msg
        with pytest.raises(ValueError, match="too small"):
            P.pyramid_levels(torch.zeros(1, 1, need - 1, 40), max_level)


def test_min_image_size_known_values_and_bad_input():
    assert [P.min_image_size(k) for k in (1, 2, 3, 4)] == [1, 2, 3, 5]
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            P.min_image_size(bad)


def test_bad_tensors_raise():
    with pytest.raises(ValueError):
        P.gaussian_blur(torch.zeros(3, 8, 8))
    with pytest.raises(TypeError):
        P.gaussian_blur(torch.zeros(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError):
        P.gaussian_blur(torch.zeros(1, 1, 8, 8), kernel_size=4)
