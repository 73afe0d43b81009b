"""scripts/export.py and --backend onnxruntime: a tiny generator exported to ONNX / TorchScript reproduces PyTorch on
real H&E tiles (checked here with onnxruntime directly, independently of the project's wrapper), the sidecar
describes it, an unexportable op is named, and test.py / stain_slide.py write the same images with either backend.

Tolerance: the exported graphs compute in float32 with other kernels (and batch norm folded into the convolutions),
so the outputs differ from PyTorch's by float32 rounding amplified through the network; asserted below
1e-3 in the [-1, 1] output range for these tiny networks (scripts/export.py's own default, 1/255, is half a grey
level), and 8-bit result images within one grey level.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

import test as test_script
from models import export as E
from models.inference import load_generator
from scripts import export as export_cli

onnxruntime = pytest.importorskip("onnxruntime")

SVS = "samples/cmu_small_region.svs"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny pix2pix run folder (resnet_6blocks, ngf 8, batch norm): weights drawn with gain 0.1 and running
    statistics gathered in train mode on real H&E, so that the outputs span the tanh range like a trained model's."""
    from models.networks import define_G
    from util.checkpoint import save_network

    ck = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    net = define_G(3, 3, 8, "resnet_6blocks", "batch", False, "normal", 0.1)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(_real_batch())
    (ck / "p2p").mkdir()
    save_network(net, ck / "p2p" / "latest_net_G.pth")
    opt = {"model": "pix2pix", "netG": "resnet_6blocks", "ngf": 8, "ndf": 8, "norm": "batch", "input_nc": 3,
           "output_nc": 3, "no_dropout": True, "init_type": "normal", "init_gain": 0.02, "direction": "AtoB",
           "preprocess": "none", "load_size": 64, "crop_size": 64}
    (ck / "p2p" / "train_opt.json").write_text(json.dumps(opt))
    return ck


@pytest.fixture(scope="module")
def onnx_file(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "g.onnx"
    assert export_cli.main(["--name", "p2p", "--checkpoints_dir", str(run), "--format", "onnx", "--output", str(out),
                            "--verify_tile", "64", "--verify_count", "2"]) == 0
    return out


def _real_batch():
    from wsi.reader import open_slide

    with open_slide(SVS) as s:  # real H&E, two regions of 64x96 px (not the size the export was traced at)
        a = np.stack([s.read_region(1100, 1300, 0, 96, 64), s.read_region(600, 900, 0, 96, 64)])
    return torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1.0


def test_onnx_export_matches_pytorch_and_sidecar(run, onnx_file):
    net, _ = load_generator(run, "p2p")
    x = _real_batch()
    with torch.no_grad():
        ref = net(x).numpy()
    sess = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == ref.shape == (2, 3, 64, 96)
    assert np.abs(got - ref).max() < 1e-3
    assert ref.std() > 0.01  # the network does something: the comparison is not between constants
    side = json.loads(onnx_file.with_name("g.onnx.json").read_text())
    assert side["format"] == "onnx" and side["opset"] == 17 and side["options"]["netG"] == "resnet_6blocks"
    assert side["checkpoint_sha256"] == hashlib.sha256((run / "p2p" / "latest_net_G.pth").read_bytes()).hexdigest()
    assert side["sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert side["input"]["range"] == [-1.0, 1.0] and side["stride"] == 4 and side["mode"] == "eval"
    v = side["verification"]
    assert v["tiles"] == 2 and v["tile_size"] == 64 and v["max_abs_diff"] <= v["tolerance"]
    assert v["images"][0] == "cmu_small_region.svs"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch(run, tmp_path):
    out = tmp_path / "g.pt"
    assert export_cli.main(["--name", "p2p", "--checkpoints_dir", str(run), "--format", "torchscript", "--output",
                            str(out), "--verify_tile", "64", "--verify_count", "1"]) == 0
    assert torch.is_grad_enabled()  # the export leaves the process's autograd mode alone
    net, _ = load_generator(run, "p2p")
    m = torch.jit.load(str(out))
    x = _real_batch()
    with torch.no_grad():
        assert torch.allclose(m(x), net(x), atol=1e-5)
    assert json.loads((tmp_path / "g.pt.json").read_text())["format"] == "torchscript"


def test_export_refuses_existing_output(run, onnx_file, capsys):
    before = onnx_file.read_bytes()
    rc = export_cli.main(["--name", "p2p", "--checkpoints_dir", str(run), "--format", "onnx", "--output",
                          str(onnx_file)])
    assert rc == 2 and str(onnx_file) in capsys.readouterr().err and onnx_file.read_bytes() == before


def test_custom_op_is_named_and_nothing_written(tmp_path):
    from models.networks import define_G
    from models.networks.winograd import enable_winograd

    net = define_G(3, 3, 8, "resnet_6blocks", "instance", False)  # blocks at 32 channels: Winograd-eligible
    assert enable_winograd(net) == 12
    with pytest.raises(E.ExportError, match=r"op '_Winograd3x3' in module 'model\.10\.conv_block\.1' \(WinogradConv2d\); op '_Winograd3x3' in "
                                               r"module 'model\.10\.conv_block\.5' \(WinogradConv2d\)"):
        E.export_onnx(net, tmp_path / "w.onnx", E.example_input(3, 4))
    with pytest.raises(E.ExportError, match="_Winograd3x3"):
        E.export_torchscript(net, tmp_path / "w.pt", E.example_input(3, 4))
    assert list(tmp_path.iterdir()) == []


def test_compare_outputs_psnr_by_hand():
    ref = np.zeros((2, 3, 4, 4), np.float32)
    r = E.compare_outputs(ref, ref + 0.02)  # MSE 4e-4, peak 2: 10 log10(4 / 4e-4) = 40 dB
    assert r["max_abs_diff"] == pytest.approx(0.02) and r["psnr_db"] == pytest.approx(40.0, abs=1e-4)
    assert E.compare_outputs(ref, ref)["psnr_db"] == float("inf")


def _pngs(folder):
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)).astype(int) for p in sorted(folder.glob("*_fake_B.png"))}


