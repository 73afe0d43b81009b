"""One run per results folder: staging, the run manifest, and output health checks for ``test.py``.

A results folder ``<results_dir>/<name>/<phase>_<epoch>/`` holds exactly one test run: its images, ``index.html`` and
``run_manifest.json`` (written by :func:`write_manifest`), and later the evaluator's ``metrics.*``. ``test.py`` writes
a new run into a staging folder beside it and swaps it in only when complete (:class:`ResultsStaging`); an existing
run is replaced only with ``--overwrite``. ``evaluate.py`` scores exactly the images the manifest lists.

Output health: :func:`output_flags` marks a generated image that holds NaN/inf values (``non_finite``) or is nearly
constant (``flat``: the largest per-channel standard deviation of its 8-bit pixels below ``flat_std`` grey levels,
1.0 by default — real IHC tiles have tens of grey levels; a collapsed or untrained generator gives ~0).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, List, Mapping, Optional

import numpy as np

from util.errors import DataError, OptionError
from util.fileio import atomic_write_text

log = logging.getLogger(__name__)

MANIFEST = "run_manifest.json"
MANIFEST_FORMAT = 1
FLAT_STD = 1.0  # grey levels (0-255): a generated image whose every channel varies less than this is "flat"


def output_flags(t, image: np.ndarray, flat_std: float = FLAT_STD) -> List[str]:
    """Health flags of one generated image.

    Args:
        t: the generator output ``(C, H, W)`` float tensor (expected range [-1, 1]) before conversion.
        image: the same image as saved, uint8 ``(H, W)`` or ``(H, W, C)``.
        flat_std: threshold in grey levels (0-255 scale).

    Returns:
        ``[]`` when healthy; ``["non_finite"]`` when ``t`` holds NaN/inf; ``["flat"]`` when the largest per-channel
        standard deviation of ``image`` over the pixels is below ``flat_std``.
    """
    import torch

    flags = []
    if not bool(torch.isfinite(t).all()):
        flags.append("non_finite")
    a = image.reshape(image.shape[0], image.shape[1], -1).astype(np.float64)
    if float(a.std(axis=(0, 1)).max()) < flat_std:
        flags.append("flat")
    return flags


def check_unique_stems(paths: Iterable[Path]) -> None:
    """Results are named ``<stem>_<visual>.png``: two inputs with the same stem would overwrite each other.

    Raises:
        DataError: names every clash with both files.
    """
    seen: dict = {}
    clashes = []
    for p in paths:
        p = Path(p)
        if p.stem in seen and seen[p.stem] != p:
            clashes.append(f"'{seen[p.stem]}' and '{p}'")
        seen.setdefault(p.stem, p)
    if clashes:
        raise DataError(f"{len(clashes)} input(s) share a file stem, so their results would overwrite each other: "
                        f"{'; '.join(clashes[:5])}{' ...' if len(clashes) > 5 else ''}. Rename them")


def describe_existing(run_dir: Path) -> Optional[str]:
    """A one-line description of the run already in ``run_dir`` (None when there is none)."""
    if not run_dir.exists():
        return None
    m = run_dir / MANIFEST
    if m.is_file():
        try:
            man = json.loads(m.read_text(encoding="utf-8"))
            ck = man.get("checkpoint") or {}
            return (f"{len(man.get('images', []))} images written {man.get('created')} from checkpoint set "
                    f"'{ck.get('label')}' of '{man.get('name')}'")
        except (OSError, ValueError, AttributeError) as e:
            return f"an unreadable run manifest ({e})"
    images = list((run_dir / "images").glob("*")) if (run_dir / "images").is_dir() else []
    others = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else [run_dir.name]
    if images or others:
        return f"{len(images)} image file(s) of an earlier run without manifest ({', '.join(sorted(others)[:5])})"
    return None


class ResultsStaging:
    """Write a run into ``.<run>.partial-<token>`` beside ``run_dir``; :meth:`commit` swaps it in, :meth:`abort`
    (also on any exception inside ``with``) removes it, leaving the previous run untouched.

    Raises (construction):
        OptionError: ``run_dir`` holds an earlier run and ``overwrite`` is False (names the folder and that run).
    """

    def __init__(self, run_dir: Path, overwrite: bool):
        self.run_dir = Path(run_dir)
        existing = describe_existing(self.run_dir)
        if existing and not overwrite:
            raise OptionError(f"results folder '{self.run_dir}' already holds a run ({existing}); pass --overwrite to "
                              "replace it (the new images are written first), or choose another --results_dir")
        self.replacing = existing
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.partial-{token}"
        self._old = self.run_dir.parent / f".{self.run_dir.name}.old-{token}"
        for stale in self.run_dir.parent.glob(f".{self.run_dir.name}.partial-*"):
            log.warning("removing the unfinished results of an interrupted run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.run_dir.parent.glob(f".{self.run_dir.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.path.mkdir()

    def __enter__(self) -> "ResultsStaging":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def commit(self) -> Path:
        if self.run_dir.exists():
            os.rename(self.run_dir, self._old)
        os.rename(self.path, self.run_dir)
        if self._old.is_dir() and not self._old.is_symlink():
            shutil.rmtree(self._old)
        elif self._old.exists() or self._old.is_symlink():
            self._old.unlink()
        return self.run_dir

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_manifest(folder: Path, info: Mapping[str, Any]) -> Path:
    """Write ``run_manifest.json`` (``format``, ``created``, ``command`` and ``info``) into ``folder``, atomically."""
    man = {"format": MANIFEST_FORMAT,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": [sys.executable.rsplit("/", 1)[-1]] + sys.argv, **dict(info)}
    return atomic_write_text(Path(folder) / MANIFEST, json.dumps(man, indent=1, sort_keys=True, default=str) + "\n")


def read_manifest(run_dir: Path) -> Optional[dict]:
    """The run manifest of ``run_dir``, or None when the folder has none (results of an older version or another
    tool).

    Raises:
        DataError: the manifest exists but cannot be read (names it).
    """
    p = Path(run_dir) / MANIFEST
    if not p.is_file():
        return None
    try:
        man = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"cannot read the run manifest '{p}': {e}") from e
    if not isinstance(man, dict) or not isinstance(man.get("images"), list):
        raise DataError(f"'{p}' is not a run manifest (no 'images' list)")
    bad = [i for i, r in enumerate(man["images"])
           if not isinstance(r, dict) or not isinstance(r.get("stem"), str) or not isinstance(r.get("files"), dict)]
    if bad:
        raise DataError(f"'{p}' is not a valid run manifest: image record(s) {bad[:5]} lack 'stem' / 'files' "
                        "(edited by hand?); rerun test.py")
    flagged = man.get("flagged", {})
    if not isinstance(flagged, dict) or not all(isinstance(v, list) for v in flagged.values()):
        raise DataError(f"'{p}' is not a valid run manifest: 'flagged' must map image stems to lists of flags")
    return man
