"""Atomic file writing: write to a temporary file beside the target, then rename.

A reader never sees a half-written result or checkpoint: either the old file (or none) or the complete new one.
``os.replace`` is atomic on POSIX when source and target are on the same file system, which holds because the
temporary file is created in the target's own folder.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Union

from util.errors import UserError

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block finishes without error.

    Args:
        path: final destination. Its parent folder is created if missing.
        suffix: suffix of the temporary name (defaults to the target's own suffix, so format-sniffing writers such as
            Pillow or tifffile choose the right format).

    On any exception the temporary file is removed and the exception propagates; ``path`` is untouched. An
    ``OSError`` from writing (a full disk, a file size limit, a read-only folder) becomes :class:`WriteError`
    (an ``OSError`` and a :class:`util.errors.UserError`) whose message names ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(path, e) from e
    if suffix is None:
        suffix = path.suffix
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    except OSError as e:
        raise WriteError(path, e) from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if tmp_path.is_file():  # mkstemp creates 0600; give the file the mode a plain open() would
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
        except WriteError:
            raise
        except OSError as e:
            raise WriteError(path, e) from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


class WriteError(UserError, OSError):
    """A file could not be written (full disk, file size limit, read-only or missing folder): the message is
    ``cannot write <path>: <reason>``; ``errno`` is the original error's."""

    def __init__(self, path: PathLike, err: OSError):
        reason = err.strerror or str(err) or type(err).__name__
        OSError.__init__(self, err.errno, f"cannot write {path}: {reason}")
        self.worker_traceback = ""
        self.path = Path(path)

    def __str__(self) -> str:
        return self.strerror


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``Umask:`` of ``/proc/self/status``, Linux
    4.7+): the classic ``os.umask(0)``/``os.umask(mask)`` pair leaves a window in which files created by other threads
    (e.g. a writer thread, tile blending) get permissive modes. Elsewhere that pair is used under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def atomic_write(path: PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and rename the result onto ``path`` (see :func:`atomic_path`). Returns ``Path(path)``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding=encoding))


def atomic_write_texts(texts: "dict[PathLike, str]", encoding: str = "utf-8") -> list:
    """Write several text files as a group: every temporary file is written first, then all are renamed. A write
    failure (full disk, size limit) leaves every target as it was; the renames themselves need no space. Returns the
    paths.

    Raises:
        WriteError: names the file that could not be written.
    """
    written: list = []
    try:
        for path, text in texts.items():
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
                written.append((Path(tmp), path))
                with os.fdopen(fd, "w", encoding=encoding) as f:
                    f.write(text)
                os.chmod(tmp, 0o666 & ~_umask())
            except OSError as e:
                raise WriteError(path, e) from e
        for tmp, path in written:  # all complete: publish them
            os.replace(tmp, path)
        written = []
    finally:
        for tmp, _ in written:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return [Path(p) for p in texts]
