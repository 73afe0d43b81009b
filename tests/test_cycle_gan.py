"""CycleGAN model and image pool: one training step on unaligned data, test/evaluate CLIs, checkpoint layout, resume
state, option checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import models
import options
from models.image_pool import ImagePool
from util.errors import OptionError
from util.image_io import read_rgb_uint8

LAYOUTS = json.loads((Path(__file__).parent / "data" / "checkpoint_layouts.json").read_text())



@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from scripts.make_sample_dataset import DEFAULT_SOURCE, build

    return build(tmp_path_factory.mktemp("cg") / "bci", 64, 3, 2, 0, DEFAULT_SOURCE)


def _train_argv(root, ck, name="cg", extra=()):
    return ["--dataroot", str(root), "--name", name, "--model", "cycle_gan", "--ngf", "4", "--ndf", "4",
            "--n_epochs", "1", "--n_epochs_decay", "0", "--num_threads", "0", "--checkpoints_dir", str(ck),
            "--preprocess", "crop", "--crop_size", "32", "--seed", "0", "--no_html", "--print_freq", "1000",
            *extra]


# ------------------------------------------------------------------------------------------------------ image pool
def test_pool_size_zero_returns_input_object():
    pool = ImagePool(0)
    x = torch.randn(2, 3, 4, 4)
    assert pool.query(x) is x
    assert len(pool) == 0


def test_pool_negative_size_rejected():
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(-1)


def test_pool_fills_then_returns_a_mix():
    torch.manual_seed(0)
    pool = ImagePool(3)
    first = [torch.full((1, 1, 2, 2), float(i)) for i in range(3)]
    for img in first:  # while filling: returned unchanged
        assert torch.equal(pool.query(img), img)
    inserted = {float(i) for i in range(3)}
    returned_old, returned_new = 0, 0
    seen_old = set()
    for i in range(3, 43):
        img = torch.full((1, 1, 2, 2), float(i))
        out = pool.query(img)
        v = float(out.flatten()[0])
        assert out.shape == img.shape
        if v == float(i):
            returned_new += 1
        else:
            assert v in inserted, "an old image must come from the pool"
            assert v not in seen_old, "a returned pool image is replaced, so it comes back at most once"
            seen_old.add(v)
            returned_old += 1
        inserted.add(float(i))
        assert len(pool) == 3
    assert returned_old > 5 and returned_new > 5  # probability 1/2 each; seeded, so fixed


def test_pool_state_roundtrip_resumes_exactly(tmp_path):
    torch.manual_seed(1)
    a = ImagePool(4)
    for _ in range(6):
        a.query(torch.randn(2, 3, 4, 4))
    path = tmp_path / "pool.pth"
    torch.save(a.state_dict(), path)
    b = ImagePool(4)
    b.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(3, 3, 4, 4)
    rng = torch.get_rng_state()
    out_a = a.query(x)
    torch.set_rng_state(rng)
    out_b = b.query(x)
    assert torch.equal(out_a, out_b)
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(2).load_state_dict(a.state_dict())


# ------------------------------------------------------------------------------------------------ model: training
def test_defaults_follow_cyclegan():
    opt = options.parse_train(["--model", "cycle_gan", "--dataroot", "x"])
    assert (opt.netG, opt.norm, opt.no_dropout, opt.gan_mode, opt.dataset_mode, opt.pool_size) == \
        ("resnet_9blocks", "instance", True, "lsgan", "unaligned", 50)
    assert (opt.lambda_A, opt.lambda_B, opt.lambda_identity) == (10.0, 10.0, 0.5)
    assert options.parse_test(["--model", "cycle_gan", "--dataroot", "x"]).dataset_mode == "aligned"


def test_one_training_iteration_on_unaligned_data(sample, tmp_path):
    opt = options.parse_train(_train_argv(sample, tmp_path))
    dataset = data.create_dataset(opt)
    assert type(dataset).__name__ == "UnalignedDataset"
    batch = next(iter(data.create_dataloader(opt, dataset)))
    model = models.create_model(opt)
    model.setup(opt)
    before = {n: [p.detach().clone() for p in getattr(model, "net" + n).parameters()] for n in model.model_names}
    model.set_input(batch)
    model.optimize_parameters()
    losses = model.get_current_losses()
    assert list(losses) == ["D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"]
    assert all(np.isfinite(v) for v in losses.values())
    # the cycle loss is lambda_A * mean |G_B(G_A(A)) - A|
    assert losses["cycle_A"] == pytest.approx(10 * float((model.rec_A - model.real_A).abs().mean().detach()), rel=1e-5)
    for n, old in before.items():  # every network was updated
        assert any(not torch.equal(o, p) for o, p in zip(old, getattr(model, "net" + n).parameters())), n
    assert set(model.get_current_visuals()) >= {"real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B"}


def test_resume_state_holds_the_pools(sample, tmp_path):
    opt = options.parse_train(_train_argv(sample, tmp_path, extra=("--pool_size", "5")))
    batch = next(iter(data.create_dataloader(opt, data.create_dataset(opt))))
    model = models.create_model(opt)
    model.setup(opt)
    model.set_input(batch)
    model.optimize_parameters()
    assert len(model.fake_A_pool) == 1 and len(model.fake_B_pool) == 1
    model.save_training_state("latest", 1, 1)
    other = models.create_model(opt)
    other.setup(opt)
    other.load_training_state("latest")
    assert torch.equal(other.fake_B_pool.images[0], model.fake_B_pool.images[0])
    assert torch.equal(other.fake_A_pool.images[0], model.fake_A_pool.images[0])


def test_identity_loss_needs_equal_channels():
    with pytest.raises(OptionError, match="lambda_identity"):
        options.parse_train(["--model", "cycle_gan", "--dataroot", "x", "--input_nc", "1"])
    opt = options.parse_train(["--model", "cycle_gan", "--dataroot", "x", "--input_nc", "1", "--lambda_identity", "0"])
    assert opt.lambda_identity == 0


# ------------------------------------------------------------------------------------------------ checkpoint layout
def test_checkpoint_layout_matches_classic_cyclegan(tmp_path):
    opt = options.parse_train(["--model", "cycle_gan", "--dataroot", "x", "--checkpoints_dir", str(tmp_path),
                               "--name", "layout"])
    model = models.create_model(opt)
    model.save_networks("latest")
    g = torch.load(tmp_path / "layout" / "latest_net_G_A.pth", weights_only=True)
    # the reference lists the dropout variant (pad, conv, norm, relu, dropout, pad, conv): conv_block.6 -> .5 here
    want = {k.replace("conv_block.6.", "conv_block.5."): v for k, v in LAYOUTS["G/resnet_9blocks/instance"].items()}
    assert {k: list(v.shape) for k, v in g.items()} == want
    d = torch.load(tmp_path / "layout" / "latest_net_D_A.pth", weights_only=True)
    want_d = dict(LAYOUTS["D/basic/instance"])
    want_d["model.0.weight"] = [64, 3, 4, 4]  # unconditional: D_A sees B only (the reference D sees A and B)
    assert {k: list(v.shape) for k, v in d.items()} == want_d
    assert {p.name for p in (tmp_path / "layout").glob("latest_net_*.pth")} == \
        {f"latest_net_{n}.pth" for n in ("G_A", "G_B", "D_A", "D_B")}


# --------------------------------------------------------------------------------------------- test time and CLIs
def test_test_time_builds_only_G_A_for_aligned_data():
    opt = options.parse_test(["--model", "cycle_gan", "--dataroot", "x", "--ngf", "4"])
    model = models.create_model(opt)
    assert model.model_names == ["G_A"] and not hasattr(model, "netG_B")
    assert model.visual_names == ["real_A", "fake_B", "real_B"]
    model.eval()
    x = torch.rand(1, 3, 37, 45) * 2 - 1  # not a multiple of the stride 4: padded and cropped back
    model.set_input({"A": x, "B": x, "A_paths": ["a.png"], "B_paths": ["b.png"]})
    model.test()
    assert model.fake_B.shape == x.shape
    unaligned = models.create_model(options.parse_test(["--model", "cycle_gan", "--dataroot", "x", "--ngf", "4",
                                                         "--dataset_mode", "unaligned"]))
    assert unaligned.model_names == ["G_A", "G_B"]


def test_train_test_evaluate_end_to_end(sample, tmp_path, capsys):
    import evaluate
    import test as test_cli
    import train
    from models.inference import load_generator
    from util.image_io import uint8_to_tensor

    ck, res = tmp_path / "ck", tmp_path / "res"
    assert train.main(_train_argv(sample, ck, extra=("--max_dataset_size", "2"))) == 0
    exp = ck / "cg"
    assert {"latest_net_G_A.pth", "latest_net_G_B.pth", "latest_net_D_A.pth", "latest_net_D_B.pth",
            "latest_state.pth"} <= {p.name for p in exp.iterdir()}
    assert test_cli.main(["--dataroot", str(sample), "--name", "cg", "--model", "cycle_gan", "--checkpoints_dir",
                          str(ck), "--results_dir", str(res), "--num_threads", "0"]) == 0
    images = res / "cg" / "test_latest" / "images"
    names = sorted(p.name for p in images.iterdir())
    stems = sorted({n.rsplit("_", 2)[0] for n in names})
    assert len(stems) == 2
    assert names == sorted(f"{s}_{v}.png" for s in stems for v in ("real_A", "fake_B", "real_B"))
    # fake_B is G_A(real_A) from latest_net_G_A.pth (inference.py loads the same file)
    netG, _ = load_generator(ck, "cg")
    real_A = uint8_to_tensor(read_rgb_uint8(images / f"{stems[0]}_real_A.png")).unsqueeze(0)
    with torch.no_grad():
        expect = ((netG(real_A)[0].clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    got = read_rgb_uint8(images / f"{stems[0]}_fake_B.png").astype(np.float64)
    assert np.abs(got - expect).max() <= 1.0
    assert evaluate.main(["--result_path", str(res / "cg"), "--no_fid", "--num_workers", "1", "--no_progress"]) == 0
    metrics = json.loads((res / "cg" / "test_latest" / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and np.isfinite(metrics["psnr"])
    # --model test on the same run (no --model_suffix): loads G_A of the cycle_gan run, same fake_B
    assert test_cli.main(["--dataroot", str(sample), "--name", "cg", "--model", "test", "--checkpoints_dir",
                          str(ck), "--results_dir", str(tmp_path / "res_t"), "--num_threads", "0"]) == 0
    t_images = tmp_path / "res_t" / "cg" / "test_latest" / "images"
    assert sorted(p.name for p in t_images.iterdir()) == sorted(f"{s}_{v}.png" for s in stems
                                                                 for v in ("real_A", "fake_B"))
    for s in stems:
        np.testing.assert_array_equal(read_rgb_uint8(t_images / f"{s}_fake_B.png"),
                                      read_rgb_uint8(images / f"{s}_fake_B.png"))
