"""Mixed precision (``--amp none|bf16|fp16``): autocast contexts and one gradient scaler per optimizer.

Follows the PyTorch automatic mixed precision recipe (https://pytorch.org/docs/stable/amp.html,
"Automatic Mixed Precision examples"): forward passes and losses run under :func:`torch.autocast`; backward passes
run outside it; with float16 every optimizer gets its own :class:`torch.amp.GradScaler` (the "multiple models,
losses and optimizers" example: ``scaler.scale(loss).backward()``, ``scaler.step(optimizer)``, ``scaler.update()``).
bfloat16 has float32's exponent range and needs no scaler.

* ``none``: float32 everywhere (autocast disabled; bit-for-bit the plain code path).
* ``bf16``: bfloat16 autocast, on CPU (oneDNN) and on CUDA (Ampere or newer).
* ``fp16``: float16 autocast with dynamic loss scaling; CUDA, and CPU where PyTorch supports it (>= 2.3).

Models use :class:`AmpState` through :class:`models.base_model.BaseModel`: ``with self.autocast(): ...``,
``self.backward(loss, optimizer)`` and ``self.step(optimizer)``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Optional

import torch

from util.errors import OptionError

log = logging.getLogger(__name__)

#: Valid values of ``--amp``.
AMP_MODES = ("none", "bf16", "fp16")
_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(mode: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` ``mode`` (``None`` for ``'none'``).

    Raises:
        OptionError: unknown mode (names ``--amp`` and the valid values).
    """
    if mode not in _DTYPES:
        raise OptionError(f"--amp {mode!r} is not supported; choose one of {', '.join(AMP_MODES)}")
    return _DTYPES[mode]


def check_amp(mode: str, device: torch.device) -> None:
    """Raise :class:`OptionError` if ``--amp mode`` cannot run on ``device`` (bf16 on a CUDA device without bfloat16,
    or an autocast device type PyTorch does not support)."""
    dtype = amp_dtype(mode)
    if dtype is None:
        return
    if not torch.amp.is_autocast_available(device.type):
        raise OptionError(f"--amp {mode}: PyTorch has no autocast for device type '{device.type}'; use --amp none")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise OptionError(f"--amp bf16: GPU {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                          "use --amp fp16 or --amp none")


def autocast(device: torch.device, mode: str):
    """Context manager: autocast to the dtype of ``mode`` on ``device.type``; a no-op context for ``'none'``."""
    dtype = amp_dtype(mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class AmpState:
    """Mixed-precision state of one model: the mode, the device and a lazily created scaler per optimizer.

    Args:
        mode: ``--amp`` value (``'none'``, ``'bf16'``, ``'fp16'``).
        device: the model's device (``torch.device``).

    Attributes:
        scalers: ``{id(optimizer): GradScaler}`` (fp16 only; created on the optimizer's first :meth:`backward`).
        hook_calls: number of :meth:`backward` calls so far (lets the training loop detect a model whose
            ``optimize_parameters`` bypasses the hooks, which fp16 cannot allow).

    Raises:
        OptionError: unknown mode, or a mode the device cannot run (see :func:`check_amp`).
    """

    def __init__(self, mode: str = "none", device: torch.device = torch.device("cpu")):
        check_amp(mode, device)
        self.mode = mode
        self.device = device
        self.dtype = amp_dtype(mode)
        self.scalers: Dict[int, torch.amp.GradScaler] = {}
        self.hook_calls = 0

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def uses_scaler(self) -> bool:
        return self.mode == "fp16"

    def autocast(self):
        return autocast(self.device, self.mode)

    def scaler(self, optimizer: torch.optim.Optimizer) -> torch.amp.GradScaler:
        """The gradient scaler of ``optimizer`` (created with PyTorch's defaults: initial scale 2**16)."""
        key = id(optimizer)
        if key not in self.scalers:
            self.scalers[key] = torch.amp.GradScaler(self.device.type)
        return self.scalers[key]

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, retain_graph: bool = False) -> None:
        """``loss.backward()`` outside autocast; with fp16 the loss is first multiplied by ``optimizer``'s scale."""
        self.hook_calls += 1
        with torch.autocast(device_type=self.device.type, enabled=False) if self.enabled else contextlib.nullcontext():
            if self.uses_scaler:
                self.scaler(optimizer).scale(loss).backward(retain_graph=retain_graph)
            else:
                loss.backward(retain_graph=retain_graph)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16: unscale, skip the step if a gradient is inf/NaN, update the scale."""
        if self.uses_scaler:
            scaler = self.scaler(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    def state_dicts(self, optimizers) -> list:
        """Scaler states in the order of ``optimizers`` (``{}`` for an optimizer without one); checkpoint-safe."""
        return [self.scalers[id(o)].state_dict() if id(o) in self.scalers else {} for o in optimizers]

    def load_state_dicts(self, optimizers, states) -> None:
        """Restore :meth:`state_dicts` output (only in fp16 mode; other modes ignore saved scales)."""
        if not self.uses_scaler:
            return
        for o, sd in zip(optimizers, states or []):
            if sd:
                self.scaler(o).load_state_dict(sd)
