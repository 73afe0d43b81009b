"""Export a trained generator to ONNX or TorchScript, describe it in a JSON sidecar and verify it on real tiles.

The exported graph is the generator alone, in eval mode (batch norm with its running statistics, dropout off), with
the stock PyTorch layers of :func:`models.inference.build_generator`: it maps ``(N, input_nc, H, W)`` float32 in
[-1, 1] to ``(N, output_nc, H, W)`` float32 in [-1, 1]; N, H and W are dynamic (H, W multiples of the generator's
stride). Pixel normalisation stays outside the graph and is written in the sidecar (``x = rgb / 127.5 - 1``,
``rgb = round((y + 1) * 127.5)``), as :mod:`wsi.pipeline` and ``test.py`` do it.

* ONNX: PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), opset :data:`ONNX_OPSET`
  (17). It works offline with the ``onnx`` package alone; the newer ``torch.export``-based exporter (PyTorch's default
  since 2.9) needs ``onnxscript``, which the project does not install.
* TorchScript: ``torch.jit.trace`` (the generators' forward has no data-dependent control flow; the input-size check
  runs once at trace time), saved with ``torch.jit.save``.

Layers that neither exporter can express fail before anything is written, with :class:`ExportError` naming the op and
the module: a custom ``torch.autograd.Function`` (e.g. the ``--winograd`` convolution, ``_Winograd3x3`` in
:class:`models.networks.winograd.WinogradConv2d`), or an ATen operator without an ONNX symbolic at the opset.
"""
from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from util.errors import UserError
from util.fileio import atomic_path, atomic_write_text, sha256_file

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

#: ONNX opset of the exported graphs (onnxruntime >= 1.12 runs it; every layer of the project's generators has a
#: symbolic there: Conv, ConvTranspose, BatchNormalization, InstanceNormalization, Pad reflect/edge, Relu, LeakyRelu,
#: Tanh, Concat, AveragePool, Resize).
ONNX_OPSET = 17
#: Default verification tolerance: largest absolute difference between the exported model's and PyTorch's outputs,
#: in the generator's [-1, 1] output range: 1/255, half of an 8-bit grey level (one grey level = 2/255), so the 8-bit
#: images of the two never differ by more than one level.
DEFAULT_TOLERANCE = 1.0 / 255.0
FORMATS = ("onnx", "torchscript")
INPUT_NAME, OUTPUT_NAME = "input", "output"

#: Real H&E images bundled with the project (samples/README.md), the default verification tiles.
SAMPLE_HE = ("samples/cmu_small_region.svs", "samples/norm_tile.jpg", "samples/histo.jpg")


class ExportError(UserError, RuntimeError):
    """The generator cannot be exported (an op without an ONNX/TorchScript form) or the export does not reproduce
    PyTorch within the tolerance. The message names the op and module, or the measured difference."""


