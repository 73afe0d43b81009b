"""Benchmark whole-slide staining: throughput against the generator's bare forward pass, and peak memory vs slide size.

For each size, a synthetic slide (tiles of the real H&E samples/cmu_small_region.svs repeated, 0.499 um/px, a tiled
OpenSlide generic-tiff written tile-wise) is stained in a fresh subprocess, which reports its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, main process; DataLoader workers are separate processes) and the
throughput in tiles/s. The bare forward throughput (same network, tile size and batch size, tensors already on the
device) is measured in the same process right before each staining run (``--repeats`` interleaved pairs), so that both
see the same machine load; the medians are reported. ``identity_pipeline_tiles_per_s`` is the pipeline's own ceiling
(reading, collation, blending, writing) with an identity generator.

    python scripts/bench_wsi.py --sizes 2048 4096 --netG resnet_9blocks --ngf 64 --tile_size 512 --gpu_ids -1

Prints one JSON line per measurement and a summary table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_slide(path: Path, size: int, tile: int = 256) -> None:
    """A ``size x size`` tiled TIFF built tile-wise from the real SVS (never whole in memory)."""
    import numpy as np
    import tifffile

    from wsi.reader import open_slide

    with open_slide(ROOT / "samples" / "cmu_small_region.svs") as s:
        src = s.read_region(900, 1100, 0, 1024, 1024)

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                yy, xx = y % 1024, x % 1024
                yield np.ascontiguousarray(src[yy:yy + tile, xx:xx + tile])

    ppcm = 1e4 / 0.499
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                 compression="jpeg", resolution=(ppcm, ppcm), resolutionunit="CENTIMETER", metadata=None)


def build_net(a):
    from models.networks import define_G

    return define_G(3, 3, a.ngf, a.netG, "instance", False, "normal", 0.02).eval()


def bare_forward(a, net, dev) -> float:
    """Tiles/s of the generator alone: ``(batch, 3, tile, tile)`` tensors already on the device, at least
    ``a.tiles`` tiles and 2 s, after one warm-up batch."""
    import torch

    from wsi.pipeline import _autocast

    x = torch.rand(a.batch_size, 3, a.tile_size, a.tile_size, device=dev) * 2 - 1
    with torch.inference_mode(), _autocast(dev, "auto"):
        net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t, n = time.perf_counter(), 0
        while n < a.tiles or time.perf_counter() - t < 2:
            y = net(x)
            n += a.batch_size
        y.float().cpu()  # waits for the device
    return n / (time.perf_counter() - t)


def child(a) -> dict:
    """Stain one synthetic slide ``a.repeats`` times in this process, each run preceded by a bare-forward measurement
    of the same network (interleaved, so that both see the same machine load); report medians and peak RSS."""
    import statistics

    import torch

    from wsi.pipeline import StainSettings, stain_slide

    dev = torch.device(f"cuda:{a.gpu_ids}" if a.gpu_ids >= 0 else "cpu")
    net = build_net(a).to(dev)
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        src = Path(d) / "slide.tiff"
        make_slide(src, a.size)
        s = StainSettings(tile_size=a.tile_size, overlap=a.overlap, batch_size=a.batch_size,
                          num_workers=a.num_workers, tissue_mask=False, device=str(dev), progress=False)
        bare, pipe, total, ratios = [], [], [], []
        for r in range(a.repeats):
            bare.append(bare_forward(a, net, dev))
            t = time.perf_counter()
            summary = stain_slide(net, src, Path(d) / f"out{r}.tiff", s)
            secs = time.perf_counter() - t
            n = summary["tiles_run"]
            pipe.append(n / summary["seconds_generator_and_blend"])
            total.append(n / secs)
            ratios.append(pipe[-1] / bare[-1])
        # the pipeline's own ceiling: everything but the network (reading, collation, blending, writing)
        t = time.perf_counter()
        ident = stain_slide(lambda x: x, src, Path(d) / "identity.tiff", s)
        ident_rate = ident["tiles_run"] / (time.perf_counter() - t)
    med = statistics.median
    return {"size": a.size, "tiles": n, "repeats": a.repeats, "bare_tiles_per_s": med(bare),
            "tiles_per_s_generator_phase": med(pipe), "tiles_per_s_total": med(total), "ratio_to_bare": med(ratios),
            "ratios": [round(v, 3) for v in ratios], "identity_pipeline_tiles_per_s": ident_rate,
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    from util.threads import configure_threads

    # before torch is imported: allocator (a command, not a main() called from Python), threads (util/threads.py)
    configure_threads(cli=argv is None and __name__ == "__main__")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="synthetic slide sides, px")
    p.add_argument("--netG", default="resnet_9blocks")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--tile_size", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--gpu_ids", type=int, default=-1)
    p.add_argument("--tiles", type=int, default=16, help="minimum tiles for each bare-forward measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved bare-forward / staining pairs per size")
    p.add_argument("--tmp", default=None, help="folder for the synthetic slides")
    p.add_argument("--child_size", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_size is not None:
        a.size = a.child_size
        print(json.dumps(child(a)))
        return 0
    rows = []
    for size in a.sizes:
        cmd = [sys.executable, __file__, "--child_size", str(size), "--netG", a.netG, "--ngf", str(a.ngf),
               "--tile_size", str(a.tile_size), "--overlap", str(a.overlap), "--batch_size", str(a.batch_size),
               "--num_workers", str(a.num_workers), "--gpu_ids", str(a.gpu_ids), "--tiles", str(a.tiles),
               "--repeats", str(a.repeats)] + (["--tmp", a.tmp] if a.tmp else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ}).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(r))
        rows.append(r)
    print(f"{'size':>7} {'tiles':>6} {'tiles/s':>8} {'gen-phase/bare':>15} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['size']:>7} {r['tiles']:>6} {r['tiles_per_s_total']:>8.2f} {r['ratio_to_bare']:>15.2f} "
              f"{r['peak_rss_mb']:>12.0f}")
    if len(rows) > 1:
        print(f"peak RSS ratio largest/smallest: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
