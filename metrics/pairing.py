"""Strict pairing of generated and real images in a results folder.

Layout written by ``test.py`` (docs/ARCHITECTURE.md): ``<result_path>/<phase>_<epoch>/images/<stem>_fake_B.png`` and
``<stem>_real_B.png`` (plus ``<stem>_real_A.png``, which scoring does not need). Every ``fake_B`` must have its
``real_B`` with the same height and width, every ``real_B`` its ``fake_B``, and every file must open as an image.
Anything else is a :class:`PairingError` listing every problem; with ``allow_partial`` the problems are logged and the
matching pairs are scored, and the caller reports how many were left out. Nothing is skipped silently.

Only lossless 8-bit PNG is accepted: a JPEG round trip changes PSNR by several dB, and a 16-bit PNG would be clipped
to [0, 255] by the 8-bit RGB conversion (Pillow) instead of being scored on its real values.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from PIL import Image

from util.errors import DataError

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

ROLES = ("fake_B", "real_B", "real_A")
#: Other images test.py may save for some models; recognised so that they are counted, not reported as strangers.
OTHER_ROLES = ("fake_A", "rec_A", "rec_B", "idt_A", "idt_B", "real")
MAX_LISTED = 50


class PairingError(DataError):
    """The results folder does not pair up (missing, extra, mismatched or unreadable images, or wrong folder)."""


@dataclass(frozen=True)
class Pair:
    """One scored image: ``stem`` (e.g. ``00012_test_2+``), paths, HER2 level (or None) and size ``(H, W)`` in px."""

    stem: str
    real: Path
    fake: Path
    her2: Optional[str]
    size: Tuple[int, int]


@dataclass
class PairingResult:
    """Outcome of :func:`pair_images`: the pairs that match, and one human-readable line per problem."""

    images_dir: Path
    pairs: List[Pair] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    n_other_files: int = 0
    n_left_out: int = 0


def _split_role(name: str) -> Tuple[Optional[str], Optional[str], str]:
    """``'x_fake_B.png'`` -> ``('x', 'fake_B', '.png')``; unknown roles give ``(None, None, suffix)``."""
    p = Path(name)
    stem, ext = p.stem, p.suffix
    for role in ROLES + OTHER_ROLES:
        if stem.endswith("_" + role) and len(stem) > len(role) + 1:
            return stem[: -len(role) - 1], role, ext
    return None, None, ext


#: Offset of the bit-depth byte in a PNG file: 8-byte signature, IHDR length and type (8), width and height (8).
_PNG_BIT_DEPTH_OFFSET = 24


def _image_size(path: Path) -> Tuple[int, int]:
    """``(H, W)`` from the image header (no full decode).

    Raises:
        OSError / ValueError: unreadable file, not a PNG, or a bit depth above 8 (PNG spec, IHDR chunk).
    """
    with Image.open(path) as im:
        if im.format != "PNG":
            raise ValueError(f"format is {im.format}, expected PNG")
        w, h = im.size
    with open(path, "rb") as f:
        header = f.read(_PNG_BIT_DEPTH_OFFSET + 1)
    depth = header[_PNG_BIT_DEPTH_OFFSET]
    if depth > 8:
        raise ValueError(f"{depth}-bit PNG; expected 8-bit RGB as test.py writes (converting would clip to 255)")
    return h, w


def pair_images(images_dir: PathLike) -> PairingResult:
    """Pair ``*_fake_B.png`` with ``*_real_B.png`` in ``images_dir`` (sorted by stem).

    Problems recorded (one line each): missing real_B, real_B without fake_B, size mismatch, unreadable, non-PNG or
    16-bit image, two files for one stem and role (``.png`` / ``.PNG``). Headers are read here; a file whose header
    is fine but whose data is corrupt fails later, when scored.

    Raises:
        PairingError: ``images_dir`` is not a folder.
    """
    from data.her2 import parse_her2  # here, not at import: the data package imports torch (see metrics.scoring)

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise PairingError(f"images folder '{images_dir}' does not exist")
    fakes, reals, real_as = {}, {}, {}
    res = PairingResult(images_dir=images_dir)
    for entry in sorted(images_dir.iterdir()):
        if not entry.is_file():
            continue
        stem, role, ext = _split_role(entry.name)
        if role in ("fake_B", "real_B"):
            if ext.lower() != ".png":
                res.problems.append(f"not a PNG (lossy formats change PSNR): {entry.name}")
                continue
            found = fakes if role == "fake_B" else reals
            if stem in found:  # e.g. x_fake_B.png and x_fake_B.PNG: which one to score is ambiguous
                res.problems.append(f"two {role} files for {stem}: {found[stem].name} and {entry.name}")
                continue
            found[stem] = entry
        else:
            if role == "real_A":
                real_as[stem] = entry
            res.n_other_files += 1
    if res.n_other_files:
        log.info("%s: %d file(s) other than *_fake_B.png / *_real_B.png not scored (e.g. real_A)",
                 images_dir, res.n_other_files)
    left_out = 0
    for stem in sorted(set(real_as) - set(fakes) - set(reals)):
        res.problems.append(f"real_A without fake_B and real_B: {real_as[stem].name}")
        left_out += 1
    for stem in sorted(set(fakes) | set(reals)):
        fake, real = fakes.get(stem), reals.get(stem)
        if real is None:
            res.problems.append(f"missing real_B for {fake.name} (expected {stem}_real_B.png)")
            left_out += 1
            continue
        if fake is None:
            res.problems.append(f"real_B without fake_B: {real.name} (expected {stem}_fake_B.png)")
            left_out += 1
            continue
        sizes = {}
        for p in (real, fake):
            try:
                sizes[p] = _image_size(p)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                res.problems.append(f"unreadable image {p.name}: {e}")
        if len(sizes) < 2:
            left_out += 1
            continue
        if sizes[real] != sizes[fake]:
            res.problems.append(
                f"size mismatch for {stem}: real_B {sizes[real][0]}x{sizes[real][1]} vs fake_B "
                f"{sizes[fake][0]}x{sizes[fake][1]} (HxW)")
            left_out += 1
            continue
        res.pairs.append(Pair(stem=stem, real=real, fake=fake, her2=parse_her2(stem), size=sizes[real]))
    res.n_left_out = left_out
    return res


def restrict_to_manifest(result: PairingResult, manifest: dict) -> List[str]:
    """Keep only the pairs that ``test.py``'s run manifest lists (``manifest["images"]`` records whose ``files`` hold
    ``fake_B`` and ``real_B``), so a folder can never mix runs.

    Listed images that are missing or unpaired become problems of ``result``; problems about files the manifest does
    not list are dropped. Returns the stems of the pairs in the folder that the manifest does not list (not scored).
    """
    listed = {r.get("stem") for r in manifest.get("images", [])
              if isinstance(r, dict) and {"fake_B", "real_B"} <= set((r.get("files") or {}).keys())}
    present = {p.stem for p in result.pairs}
    extra = sorted(present - listed)
    result.pairs = [p for p in result.pairs if p.stem in listed]
    kept = [q for q in result.problems if any(f"{stem}_" in q or q.endswith(f" {stem}") for stem in listed)]
    missing = sorted(listed - present)
    for stem in missing:
        if not any(f"{stem}_" in q or q.endswith(f" {stem}") for q in kept):
            kept.append(f"{stem}_fake_B.png / {stem}_real_B.png listed in {MANIFEST_NAME} but not in the folder")
    result.n_left_out = len(missing)
    result.problems = kept
    return extra


MANIFEST_NAME = "run_manifest.json"


def format_problems(problems: Sequence[str], limit: int = MAX_LISTED) -> str:
    """Join problem lines with ``'; '``, listing at most ``limit`` and counting the rest."""
    shown = list(problems[:limit])
    if len(problems) > limit:
        shown.append(f"... and {len(problems) - limit} more")
    return "; ".join(shown)


def check_pairing(result: PairingResult, allow_partial: bool = False) -> None:
    """Raise unless ``result`` pairs completely (or ``allow_partial`` and at least one pair matched).

    Raises:
        PairingError: no ``fake_B`` at all (empty folder), or problems without ``allow_partial`` (the message lists
            them), or nothing left to score.
    """
    d = result.images_dir
    if not result.pairs and not result.problems:
        raise PairingError(f"images folder '{d}' holds no *_fake_B.png / *_real_B.png images (empty results?)")
    if result.problems and not allow_partial:
        raise PairingError(
            f"images folder '{d}': {len(result.problems)} pairing problem(s): {format_problems(result.problems)}. "
            f"Fix the folder, or pass --allow_partial to score the {len(result.pairs)} complete pair(s)")
    if not result.pairs:
        raise PairingError(f"images folder '{d}': no complete fake_B/real_B pair to score: "
                           f"{format_problems(result.problems)}")
    if result.problems:
        log.warning("%s: --allow_partial: %d problem(s), scoring %d pair(s): %s", d, len(result.problems),
                    len(result.pairs), format_problems(result.problems))


def list_runs(root: Path) -> List[str]:
    """Names of ``<phase>_<epoch>`` folders (holding ``images/``) under ``root`` and its sub-folders, for messages."""
    found = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if (d / "images").is_dir():
                found.append(d.name)
            elif d.is_dir():
                found += [f"{d.name}/{e.name}" for e in sorted(d.iterdir()) if (e / "images").is_dir()]
    return found


def resolve_runs(result_path: PathLike, phase: str = "test", epoch: str = "latest") -> List[Tuple[str, Path]]:
    """Find the ``<phase>_<epoch>`` folder(s) to score.

    ``result_path`` is one experiment (``<result_path>/<phase>_<epoch>/images`` exists) or a results root whose
    sub-folders are experiments (``<result_path>/<name>/<phase>_<epoch>/images``).

    Returns:
        ``[(experiment_name, run_dir), ...]`` sorted by name; one entry for a single experiment.

    Raises:
        PairingError: ``result_path`` missing, or no matching folder (the message lists the ones that exist, or says
            to pass the parent when ``result_path`` is a ``<phase>_<epoch>`` folder itself).
    """
    root = Path(result_path)
    if not root.is_dir():
        raise PairingError(f"--result_path '{root}' is not a folder")
    run = f"{phase}_{epoch}"
    if (root / run / "images").is_dir():
        return [(root.resolve().name, root / run)]
    subs = [(d.name, d / run) for d in sorted(root.iterdir()) if d.is_dir() and (d / run / "images").is_dir()]
    if subs:
        return subs
    if (root / "images").is_dir():
        raise PairingError(f"--result_path '{root}' is itself a <phase>_<epoch> folder; pass its parent "
                           f"'{root.parent}' (with --phase/--epoch matching '{root.name}')")
    have = list_runs(root)
    raise PairingError(
        f"no '{run}/images' folder in '{root}' nor in its sub-folders (--phase {phase} --epoch {epoch}); "
        + (f"found: {', '.join(have)}" if have else "no <phase>_<epoch>/images folder at all (run test.py first)"))
