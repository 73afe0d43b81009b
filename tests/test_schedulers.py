"""Learning-rate policies; the linear policy is pinned to lr * (1 - max(0, e - N) / (M + 1)) for 1-based epoch e."""
import pytest
import torch

from models.networks.schedulers import get_scheduler, linear_lr
from util.errors import OptionError


def _opt(lr=0.1):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize("N,M", [(3, 4), (1, 1), (5, 0), (50, 50)])
def test_linear_exact(N, M):
    o = _opt(0.0002)
    s = get_scheduler(o, "linear", N, M)
    for e in range(1, N + M + 1):
        expected = 0.0002 * (1 - max(0, e - N) / (M + 1))  # written out independently of linear_lr
        assert o.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert linear_lr(0.0002, e, N, M) == pytest.approx(expected, rel=1e-12)
        o.step()
        s.step()
    assert o.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # e = N + M + 1 would train at 0


def test_linear_epoch_count_offsets():
    o = _opt(1.0)
    s = get_scheduler(o, "linear", 2, 2, epoch_count=3)  # resuming at epoch 3 with a fresh scheduler
    assert o.param_groups[0]["lr"] == pytest.approx(1 - 1 / 3)
    o.step()
    s.step()
    assert o.param_groups[0]["lr"] == pytest.approx(1 - 2 / 3)


def test_step_and_cosine_and_plateau():
    o = _opt(1.0)
    s = get_scheduler(o, "step", 1, 1, lr_decay_iters=2)
    lrs = []
    for _ in range(5):
        lrs.append(o.param_groups[0]["lr"])
        o.step()
        s.step()
    assert lrs == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    o = _opt(1.0)
    s = get_scheduler(o, "cosine", 2, 2)
    for _ in range(2):
        o.step()
        s.step()
    assert o.param_groups[0]["lr"] == pytest.approx(0.5)  # half way through T_max = 4
    o = _opt(1.0)
    s = get_scheduler(o, "plateau", 1, 1)
    for _ in range(7):
        o.step()
        s.step(1.0)
    assert o.param_groups[0]["lr"] == pytest.approx(0.2)


def test_unknown_policy():
    with pytest.raises(OptionError, match="--lr_policy"):
        get_scheduler(_opt(), "exp", 1, 1)
