"""Finding the image files of a paired dataset: the three supported folder layouts, detected automatically.

For a dataroot and a phase (``train``, ``test``, ``val``, ...) exactly one of these must be present:

(a) ``combined``: ``<dataroot>/<phase>/`` holds AB images, A the left half and B the right half (pix2pix
    ``combine_A_and_B.py`` output).
(b) ``folders``: ``<dataroot>/<A_dir>/<phase>/NAME`` with ``<dataroot>/<B_dir>/<phase>/NAME`` (the BCI download layout,
    ``HE``/``IHC``; ``--A_dir visible --B_dir infrared`` for LLVIP), paired by identical file name.
(c) ``phase_ab``: ``<dataroot>/<phase>A/NAME`` with ``<dataroot>/<phase>B/NAME`` (the CycleGAN layout: ``trainA``,
    ``valB``), paired by identical file name.
(d) ``mist``: ``<dataroot>/TrainValAB/<phase>A/NAME`` with ``<dataroot>/TrainValAB/<phase>B/NAME``: one stain folder of
    the MIST dataset as its authors distribute it (``--dataroot MIST/HER2``; also ER, PR, Ki67), paired by file name.
    MIST has ``train`` and ``val`` splits only: :func:`default_test_phase` makes ``test.py`` use ``val`` there.

A layout counts as present when any of its folders for the phase exists. Several present layouts, or none, raise
:class:`~util.errors.DataError` naming the dataroot, what was found there, and the three expected layouts.

Image files are the folder's direct children (no recursion) whose extension, compared case-insensitively, is one of
:data:`IMG_EXTENSIONS`; they are sorted by file name. Other files are not images and are ignored, with a log message
saying how many; hidden files (``.name``) are ignored the same way. Nothing that looks like an image is skipped: an
entry named like an image that is not a file (a broken symbolic link, a folder ``x.png/``) is an error.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from util.errors import DataError, OptionError

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".ppm")

COMBINED, FOLDERS, PHASE_AB, MIST = "combined", "folders", "phase_ab", "mist"
#: the folder of a MIST stain directory that holds the trainA/trainB/valA/valB splits
MIST_DIR = "TrainValAB"

_MAX_LISTED = 10


def expected_layouts(dataroot: PathLike, phase: str, A_dir: str = "HE", B_dir: str = "IHC") -> str:
    """One-line description of the three accepted layouts for error messages."""
    root = Path(dataroot)
    return (
        f"expected one of: (a) combined AB images in {root / phase}/; "
        f"(b) {root / A_dir / phase}/NAME with {root / B_dir / phase}/NAME (BCI layout; --A_dir/--B_dir); "
        f"(c) {root / (phase + 'A')}/NAME with {root / (phase + 'B')}/NAME (CycleGAN layout); "
        f"(d) {root / MIST_DIR / (phase + 'A')}/NAME with {root / MIST_DIR / (phase + 'B')}/NAME (MIST stain folder)"
    )


def is_image_file(name: str) -> bool:
    """True when ``name`` has one of :data:`IMG_EXTENSIONS` (case-insensitive) and is not hidden."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def list_images(folder: PathLike, expected: str = "") -> List[Path]:
    """Sorted image files directly inside ``folder``.

    Args:
        folder: the folder to list.
        expected: the expected-layout text appended to error messages.

    Raises:
        DataError: the folder is missing, not a folder, or holds no image file (names it and the extensions); an
            entry with an image extension is not a file, e.g. a broken symbolic link (lists them: never skipped).
    """
    folder = Path(folder)
    hint = f"; {expected}" if expected else ""
    if not folder.is_dir():
        raise DataError(f"folder '{folder}' does not exist{hint}")
    files, others, broken = [], [], []
    with os.scandir(folder) as it:
        for entry in it:
            if not is_image_file(entry.name):
                others.append(entry.name)
            elif entry.is_file():
                files.append(entry.name)
            else:  # named like an image but not a readable file: a broken symbolic link or a folder
                broken.append(entry.name)
    if broken:
        raise DataError(
            f"folder '{folder}' has {len(broken)} entr{'y' if len(broken) == 1 else 'ies'} named like images that "
            f"are not files (broken symbolic links or folders): {_listing(sorted(broken))}{hint}"
        )
    if not files:
        raise DataError(
            f"folder '{folder}' holds no image files (extensions {', '.join(IMG_EXTENSIONS)}, any case)"
            + (f"; it holds: {_listing(sorted(others))}" if others else "; it is empty")
            + hint
        )
    if others:
        log.info("%s: ignoring %d non-image entries (%s)", folder, len(others), _listing(sorted(others)))
    return [folder / n for n in sorted(files)]


