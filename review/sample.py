"""Pairs of real/generated IHC images in a results folder, random sampling, and the review key.

A results folder written by ``test.py`` holds ``<stem>_real_A.png`` (H&E input), ``<stem>_fake_B.png`` (generated IHC)
and ``<stem>_real_B.png`` (real IHC) in ``<results_dir>/<name>/<phase>_<epoch>/images/`` (docs/ARCHITECTURE.md). A
*pair* is a stem with both a ``real_B`` and a ``fake_B`` image; its HER2 level comes from the stem
(:func:`data.her2.parse_her2`, e.g. ``00012_test_2+`` -> ``'2+'``; ``None`` for names without a level).

The *key* maps each anonymous image id of a form to its source file, its kind (``'real'`` or ``'generated'``), its pair
(the stem) and the file-name level. It is written apart from the form and read back by the scorer.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from data.her2 import parse_her2
from review import FORMAT_VERSION, KEY_FORMAT, LEVELS, parse_versioned_json
from util.errors import DataError, OptionError
from util.fileio import atomic_write_text

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_RESULT_RE = re.compile(r"^(?P<stem>.+)_(?P<kind>real_B|fake_B)(?P<ext>\.[A-Za-z]+)$")
KINDS = ("real", "generated")


@dataclass(frozen=True)
class Pair:
    """One real/generated pair: ``stem``, the two files, and the HER2 level from the name (or ``None``)."""

    stem: str
    real: Path
    generated: Path
    level: Optional[str]


def find_images_dir(results: PathLike) -> Path:
    """Return the images folder of a results folder.

    Args:
        results: either the ``images`` folder itself or its ``<phase>_<epoch>`` parent.

    Raises:
        DataError: the folder does not exist, or neither it nor its ``images/`` subfolder holds ``*_fake_B`` images.
    """
    results = Path(results)
    if not results.is_dir():
        raise DataError(f"--results '{results}' is not a folder; expected <results_dir>/<name>/<phase>_<epoch> "
                        "or its images/ subfolder")
    for cand in (results, results / "images"):
        if cand.is_dir() and any(_RESULT_RE.match(p.name) and p.suffix.lower() in IMAGE_SUFFIXES
                                 for p in cand.iterdir()):
            return cand
    raise DataError(f"--results '{results}' holds no '<stem>_real_B' / '<stem>_fake_B' images (looked in it and in "
                    "its images/ subfolder); pass the folder test.py wrote")


def find_pairs(images_dir: PathLike) -> List[Pair]:
    """List the real/generated pairs in ``images_dir``, sorted by stem.

    Stems with only one of the two images are not pairs; they are logged (a warning with their count and the first
    names), never dropped silently.

    Raises:
        DataError: two files of the same stem and kind (e.g. ``x_fake_B.png`` and ``x_fake_B.jpg``).
    """
    images_dir = Path(images_dir)
    found: Dict[str, Dict[str, Path]] = {}
    for p in sorted(images_dir.iterdir()):
        m = _RESULT_RE.match(p.name)
        if not m or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        kind = "real" if m.group("kind") == "real_B" else "generated"
        slot = found.setdefault(m.group("stem"), {})
        if kind in slot:
            raise DataError(f"'{images_dir}' has two {m.group('kind')} images for '{m.group('stem')}': "
                            f"'{slot[kind].name}' and '{p.name}'")
        slot[kind] = p
    pairs, lonely = [], []
    for stem in sorted(found):
        slot = found[stem]
        if len(slot) == 2:
            pairs.append(Pair(stem, slot["real"], slot["generated"], parse_her2(stem)))
        else:
            lonely.append(next(iter(slot.values())).name)
    if lonely:
        log.warning("%d image(s) in '%s' have no real/generated partner and are not reviewable: %s%s", len(lonely),
                    images_dir, ", ".join(lonely[:5]), " ..." if len(lonely) > 5 else "")
    return pairs


def sample_pairs(pairs: Sequence[Pair], n_pairs: int, seed: int, source: PathLike = "") -> List[Pair]:
    """Draw ``n_pairs`` distinct pairs uniformly at random (``random.Random(seed).sample`` over the sorted pairs).

    Raises:
        OptionError: ``n_pairs`` < 1.
        DataError: fewer than ``n_pairs`` pairs are available (the message names ``source`` and both counts).
    """
    if n_pairs < 1:
        raise OptionError(f"--n_pairs must be at least 1, got {n_pairs}")
    if len(pairs) < n_pairs:
        raise DataError(f"'{source}' has {len(pairs)} real/generated pair(s), fewer than --n_pairs {n_pairs}; "
                        "lower --n_pairs or test on more images")
    ordered = sorted(pairs, key=lambda p: p.stem)
    return random.Random(seed).sample(ordered, n_pairs)


def build_key(pairs: Sequence[Pair], seed: int, source: PathLike) -> dict:
    """Shuffle the 2 x len(pairs) images and give them anonymous ids in form order (``img01``, ``img02``, ...).

    The shuffle uses ``random.Random(seed)`` (a stream separate from the sampling one), so the form order carries no
    information about kind or pair. ``form_id`` is a SHA-256 digest of the assignment (12 hex digits): answers
    carry it so that answers for another form are refused.

    Returns:
        The key dict (see :func:`read_key` for its fields); ``images`` is in form order.
    """
    entries = []
    for p in pairs:
        entries.append({"file": p.real.name, "kind": "real", "pair": p.stem, "level": p.level})
        entries.append({"file": p.generated.name, "kind": "generated", "pair": p.stem, "level": p.level})
    rng = random.Random(f"shuffle-{seed}")
    rng.shuffle(entries)
    width = max(2, len(str(len(entries))))
    images = [{"id": f"img{i + 1:0{width}d}", **e} for i, e in enumerate(entries)]
    digest = hashlib.sha256(json.dumps([seed, str(source), images], sort_keys=True).encode()).hexdigest()[:12]
    return {
        "format": KEY_FORMAT,
        "version": FORMAT_VERSION,
        "form_id": digest,
        "seed": seed,
        "n_pairs": len(pairs),
        "results": str(source),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "images": images,
    }


def write_key(key: dict, path: PathLike) -> Path:
    """Write the key as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(key, indent=2, ensure_ascii=False) + "\n")


