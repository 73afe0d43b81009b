"""Benchmark generator inference on the CPU: tiles/s, peak memory and output fidelity per backend and option.

Configurations (``--configs``), each measured at every ``--sizes`` tile size in a fresh Python process, whose peak
resident memory is its own: ``VmHWM`` of ``/proc/self/status`` (Linux; ``getrusage``'s ``ru_maxrss`` would carry the
launching process's peak across ``exec``). It includes the interpreter, PyTorch, onnxruntime and the input tiles.

* ``eager``: PyTorch eager, float32, contiguous (NCHW) tensors - the reference;
* ``channels_last``: the same arithmetic in NHWC memory format (oneDNN without layout reorders);
* ``winograd``: channels-last plus the project's Winograd F(4x4, 3x3) convolutions for the 3x3 layers with >= 32
  channels (:mod:`models.networks.winograd`);
* ``bf16``: channels-last under ``torch.autocast('cpu', dtype=torch.bfloat16)`` (oneDNN bf16 kernels; fast where the
  CPU has AVX512-BF16 or AMX, emulated and slow elsewhere);
* ``onnxruntime``: the generator exported by :func:`models.export.export_onnx` (opset 17), onnxruntime's CPU
  execution provider, all graph optimisations.

All run the same network with the same weights: ``--netG``/``--ngf``/``--norm`` (default the paper's resnet_9blocks,
ngf 64, batch norm), weights drawn with a fixed seed and batch-norm running statistics gathered on real H&E tiles
(``samples/cmu_small_region.svs``) so that the outputs span the tanh range as a trained model's do. Input: real H&E
tiles from the same slide. Each child runs one warm-up batch, then timed batches until ``--min_seconds`` and
``--min_iters`` are both reached; tiles/s = tiles / time. Every configuration's output on the same input is compared
with eager float32's: largest absolute difference and PSNR in the [-1, 1] range (peak 2, see
:func:`models.export.compare_outputs`).

    python scripts/bench_infer.py --sizes 256 512 1024 --markdown docs/PERFORMANCE.md

Prints one JSON line per measurement and a markdown table; ``--markdown FILE`` replaces the block between
``<!-- bench_infer:begin -->`` and ``<!-- bench_infer:end -->`` in FILE (appended if absent). The figures depend on
the machine and its load: say which when quoting them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = ("eager", "channels_last", "winograd", "bf16", "onnxruntime")
BEGIN, END = "<!-- bench_infer:begin -->", "<!-- bench_infer:end -->"


def real_tiles(size: int, n: int):
    """``(n, 3, size, size)`` float32 in [-1, 1]: tissue regions of the bundled real SVS (resampled when the slide is
    too small for ``size``)."""
    import numpy as np
    import torch
    from PIL import Image

    from wsi.reader import open_slide

    with open_slide(ROOT / "samples" / "cmu_small_region.svs") as s:
        side = min(1024, *s.dimensions)
        spots = [(900, 1100), (400, 700), (1100, 1800), (300, 1500)]
        tiles = []
        for k in range(n):
            x, y = spots[k % len(spots)]
            a = s.read_region(x, y, 0, side, side)
            if side != size:
                a = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.LANCZOS))
            tiles.append(a)
    a = np.stack(tiles).transpose(0, 3, 1, 2).copy()
    return torch.from_numpy(a).float().div_(127.5).sub_(1.0)


def build_reference(a, folder: Path) -> None:
    """Weights (seeded, batch-norm statistics from real tiles) saved to ``folder/G.pth``, and its ONNX export."""
    import torch

    from models.export import export_onnx
    from models.networks import define_G

    torch.manual_seed(0)
    net = define_G(3, 3, a.ngf, a.netG, a.norm, False, "normal", 0.02)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for k in range(2):
            net(real_tiles(256, 2))
    net.eval()
    torch.save(net.state_dict(), folder / "G.pth")
    if "onnxruntime" in a.configs:
        export_onnx(net, folder / "G.onnx", real_tiles(256, 1))


def child(a) -> dict:
    """One configuration at one size, in this (fresh) process."""
    import numpy as np
    import torch

    from models.networks import define_G

    cfg, size, folder = a.child_config, a.child_size, Path(a.child_dir)
    if a.threads:
        torch.set_num_threads(a.threads)
    x = real_tiles(size, a.batch_size)
    rss_before = peak_rss_mb()
    if cfg == "onnxruntime":
        from models.backends import OnnxGenerator

        g = OnnxGenerator(folder / "G.onnx", threads=a.threads)

        def run(t):
            return g(t)
    else:
        from models.backends import torch_cpu_generator

        net = define_G(3, 3, a.ngf, a.netG, a.norm, False)
        net.load_state_dict(torch.load(folder / "G.pth", weights_only=True))
        run = torch_cpu_generator(net, cfg)
    y = run(x)  # warm-up (and the output compared with eager's)
    np.save(folder / f"out_{cfg}_{size}.npy", y.contiguous().numpy())
    n, t0 = 0, time.perf_counter()
    while True:
        run(x)
        n += 1
        dt = time.perf_counter() - t0
        if n >= a.min_iters and dt >= a.min_seconds:
            break
    return {"config": cfg, "size": size, "batch": a.batch_size, "iters": n, "seconds": round(dt, 3),
            "tiles_per_s": n * a.batch_size / dt, "peak_rss_mb": peak_rss_mb(), "rss_before_run_mb": rss_before,
            "threads": a.threads or (os.cpu_count() or 1)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "identical"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def table(rows, cores: int, overlap: int) -> str:
    lines = ["| tile | backend / option | tiles/s (median) | runs | vs eager | Mpx/s per core | peak RSS (MiB) | max abs diff vs eager "
             "| PSNR vs eager (dB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mpx = r["tiles_per_s"] * r["size"] ** 2 / 1e6 / r.get("threads", cores)
        diff = "0 (reference)" if r["config"] == "eager" else f"{r['max_abs_diff']:.2g}"
        tps = "/".join(f"{v:.3g}" for v in r.get("all_tiles_per_s", [r["tiles_per_s"]]))
        psnr = "-" if r["config"] == "eager" else _fmt(r["psnr_db"], 1)
        lines.append(f"| {r['size']} | {r['config']} | {r['tiles_per_s']:.3g} | {tps} | {r['speedup']:.2f}x | {mpx:.3f} | "
                     f"{r['peak_rss_mb']:.0f} | {diff} | {psnr} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--netG", default="resnet_9blocks")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--norm", default="batch", choices=("batch", "instance", "none"))
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--min_iters", type=int, default=3)
    p.add_argument("--min_seconds", type=float, default=5.0)
    p.add_argument("--overlap", type=int, default=64, help="stain_slide overlap for the whole-slide rate")
    p.add_argument("--threads", type=int, default=0,
                   help="threads per configuration (PyTorch intra-op, onnxruntime intra-op); 0: the libraries' "
                        "defaults (all cores). 1 gives per-core figures that stay stable on a shared machine")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats per size (median reported)")
    p.add_argument("--jsonl", default=None, help="append each measurement to this file")
    p.add_argument("--from_jsonl", nargs="*", default=[], help="no measuring: build the table from these files")
    p.add_argument("--markdown", default=None, help="write the table into this file between the bench markers")
    p.add_argument("--label", default=None, help="machine description for the markdown block")
    p.add_argument("--child_config", help=argparse.SUPPRESS)
    p.add_argument("--child_size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child_dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_config:
        print(json.dumps(child(a)))
        return 0

    import numpy as np
    import torch

    from models.export import compare_outputs

    cores = os.cpu_count() or 1
    configs = ["eager"] + [c for c in a.configs if c != "eager"]
    runs = [json.loads(line) for f in a.from_jsonl for line in Path(f).read_text().splitlines() if line.strip()]
    if not a.from_jsonl:
        with tempfile.TemporaryDirectory(prefix="bench_infer.") as tmp:
            folder = Path(tmp)
            a.configs = configs
            build_reference(a, folder)
            for size in a.sizes:
                for rep in range(a.repeats):  # interleaved, so that every configuration sees the same load drift
                    for cfg in configs:
                        cmd = [sys.executable, __file__, "--child_config", cfg, "--child_size", str(size),
                               "--child_dir", tmp, "--netG", a.netG, "--ngf", str(a.ngf), "--norm", a.norm,
                               "--batch_size", str(a.batch_size), "--min_iters", str(a.min_iters),
                               "--min_seconds", str(a.min_seconds), "--threads", str(a.threads)]
                        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                                      cwd=ROOT).stdout.strip().splitlines()[-1])
                        r.update(compare_outputs(np.load(folder / f"out_eager_{size}.npy"),
                                                 np.load(folder / f"out_{cfg}_{size}.npy")))
                        r.update({"repeat": rep, "netG": a.netG, "ngf": a.ngf, "cores": cores})
                        runs.append(r)
                        print(json.dumps(r), flush=True)
                        if a.jsonl:
                            with open(a.jsonl, "a", encoding="utf-8") as f:
                                f.write(json.dumps(r) + "\n")
    rows = []
    for size in sorted({r["size"] for r in runs}):
        for cfg in CONFIGS:
            rs = [r for r in runs if r["size"] == size and r["config"] == cfg]
            if not rs:
                continue
            row = dict(rs[0])
            row["tiles_per_s"] = float(np.median([r["tiles_per_s"] for r in rs]))
            row["all_tiles_per_s"] = [round(r["tiles_per_s"], 4) for r in rs]
            row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
            rows.append(row)
    for row in rows:
        eager = next((r for r in rows if r["size"] == row["size"] and r["config"] == "eager"), None)
        row["speedup"] = row["tiles_per_s"] / eager["tiles_per_s"] if eager else float("nan")
    md = table(rows, cores, a.overlap)
    best512 = max((r for r in rows if r["size"] == 512), key=lambda r: r["tiles_per_s"], default=None)
    label = a.label or f"{platform.processor() or platform.machine()}, {cores} cores"
    notes = [f"Machine: {label}; torch {torch.__version__}, onnxruntime "
             f"{_version('onnxruntime')}; {rows[0]['netG'] if rows else a.netG} ngf {rows[0]['ngf'] if rows else a.ngf}, "
             f"batch {rows[0]['batch'] if rows else a.batch_size}, {rows[0]['threads'] if rows else '?'} PyTorch "
             f"threads per run (onnxruntime the same); medians of the runs listed. Mpx/s per core = tile pixels per "
             "second / threads."]
    if best512 is not None:
        step = 512 - a.overlap
        rate = best512["tiles_per_s"] * step * step / 1e6
        notes.append(f"Whole-slide rate at 512 px tiles (overlap {a.overlap}: {step}x{step} new px per tile), fastest "
                     f"option ({best512['config']}): {rate:.3f} Mpx/s with {best512.get('threads', cores)} "
                     f"thread(s), {rate / best512.get('threads', cores):.3f} Mpx/s per core "
                     "(generator only; tissue detection skips background).")
    block = "\n".join([BEGIN, "", *notes, "", md, "", END])
    print(block)
    if a.markdown:
        path = Path(a.markdown)
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        from util.fileio import atomic_write_text

        atomic_write_text(path, text)
    return 0


def _version(mod: str) -> str:
    try:
        return __import__(mod).__version__
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
