"""Benchmark scripts/build_pairs.py on a synthetic slide pair built from the real H&E sample slide.

The H&E is ``samples/cmu_small_region.svs`` (2220x2967 px, read through OpenSlide); the "IHC" is the same tissue
re-stained by colour deconvolution (``registration.synthetic.ihc_like``) and resampled under a known homography plus a
smooth 4 px deformation, saved as PNG. The build runs in a child process; the script prints its wall time, its peak
resident memory (``getrusage(RUSAGE_CHILDREN).ru_maxrss``), the number of kept patches and the residual shift of the
kept IHC patches against the undeformed truth (phase correlation).

    python scripts/bench_build_pairs.py --work /tmp/bench_pairs [--blocks 4x4 --patch_size 512]
"""
from __future__ import annotations

import argparse
import csv
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

H = np.array([[0.985, 0.02, 25.0], [-0.015, 1.005, 18.0], [4e-6, -3e-6, 1.0]])


def make_pair(work: Path, slide: Path) -> np.ndarray:
    """Write ``he.svs`` link, ``ihc.png`` and ``points.csv`` into ``work``; return the undeformed IHC truth."""
    import openslide
    from PIL import Image

    from registration import synthetic
    from registration.points import write_points_csv

    with openslide.OpenSlide(str(slide)) as s:
        he = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
    truth = synthetic.ihc_like(he)
    h, w = he.shape[:2]
    ihc = synthetic.deform(truth, (h + 40, w + 40), H, amplitude=4.0, period=400)
    Image.fromarray(ihc).save(work / "ihc.png")
    pts = np.array([[100, 100], [w - 100, 120], [120, h - 100], [w - 120, h - 140], [w / 2, h / 2]], float)
    q = np.c_[pts, np.ones(len(pts))] @ H.T
    write_points_csv(work / "points.csv", pts, q[:, :2] / q[:, 2:])
    return truth


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder (created)")
    p.add_argument("--slide", type=Path, default=Path("samples/cmu_small_region.svs"))
    p.add_argument("--blocks", default="4x4")
    p.add_argument("--patch_size", type=int, default=512)
    p.add_argument("extra", nargs="*", help="more build_pairs.py options (after --)")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    truth = make_pair(a.work, a.slide)
    out = a.work / f"out_{int(time.time())}"
    cmd = [sys.executable, str(Path(__file__).with_name("build_pairs.py")), "--he", str(a.slide), "--ihc",
           str(a.work / "ihc.png"), "--points", str(a.work / "points.csv"), "--her2", "2+", "--out", str(out),
           "--blocks", a.blocks, "--patch_size", str(a.patch_size), *a.extra]
    t = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if rc != 0:
        print(f"build_pairs.py failed with exit status {rc}", file=sys.stderr)
        return rc
    from PIL import Image
    from skimage.registration import phase_cross_correlation

    from registration.stains import grey_channel

    run = next((out / "registration").iterdir())
    rows = list(csv.DictReader(open(run / "patches.csv", encoding="utf-8")))
    shifts = []
    for r in rows:
        if r["status"] == "kept":
            x, y, s = int(r["x"]), int(r["y"]), int(r["size"])
            got = grey_channel(np.asarray(Image.open(out / "IHC" / "train" / r["name"])))
            ref = grey_channel(truth[y:y + s, x:x + s])
            shifts.append(float(np.hypot(*phase_cross_correlation(ref, got, upsample_factor=10)[0])))
    reasons = {k: sum(r["reason"] == k for r in rows) for k in sorted({r["reason"] for r in rows})}
    print(f"frame {truth.shape[1]}x{truth.shape[0]} px, blocks {a.blocks}, patch {a.patch_size}: wall {wall:.1f} s, "
          f"peak RSS {peak_mb:.0f} MiB, patches {reasons}, kept-patch residual shift mean "
          f"{np.mean(shifts) if shifts else float('nan'):.2f} px, max {max(shifts) if shifts else float('nan'):.2f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
