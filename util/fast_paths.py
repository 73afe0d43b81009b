"""Speed options that keep the arithmetic of float32 training: channels-last memory format, ``torch.compile``,
cuDNN autotuning.

* ``--channels_last``: networks and input batches in NHWC memory order (``torch.channels_last``); oneDNN (CPU) and
  cuDNN (GPU) convolutions then run without layout reorders (PyTorch tutorial "Channels Last Memory Format").
  Same operations, same checkpoints (a state dict does not record memory format).
* ``--compile``: ``torch.compile`` (TorchInductor) of each network. A tiny probe function is compiled first; when it
  fails (no C++ compiler on CPU, no Triton on GPU, unsupported platform) a warning names the reason and the networks
  stay in eager mode. Graphs that later fail to compile fall back to eager too (``torch._dynamo.config.
  suppress_errors``), again with PyTorch's warning. The first steps are slow (compilation).
* cuDNN benchmark mode on CUDA (``torch.backends.cudnn.benchmark``): autotunes convolution algorithms for the fixed
  training image size.
"""
from __future__ import annotations

import logging
import shutil
from typing import Dict, Optional, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

_PROBE: Dict[str, Tuple[bool, str]] = {}


def configure_backends(device: torch.device) -> None:
    """Enable cuDNN autotuning on CUDA (no effect on CPU)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def to_channels_last(net: nn.Module) -> nn.Module:
    """Convert the 4-D parameters and buffers of ``net`` to channels-last in place (same Parameter objects, so
    optimizers built earlier stay valid); returns ``net``."""
    return net.to(memory_format=torch.channels_last)


def _probe_fn(x):
    return torch.tanh(x) * 2.0 + 1.0


def compile_support(device: torch.device) -> Tuple[bool, str]:
    """``(True, '')`` if TorchInductor compiles and runs a tiny function on ``device``, else ``(False, reason)``.

    Cached per device type. The probe takes a few seconds (one C++ / Triton kernel build).
    """
    key = device.type
    if key in _PROBE:
        return _PROBE[key]
    if device.type == "cpu" and shutil.which("c++") is None and shutil.which("g++") is None \
            and shutil.which("clang++") is None:
        result = (False, "no C++ compiler (c++, g++ or clang++) on PATH, which TorchInductor needs on CPU")
    else:
        try:
            x = torch.linspace(-1, 1, 8, device=device)
            y = torch.compile(_probe_fn)(x)
            ok = torch.allclose(y, _probe_fn(x), atol=1e-5)
            result = (True, "") if ok else (False, "the compiled probe function returned wrong values")
        except Exception as e:  # noqa: BLE001 - any compiler/toolchain failure means "use eager mode"
            result = (False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
        finally:
            torch._dynamo.reset()
    _PROBE[key] = result
    return result


def maybe_compile(net: nn.Module, name: str, device: torch.device, reason_out: Optional[list] = None) -> nn.Module:
    """``torch.compile(net)`` when :func:`compile_support` says it works, else ``net`` with one warning.

    The compiled module shares parameters and state-dict entries (under ``_orig_mod.``) with ``net``;
    :func:`util.checkpoint.unwrap` strips it for saving.
    """
    ok, reason = compile_support(device)
    if not ok:
        log.warning("--compile: torch.compile is not usable here (%s); %s runs in eager mode", reason, name)
        if reason_out is not None:
            reason_out.append(reason)
        return net
    torch._dynamo.config.suppress_errors = True  # a graph that fails later runs eagerly (PyTorch logs why)
    return torch.compile(net)
