"""Inference backends for ``test.py`` and ``stain_slide.py``: PyTorch (the default) or onnxruntime on an exported
generator (``scripts/export.py``).

``--backend onnxruntime --onnx FILE`` replaces the generator by :class:`OnnxGenerator`, a module that runs the ONNX
graph in an ``onnxruntime.InferenceSession`` with the CPU execution provider, or CUDA's (then CPU as fallback) when
the run asks for a GPU and the installed onnxruntime has it. Everything around the generator (data loading, padding
to the stride, test-time augmentation, tiling and blending, output files) is unchanged, so both backends write the
same files (pixel values equal up to the exported graph's float32 rounding; see docs/DEPLOY.md).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
import torch
from torch import nn

from util.errors import OptionError

log = logging.getLogger(__name__)
BACKENDS = ("torch", "onnxruntime")


def add_backend_options(parser) -> None:
    """``--backend``, ``--onnx`` and ``--ort_threads`` on an argparse parser or argument group."""
    parser.add_argument("--backend", default="torch", choices=BACKENDS,
                        help="run the generator with PyTorch, or with onnxruntime on an exported model (--onnx)")
    parser.add_argument("--onnx", default=None, metavar="FILE",
                        help="the .onnx file written by scripts/export.py (with its .onnx.json sidecar); "
                             "needs --backend onnxruntime")
    parser.add_argument("--ort_threads", type=int, default=0,
                        help="onnxruntime intra-op threads (0: onnxruntime's default, one per physical core)")


def check_backend_options(opt: argparse.Namespace) -> None:
    """Raise OptionError for ``--onnx`` without ``--backend onnxruntime`` and vice versa, a missing file, or an
    option onnxruntime cannot honour (``--train_mode_inference``, ``--amp``)."""
    backend, onnx_path = getattr(opt, "backend", "torch"), getattr(opt, "onnx", None)
    if backend == "onnxruntime" and not onnx_path:
        raise OptionError("--backend onnxruntime needs --onnx FILE (an exported generator, see scripts/export.py)")
    if backend != "onnxruntime" and onnx_path:
        raise OptionError(f"--onnx '{onnx_path}' is only used with --backend onnxruntime")
    if onnx_path and not Path(onnx_path).is_file():
        raise OptionError(f"--onnx '{onnx_path}' does not exist")
    if backend == "onnxruntime" and getattr(opt, "train_mode_inference", False):
        raise OptionError("--train_mode_inference needs --backend torch: the exported generator is in eval mode")
    if backend == "onnxruntime" and getattr(opt, "amp", "none") != "none":
        raise OptionError(f"--amp {opt.amp} needs --backend torch: onnxruntime runs the exported float32 graph")
    if getattr(opt, "ort_threads", 0) < 0:
        raise OptionError(f"--ort_threads must be >= 0, got {opt.ort_threads}")


def ort_providers(device: Union[str, torch.device]) -> List[str]:
    """onnxruntime execution providers for ``device``: ``['CPUExecutionProvider']`` on the CPU,
    ``['CUDAExecutionProvider', 'CPUExecutionProvider']`` on CUDA.

    Raises:
        OptionError: onnxruntime is not installed, or a CUDA device is asked for and the installed onnxruntime has
            no CUDA provider (the CPU-only wheel ``onnxruntime``; ``onnxruntime-gpu`` has it).
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise OptionError("--backend onnxruntime needs the onnxruntime package (pip install -r requirements.txt)") \
            from e
    dev = torch.device(device)
    have = ort.get_available_providers()
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in have:
            raise OptionError(f"--backend onnxruntime on {dev}: this onnxruntime has no CUDAExecutionProvider "
                              f"(available: {', '.join(have)}); install onnxruntime-gpu or use --gpu_ids -1")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxGenerator(nn.Module):
    """An exported generator run by onnxruntime, called like the PyTorch one.

    ``forward(x)``: ``(N, C, H, W)`` float tensor in [-1, 1] (any device, any memory format) -> ``(N, C', H, W)``
    float32 in [-1, 1] on ``x``'s device. The input is copied to a contiguous float32 numpy array (onnxruntime's CPU
    interface); the session runs with ``ORT_ENABLE_ALL`` graph optimisations.

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` or ``cuda[:k]`` (see :func:`ort_providers`).
        threads: intra-op threads, 0 for onnxruntime's default.

    Raises:
        OptionError: onnxruntime missing or without the needed provider; CheckpointError-like UserError when the
            file cannot be loaded (the message names it).
    """

    def __init__(self, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu", threads: int = 0):
        super().__init__()
        import onnxruntime as ort

        providers = ort_providers(device)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        so.log_severity_level = 3  # errors only
        self.path = Path(path)
        dev = torch.device(device)
        opts = [{"device_id": dev.index or 0}, {}] if dev.type == "cuda" else [{}]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers,
                                                provider_options=opts)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable/invalid models
            from models.export import ExportError

            raise ExportError(f"onnxruntime cannot load '{path}': {type(e).__name__}: {e}") from e
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        log.info("onnxruntime %s on %s (%s)", ort.__version__, self.path.name, ", ".join(
            self.session.get_providers()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        y = self.session.run([self.output_name], {self.input_name: a})[0]
        return torch.from_numpy(y).to(x.device)


def check_sidecar(sidecar: dict, train_opt: Optional[dict], onnx_path: Union[str, os.PathLike]) -> None:
    """Raise OptionError when the exported model's network options contradict the run's ``train_opt``."""
    if not train_opt:
        return
    bad = [f"{k} {v} (run: {train_opt[k]})" for k, v in (sidecar.get("options") or {}).items()
           if k in train_opt and k not in ("model", "direction") and train_opt[k] != v]
    if bad:
        raise OptionError(f"--onnx '{onnx_path}' was exported from a different network than the run's: "
                          + ", ".join(bad))


def generator_attribute(model) -> str:
    """The attribute holding the model's A -> B generator (``netG``, ``netG_A`` or ``netG<model_suffix>``).

    Raises:
        OptionError: the model has several generators, of which only one can come from an ONNX file (a CycleGAN run
            under ``--model cycle_gan``; use ``--model test`` to apply its G_A alone).
    """
    gens = [n for n in getattr(model, "model_names", []) if n.startswith("G")]
    if len(gens) != 1:
        raise OptionError(f"--backend onnxruntime replaces one generator, model '{model.opt.model}' runs "
                          f"{', '.join('net' + g for g in gens)}; test a CycleGAN run with --model test")
    return "net" + gens[0]


def use_backend(model, opt: argparse.Namespace) -> None:
    """``test.py``: after ``model.setup(opt)``, swap the model's generator for :class:`OnnxGenerator` when
    ``--backend onnxruntime`` (no-op for ``torch``). Checks the sidecar against the run's options.

    Raises:
        OptionError: see :func:`check_backend_options`, :func:`generator_attribute`, :func:`check_sidecar`.
    """
    check_backend_options(opt)
    if getattr(opt, "backend", "torch") != "onnxruntime":
        return
    from models.export import read_sidecar

    attr = generator_attribute(model)
    check_sidecar(read_sidecar(opt.onnx), vars(opt), opt.onnx)
    setattr(model, attr, OnnxGenerator(opt.onnx, device=model.device, threads=opt.ort_threads))
    log.info("%s runs on onnxruntime: %s", attr, opt.onnx)


#: PyTorch CPU inference options measured by scripts/bench_infer.py (``eager`` is the float32 NCHW reference).
TORCH_CPU_OPTIONS = ("eager", "channels_last", "winograd", "bf16")


def torch_cpu_generator(net: nn.Module, option: str = "eager"):
    """A callable ``(N, C, H, W)`` float32 in [-1, 1] -> float32 output running ``net`` (eval mode, CPU) with one of
    :data:`TORCH_CPU_OPTIONS` under ``torch.inference_mode``:

    * ``eager``: as it is (NCHW float32);
    * ``channels_last``: network and input in NHWC memory format (same arithmetic, other kernels);
    * ``winograd``: channels-last plus Winograd F(4x4, 3x3) for the eligible 3x3 convolutions
      (:func:`models.networks.winograd.enable_winograd`; float32, ~1e-5 relative rounding differences);
    * ``bf16``: channels-last under ``torch.autocast('cpu', dtype=torch.bfloat16)`` (oneDNN bf16; 8-bit mantissa, so
      outputs differ from float32 by ~1e-2; fast only on CPUs with AVX512-BF16 or AMX).

    ``net`` is modified in place (memory format, convolution class; parameters and state-dict keys unchanged).

    Raises:
        OptionError: an unknown option.
    """
    if option not in TORCH_CPU_OPTIONS:
        raise OptionError(f"unknown CPU inference option '{option}'; choose {', '.join(TORCH_CPU_OPTIONS)}")
    net.eval()
    cl = option != "eager"
    if cl:
        net.to(memory_format=torch.channels_last)
    if option == "winograd":
        from models.networks.winograd import enable_winograd

        enable_winograd(net)

    def run(x: torch.Tensor) -> torch.Tensor:
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bf16"):
            return net(x).float().contiguous()

    return run
