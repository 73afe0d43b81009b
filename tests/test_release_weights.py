"""Released weights: a folder with only latest_net_G.pth (in the authors' key layout, from
../shared/data/checkpoint_layouts.json) tests with `test.py --name NAME --model pyramidpix2pix`, with options from the
release's train_opt.txt when present, else from the command line and the release defaults; the log says which."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import test as test_script
from models.networks import define_G
from options.release import parse_opt_txt

LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "checkpoint_layouts.json"
if not LAYOUTS.is_file():
    LAYOUTS = Path("/work/shared/data/checkpoint_layouts.json")


def _release_state_dict(seed=0):
    """Random tensors with the released BCI generator's keys and shapes (resnet_9blocks, batch norm, ngf 64), without
    num_batches_tracked (as older PyTorch wrote them)."""
    if not LAYOUTS.is_file():
        pytest.skip("checkpoint_layouts.json is not available here")
    layout = json.loads(LAYOUTS.read_text())["G/resnet_9blocks/batch"]
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in layout.items():
        if k.endswith("num_batches_tracked"):
            continue
        t = torch.randn(*shape, generator=g) * 0.02
        if k.endswith("running_var"):
            t = t.abs() + 1.0
        sd[k] = t
    return sd


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    ck = tmp_path_factory.mktemp("release")
    (ck / "bci_release").mkdir()
    sd = _release_state_dict()
    torch.save(sd, ck / "bci_release" / "latest_net_G.pth")
    return ck, sd


def _reference(sd, he_png):
    """The generator built directly (not via test.py) with the release's architecture, in eval mode."""
    net = define_G(3, 3, 64, "resnet_9blocks", "batch", use_dropout=True)
    net.load_state_dict(sd, strict=False)
    net.eval()
    x = torch.from_numpy(np.array(Image.open(he_png).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        y = net(x)[0]
    return ((y.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()


def test_weights_only_folder_tests_with_release_defaults(release_dir, sample_bci, tmp_path, caplog):
    caplog.set_level("INFO")
    ck, sd = release_dir
    argv = ["--dataroot", str(sample_bci), "--name", "bci_release", "--model", "pyramidpix2pix", "--checkpoints_dir",
            str(ck), "--results_dir", str(tmp_path), "--num_threads", "0", "--num_test", "1", "--page_scores", "none"]
    assert test_script.main(argv) == 0
    assert any("command line and the model's defaults" in r.getMessage() for r in caplog.records)
    out = tmp_path / "bci_release" / "test_latest" / "images"
    fake = sorted(out.glob("*_fake_B.png"))
    assert len(fake) == 1
    stem = fake[0].name[: -len("_fake_B.png")]
    ref = _reference(sd, sample_bci / "HE" / "test" / f"{stem}.png")
    got = np.asarray(Image.open(fake[0])).astype(float)
    assert np.abs(got - ref).max() <= 1.0  # uint8 rounding only: the released weights were used


def test_release_train_opt_txt_is_used_and_named(release_dir, sample_bci, tmp_path, caplog):
    caplog.set_level("INFO")
    ck, _ = release_dir
    from options import build_parser, format_options, parse_train

    opt = parse_train(["--dataroot", "x", "--model", "pyramidpix2pix", "--ngf", "64"])
    txt = format_options(opt, build_parser(True, ["--model=pyramidpix2pix"]))
    (ck / "bci_txt").mkdir()
    (ck / "bci_txt" / "latest_net_G.pth").write_bytes((ck / "bci_release" / "latest_net_G.pth").read_bytes())
    (ck / "bci_txt" / "train_opt.txt").write_text(txt + "\n")
    assert parse_opt_txt(txt)["netG"] == "resnet_9blocks" and parse_opt_txt(txt)["ngf"] == "64"
    argv = ["--dataroot", str(sample_bci), "--name", "bci_txt", "--model", "pyramidpix2pix", "--checkpoints_dir",
            str(ck), "--results_dir", str(tmp_path), "--num_threads", "0", "--num_test", "1", "--page_scores", "none"]
    assert test_script.main(argv) == 0
    assert any("network options from" in r.getMessage() and "train_opt.txt" in r.getMessage()
               for r in caplog.records)
    # the txt's values are typed and checked like train_opt.json's: a contradiction is an error
    assert test_script.main(argv + ["--ngf", "32"]) == 2


def test_missing_folder_is_a_clear_error(tmp_path, sample_bci, capsys):
    rc = test_script.main(["--dataroot", str(sample_bci), "--name", "nope", "--model", "pyramidpix2pix",
                           "--checkpoints_dir", str(tmp_path)])
    assert rc == 2 and "no checkpoint folder" in capsys.readouterr().err
