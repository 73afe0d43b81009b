"""Non-finite loss guard that does not synchronise the host with the GPU every iteration.

:meth:`FiniteGuard.record` runs once per training iteration. In *immediate* mode (CPU) it checks the losses at once
(one process: :meth:`BaseModel.check_finite`, same message). In *deferred* mode (CUDA) it only updates device-side
tensors: a "first bad iteration" number, its epoch and the loss values of that iteration; :meth:`FiniteGuard.check`
reads them (one device-to-host copy) and raises. The training loop calls ``check`` at the print frequency, before
any checkpoint is written and at the end of every epoch, so no checkpoint ever holds a state reached after a NaN/inf
loss, and the error still names the first bad iteration. Under DDP the check is collective (every process stops,
and the message names the process that saw the first bad loss).
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch

from util import distributed
from util.errors import NonFiniteLossError

_NONE = 2 ** 62  # "no bad iteration yet" (the minimum over processes ignores it)


class FiniteGuard:
    """Watch ``model``'s current losses (``model.loss_names`` -> ``model.loss_<name>``) for NaN / inf.

    Args:
        model: a :class:`models.base_model.BaseModel` (uses ``loss_names``, ``device`` and ``check_finite``).
        deferred: accumulate on the device and check only in :meth:`check` (default: ``model.device`` is CUDA).

    Raises (from :meth:`record` in immediate mode, or :meth:`check`):
        NonFiniteLossError: names the loss, its value, the epoch and the iteration (images seen).
    """

    def __init__(self, model: Any, deferred: Optional[bool] = None):
        self.model = model
        self.device = getattr(model, "device", torch.device("cpu"))
        self.deferred = (self.device.type == "cuda") if deferred is None else bool(deferred)
        self.names: List[str] = list(model.loss_names)
        self._first_iter: Optional[torch.Tensor] = None
        self._first_epoch: Optional[torch.Tensor] = None
        self._first_vals: Optional[torch.Tensor] = None

    def _values(self) -> torch.Tensor:
        vals = []
        for n in self.names:
            v = getattr(self.model, "loss_" + n, None)
            if isinstance(v, torch.Tensor):
                vals.append(v.detach().float().reshape(-1)[:1].to(self.device))
            elif v is None:
                vals.append(torch.zeros(1, device=self.device))
            else:
                vals.append(torch.full((1,), float(v), device=self.device))
        return torch.cat(vals) if vals else torch.zeros(0, device=self.device)

    def record(self, epoch: int, iteration: int) -> None:
        """Note the losses of ``iteration`` (images seen) of ``epoch``; immediate mode raises at once."""
        if not self.deferred and not distributed.is_distributed():
            self.model.check_finite(epoch, iteration)
            return
        vals = self._values()
        bad = ~torch.isfinite(vals).all()
        if self._first_iter is None:
            self._first_iter = torch.full((), _NONE, dtype=torch.int64, device=self.device)
            self._first_epoch = torch.zeros((), dtype=torch.int64, device=self.device)
            self._first_vals = torch.zeros_like(vals)
        new = bad & (self._first_iter == _NONE)
        # torch.where with Python scalars launches fill kernels: no host-device copy, no synchronisation
        self._first_iter = torch.where(new, torch.full_like(self._first_iter, iteration), self._first_iter)
        self._first_epoch = torch.where(new, torch.full_like(self._first_epoch, epoch), self._first_epoch)
        self._first_vals = torch.where(new, vals, self._first_vals)
        if not self.deferred:
            self.check()

    def check(self) -> None:
        """Raise :class:`NonFiniteLossError` if any recorded iteration had a NaN/inf loss (on any process).

        Synchronises with the device once (and, under DDP, is a collective: every process must call it)."""
        if self._first_iter is None:
            if not distributed.is_distributed():
                return
            self._first_iter = torch.full((), _NONE, dtype=torch.int64, device=self.device)
        first = distributed.all_reduce_min(self._first_iter.clone())
        if int(first) == _NONE:
            return
        mine = None
        if int(self._first_iter) == int(first) and self._first_vals is not None:
            mine = (int(self._first_epoch), [(n, float(v)) for n, v in zip(self.names, self._first_vals.tolist())])
        reports = distributed.gather_objects(mine)
        src = next(r for r, rep in enumerate(reports) if rep is not None)
        epoch, values = reports[src]
        bad = [(n, v) for n, v in values if not (v == v and abs(v) != float("inf"))]
        where = f" on process {src}" if distributed.is_distributed() else ""
        what = ", ".join(f"loss {n} = {v}" for n, v in bad) or "a loss"
        raise NonFiniteLossError(
            f"{what} at epoch {epoch}, iteration {int(first)} (images seen){where}; training stopped and no "
            "checkpoint was written for this state. Lower --lr or check the input data.")
