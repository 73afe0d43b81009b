"""Networks: classic checkpoint key layout, shapes, norms, inits, strides, and loading released-format checkpoints."""
import json
from pathlib import Path

import pytest
import torch

from models.networks import define_D, define_G, generator_stride
from models.networks.init import init_weights
from util.checkpoint import load_network, save_network
from util.errors import CheckpointError, OptionError

LAYOUTS = json.loads((Path(__file__).parent / "data" / "checkpoint_layouts.json").read_text())


def _build(key):
    kind, net, norm = key.split("/")
    if kind == "G":
        return define_G(3, 3, 64, net, norm, use_dropout=True)
    return define_D(6, 64, net, 3, norm)


@pytest.mark.parametrize("key", sorted(LAYOUTS))
def test_state_dict_layout_matches_released_checkpoints(key):
    net = _build(key)
    got = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert got == LAYOUTS[key]


@pytest.mark.parametrize("key", ["G/resnet_9blocks/batch", "G/unet_256/batch", "D/basic/batch"])
def test_released_layout_loads_without_num_batches_tracked(tmp_path, key):
    # a checkpoint as old PyTorch wrote it: same keys minus num_batches_tracked, random values of the listed shapes
    torch.manual_seed(0)
    sd = {k: torch.randn(s) if s else torch.tensor(0) for k, s in LAYOUTS[key].items()
          if not k.endswith("num_batches_tracked")}
    path = tmp_path / "latest_net.pth"
    torch.save(sd, path)
    net = _build(key)
    load_network(net, path)
    for k, v in sd.items():
        assert torch.equal(net.state_dict()[k], v.to(net.state_dict()[k].dtype))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    save_network(define_G(3, 3, 8, "resnet_6blocks", "instance"), path)
    with pytest.raises(CheckpointError, match="resnet|missing|unexpected|netG"):
        load_network(define_G(3, 3, 8, "unet_128", "instance"), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_network(define_G(3, 3, 8, "unet_128", "instance"), tmp_path / "nope.pth")


def test_checkpoint_round_trip_and_prefix(tmp_path):
    g = define_G(3, 3, 8, "resnet_6blocks", "batch", use_dropout=False)
    path = save_network(torch.nn.DataParallel(g), tmp_path / "x.pth")
    sd = torch.load(path, weights_only=True)
    assert not any(k.startswith("module.") for k in sd)
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "ddp.pth")
    g2 = define_G(3, 3, 8, "resnet_6blocks", "batch", use_dropout=False)
    load_network(g2, tmp_path / "ddp.pth")
    for k, v in g.state_dict().items():
        assert torch.equal(v, g2.state_dict()[k])


@pytest.mark.parametrize("netG,size", [("resnet_9blocks", 36), ("resnet_6blocks", 64), ("unet_128", 128),
                                       ("unet_256", 256)])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_generator_shapes_and_range(netG, size, norm):
    g = define_G(3, 1, 4, netG, norm).eval()
    x = torch.rand(1, 3, size, size + generator_stride(netG)) * 2 - 1
    y = g(x)
    assert y.shape == (1, 1, size, size + generator_stride(netG))
    assert y.min() >= -1 and y.max() <= 1


@pytest.mark.parametrize("netD,out", [("basic", 6), ("n_layers", 6), ("pixel", 64)])
def test_discriminator_patch_sizes(netD, out):
    d = define_D(6, 8, netD, 3, "instance")
    assert d(torch.zeros(2, 6, 64, 64)).shape == (2, 1, out, out)


def test_n_layers_changes_depth():
    shallow = define_D(6, 8, "n_layers", 1, "batch")
    # 64 -> 32 (stride 2) -> 31 (4x4, stride 1) -> 30 (output conv)
    assert shallow(torch.zeros(1, 6, 64, 64)).shape == (1, 1, 30, 30)


@pytest.mark.parametrize("init", ["normal", "xavier", "kaiming", "orthogonal"])
def test_inits(init):
    torch.manual_seed(0)
    g = define_D(6, 16, "basic", 3, "batch", init_type=init, init_gain=0.02)
    conv = g.model[2].weight
    bn = g.model[3]
    if init == "normal":
        assert abs(conv.std().item() - 0.02) < 0.003
    if init == "kaiming":  # std = sqrt(2 / fan_in)
        fan_in = conv.shape[1] * 16
        assert abs(conv.std().item() - (2 / fan_in) ** 0.5) / (2 / fan_in) ** 0.5 < 0.1
    if init == "orthogonal":
        w = conv.reshape(conv.shape[0], -1)
        torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]) * 0.02 ** 2, atol=1e-6, rtol=0)
    assert torch.all(g.model[0].bias == 0)
    assert abs(bn.weight.mean().item() - 1.0) < 0.02 and torch.all(bn.bias == 0)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(OptionError, match="resnet_9blocks"):
        define_G(3, 3, 8, "resnet_12blocks", "batch")
    with pytest.raises(OptionError, match="basic"):
        define_D(6, 8, "huge", 3, "batch")
    with pytest.raises(OptionError, match="--norm"):
        define_G(3, 3, 8, "unet_128", "group")
    with pytest.raises(OptionError, match="--init_type"):
        init_weights(torch.nn.Conv2d(1, 1, 1), "uniform")


@pytest.mark.parametrize("netG,bad_hw", [("resnet_6blocks", (66, 64)), ("resnet_6blocks", (64, 62)),
                                         ("unet_128", (64, 64)), ("unet_128", (128, 192))])
def test_generator_rejects_sizes_off_its_stride(netG, bad_hw):
    """Without the check a ResNet silently returns 68x64 for 66x64 and a U-Net fails deep inside (batch norm on a
    1x1 map, or a skip concatenation); the error names the size, the stride and the options to change."""
    g = define_G(3, 3, 4, netG, "batch")
    stride = generator_stride(netG)
    with pytest.raises(OptionError, match=rf"multiples of {stride} px, got {bad_hw[0]}x{bad_hw[1]}.*--crop_size"):
        g(torch.zeros(2, 3, *bad_hw))