def read_key(path: PathLike) -> dict:
    """Read and validate a key file.

    Fields: ``format`` (``'her2-review-key'``), ``version`` (1), ``form_id`` (str), ``seed``, ``n_pairs``,
    ``results`` (source folder), ``created``, ``images``: list of ``{"id", "file", "kind": "real"|"generated",
    "pair": stem, "level": "0"|"1+"|"2+"|"3+"|null}`` in form order. Every pair has exactly one real and one generated
    image.

    Raises:
        DataError: unreadable JSON, wrong format/version, duplicate ids, bad kinds/levels or incomplete pairs
            (the message names the file).
        OSError: the file cannot be read.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    key = parse_versioned_json(path, text, KEY_FORMAT, "key", DataError)
    images = key.get("images")
    if not isinstance(images, list) or not images or not isinstance(key.get("form_id"), str):
        raise DataError(f"key '{path}' lacks 'form_id' or a non-empty 'images' list")
    ids, per_pair = set(), {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file", "kind", "pair", "level")):
            raise DataError(f"key '{path}': images[{i}] must have id, file, kind, pair and level")
        if im["id"] in ids:
            raise DataError(f"key '{path}': image id '{im['id']}' appears twice")
        ids.add(im["id"])
        if im["kind"] not in KINDS:
            raise DataError(f"key '{path}': image '{im['id']}' has kind {im['kind']!r}, expected one of {KINDS}")
        if im["level"] is not None and im["level"] not in LEVELS:
            raise DataError(f"key '{path}': image '{im['id']}' has level {im['level']!r}, expected one of "
                            f"{LEVELS} or null")
        per_pair.setdefault(im["pair"], []).append(im["kind"])
    bad = [p for p, kinds in per_pair.items() if sorted(kinds) != ["generated", "real"]]
    if bad:
        raise DataError(f"key '{path}': pair(s) {bad[:5]} do not have exactly one real and one generated image")
    return key
