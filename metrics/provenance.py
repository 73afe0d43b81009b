"""Provenance of an evaluation: what produced the numbers in ``metrics.json``.

:func:`collect` returns a JSON-ready dictionary with

- ``versions``: python, torch, torchvision, scikit-image, numpy, scipy, pytorch-fid (``importlib.metadata``: the
  installed distributions, read without importing them; ``null`` when not installed);
- ``git``: the project's commit and whether the working tree was dirty (``git rev-parse HEAD``,
  ``git status --porcelain``); when git is not installed or the project is not a git checkout, ``commit`` and
  ``dirty`` are ``null`` and ``error`` says why;
- ``command``: the command line (``sys.argv``, joined with :func:`shlex.join`), ``cwd``, ``created`` (UTC ISO 8601);
- ``checkpoint``: the ``checkpoint`` block of the result folder's ``run_manifest.json`` written by test.py (label,
  folder, set id, file hashes), ``null`` when the folder has no manifest (results of an older test.py).

:func:`check_inception_weights` hashes the FID Inception weights and compares the hash with the one their file name
carries (torch.hub convention, below).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from util.errors import OptionError
from util.fileio import sha256_file  # noqa: F401 (re-exported: provenance.sha256_file)

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTIONS = ("torch", "torchvision", "scikit-image", "numpy", "scipy", "pytorch-fid")

#: sha256 prefix of the standard FID Inception weights ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid 0.3.0's
#: ``FID_WEIGHTS_URL``). torch.hub names downloadable files ``<name>-<first hex digits of sha256>.<ext>`` and
#: ``torch.hub.load_state_dict_from_url(check_hash=True)`` verifies exactly this prefix (``HASH_REGEX`` in
#: torch/hub.py); the full digest is not published with the release, so the prefix is what can be checked.
INCEPTION_SHA256_PREFIX = "6726825d"


class WeightsHashError(OptionError):
    """The FID Inception weights file does not have the expected sha256 (pass --fid_weights_unchecked to use it)."""


def versions() -> Dict[str, Optional[str]]:
    """Installed versions: ``{"python": "3.11.2", "torch": "2.14.1", ...}`` (None for a missing distribution)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(root: PathLike = PROJECT_ROOT) -> Dict[str, object]:
    """``{"commit": sha or None, "dirty": bool or None, "error": reason (only when unknown)}`` of the checkout at
    ``root``. Never raises: a missing git or a folder outside a repository is recorded as ``error``."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "error": "git is not installed"}
    except subprocess.CalledProcessError as e:
        return {"commit": None, "dirty": None, "error": f"not a git checkout ({(e.stderr or '').strip()[:200]})"}
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"commit": None, "dirty": None, "error": f"git failed: {e}"}
    return {"commit": commit, "dirty": dirty}


def read_run_manifest(run_dir: PathLike) -> Optional[dict]:
    """The parsed ``<run_dir>/run_manifest.json``, or None when absent.

    Raises:
        util.errors.DataError: the file exists but is not a JSON object.
    """
    from util.errors import DataError

    p = Path(run_dir) / "run_manifest.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"run manifest '{p}' is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"run manifest '{p}' must hold a JSON object, got {type(data).__name__}")
    return data


def collect(run_dir: Optional[PathLike] = None, argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """Provenance dictionary (keys in the module doc). ``argv`` defaults to ``sys.argv``."""
    argv = list(sys.argv if argv is None else argv)
    out: Dict[str, object] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(argv),
        "cwd": os.getcwd(),
        "versions": versions(),
        "git": git_state(),
    }
    if run_dir is not None:
        manifest = read_run_manifest(run_dir)
        out["run_manifest"] = str(Path(run_dir) / "run_manifest.json") if manifest is not None else None
        out["checkpoint"] = manifest.get("checkpoint") if manifest is not None else None
        if manifest is None:
            out["checkpoint_note"] = "no run_manifest.json in the result folder (written by an older test.py?)"
    return out


def check_inception_weights(path: PathLike, unchecked: bool = False,
                            expected_prefix: str = INCEPTION_SHA256_PREFIX) -> Dict[str, object]:
    """Hash the FID Inception weights and compare with the standard file's sha256 prefix.

    Returns:
        ``{"file", "sha256", "expected_sha256_prefix", "check": "match" | "unchecked-mismatch"}``.

    Raises:
        WeightsHashError: the hash does not start with ``expected_prefix`` and ``unchecked`` is False.
    """
    digest = sha256_file(path)
    ok = digest.startswith(expected_prefix)
    info = {"file": str(path), "sha256": digest, "expected_sha256_prefix": expected_prefix,
            "check": "match" if ok else "unchecked-mismatch"}
    if not ok:
        if not unchecked:
            raise WeightsHashError(
                f"FID Inception weights '{path}' have sha256 {digest}, expected one starting with {expected_prefix} "
                "(pt_inception-2015-12-05-6726825d.pth, torch.hub naming): FID/KID would not compare with published "
                "numbers. Pass --fid_weights_unchecked to use this file anyway")
        log.warning("FID Inception weights '%s': sha256 %s does not start with %s (--fid_weights_unchecked)",
                    path, digest, expected_prefix)
    return info