def sidecar_path(model_path: PathLike) -> Path:
    """``<file>.json`` beside an exported model (``g.onnx`` -> ``g.onnx.json``)."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def find_custom_functions(net: nn.Module, example: torch.Tensor) -> List[Tuple[str, str, str]]:
    """The custom ``torch.autograd.Function`` ops that ``net`` runs on ``example``, as
    ``[(module name, module class, function name), ...]`` (first occurrence per module).

    A forward pass with gradients records each op's backward node; a custom Function's node is a
    ``torch.autograd.function.BackwardCFunction`` (class ``<Name>Backward``). Each leaf module's own part of the graph
    is searched from its output back through the nodes created during its forward (autograd's sequence numbers). Neither exporter can express these ops (the TorchScript tracer
    stops inside them; ONNX needs a hand-written symbolic).
    """
    found: List[Tuple[str, str, str]] = []
    hooks = []
    start: Dict[int, int] = {}
    probe = torch.zeros(1, requires_grad=True)

    def pre(mod, args):
        with torch.enable_grad():
            start[id(mod)] = (probe * 1.0).grad_fn._sequence_nr()  # autograd nodes are numbered in creation order

    def post(mod, args, out, name=""):
        first = start.pop(id(mod), 0)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        todo = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
        seen = set()
        while todo:  # the nodes this module created: those numbered after its start
            fn = todo.pop()
            if fn is None or fn in seen or fn._sequence_nr() <= first:
                continue
            seen.add(fn)
            if isinstance(fn, torch.autograd.function.BackwardCFunction):
                op = type(fn).__name__
                found.append((name, type(mod).__name__, op[:-len("Backward")] if op.endswith("Backward") else op))
                return
            todo.extend(f for f, _ in fn.next_functions)

    for name, mod in net.named_modules():
        if next(mod.children(), None) is None:  # leaf modules
            hooks.append(mod.register_forward_pre_hook(pre))
            hooks.append(mod.register_forward_hook(lambda m, a, o, _n=name: post(m, a, o, _n)))
    try:
        with torch.enable_grad():
            net(example.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    return found


def check_exportable(net: nn.Module, example: torch.Tensor) -> None:
    """Raise :class:`ExportError` naming every custom op of ``net`` (see :func:`find_custom_functions`)."""
    bad = find_custom_functions(net, example)
    if bad:
        where = "; ".join(f"op '{op}' in module '{name}' ({cls})" for name, cls, op in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        hint = (" - the --winograd convolution is a CPU training fast path: export the run's generator as built from "
                "its options (stock nn.Conv2d), e.g. scripts/export.py --name NAME"
                if any(op == "_Winograd3x3" for _, _, op in bad) else "")
        raise ExportError(f"cannot export: custom autograd.Function without an ONNX/TorchScript form: {where}{more}"
                          f"{hint}")


def _prepared(net: nn.Module) -> nn.Module:
    """``net`` switched to eval mode (in place: exports are inference graphs)."""
    return net.eval()


def export_onnx(net: nn.Module, path: PathLike, example: torch.Tensor, opset: int = ONNX_OPSET) -> Path:
    """Write ``net`` (eval mode, on the CPU) as ONNX with dynamic batch, height and width, atomically.

    Args:
        net: generator ``(N, C, H, W)`` -> ``(N, C', H, W)``.
        path: the ``.onnx`` file.
        example: a CPU input ``(1, C, H, W)`` (H, W multiples of the stride) used for tracing.
        opset: ONNX opset (default :data:`ONNX_OPSET`).

    Raises:
        ExportError: a custom op (named with its module) or an operator without an ONNX symbolic at ``opset``.
    """
    net = _prepared(net)
    check_exportable(net, example)
    dyn = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        # the legacy exporter's deprecation notice and constant-folding remarks about reflect padding are expected
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                torch.onnx.export(net, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: dyn, OUTPUT_NAME: dyn}, do_constant_folding=True)
        except torch.onnx.errors.UnsupportedOperatorError as e:
            raise ExportError(f"cannot export to ONNX opset {opset}: {e}") from e
        except torch.onnx.errors.OnnxExporterError as e:
            raise ExportError(f"cannot export to ONNX: {e}") from e
    log.info("wrote %s (ONNX opset %d, dynamic batch/height/width)", path, opset)
    return Path(path)


def export_torchscript(net: nn.Module, path: PathLike, example: torch.Tensor) -> Path:
    """Write ``net`` (eval mode, CPU) as a traced TorchScript module (``torch.jit.save``), atomically.

    Raises:
        ExportError: a custom op (named with its module).
    """
    net = _prepared(net)
    check_exportable(net, example)
    with atomic_path(path, suffix=".pt") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer remarks about the input-size check (evaluated once, by design)
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(tmp))
    log.info("wrote %s (TorchScript, traced)", path)
    return Path(path)


# ---- verification ---------------------------------------------------------------------------------------------------
def real_tiles(paths: Iterable[PathLike], tile: int, count: int) -> np.ndarray:
    """Up to ``count`` ``(tile, tile, 3)`` uint8 RGB tiles cut from real H&E images or slides (level 0, a regular grid
    over each image, tiles with the most tissue first: lowest mean brightness), as ``(n, tile, tile, 3)``.

    Raises:
        ExportError: no image is at least ``tile`` px on both sides.
    """
    from wsi.reader import open_slide

    cands: List[Tuple[float, np.ndarray]] = []
    for p in paths:
        with open_slide(p) as s:
            w, h = s.dimensions
            if w < tile or h < tile:
                log.info("verification: %s (%dx%d) is smaller than the %d px tile, not used", p, w, h, tile)
                continue
            nx, ny = max(1, min(4, w // tile)), max(1, min(4, h // tile))
            for j in range(ny):
                for i in range(nx):
                    x = (w - tile) * i // max(1, nx - 1) if nx > 1 else (w - tile) // 2
                    y = (h - tile) * j // max(1, ny - 1) if ny > 1 else (h - tile) // 2
                    a = s.read_region(x, y, 0, tile, tile)
                    cands.append((float(a.mean()), a))
    if not cands:
        raise ExportError(f"no verification image is at least {tile}x{tile} px: {', '.join(map(str, paths))}")
    cands.sort(key=lambda c: c[0])
    return np.stack([a for _, a in cands[:count]])


def to_input(tiles: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 RGB -> ``(N, 3, H, W)`` float32 in [-1, 1] (``x / 127.5 - 1``)."""
    return torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).float().div(127.5).sub(1.0)


