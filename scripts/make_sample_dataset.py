"""Build a small BCI-layout paired dataset DERIVED from one real IHC image (a pipeline exercise, not biology).

No real paired H&E/IHC data ships with the project, so this script derives pairs from ``samples/ihc.png`` (real IHC:
DAB-stained membranes with a hematoxylin counterstain, colon tissue; scikit-image's ``data.immunohistochemistry()``):

1. colour deconvolution with :func:`skimage.color.rgb2hed` (Ruifrok & Johnston 2001 stain vectors) splits the IHC
   image into hematoxylin (H), eosin (E, about zero in IHC) and DAB (D) optical densities;
2. the H&E-like input is re-rendered with :func:`skimage.color.hed2rgb` from the *real* hematoxylin (x 1.5, to look like
   an H&E nuclear stain) and a *synthetic* eosin: ``0.04 * density + 0.3 * D``, where ``density`` is the tissue's total
   optical density ``-sum(log(rgb / 255))`` smoothed with a Gaussian (sigma 2 px) and scaled to its 99th percentile
   (clipped to [0, 1]). DAB itself is removed, so the brown HER2-like signal exists only in the target;
3. the real IHC image is the target.

Tiles of ``--tile_size`` px are cut at random positions: train tiles from the left part of the image, test tiles from
the rightmost ``tile_size`` columns, so train and test never share pixels. Each tile gets a random rot90/flip
augmentation (the same for its H&E and IHC halves). Its HER2 level is assigned from its DAB content: the fraction of
pixels whose DAB density exceeds the Otsu threshold of the whole image's DAB channel, cut at the quartiles of that
fraction over all tiles (train and test pooled) into ``0``, ``1+``, ``2+``, ``3+``. These levels are labels for
exercising the per-level reports, not clinical scores.

Output (``--out``, default ``./datasets/sample_bci``)::

    HE/train/00000_train_2+.png ...   IHC/train/00000_train_2+.png ...
    HE/test/00000_test_0.png ...      IHC/test/...
    README.md   (states that the pairs are derived, and the image's source and licence)
    tiles.csv   (name, phase, top, left, rot90, flip, dab_fraction, her2)

The result is deterministic for a ``--seed``. An existing non-empty ``--out`` is refused unless ``--overwrite``; the
dataset is built in a temporary folder beside ``--out`` and renamed into place, so no half-written dataset is left.

Example: ``python scripts/make_sample_dataset.py --out datasets/sample_bci --seed 0``
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image
from skimage import color, filters

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.her2 import HER2_LEVELS  # noqa: E402
from util.errors import OptionError  # noqa: E402
from util.image_io import read_rgb_uint8  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "samples" / "ihc.png"

README = """# Sample BCI-layout dataset (DERIVED pairs)

Built by `scripts/make_sample_dataset.py` (seed {seed}, tiles {tile} px, {n_train} train and {n_test} test pairs).

**These pairs are derived, not real H&E/IHC pairs.** They exist to exercise the training, test and evaluation pipeline;
they say nothing about biology or about HER2 scoring.

- Target (`IHC/`): tiles of a real IHC image (DAB membrane stain with hematoxylin counterstain, colon tissue).
- Input (`HE/`): the same tiles re-rendered as H&E-like images: colour deconvolution (`skimage.color.rgb2hed`),
  the real hematoxylin channel kept, DAB removed, eosin synthesised from the tissue density, recombined with
  `skimage.color.hed2rgb`.
- HER2 level in the file names: quartiles of each tile's DAB-positive pixel fraction (Otsu threshold on the DAB
  channel) mapped to 0 / 1+ / 2+ / 3+. Not a clinical score.
- Train tiles come from the left part of the image, test tiles from its rightmost {tile} columns (no shared pixels);
  tiles get random rot90/flip augmentations. Positions are in `tiles.csv`.

