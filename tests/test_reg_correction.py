"""--reg_correction (RegGAN) and --lambda_dab wired into pix2pix / pyramidpix2pix: the objective re-derived from the
pure functions, netR trained by its own optimizer, saved in the checkpoint set and resumed exactly, test.py unaffected."""
from __future__ import annotations

import pytest
import torch

import options
import test as test_script
import train
from models import create_model
from models.dab_loss import dab_loss
from models.networks.registration import warp
from models.pyramid import pyramid_l1
from models.registration_losses import smoothness_loss
from tests.conftest import train_args


def _model(root, model, extra=()):
    opt = options.parse_train(["--dataroot", str(root), "--model", model, "--ngf", "4", "--ndf", "4",
                               "--netG", "resnet_6blocks", "--netR_nf", "4", *extra])
    torch.manual_seed(0)
    m = create_model(opt)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    m.set_input({"A": a, "B": b, "A_paths": ["x", "y"], "B_paths": ["x", "y"]})
    return m, b


def _perturb_R(m):
    with torch.no_grad():  # a visibly non-zero field, so the warp matters in the checks
        m.netR.flow.weight.normal_(0, 0.05)
        m.netR.flow.bias.copy_(torch.tensor([0.7, -0.4]))


def test_pix2pix_objective_with_reg_and_dab(sample_bci):
    m, b = _model(sample_bci, "pix2pix", ["--reg_correction", "--lambda_corr", "7", "--lambda_smooth", "3",
                                          "--lambda_dab", "2", "--dab_block_size", "8"])
    assert m.model_names == ["G", "D", "R"] and m.optimizers[-1] is m.optimizer_R
    assert m.loss_names[-4:] == ["G_DAB", "G_smooth", "R_mean_px", "R_max_px"]
    _perturb_R(m)
    m.forward()
    total = m.compute_G_loss()
    with torch.no_grad():
        fake = m.fake_B.detach()
        flow = m.netR(fake, b)
        warped = warp(fake, flow)
        l1 = (warped - b).abs().mean() * 7
        smooth = smoothness_loss(flow) * 3
        dab = dab_loss(warped, b, block_size=8) * 2
        mag = torch.sqrt(flow[:, 0] ** 2 + flow[:, 1] ** 2)
    torch.testing.assert_close(m.loss_G_L1.detach(), l1)
    torch.testing.assert_close(m.loss_G_smooth.detach(), smooth)
    torch.testing.assert_close(m.loss_G_DAB.detach(), dab)
    torch.testing.assert_close(total.detach(), (m.loss_G_GAN + l1 + smooth + dab).detach())
    assert float(m.loss_R_max_px) == pytest.approx(float(mag.max()), rel=1e-5)
    assert float(m.loss_R_mean_px) == pytest.approx(float(mag.mean()), rel=1e-5)
    assert float(m.loss_R_max_px) > 0.5
    m.compute_visuals()
    assert m.flow_R.shape == (1, 3, 32, 32) and m.flow_R.min() >= -1 and m.flow_R.max() <= 1


def test_pyramid_octaves_compare_the_warped_image(sample_bci):
    m, b = _model(sample_bci, "pyramidpix2pix", ["--reg_correction", "--pattern", "L1_L3", "--weight_L3", "5"])
    _perturb_R(m)
    m.forward()
    total = m.compute_G_loss()
    with torch.no_grad():
        flow = m.netR(m.fake_B, b)
        _, (s1, s3) = pyramid_l1(warp(m.fake_B, flow), b, [1, 3])
    torch.testing.assert_close(m.loss_G_L1.detach(), 20 * s1)  # RegGAN's Corr_lamda replaces lambda_L1
    torch.testing.assert_close(m.loss_G_L3.detach(), 5 * s3)
    torch.testing.assert_close(total.detach(), (m.loss_G_GAN + 20 * s1 + 5 * s3 + m.loss_G_smooth).detach())
    assert not hasattr(m, "loss_G_DAB")


def test_off_by_default_and_defaults_are_reggans(sample_bci):
    m, _ = _model(sample_bci, "pyramidpix2pix")
    assert m.model_names == ["G", "D"] and len(m.optimizers) == 2 and "G_smooth" not in m.loss_names
    assert (m.opt.lambda_corr, m.opt.lambda_smooth, m.opt.lr_R, m.opt.lambda_dab) == (20.0, 10.0, 1e-4, 0.0)