def compare_outputs(ref: np.ndarray, out: np.ndarray) -> Dict[str, float]:
    """Max absolute difference and PSNR (dB) between two generator outputs in [-1, 1].

    PSNR = 10 log10(peak^2 / MSE) with peak = 2, the width of the [-1, 1] range (so it equals the PSNR of the two
    images on a 0-255 scale before rounding); ``inf`` when identical.
    """
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        raise ExportError(f"exported model output {out.shape} differs in shape from PyTorch's {ref.shape}")
    d = out - ref
    mse = float(np.mean(d * d))
    return {"max_abs_diff": float(np.max(np.abs(d))) if d.size else 0.0,
            "psnr_db": math.inf if mse == 0 else 10.0 * math.log10(4.0 / mse)}


def load_exported(path: PathLike, fmt: str, device: str = "cpu"):
    """A callable ``(N, C, H, W)`` tensor -> tensor running the exported file (onnxruntime or ``torch.jit.load``)."""
    if fmt == "onnx":
        from models.backends import OnnxGenerator

        return OnnxGenerator(path, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # PyTorch 2.14 marks torch.jit deprecated; it still works
        m = torch.jit.load(str(path), map_location=device)
    m.eval()
    return m


def verify_export(net: nn.Module, path: PathLike, fmt: str, tiles: np.ndarray, stride: int,
                  tolerance: float = DEFAULT_TOLERANCE) -> Dict[str, float]:
    """Run the exported model and ``net`` (CPU, float32, eval) on real tiles and compare.

    Checks two input shapes: the tiles as one batch ``(n, 3, T, T)``, and one ``(1, 3, T, 2T - s)`` strip of two
    tiles side by side (``s`` = ``stride`` if ``T > stride``, a size the export was not traced at), so that a shape
    baked into the graph shows.

    Returns:
        ``{"tiles", "tile_size", "max_abs_diff", "psnr_db", "tolerance"}`` over all outputs.
    Raises:
        ExportError: the largest difference exceeds ``tolerance`` (the message gives it and the PSNR).
    """
    net = _prepared(net)
    exported = load_exported(path, fmt)
    t = tiles.shape[1]
    trim = stride if t > stride else 0
    strip = np.concatenate([tiles[:1], tiles[-1:]], axis=2)[:, :, :2 * t - trim]
    refs, outs = [], []
    with torch.inference_mode():
        for batch in (tiles, strip):
            x = to_input(batch)
            refs.append(net(x).numpy().ravel())
            outs.append(exported(x).float().numpy().ravel())
    r = compare_outputs(np.concatenate(refs), np.concatenate(outs))
    r.update({"tiles": int(len(tiles)), "tile_size": int(t), "tolerance": float(tolerance)})
    log.info("%s vs PyTorch on %d real %d px tiles + a %dx%d strip: max |diff| %.3g, PSNR %.1f dB", fmt, len(tiles),
             t, strip.shape[1], strip.shape[2], r["max_abs_diff"], r["psnr_db"])
    if not r["max_abs_diff"] <= tolerance:
        raise ExportError(f"exported {fmt} model '{path}' differs from PyTorch by up to {r['max_abs_diff']:.3g} "
                          f"(PSNR {r['psnr_db']:.1f} dB) on real tiles; tolerance {tolerance:g}")
    return r


# ---- sidecar --------------------------------------------------------------------------------------------------------
def make_sidecar(fmt: str, model_path: PathLike, train_opt: dict, *, name: str, epoch: str,
                 checkpoint: Optional[PathLike], stride: int, opset: Optional[int] = None,
                 verification: Optional[dict] = None) -> dict:
    """The JSON description of an exported generator: what it is, how to feed it, where it came from.

    Keys: ``format``, ``file``, ``sha256``, ``opset`` (ONNX), ``exporter``, ``torch``, ``name``, ``epoch``,
    ``checkpoint`` and ``checkpoint_sha256``, ``model``, ``options`` (the network-defining training options),
    ``stride``, ``tile_size`` (the training crop, or load size, in px; ``preprocess`` says which), ``mpp``, ``input``
    / ``output`` (name, shape, dtype, range, conversion from/to 8-bit RGB), ``mode`` (``eval``), ``verification``.
    """
    from options import NETWORK_OPTIONS

    pre = str(train_opt.get("preprocess", ""))
    tile = train_opt.get("crop_size") if "crop" in pre else train_opt.get("load_size")
    opts = {k: train_opt[k] for k in NETWORK_OPTIONS if k in train_opt and k not in ("netD", "ndf", "n_layers_D",
                                                                                      "num_D", "gan_mode")}
    c_in, c_out = int(train_opt.get("input_nc", 3)), int(train_opt.get("output_nc", 3))
    d = {
        "format": fmt,
        "file": Path(model_path).name,
        "sha256": sha256_file(model_path),
        "exporter": ("torch.onnx.export (TorchScript-based, dynamo=False)" if fmt == "onnx"
                     else "torch.jit.trace + torch.jit.save"),
        "torch": torch.__version__,
        "name": name,
        "epoch": str(epoch),
        "checkpoint": Path(checkpoint).name if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "model": train_opt.get("model"),
        "options": opts,
        "stride": int(stride),
        "tile_size": tile,
        "preprocess": pre or None,
        "mpp": train_opt.get("mpp"),
        "mode": "eval",
        "input": {"name": INPUT_NAME, "shape": ["batch", c_in, "height", "width"], "dtype": "float32",
                  "range": [-1.0, 1.0], "from_uint8": "x = rgb / 127.5 - 1", "channels": "RGB" if c_in == 3 else None,
                  "height_width_multiple_of": int(stride)},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", c_out, "height", "width"], "dtype": "float32",
                   "range": [-1.0, 1.0], "to_uint8": "rgb = round((clip(y, -1, 1) + 1) * 127.5)"},
        "verification": verification,
    }
    if fmt == "onnx":
        d["opset"] = int(opset or ONNX_OPSET)
    return d


