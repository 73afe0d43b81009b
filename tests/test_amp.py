"""Mixed precision: autocast dtypes, one GradScaler per optimizer (fp16), the plain path unchanged with --amp none,
the non-finite guard (immediate and deferred), scaler state in the resume checkpoint, --amp end to end."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import options
import train
from models.amp import AmpState, amp_dtype
from models.base_model import BaseModel
from models.pix2pix_model import Pix2PixModel
from tests.conftest import TINY, train_args
from util.errors import NonFiniteLossError, OptionError
from util.finite_guard import FiniteGuard


def _pix2pix(amp="none", extra=()):
    opt = options.parse_train(["--model", "pix2pix", "--netG", "resnet_6blocks", "--norm", "instance", "--no_dropout",
                               "--seed", "0", "--amp", amp, "--checkpoints_dir", "/nonexistent", *TINY, *extra])
    torch.manual_seed(0)
    model = Pix2PixModel(opt)
    model.setup(opt)
    return model


def _batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(n, 3, size, size, generator=g) * 2 - 1, "B": torch.rand(n, 3, size, size, generator=g) * 2 - 1,
            "A_paths": ["a"] * n, "B_paths": ["b"] * n}


def test_amp_modes_and_errors():
    assert amp_dtype("none") is None and amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    with pytest.raises(OptionError, match="--amp"):
        amp_dtype("fp8")
    with pytest.raises(OptionError, match="--amp"):
        options.parse_train(["--amp", "int8"])


def test_amp_none_is_bitwise_the_plain_training_step():
    model = _pix2pix("none")
    ref = copy.deepcopy(model)
    model.set_input(_batch())
    model.train_step()
    # the pre-AMP code path, written out: D step then G step with plain backward/step
    ref.set_input(_batch())
    ref.forward()
    ref.set_requires_grad(ref.netD, True)
    ref.optimizer_D.zero_grad()
    ref.compute_D_loss().backward()
    ref.optimizer_D.step()
    ref.set_requires_grad(ref.netD, False)
    ref.optimizer_G.zero_grad()
    ref.compute_G_loss().backward()
    ref.optimizer_G.step()
    for a, b in zip(list(model.netG.parameters()) + list(model.netD.parameters()),
                    list(ref.netG.parameters()) + list(ref.netD.parameters())):
        assert torch.equal(a, b)
    assert model.fake_B.dtype == torch.float32 and not model.amp.scalers


def test_bf16_on_cpu_autocasts_forward_keeps_float32_weights():
    fp32, bf16 = _pix2pix("none"), _pix2pix("bf16")
    init = copy.deepcopy(fp32)
    for m in (fp32, bf16):
        m.set_input(_batch())
        m.train_step()
    assert bf16.fake_B.dtype == torch.bfloat16  # generator forward ran under autocast
    assert all(p.dtype == torch.float32 for p in bf16.netG.parameters())
    assert not bf16.amp.scalers  # bf16 needs no loss scaling
    for name in ("G_GAN", "G_L1", "D_real", "D_fake"):
        a, b = float(getattr(fp32, "loss_" + name).detach()), float(getattr(bf16, "loss_" + name).detach())
        assert b == pytest.approx(a, rel=0.05), name  # same loss up to bfloat16 rounding
    # Adam's first step is about -lr * sign(grad): the bf16 gradients point the same way for most conv weights
    agree = total = 0
    for p0, p, q in zip(init.netG.parameters(), fp32.netG.parameters(), bf16.netG.parameters()):
        if p.dim() == 4:
            agree += int((torch.sign(p - p0) == torch.sign(q - p0)).sum())
            total += p.numel()
    assert agree / total > 0.85


def test_fp16_one_scaler_per_optimizer_with_pytorch_defaults():
    model = _pix2pix("fp16")
    model.set_input(_batch())
    model.train_step()
    sg, sd = model.amp.scaler(model.optimizer_G), model.amp.scaler(model.optimizer_D)
    assert sg is not sd and len(model.amp.scalers) == 2
    for s in (sg, sd):  # torch.amp.GradScaler defaults: initial scale 2**16, halved on inf/NaN
        assert s.get_scale() in (2.0 ** 16, 2.0 ** 15)


def test_fp16_scaler_skips_inf_gradients_and_backs_off():
    amp = AmpState("fp16", torch.device("cpu"))
    lin = nn.Linear(2, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = [p.detach().clone() for p in lin.parameters()]
    with amp.autocast():
        loss = lin(torch.ones(1, 2)).float().sum() * 1e38  # x 2**16 overflows float32 -> inf gradients
    amp.backward(loss, opt)
    amp.step(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))  # step skipped
    assert amp.scaler(opt).get_scale() == 2.0 ** 15  # backoff_factor 0.5
    # a finite loss then steps normally
    opt.zero_grad()
    with amp.autocast():
        loss = lin(torch.ones(1, 2)).float().sum()
    amp.backward(loss, opt)
    amp.step(opt)
    torch.testing.assert_close(lin.bias.detach(), before[1] - 0.1, atol=1e-3, rtol=0)  # d(sum)/d(bias) = 1


class _NoHooks(BaseModel):
    def __init__(self, opt):
        super().__init__(opt)
        self.netL = nn.Linear(2, 1)
        self.model_names = ["L"]
        self.optimizers = [torch.optim.SGD(self.netL.parameters(), lr=0.1)]

    def optimize_parameters(self):
        loss = self.netL(torch.ones(1, 2)).float().sum()
        loss.backward()  # bypasses BaseModel.backward
        self.optimizers[0].step()


def test_fp16_with_a_model_that_bypasses_the_hooks_is_an_error():
    opt = options.parse_train(["--amp", "fp16", *TINY])
    with pytest.raises(OptionError, match="self.backward"):
        _NoHooks(opt).train_step()
    opt = options.parse_train(["--amp", "bf16", *TINY])
    _NoHooks(opt).train_step()  # bf16 needs no scaling: fine


def test_scaler_state_is_saved_and_restored(tmp_path):
    model = _pix2pix("fp16", ["--checkpoints_dir", str(tmp_path), "--name", "s"])
    model.set_input(_batch())
    model.train_step()
    model.amp.scaler(model.optimizer_G).update(new_scale=123.0)
    (tmp_path / "s").mkdir()
    model.save_training_state("latest", 1, 2)
    other = _pix2pix("fp16", ["--checkpoints_dir", str(tmp_path), "--name", "s"])
    other.load_training_state("latest")  # weights_only load: the scaler state is checkpoint-safe
    assert other.amp.scaler(other.optimizer_G).get_scale() == 123.0


class _Losses:
    device = torch.device("cpu")
    loss_names = ["a", "b"]

    def check_finite(self, epoch, iteration):
        return BaseModel.check_finite(self, epoch, iteration)


def test_deferred_guard_names_the_first_bad_iteration_only_when_checked():
    m = _Losses()
    guard = FiniteGuard(m, deferred=True)
    for it, (a, b) in enumerate([(1.0, 2.0), (1.0, float("nan")), (float("inf"), float("nan")), (1.0, 2.0)], 1):
        m.loss_a, m.loss_b = torch.tensor(a), torch.tensor(b)
        guard.record(epoch=3, iteration=10 * it)  # never raises in deferred mode
    with pytest.raises(NonFiniteLossError) as e:
        guard.check()
    msg = str(e.value)
    assert "iteration 20 " in msg and "epoch 3" in msg and "loss b = nan" in msg and "loss a" not in msg


def test_immediate_guard_raises_at_once():
    m = _Losses()
    guard = FiniteGuard(m, deferred=False)
    m.loss_a, m.loss_b = torch.tensor(1.0), torch.tensor(2.0)
    guard.record(1, 1)
    guard.check()
    m.loss_a = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteLossError, match="loss a = inf at epoch 1, iteration 2"):
        guard.record(1, 2)


def test_train_bf16_end_to_end_and_guard(sample_bci, tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck"
    args = train_args(sample_bci, ck, name="bf", model="pyramidpix2pix",
                      extra=["--amp", "bf16", "--max_dataset_size", "2", "--batch_size", "2"])
    assert train.main(args) == 0
    sd = torch.load(ck / "bf" / "latest_net_G.pth", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
    assert "G_L4" in (ck / "bf" / "loss_log.txt").read_text()

    orig = Pix2PixModel.compute_G_loss

    def poisoned(self):
        loss = orig(self)
        self.loss_G_GAN = self.loss_G_GAN * float("inf")
        return loss

    monkeypatch.setattr(Pix2PixModel, "compute_G_loss", poisoned)
    args = train_args(sample_bci, ck, name="nan", extra=["--amp", "bf16", "--max_dataset_size", "2",
                                                         "--batch_size", "1"])
    assert train.main(args) == 3
    err = capsys.readouterr().err
    assert "G_GAN" in err and "iteration 1" in err
    assert not list((ck / "nan").glob("*.pth"))
