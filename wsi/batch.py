"""Many slides on many machines: slide lists, sharding, and a resumable per-shard manifest.

* :func:`read_slide_list` reads a folder's slides or a list file (``.txt``: one path a line, ``#`` comments;
  ``.csv``: the column named ``path``/``input``/``slide``/``file``, else the first column). Relative paths are
  relative to the list file's folder.
* :func:`resolve_shard` takes ``--shard i/n`` or, by default, the environment of the engine the process runs under:
  torchrun's ``RANK``/``WORLD_SIZE``, then a SLURM array's ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``
  (minus ``SLURM_ARRAY_TASK_MIN``, so ``--array=1-8`` works as well as ``0-7``); else ``0/1``.
  :func:`shard_items` deals slide ``k`` (list order) to shard ``k mod n``: every slide in exactly one shard.
* :class:`Manifest` is one CSV per shard (``manifest.csv``, or ``manifest.shard-<i>-of-<n>.csv``) with the columns
  :data:`COLUMNS`, rewritten atomically (temporary file + rename) after every state change, so a killed run leaves
  the previous complete version. Status: ``pending``, ``running`` (started; a kill leaves it), ``done``, ``failed``.
* :func:`previous_status` merges every manifest of an output folder (any shard count), so a rerun - with the same or
  another number of shards - skips slides that are ``done`` and whose output exists, and redoes the others.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from util.errors import OptionError
from util.fileio import atomic_write_text

log = logging.getLogger(__name__)

COLUMNS = ("input", "output", "sha256", "tiles", "seconds", "status", "error")
STATUSES = ("pending", "running", "done", "failed")
LIST_SUFFIXES = (".txt", ".csv")
_CSV_PATH_COLUMNS = ("path", "input", "slide", "file", "filename")


def is_list_file(path: Path) -> bool:
    """Whether ``--input`` names a slide list (an existing ``.txt``/``.csv`` file)."""
    return path.is_file() and path.suffix.lower() in LIST_SUFFIXES


def read_list_file(path: Path) -> List[Path]:
    """Slide paths from a ``.txt`` or ``.csv`` list (see the module notes); duplicates are an error.

    Raises:
        OptionError: an empty list, a CSV without rows, or a slide listed twice (names the list and the slide).
    """
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        col = 0
        if rows:
            header = [c.strip().lower() for c in rows[0]]
            named = [i for i, h in enumerate(header) if h in _CSV_PATH_COLUMNS]
            if named:
                col, rows = named[0], rows[1:]
        entries = [r[col].strip() for r in rows if len(r) > col and r[col].strip()]
    else:
        entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not entries:
        raise OptionError(f"--input list '{path}' names no slides")
    out, seen = [], set()
    for e in entries:
        p = Path(e).expanduser()
        p = p if p.is_absolute() else path.parent / p
        key = os.path.normpath(str(p))
        if key in seen:
            raise OptionError(f"--input list '{path}' names '{e}' twice")
        seen.add(key)
        out.append(p)
    return out


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), and where it came from (``--shard``, ``torchrun``, ``slurm``,
    ``none``)."""

    index: int = 0
    count: int = 1
    source: str = "none"

    @property
    def tag(self) -> str:
        return f"{self.index}/{self.count}"


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise OptionError(f"environment variable {key}='{env[key]}' is not an integer") from None


def resolve_shard(arg: Optional[str], env: Optional[Mapping[str, str]] = None) -> Shard:
    """The shard of this process: ``--shard i/n`` (0 <= i < n), else torchrun's ``RANK``/``WORLD_SIZE``, else a
    SLURM array's ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` / ``SLURM_ARRAY_TASK_COUNT``, else ``0/1``.

    Raises:
        OptionError: a malformed ``--shard`` or environment value, or an index outside ``[0, n)``.
    """
    env = os.environ if env is None else env
    if arg is not None:
        parts = str(arg).split("/")
        try:
            i, n = (int(p) for p in parts)
        except ValueError:
            raise OptionError(f"--shard '{arg}': expected i/n, e.g. 0/4 (shards are numbered 0 to n-1)") from None
        src = "--shard"
    elif "WORLD_SIZE" in env:
        if "RANK" not in env:
            raise OptionError("WORLD_SIZE is set but RANK is not: run under torchrun or give --shard i/n")
        i, n, src = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE"), "torchrun"
    elif "SLURM_ARRAY_TASK_ID" in env:
        if "SLURM_ARRAY_TASK_COUNT" not in env:
            raise OptionError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; give --shard i/n")
        base = _int_env(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        i, n, src = _int_env(env, "SLURM_ARRAY_TASK_ID") - base, _int_env(env, "SLURM_ARRAY_TASK_COUNT"), "slurm"
        if i >= n:
            raise OptionError(f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} (min {base}) is outside the "
                              f"{n} tasks; use a contiguous --array range such as 0-{n - 1}, or --shard i/n")
    else:
        return Shard()
    if n < 1 or not 0 <= i < n:
        raise OptionError(f"shard {i}/{n} (from {src}): need n >= 1 and 0 <= i < n")
    return Shard(i, n, src)


