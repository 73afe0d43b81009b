"""CPU inference fast paths (models.backends.torch_cpu_generator, onnxruntime) against eager float32 on real H&E:
max absolute difference and PSNR between the two outputs (models.export.compare_outputs), as scripts/bench_infer.py
reports them. Bounds: float32 paths within float32 rounding amplified through the network (< 1e-4 on [-1, 1]),
bf16 (8-bit mantissa) above 35 dB (measured 38.9 dB on this small random network with batch-norm statistics from
real tiles; broken layouts or weights give ~10 dB)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.backends import TORCH_CPU_OPTIONS, torch_cpu_generator
from models.export import compare_outputs
from models.networks import define_G
from util.errors import OptionError


def _tiles():
    from wsi.reader import open_slide

    with open_slide("samples/cmu_small_region.svs") as s:
        a = np.stack([s.read_region(1100, 1300, 0, 64, 64), s.read_region(600, 900, 0, 64, 64)])
    return torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def state():
    """resnet_6blocks ngf 8 (blocks at 32 channels: Winograd-eligible), batch-norm statistics from real tiles."""
    torch.manual_seed(0)
    net = define_G(3, 3, 8, "resnet_6blocks", "batch", False, "normal", 0.1)
    net.train()
    with torch.no_grad():
        net(_tiles())
    return net.state_dict()


def _net(state):
    net = define_G(3, 3, 8, "resnet_6blocks", "batch", False)
    net.load_state_dict(state)
    return net.eval()


@pytest.mark.parametrize("option, max_diff, min_psnr", [("channels_last", 1e-4, 80.0), ("winograd", 1e-4, 80.0),
                                                        ("bf16", 0.5, 35.0)])
def test_torch_options_against_eager(state, option, max_diff, min_psnr):
    x = _tiles()
    ref = torch_cpu_generator(_net(state), "eager")(x).numpy()
    assert ref.std() > 0.05  # outputs that span the range, not a constant
    net = _net(state)
    out = torch_cpu_generator(net, option)(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    r = compare_outputs(ref, out.numpy())
    assert r["max_abs_diff"] < max_diff and r["psnr_db"] > min_psnr
    if option == "winograd":
        from models.networks.winograd import WinogradConv2d

        assert sum(isinstance(m, WinogradConv2d) for m in net.modules()) == 12


def test_onnxruntime_against_eager(state, tmp_path):
    pytest.importorskip("onnxruntime")
    from models.backends import OnnxGenerator
    from models.export import example_input, export_onnx

    x = _tiles()
    ref = torch_cpu_generator(_net(state), "eager")(x).numpy()
    export_onnx(_net(state), tmp_path / "g.onnx", example_input(3, 4))
    r = compare_outputs(ref, OnnxGenerator(tmp_path / "g.onnx")(x).numpy())
    assert r["max_abs_diff"] < 1e-4 and r["psnr_db"] > 80.0


def test_unknown_option():
    assert "eager" in TORCH_CPU_OPTIONS
    with pytest.raises(OptionError, match="fp8"):
        torch_cpu_generator(torch.nn.Identity(), "fp8")
