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
* ``--winograd`` (CPU) lives with the networks, :func:`models.networks.winograd.use_winograd` (util/ does not
  import models/).
* CPU training with glibc: :func:`tune_cpu_allocator` keeps freed activation memory in the heap for the next step
  instead of returning it to the kernel and faulting it back in (about 3 % of a 256 px pyramid pix2pix step here).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import shutil
from typing import Dict, Optional, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

_PROBE: Dict[str, Tuple[bool, str]] = {}


def configure_backends(device: torch.device) -> None:
    """Process-wide settings for training on ``device``: cuDNN autotuning on CUDA, :func:`tune_cpu_allocator` on
    the CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu":
        tune_cpu_allocator()


# glibc <malloc.h> parameter numbers (mallopt(3))
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_TOP_PAD = 64 * 2 ** 20
_TRIM_THRESHOLD = 2 ** 31 - 1
_ALLOCATOR_TUNED: list = []


def tune_cpu_allocator() -> bool:
    """Make glibc's ``malloc`` keep freed activation memory for the next training step: blocks up to 32 MiB come
    from the heap (``M_MMAP_THRESHOLD`` 32 MiB, which also stops glibc's adaptive threshold), the heap is not
    trimmed below 2 GiB of free top (``M_TRIM_THRESHOLD``) and grows 64 MiB at a time (``M_TOP_PAD``); see
    mallopt(3). Returns whether the settings were applied (False when TCMalloc replaces glibc's malloc,
    :mod:`util.allocator`).

    With glibc's defaults a training step that allocates and frees gigabytes of activations returns much of it to
    the kernel and pays a page fault plus page clearing per 4 KiB on the next step: 3.7 million minor faults in 30
    steps of 256 px pyramid pix2pix (batch 2) here, 1.0 million tuned; the step took 4.06 s vs 3.95 s (-2.8 %),
    peak RSS 2339 vs 2376 MiB (+1.6 %), resident memory flat after the first steps. Blocks above 32 MiB stay
    ``mmap``-ed, so no large free block is stranded in the heap. The arithmetic is unchanged. Applied once per
    process; a no-op returning False on other C libraries (musl, macOS, Windows).
    """
    if _ALLOCATOR_TUNED:
        return _ALLOCATOR_TUNED[0]
    ok = False
    from util.allocator import tcmalloc_in_use

    if tcmalloc_in_use():  # util/allocator.py: glibc's malloc is not the one in use
        log.debug("glibc malloc not tuned: TCMalloc is in use")
    elif platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
        log.debug("glibc malloc tuned for training (heap blocks up to 32 MiB, no trimming): %s", ok)
    _ALLOCATOR_TUNED.append(ok)
    return ok


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