def shard_items(items: Sequence, shard: Shard) -> list:
    """Items ``k`` with ``k mod count == index``, in order (round robin: sizes differ by at most one)."""
    return list(items[shard.index::shard.count])


def manifest_name(shard: Shard) -> str:
    """``manifest.csv`` for one shard, ``manifest.shard-<i>-of-<n>.csv`` otherwise."""
    return "manifest.csv" if shard.count == 1 else f"manifest.shard-{shard.index}-of-{shard.count}.csv"


def read_manifest(path: Path) -> List[Dict[str, str]]:
    """Rows of a manifest CSV (``[]`` if it does not exist).

    Raises:
        OptionError: a file without the manifest columns (names it).
    """
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("input", "output", "status") if c not in (reader.fieldnames or [])]
        if missing:
            raise OptionError(f"manifest '{path}' lacks the column(s) {', '.join(missing)}; move it away or choose "
                              "another --output")
        return [dict(r) for r in reader]


def _key(p) -> str:
    return os.path.normpath(os.path.abspath(str(p)))


def previous_status(folder: Path, extra: Sequence[Path] = ()) -> Dict[str, Dict[str, str]]:
    """The last known row per input over every ``manifest*.csv`` of ``folder`` (and ``extra`` files): a ``done`` row
    wins over any other, else the row of the most recently modified file."""
    files = sorted(folder.glob("manifest*.csv"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    files += [p for p in extra if p.is_file() and p not in files]
    best: Dict[str, Dict[str, str]] = {}
    for f in files:
        for r in read_manifest(f):
            k = _key(r["input"])
            if best.get(k, {}).get("status") == "done" and r.get("status") != "done":
                continue
            best[k] = r
    return best


class Manifest:
    """The CSV of one shard: one row per slide of the shard, rewritten atomically on every :meth:`update`.

    Rows already in the file from an earlier run are kept (and updated), so the file stays complete across resumes.
    """

    def __init__(self, path: Path, jobs: Sequence[Tuple[Path, Path]]):
        self.path = Path(path)
        self.rows: Dict[str, Dict[str, str]] = {}
        for r in read_manifest(self.path):
            self.rows[_key(r["input"])] = {c: r.get(c, "") or "" for c in COLUMNS}
        for src, dst in jobs:
            self.rows.setdefault(_key(src), {"input": _key(src), "output": _key(dst), "sha256": "", "tiles": "",
                                             "seconds": "", "status": "pending", "error": ""})

    def update(self, src: Path, **fields) -> None:
        """Set ``fields`` (of :data:`COLUMNS`) of ``src``'s row and rewrite the file atomically."""
        row = self.rows[_key(src)]
        for k, v in fields.items():
            if k not in COLUMNS:
                raise KeyError(k)
            row[k] = "" if v is None else " ".join(str(v).split())  # one line per row
        self.write()

    def write(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows.values():
            w.writerow(r)
        atomic_write_text(self.path, buf.getvalue())


def remove_stale_partials(output: Path) -> List[Path]:
    """Delete temporaries a killed run left for ``output`` and its thumbnails and page (``.<name>.*partial*`` files
    and folders beside them); returns them. Only the shard that owns ``output`` calls this."""
    from wsi.writer import output_paths

    gone = []
    for p in [q for f in output_paths(output).values() for q in output.parent.glob(f".{f.name}.*partial*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    if gone:
        log.info("removed %d temporary file(s) of an interrupted run: %s", len(gone), ", ".join(p.name for p in gone))
    return gone


def run_many(stain, jobs: Sequence[Tuple[Path, Path]], output_dir: Path, shard: Shard,
             manifest: Optional[Path] = None, overwrite: bool = False) -> List[Path]:
    """Stain this shard's slides, recording each in the shard's manifest; returns the inputs that failed.

    Args:
        stain: ``stain(input, output) -> summary`` (:func:`wsi.pipeline.stain_slide` with its generator and
            settings); ``summary`` has ``tiles_run`` and ``seconds``.
        jobs: every ``(input, output)`` pair of the run (all shards); this shard takes :func:`shard_items`.
        output_dir: the output folder (manifests live there unless ``manifest`` is given).
        shard: this process's shard.
        manifest: this shard's manifest file (default ``output_dir / manifest_name(shard)``).
        overwrite: replace outputs that exist without a manifest row of this run.

    A slide is skipped when some manifest of ``output_dir`` (or ``manifest``) says ``done`` and its output exists;
    slides ``failed``, ``running`` (a killed run) or ``pending`` are (re)done, replacing their own partial output.
    A user error or an OS error (unreadable, corrupt or unsupported slide, missing MPP, disk) marks the slide
    ``failed`` with the message and the run goes on. Any other exception (a bug) is recorded as ``failed`` too and
    then propagates.

    Raises:
        OptionError: before any work, an output that exists but no manifest row of this run accounts for, unless
            ``overwrite`` (the message names the file).
    """
    import time

    from util.errors import UserError
    from util.fileio import sha256_file

    mine = shard_items(jobs, shard)
    mpath = Path(manifest) if manifest else Path(output_dir) / manifest_name(shard)
    before = previous_status(Path(output_dir), [mpath])
    todo, skipped = [], 0
    for src, dst in mine:
        prev = before.get(_key(src))
        if prev and prev.get("status") == "done" and _key(prev.get("output", "")) == _key(dst) and dst.is_file():
            skipped += 1
            continue
        if dst.exists() and not overwrite and not (prev and _key(prev.get("output", "")) == _key(dst)):
            raise OptionError(f"output '{dst}' exists and no manifest in '{output_dir}' records it; pass "
                              "--overwrite to replace it")
        todo.append((src, dst))
    m = Manifest(mpath, mine)
    for src, dst in mine:  # rows from other shards' manifests (an earlier run with another shard count)
        prev = before.get(_key(src))
        if prev and prev.get("status") == "done" and _key(src) in m.rows and m.rows[_key(src)]["status"] != "done":
            m.rows[_key(src)].update({c: prev.get(c, "") or "" for c in COLUMNS})
    m.write()
    log.info("shard %s (%s): %d of %d slides; %d done earlier, %d to stain; manifest %s", shard.tag, shard.source,
             len(mine), len(jobs), skipped, len(todo), mpath)
    failed: List[Path] = []
    for k, (src, dst) in enumerate(todo, 1):
        remove_stale_partials(dst)
        m.update(src, output=_key(dst), status="running", error="", sha256="", tiles="", seconds="")
        t0 = time.perf_counter()
        try:
            summary = stain(src, dst)
        except (UserError, OSError) as e:
            failed.append(src)
            m.update(src, status="failed", error=f"{type(e).__name__}: {e}",
                     seconds=f"{time.perf_counter() - t0:.2f}")
            log.error("slide %d/%d %s failed: %s", k, len(todo), src, e)
            continue
        except Exception as e:  # a bug: record it, then let it propagate with its traceback
            m.update(src, status="failed", error=f"{type(e).__name__}: {e}",
                     seconds=f"{time.perf_counter() - t0:.2f}")
            raise
        m.update(src, status="done", sha256=sha256_file(dst), tiles=summary.get("tiles_run", ""),
                 seconds=f"{summary.get('seconds', time.perf_counter() - t0):.2f}", error="")
        log.info("slide %d/%d %s -> %s: %s tiles in %.1f s", k, len(todo), src, dst, summary.get("tiles_run"),
                 summary.get("seconds", 0.0))
    if failed:
        log.error("shard %s: %d of %d slide(s) failed (see %s): %s", shard.tag, len(failed), len(todo), mpath,
                  ", ".join(str(p) for p in failed[:10]))
    return failed