@dataclass(frozen=True)
class Layout:
    """The detected layout of a dataroot for one phase.

    Attributes:
        kind: :data:`COMBINED`, :data:`FOLDERS`, :data:`PHASE_AB` or :data:`MIST`.
        A_folder, B_folder: the folders holding A and B images (both the same AB folder for ``combined``).
    """

    kind: str
    A_folder: Path
    B_folder: Path

    @property
    def combined(self) -> bool:
        return self.kind == COMBINED


def detect_layout(dataroot: PathLike, phase: str, A_dir: str = "HE", B_dir: str = "IHC") -> Layout:
    """Detect which of the three layouts ``dataroot`` uses for ``phase`` (see the module docstring).

    Raises:
        DataError: the dataroot is missing; no layout or several layouts are present (names the dataroot, the
            entries found, and the three expected layouts); a layout is only half present (names the missing folder).
    """
    root = Path(dataroot)
    expected = expected_layouts(root, phase, A_dir, B_dir)
    if not root.is_dir():
        raise DataError(f"dataroot '{root}' does not exist or is not a folder; {expected}")
    candidates = {
        COMBINED: (root / phase, root / phase),
        FOLDERS: (root / A_dir / phase, root / B_dir / phase),
        PHASE_AB: (root / f"{phase}A", root / f"{phase}B"),
        MIST: (root / MIST_DIR / f"{phase}A", root / MIST_DIR / f"{phase}B"),
    }
    # a MIST stain folder counts as present by its TrainValAB folder, so a missing split inside it is named
    present = [k for k, (a, b) in candidates.items()
               if a.is_dir() or b.is_dir() or (k == MIST and (root / MIST_DIR).is_dir())]
    if not present:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        raise DataError(
            f"dataroot '{root}' matches no dataset layout for phase '{phase}'; it holds: "
            f"{_listing(found) if found else 'nothing'}; {expected}"
        )
    if len(present) > 1:
        found = [str(candidates[k][0].relative_to(root)) for k in present]
        raise DataError(
            f"dataroot '{root}' matches several dataset layouts for phase '{phase}' ({', '.join(present)}: "
            f"found {', '.join(found)}); keep only one; {expected}"
        )
    kind = present[0]
    a, b = candidates[kind]
    for folder in (a, b):
        if not folder.is_dir():
            raise DataError(f"folder '{folder}' is missing (layout {kind}); {expected}")
    return Layout(kind, a, b)


def default_test_phase(dataroot: PathLike, phase: str = "test") -> str:
    """The phase ``test.py`` should read: ``'val'`` for a MIST stain folder (:data:`MIST_DIR` layout) that has no
    ``test`` split but a ``val`` one, else ``phase`` unchanged (also for every other layout)."""
    mist = Path(dataroot) / MIST_DIR
    if phase != "test" or not mist.is_dir():
        return phase
    if (mist / "testA").exists() or (mist / "testB").exists():
        return phase
    if (mist / "valA").is_dir() or (mist / "valB").is_dir():
        return "val"
    return phase


def pair_by_name(A_files: Sequence[Path], B_files: Sequence[Path], A_folder: PathLike, B_folder: PathLike
                 ) -> List[Tuple[Path, Path]]:
    """Pair two sorted file lists by identical file name.

    Returns:
        ``[(A_path, B_path), ...]`` in A's sorted order.

    Raises:
        DataError: a file has no partner; lists the unpartnered files of each folder.
    """
    b_by_name = {p.name: p for p in B_files}
    a_names = {p.name for p in A_files}
    only_a = [p.name for p in A_files if p.name not in b_by_name]
    only_b = [p.name for p in B_files if p.name not in a_names]
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} file(s) in '{A_folder}' have no partner in '{B_folder}': {_listing(only_a)}")
        if only_b:
            parts.append(f"{len(only_b)} file(s) in '{B_folder}' have no partner in '{A_folder}': {_listing(only_b)}")
        raise DataError("unpaired files (pairs must share the file name): " + "; ".join(parts))
    return [(p, b_by_name[p.name]) for p in A_files]


def cap(items: list, max_size: Optional[int], what: str) -> list:
    """First ``max_size`` items (``--max_dataset_size``), logging when the list is cut."""
    if max_size is not None and max_size < 1:
        raise OptionError(f"--max_dataset_size must be >= 1, got {max_size}")
    if max_size is None or len(items) <= max_size:
        return list(items)
    log.info("%s: using the first %d of %d items (--max_dataset_size)", what, max_size, len(items))
    return list(items[:max_size])