def test_test_py_backends_write_the_same_images(sample_bci, run, onnx_file, tmp_path):
    base = ["--dataroot", str(sample_bci), "--checkpoints_dir", str(run), "--name", "p2p", "--num_threads", "0"]
    assert test_script.main([*base, "--results_dir", str(tmp_path / "t")]) == 0
    assert test_script.main([*base, "--results_dir", str(tmp_path / "o"), "--backend", "onnxruntime",
                             "--onnx", str(onnx_file)]) == 0
    a = _pngs(tmp_path / "t" / "p2p" / "test_latest" / "images")
    b = _pngs(tmp_path / "o" / "p2p" / "test_latest" / "images")
    assert sorted(a) == sorted(b) and len(a) == 3
    assert max(np.abs(a[k] - b[k]).max() for k in a) <= 1


@pytest.mark.parametrize("extra, expect", [(["--backend", "onnxruntime"], "needs --onnx"),
                                           (["--onnx", "x.onnx"], "only used with --backend onnxruntime"),
                                           (["--backend", "onnxruntime", "--onnx", "missing.onnx"], "missing.onnx")])
def test_test_py_backend_option_errors(sample_bci, run, tmp_path, capsys, extra, expect):
    rc = test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(run), "--name", "p2p",
                           "--num_threads", "0", "--results_dir", str(tmp_path), *extra])
    assert rc == 2 and expect in capsys.readouterr().err


def test_export_above_tolerance_fails_and_leaves_nothing(run, tmp_path, capsys):
    out = tmp_path / "g.onnx"
    rc = export_cli.main(["--name", "p2p", "--checkpoints_dir", str(run), "--format", "onnx", "--output", str(out),
                          "--verify_tile", "64", "--verify_count", "1", "--tolerance", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "differs from PyTorch by up to" in err and "tolerance 0" in err
    assert list(tmp_path.iterdir()) == []