Source image: `{source}` - scikit-image 0.26 `skimage/data/ihc.png` (`skimage.data.immunohistochemistry()`),
BSD-3 package, image with no known copyright restrictions (see `samples/README.md`).
"""


def render_he(ihc: np.ndarray) -> np.ndarray:
    """Render an H&E-like image from a real IHC image (recipe in the module docstring).

    Args:
        ihc: ``(H, W, 3)`` uint8 RGB bright-field IHC image.

    Returns:
        ``(H, W, 3)`` uint8 RGB H&E-like image.
    """
    hed = color.rgb2hed(ihc)
    hema, dab = hed[..., 0], hed[..., 2]
    od = -np.log(np.clip(ihc.astype(np.float64) / 255.0, 1.0 / 255.0, 1.0)).sum(axis=-1)
    density = filters.gaussian(od, sigma=2)
    density = np.clip(density / max(np.percentile(density, 99), 1e-6), 0.0, 1.0)
    eosin = 0.04 * density + 0.3 * dab
    rgb = color.hed2rgb(np.stack([1.5 * hema, eosin, np.zeros_like(hema)], axis=-1))
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def dab_density(ihc: np.ndarray) -> np.ndarray:
    """DAB optical density ``(H, W)`` float64 of an RGB uint8 IHC image (``skimage.color.rgb2hed`` channel 2)."""
    return color.rgb2hed(ihc)[..., 2]


def her2_levels(fractions: Sequence[float]) -> List[str]:
    """Map DAB-positive fractions to ``'0'``..``'3+'`` by their quartiles (``np.quantile`` at 0.25, 0.5, 0.75)."""
    f = np.asarray(fractions, dtype=np.float64)
    edges = np.quantile(f, [0.25, 0.5, 0.75])
    return [HER2_LEVELS[int(np.searchsorted(edges, x, side="left"))] for x in f]


def _augment(tile: np.ndarray, k: int, flip: bool) -> np.ndarray:
    tile = np.rot90(tile, k)
    return np.ascontiguousarray(tile[:, ::-1] if flip else tile)


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def build(out: Path, tile: int, n_train: int, n_test: int, seed: int, source: Path, overwrite: bool = False) -> Path:
    """Build the dataset into ``out`` (see the module docstring). Returns ``out``.

    Raises:
        OptionError: ``out`` exists and is not empty (without ``overwrite``) or is a file; sizes that do not fit the
            source image; non-positive counts.
        OSError: the source image cannot be read (``util.image_io.ImageReadError``).
    """
    out = Path(out)
    if tile < 8 or n_train < 1 or n_test < 1:
        bad = [f"--{k} must be >= {lo}, got {v}" for k, v, lo in (("tile_size", tile, 8), ("n_train", n_train, 1),
                                                                    ("n_test", n_test, 1)) if v < lo]
        raise OptionError("; ".join(bad))
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out '{out}' exists and is not a folder")
    if _is_nonempty_dir(out) and not overwrite:
        raise OptionError(f"--out '{out}' exists and is not empty; pass --overwrite to replace it")
    ihc = read_rgb_uint8(source)
    h, w = ihc.shape[:2]
    if tile > h or 2 * tile > w:
        raise OptionError(
            f"--tile_size {tile} does not fit '{source}' ({w}x{h} px): need tile_size <= height and "
            "2 * tile_size <= width (train and test regions are disjoint)"
        )
    he = render_he(ihc)
    dab = dab_density(ihc)
    threshold = float(filters.threshold_otsu(dab))

    rng = np.random.default_rng(seed)
    tiles = []
    for phase, n, (x_lo, x_hi) in (("train", n_train, (0, w - 2 * tile)), ("test", n_test, (w - tile, w - tile))):
        for _ in range(n):
            top = int(rng.integers(0, h - tile + 1))
            left = int(rng.integers(x_lo, x_hi + 1))
            k = int(rng.integers(0, 4))
            flip = bool(rng.integers(0, 2))
            frac = float((dab[top:top + tile, left:left + tile] > threshold).mean())
            tiles.append(dict(phase=phase, top=top, left=left, k=k, flip=flip, frac=frac))
    for t, level in zip(tiles, her2_levels([t["frac"] for t in tiles])):
        t["her2"] = level

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        rows = ["name,phase,top,left,rot90,flip,dab_fraction,her2"]
        counters = {"train": 0, "test": 0}
        for t in tiles:
            phase = t["phase"]
            name = f"{counters[phase]:05d}_{phase}_{t['her2']}.png"
            counters[phase] += 1
            sl = (slice(t["top"], t["top"] + tile), slice(t["left"], t["left"] + tile))
            for sub, img in (("HE", he), ("IHC", ihc)):
                folder = tmp / sub / phase
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_augment(img[sl], t["k"], t["flip"])).save(folder / name, format="PNG")
            rows.append(f"{name},{phase},{t['top']},{t['left']},{t['k']},{int(t['flip'])},{t['frac']:.6f},{t['her2']}")
        (tmp / "tiles.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(
            README.format(seed=seed, tile=tile, n_train=n_train, n_test=n_test, source=Path(source).name),
            encoding="utf-8",
        )
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700
        if out.exists():
            if _is_nonempty_dir(out) and not overwrite:  # appeared while building
                raise OptionError(f"--out '{out}' exists and is not empty; pass --overwrite to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "d")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %d train and %d test derived pairs to %s (HER2 levels from DAB quartiles)", n_train, n_test, out)
    return out


def build_parser() -> argparse.ArgumentParser:
    from util.logging_setup import HelpFormatter

    p = argparse.ArgumentParser(formatter_class=HelpFormatter, description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("datasets/sample_bci"), help="output folder (BCI layout)")
    p.add_argument("--tile_size", type=int, default=128, help="tile side in pixels")
    p.add_argument("--n_train", type=int, default=24, help="number of train pairs")
    p.add_argument("--n_test", type=int, default=8, help="number of test pairs")
    p.add_argument("--seed", type=int, default=0, help="random seed (tile positions and augmentations)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="real RGB IHC image to derive pairs from")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from util.logging_setup import run_cli

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    def body(a):
        build(a.out, a.tile_size, a.n_train, a.n_test, a.seed, a.source, a.overwrite)

    return run_cli(body, args, prog="make_sample_dataset.py")


if __name__ == "__main__":
    sys.exit(main())