def test_step_trains_R(sample_bci):
    m, _ = _model(sample_bci, "pix2pix", ["--reg_correction"])
    before = {k: v.clone() for k, v in m.netR.state_dict().items()}
    m.train_step()
    changed = [k for k, v in m.netR.state_dict().items() if not torch.equal(v, before[k])]
    assert "flow.weight" in changed and m.optimizer_R.state


@pytest.mark.parametrize("bad", [["--lambda_smooth", "-1"], ["--dab_hist_bins", "1"], ["--dab_gamma", "0.5"]])
def test_bad_values_are_option_errors(sample_bci, tmp_path, capsys, bad):
    rc = train.main(train_args(sample_bci, tmp_path, extra=["--reg_correction", *bad]))
    assert rc == 2
    assert bad[0] in capsys.readouterr().err


def test_netR_saved_resumed_exactly_and_test_uses_G_only(sample_bci, tmp_path):
    ck = tmp_path / "ck"
    extra = ["--max_dataset_size", "2", "--batch_size", "1", "--reg_correction", "--lambda_dab", "1",
             "--netR_nf", "4", "--norm", "batch", "--print_freq", "1", "--display_freq", "1"]

    def run(name, n, more=()):
        return train.main(train_args(sample_bci, ck, name=name, model="pyramidpix2pix",
                                     extra=[*extra, "--n_epochs", str(n), *more]))

    assert run("straight", 2) == 0
    assert run("resumed", 1) == 0
    assert run("resumed", 2, ["--continue_train"]) == 0
    for run_name in ("straight", "resumed"):
        assert (ck / run_name / "latest_net_R.pth").is_file()
    for net in ("G", "R"):
        a = torch.load(ck / "straight" / f"latest_net_{net}.pth", weights_only=True)
        b = torch.load(ck / "resumed" / f"latest_net_{net}.pth", weights_only=True)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{net} {k}")
    state = torch.load(ck / "straight" / "latest_state.pth", weights_only=True)
    assert len(state["optimizers"]) == 3
    log = (ck / "straight" / "loss_log.txt").read_text()
    for name in ("G_DAB", "G_smooth", "R_mean_px", "R_max_px"):
        assert name in log
    assert list((ck / "straight" / "web" / "images").glob("*flow_R.png"))
    assert "flow_R" in (ck / "straight" / "web" / "index.html").read_text()
    res = tmp_path / "res"
    assert test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(ck), "--name", "straight",
                             "--results_dir", str(res), "--num_threads", "0", "--gpu_ids", "-1"]) == 0
    imgs = sorted(p.name for p in (res / "straight" / "test_latest" / "images").iterdir())
    assert imgs and all(p.endswith(("_real_A.png", "_fake_B.png", "_real_B.png")) for p in imgs)


def test_asp_with_reg_correction_and_dab_trains_and_resumes(sample_bci, tmp_path):
    """ASP is paired: --reg_correction warps the virtual IHC for its Gaussian-pyramid L1 (and the DAB loss); netR is
    saved with the checkpoint set and a resumed run matches an uninterrupted one."""
    from util.checkpoint import open_set

    extra = ["--n_layers_D", "3", "--max_dataset_size", "2", "--reg_correction", "--lambda_dab", "1",
             "--netR_nf", "4", "--print_freq", "1", "--preprocess", "none"]

    def run(name, epochs, resume=False):
        argv = train_args(sample_bci, tmp_path, name=name, model="asp",
                          extra=extra + ["--n_epochs", str(epochs), "--n_epochs_decay", "0"]
                          + (["--continue_train"] if resume else []))
        assert train.main(argv) == 0

    run("straight", 2)
    run("resumed", 1)
    run("resumed", 2, resume=True)
    cs = open_set(tmp_path / "straight", "latest")
    assert "R" in cs.manifest["networks"] and "latest_net_R.pth" in cs.manifest["files"]
    log = (tmp_path / "straight" / "loss_log.txt").read_text()
    assert "R_mean_px" in log and "G_DAB" in log and "G_smooth" in log
    for net in ("G", "R", "F"):
        a = torch.load(tmp_path / "straight" / f"latest_net_{net}.pth", weights_only=True)
        b = torch.load(tmp_path / "resumed" / f"latest_net_{net}.pth", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), net