def write_sidecar(model_path: PathLike, data: dict) -> Path:
    """Write ``<model_path>.json`` atomically."""
    import json

    return atomic_write_text(sidecar_path(model_path), json.dumps(data, indent=2, allow_nan=True) + "\n")


def read_sidecar(model_path: PathLike) -> dict:
    """Read ``<model_path>.json``.

    Raises:
        UserError: missing or unreadable (the message names the file and how it is made).
    """
    import json

    p = sidecar_path(model_path)
    if not p.is_file():
        raise ExportError(f"no sidecar '{p}' beside '{model_path}': export with scripts/export.py, which writes both")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read sidecar '{p}': {e}") from e


def default_verify_images(root: PathLike) -> List[Path]:
    """The bundled real H&E samples (:data:`SAMPLE_HE`) under the project root ``root`` that exist."""
    return [Path(root) / p for p in SAMPLE_HE if (Path(root) / p).is_file()]


def verification_tile(stride: int, wanted: int) -> int:
    """The verification tile size: ``wanted`` rounded up to a multiple of ``stride``."""
    return max(stride, -(-int(wanted) // stride) * stride)


def example_input(input_nc: int, stride: int, size: Optional[int] = None) -> torch.Tensor:
    """A ``(1, input_nc, S, S)`` tracing input in [-1, 1], ``S`` = ``size`` or the smallest multiple of ``stride``
    that is at least 64 px. The values do not matter (shapes are dynamic); a fixed generator keeps it repeatable."""
    s = size or verification_tile(stride, 64)
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, input_nc, s, s, generator=g) * 2 - 1


__all__: Sequence[str] = ("ONNX_OPSET", "DEFAULT_TOLERANCE", "FORMATS", "ExportError", "export_onnx",
                          "export_torchscript", "verify_export", "make_sidecar", "write_sidecar", "read_sidecar",
                          "real_tiles", "compare_outputs", "find_custom_functions", "check_exportable")
