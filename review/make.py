"""Build one review round folder from a results folder: sample, anonymise, write the form and the key.

Layout of ``out`` (written in a temporary folder beside it and renamed into place at the end, so an interrupted run
leaves no half-made round)::

    out/form/index.html        the form: give the whole form/ folder to every reviewer
    out/form/images/imgNN.png  anonymous images (absent with embed=True: they are data: URIs inside index.html)
    out/key.json               the key: keep it, never give it to reviewers
    out/README.txt             these two lines, for whoever opens the folder
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

from review.form import render_form
from review.images import data_uri, encode_png, load_pixels
from review.sample import build_key, find_images_dir, find_pairs, sample_pairs, write_key
from util.errors import DataError, OptionError
from util.fileio import atomic_write_text

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

README = (
    "HER2 blinded review round.\n"
    "form/     give this whole folder to each reviewer (open form/index.html in a browser; works offline).\n"
    "key.json  the answer key: keep it here, do not give it to reviewers.\n"
    "Score the returned answer files with: python scripts/review_score.py --key key.json ANSWERS...\n"
)


@dataclass(frozen=True)
class Round:
    """Paths of a written round and its key."""

    out: Path
    form: Path
    key_path: Path
    key: dict


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OptionError(f"--out '{out}' exists and is not empty; choose a new folder or pass --overwrite")


def _install(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder onto ``out`` (replacing an empty or, when allowed, a previous round)."""
    old: Optional[Path] = None
    if out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        else:
            out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def make_round(results: PathLike, out: PathLike, n_pairs: int = 40, seed: Optional[int] = None,
               embed: bool = False, overwrite: bool = False, title: str = "HER2 blinded review") -> Round:
    """Sample ``n_pairs`` real/generated pairs from ``results`` and write a review round into ``out``.

    Args:
        results: a ``test.py`` results folder (``<phase>_<epoch>`` or its ``images/``).
        out: round folder to create (must be absent or empty unless ``overwrite``).
        n_pairs: pairs to sample (BCI Table 5 used 40).
        seed: sampling/shuffling seed; ``None`` draws one (recorded in the key, so the round can be rebuilt).
        embed: put the images into index.html as ``data:`` URIs (one file; large: about 1.4 x the PNG bytes).
        overwrite: replace a non-empty ``out``.
        title: page title.

    Raises:
        DataError: bad results folder, too few pairs, or a real and generated image of different sizes (the size
            would tell them apart).
        OptionError: bad ``n_pairs`` or an existing non-empty ``out``.
        ImageReadError: an unreadable image (names it).
    """
    out = Path(out)
    _check_out(out, overwrite)
    images_dir = find_images_dir(results)
    pairs = find_pairs(images_dir)
    if seed is None:
        seed = secrets.randbelow(2**31)
        log.info("no --seed given; drew seed %d (recorded in the key)", seed)
    chosen = sample_pairs(pairs, n_pairs, seed, source=images_dir)
    key = build_key(chosen, seed, images_dir.resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        form_dir = tmp / "form"
        (form_dir if embed else form_dir / "images").mkdir(parents=True)
        by_file = {}
        for p in tqdm(chosen, desc="review images", unit="pair", leave=False):
            real, gen = load_pixels(p.real), load_pixels(p.generated)
            if real.shape != gen.shape:
                raise DataError(f"'{p.real}' is {real.shape[1]}x{real.shape[0]} px but '{p.generated}' is "
                                f"{gen.shape[1]}x{gen.shape[0]} px; the size would reveal which is generated")
            by_file[p.real.name], by_file[p.generated.name] = encode_png(real), encode_png(gen)
        sources = {}
        for im in key["images"]:  # written in form order, so file order/times say nothing about kind
            png = by_file[im["file"]]
            if embed:
                sources[im["id"]] = data_uri(png)
            else:
                (form_dir / "images" / f"{im['id']}.png").write_bytes(png)
                sources[im["id"]] = f"images/{im['id']}.png"
        ids = [im["id"] for im in key["images"]]
        atomic_write_text(form_dir / "index.html", render_form(key["form_id"], ids, sources, title=title))
        write_key(key, tmp / "key.json")
        atomic_write_text(tmp / "README.txt", README)
        _install(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    log.info("wrote review round '%s' (%d pairs, form %s)", out, len(chosen), key["form_id"])
    return Round(out=out, form=out / "form" / "index.html", key_path=out / "key.json", key=key)
