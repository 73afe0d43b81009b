"""Winograd F(4x4, 3x3) convolution (models/networks/winograd.py) against torch.nn.functional.conv2d."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import options
import train
from models.networks import define_G
from models.networks.winograd import WinogradConv2d, eligible, enable_winograd, use_winograd, winograd_conv3x3
from tests.conftest import train_args


@pytest.mark.parametrize("shape,k,padding", [
    ((2, 3, 6, 6), 4, 0),     # exactly one tile
    ((1, 5, 11, 13), 7, 0),   # odd sizes: partial tiles on both axes
    ((2, 4, 3, 3), 2, 0),     # 1x1 output
    ((1, 6, 9, 7), 3, 1),     # zero padding of the layer
    ((2, 8, 34, 34), 16, 0),  # the ResNet block shape (reflect-padded 32x32)
])
def test_equals_direct_convolution_in_float64(shape, k, padding):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(k, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(k, dtype=torch.float64, requires_grad=True)
    y = winograd_conv3x3(x, w, b, padding)
    ref = F.conv2d(x, w, b, padding=padding)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)
    g = torch.randn_like(ref)
    for got, want in zip(torch.autograd.grad(y, (x, w, b), g), torch.autograd.grad(ref, (x, w, b), g)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: winograd_conv3x3(a, b), (x, w))


def test_float32_error_is_bounded_and_documented():
    # the documented accuracy: ~1e-5 of the output range against float64 (direct float32 ~3e-7)
    torch.manual_seed(2)
    x = torch.randn(2, 64, 34, 34)
    w = torch.randn(64, 64, 3, 3) * 0.05
    ref = F.conv2d(x.double(), w.double())
    err = (winograd_conv3x3(x, w).double() - ref).abs().max() / ref.abs().max()
    direct = (F.conv2d(x, w).double() - ref).abs().max() / ref.abs().max()
    assert err < 5e-5 and direct < err  # float32, but not the same rounding as the direct algorithm


def test_keeps_memory_layout_and_only_input_grad_when_asked():
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 8, 3, 3)  # frozen weights (the discriminator in the generator step)
    y = winograd_conv3x3(x, w)
    assert y.is_contiguous(memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w).sum(), x)[0], rtol=1e-4, atol=1e-4)
    assert winograd_conv3x3(x.detach().contiguous(), w).is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_cropped_partial_tiles_are_dense_in_the_input_layout(channels_last):
    # 9x9 output: the last tile row/column is cropped; without a bias the result must still be a dense tensor
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(1, 8, 11, 11).contiguous(memory_format=fmt)
    y = winograd_conv3x3(x, torch.randn(8, 8, 3, 3))
    assert y.shape == (1, 8, 9, 9) and y.is_contiguous(memory_format=fmt)
    y.view(-1) if not channels_last else y.permute(0, 2, 3, 1).view(-1)


def test_inference_mode_first_then_double_backward():
    # the cached transform matrices must not become inference tensors when first built under inference_mode
    from models.networks import winograd

    winograd._MATS.clear()
    with torch.inference_mode():
        winograd_conv3x3(torch.randn(1, 2, 8, 8, dtype=torch.float64), torch.randn(2, 2, 3, 3, dtype=torch.float64))
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: winograd_conv3x3(a, b), (x, w))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="padding must be >= 0"):
        winograd_conv3x3(torch.zeros(1, 2, 9, 9), torch.zeros(4, 2, 3, 3), padding=-1)
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        winograd_conv3x3(torch.zeros(1, 2, 8, 8), torch.zeros(4, 2, 5, 5))
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        winograd_conv3x3(torch.zeros(1, 3, 8, 8), torch.zeros(4, 2, 3, 3))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        winograd_conv3x3(torch.zeros(1, 2, 2, 8), torch.zeros(4, 2, 3, 3))


def test_enable_switches_only_eligible_layers_and_keeps_checkpoint_keys():
    net = define_G(3, 3, 8, "resnet_6blocks", "batch", False, "normal", 0.02)  # blocks: 32 channels
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    assert enable_winograd(net) == 12  # 6 blocks x 2 convolutions; the 7x7 and strided layers stay direct
    assert sum(isinstance(m, WinogradConv2d) for m in net.modules()) == 12
    assert list(net.parameters()) == params  # same objects: optimizers built earlier stay valid
    sd = net.state_dict()
    assert sd.keys() == keys.keys() and all(torch.equal(sd[k], keys[k]) for k in sd)
    assert enable_winograd(net) == 0  # idempotent
    assert not eligible(nn.Conv2d(64, 64, 3, stride=2))
    assert not eligible(nn.Conv2d(64, 64, 3, dilation=2))
    assert not eligible(nn.Conv2d(64, 64, 3, padding=1, padding_mode="reflect"))
    assert not eligible(nn.Conv2d(16, 16, 3))  # too few channels to pay off
    assert eligible(nn.Conv2d(64, 64, 3, padding=1))


def test_module_matches_stock_layer_and_falls_back_outside_cpu_float32():
    torch.manual_seed(3)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=True)
    x = torch.randn(1, 32, 9, 10)
    ref = conv(x)
    enable_winograd(conv)
    assert isinstance(conv, WinogradConv2d)
    torch.testing.assert_close(conv(x), ref, rtol=1e-4, atol=1e-4)
    conv64 = conv.double()  # float64: the stock convolution, bit for bit
    assert torch.equal(conv64(x.double()), F.conv2d(x.double(), conv64.weight, conv64.bias, padding=1))
    conv = conv.float()
    unbatched = torch.randn(32, 6, 7)  # (C, H, W) as nn.Conv2d accepts
    torch.testing.assert_close(conv(unbatched), F.conv2d(unbatched, conv.weight, conv.bias, padding=1),
                               rtol=1e-4, atol=1e-4)
    with pytest.MonkeyPatch.context() as mp:  # traced by torch.compile: the stock convolution
        mp.setattr(torch.compiler, "is_compiling", lambda: True)
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # low precision: stock convolution
        y = conv(x)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("kw", [dict(stride=2, padding=1), dict(padding=1, padding_mode="reflect"),
                                dict(padding=(1, 0)), dict(dilation=2, padding=2), dict(groups=2, padding=1)])
def test_module_built_directly_with_other_settings_is_the_stock_convolution(kw):
    # WinogradConv2d is public: a configuration F(4x4,3x3) does not compute must not be computed as if it were
    torch.manual_seed(5)
    ref = nn.Conv2d(32, 32, 3, **kw)
    conv = WinogradConv2d(32, 32, 3, **kw)
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(1, 32, 8, 8)
    assert torch.equal(conv(x), ref(x))


def test_generator_with_winograd_matches_direct_forward_and_gradients():
    # a whole ResNet generator, output and every parameter gradient, against float64 direct convolution:
    # Winograd float32 stays within ~20x the error of direct float32 (documented)
    import copy

    torch.manual_seed(4)
    net = define_G(3, 3, 8, "resnet_6blocks", "instance", False, "normal", 0.02)
    x = torch.rand(2, 3, 36, 28) * 2 - 1  # 36x28: 9x7 at the blocks, partial tiles

    def outputs(n, xx):
        y = n(xx)
        return [y, *torch.autograd.grad(y.square().sum(), list(n.parameters()))]

    ref = outputs(copy.deepcopy(net).double(), x.double())
    direct = outputs(net, x)
    assert enable_winograd(net) == 12
    wino = outputs(net, x)
    checked = 0
    for r, d, w in zip(ref, direct, wino):
        scale = r.abs().max().item()
        if scale < 1e-6:  # conv biases before instance norm: the true gradient is 0, both results are noise
            continue
        err_w, err_d = ((w.double() - r).abs().max() / scale).item(), ((d.double() - r).abs().max() / scale).item()
        assert err_w < 3e-5 and err_w < 20 * err_d + 1e-7, (tuple(r.shape), err_w, err_d)
        checked += 1
    assert checked == 20  # output, 18 weight gradients, the last bias (no norm after it)


def test_train_with_winograd_end_to_end_and_checkpoint_loads_without_it(sample_bci, tmp_path, caplog):
    caplog.set_level("INFO")
    args = train_args(sample_bci, tmp_path / "ck", model="pyramidpix2pix",
                      extra=("--ngf", "8", "--winograd", "--channels_last"))
    assert train.main(args) == 0
    assert any("--winograd: 12 convolution(s) of netG" in r.getMessage() for r in caplog.records)
    ck = next((tmp_path / "ck").rglob("latest_net_G.pth"))
    plain = define_G(3, 3, 8, "resnet_6blocks", "batch", True, "normal", 0.02)
    plain.load_state_dict(torch.load(ck, weights_only=True))


def test_winograd_on_cuda_device_only_warns(caplog):
    net = define_G(3, 3, 8, "resnet_6blocks", "batch", False, "normal", 0.02)
    assert use_winograd(net, "netG", torch.device("cuda")) == 0
    assert "CPU fast path" in caplog.text and not any(isinstance(m, WinogradConv2d) for m in net.modules())
    assert use_winograd(net, "netG", torch.device("cpu"), compiling=True) == 12
    assert "no effect inside torch.compile" in caplog.text
    use_winograd(net, "netG", torch.device("cpu"), amp="bf16")
    assert "no effect under --amp bf16" in caplog.text


def test_option_is_parsed_and_on_by_default_for_cpu_float32_training():
    """--fast_cpu on (default): CPU float32 training gets --channels_last --winograd; --fast_cpu off, --amp and
    --compile keep the flags as given (issue 19)."""
    opt = options.parse_train(["--dataroot", "x", "--gpu_ids", "-1"])
    assert opt.winograd is True and opt.channels_last is True
    assert opt.fast_cpu_applied == ["--channels_last", "--winograd"]
    opt = options.parse_train(["--dataroot", "x", "--gpu_ids", "-1", "--fast_cpu", "off"])
    assert opt.winograd is False and opt.channels_last is False and opt.fast_cpu_applied == []
    assert options.parse_train(["--dataroot", "x", "--fast_cpu", "off", "--winograd"]).winograd is True
    for extra in (["--amp", "bf16"], ["--compile"]):
        opt = options.parse_train(["--dataroot", "x", "--gpu_ids", "-1", *extra])
        assert opt.winograd is False and opt.channels_last is False
    opt = options.parse_train(["--dataroot", "x", "--gpu_ids", "-1", "--channels_last"])  # given: not "applied"
    assert opt.fast_cpu_applied == ["--winograd"]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 2, 4])
def test_large_layers_are_computed_in_row_chunks_with_the_same_result(monkeypatch, channels_last, chunk_rows):
    """Tile tensors above _CHUNK_BYTES are computed a few tile rows at a time inside one autograd node (issue 19:
    heap fragmentation, page faults of large transient blocks); the output, the input gradient (tiles overlapping
    across chunk borders), the weight gradient (summed over chunks) and the memory layout are those of the direct
    convolution, also for an output gradient with zero strides (the backward of ``sum``)."""
    from models.networks import winograd

    # (36, N*rows*tw, C) float64 tiles of `chunk_rows` tile rows per chunk: 4 tile rows in all (13 rows of output)
    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 36 * 5 * 3 * 8 * 8 * chunk_rows)
    pieces = winograd._row_chunks(5, 4, 3, 8, 8)
    assert [r for _, r in pieces] == [chunk_rows] * (4 // chunk_rows)
    assert [r0 for r0, _ in pieces] == list(range(0, 4, chunk_rows))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 8, 13, 11, dtype=torch.float64, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 8, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = winograd_conv3x3(x, w, None, 1)
    ref = F.conv2d(x, w, None, padding=1)
    gy = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for a, b in zip((y, *torch.autograd.grad(y, (x, w), gy)), (ref, *torch.autograd.grad(ref, (x, w), gy))):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for a, b in zip(torch.autograd.grad(winograd_conv3x3(x, w, None, 1).sum(), (x, w)),
                    torch.autograd.grad(F.conv2d(x, w, None, padding=1).sum(), (x, w))):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_row_chunks_are_balanced_and_cover_every_tile_row(monkeypatch):
    from models.networks import winograd

    monkeypatch.setattr(winograd, "_CHUNK_BYTES", 16 * 2 ** 20)
    # the 256 px training step's residual blocks: (36, 2 x 16 x 16 tiles, 256) float32 = 18.9 MB -> 2 x 8 rows
    assert winograd._row_chunks(2, 16, 16, 256, 4) == [(0, 8), (8, 8)]
    for n, th, tw, c in ((1, 7, 5, 64), (2, 64, 64, 256), (3, 1, 9, 512), (2, 33, 33, 256)):
        pieces = winograd._row_chunks(n, th, tw, c, 4)
        assert [r0 for r0, _ in pieces] == [sum(r for _, r in pieces[:i]) for i in range(len(pieces))]
        rows = [r for _, r in pieces]
        assert sum(rows) == th and len(set(rows[:-1])) <= 1 and rows[-1] <= rows[0]  # equal, the last one shorter
        row_bytes = 36 * n * tw * c * 4
        assert all(r * row_bytes <= 16 * 2 ** 20 + row_bytes for r in rows)  # near the limit (one row at least)
