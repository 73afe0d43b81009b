"""Learning-rate schedules (pix2pix names): linear, step, plateau, cosine.

The linear schedule is exact per epoch: with ``--n_epochs N --n_epochs_decay M`` and epochs counted from 1, epoch
``e`` trains at ``lr * (1 - max(0, e - N) / (M + 1))``. The scheduler is stepped once at the end of every epoch
(:meth:`models.base_model.BaseModel.update_learning_rate`), so epoch ``e`` sees ``last_epoch = e - 1``.
"""
from __future__ import annotations

from torch.optim import Optimizer, lr_scheduler

from util.errors import OptionError


class LinearDecay:
    """Multiplier of the linear policy as a picklable callable: ``f(last_epoch) = 1 - max(0, e - N) / (M + 1)``
    with ``e = last_epoch + epoch_count`` (1-based epoch being trained)."""

    def __init__(self, n_epochs: int, n_epochs_decay: int, epoch_count: int = 1):
        self.n_epochs, self.n_epochs_decay, self.epoch_count = n_epochs, n_epochs_decay, epoch_count

    def __call__(self, last_epoch: int) -> float:
        e = last_epoch + self.epoch_count
        return 1.0 - max(0, e - self.n_epochs) / float(self.n_epochs_decay + 1)


def linear_lr(lr: float, epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The learning rate of (1-based) ``epoch`` under the linear policy (for documentation and tests)."""
    return lr * (1.0 - max(0, epoch - n_epochs) / float(n_epochs_decay + 1))


def get_scheduler(optimizer: Optimizer, policy: str, n_epochs: int, n_epochs_decay: int, epoch_count: int = 1,
                  lr_decay_iters: int = 50):
    """Return a ``torch.optim.lr_scheduler`` for ``policy``.

    - ``linear``: constant for ``n_epochs`` epochs, then linear decay to 0 over ``n_epochs_decay`` (formula above).
    - ``step``: x0.1 every ``lr_decay_iters`` epochs (StepLR).
    - ``plateau``: x0.2 when the monitored loss stops improving for 5 epochs (ReduceLROnPlateau, threshold 0.01).
    - ``cosine``: cosine annealing to 0 over ``n_epochs + n_epochs_decay`` epochs (CosineAnnealingLR).

    Raises:
        OptionError: unknown policy (names ``--lr_policy``).
    """
    if policy == "linear":
        return lr_scheduler.LambdaLR(optimizer, lr_lambda=LinearDecay(n_epochs, n_epochs_decay, epoch_count))
    if policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=lr_decay_iters, gamma=0.1)
    if policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    if policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, n_epochs + n_epochs_decay), eta_min=0)
    raise OptionError(f"--lr_policy '{policy}' is not supported; choose linear, step, plateau or cosine")
