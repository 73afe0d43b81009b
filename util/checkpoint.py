"""Saving and loading network and training-state checkpoints.

Files are written atomically (temporary name, then rename) and always loaded with ``weights_only=True``
(no arbitrary code execution from a checkpoint). The state-dict layout is the classic pix2pix/CycleGAN one:
plain ``nn.Module.state_dict()`` of the bare network, no ``module.`` prefix.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from util.errors import CheckpointError
from util.fileio import atomic_path

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]


def unwrap(net: nn.Module) -> nn.Module:
    """Return the bare network inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def save_checkpoint(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically. ``obj`` must hold only tensors and plain containers/values."""
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_network(net: nn.Module, path: PathLike) -> Path:
    """Save the bare network's state dict (on CPU) atomically to ``path``."""
    sd = {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()}
    return save_checkpoint(sd, path)


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (no code from the file is ever run).

    Raises:
        CheckpointError: the file is missing, is not a PyTorch checkpoint (a text file, a truncated or corrupt
            archive) or holds objects other than tensors and plain containers (refused by the safe loader). The
            message names the file; it never suggests ``weights_only=False``.
    """
    import struct
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"cannot load checkpoint '{path}' safely: {_unpickling_reason(e)}") from e
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            struct.error, zipfile.BadZipFile, UnicodeDecodeError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint '{path}': not a readable PyTorch checkpoint (truncated, "
                              f"corrupt or another kind of file: {type(e).__name__}: {first[:200]})") from e


def _unpickling_reason(e: Exception) -> str:
    """A one-line reason for a refused or broken pickle, without torch's advice to disable the safe loader."""
    import re

    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return (f"it contains a Python object of type {m.group(1)}, which the safe loader (weights_only=True) "
                "refuses; only tensors and plain containers are accepted")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
    return f"not a valid checkpoint ({first[:200] or 'unpickling failed'})"


def load_network(net: nn.Module, path: PathLike, map_location: Any = "cpu") -> nn.Module:
    """Load a classic-layout state dict from ``path`` into ``net`` (unwrapped), strictly.

    Old checkpoints written by PyTorch < 0.4 lack BatchNorm ``num_batches_tracked`` buffers; those are tolerated
    (the network keeps its own zero counters). Any other missing or unexpected key, or a shape mismatch, raises
    :class:`CheckpointError` listing the keys.
    """
    sd = load_checkpoint(path, map_location)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"checkpoint '{path}' holds a {type(sd).__name__}, expected a state dict")
    sd = dict(sd)  # a plain dict: drops the OrderedDict's _metadata (version info); num_batches_tracked is handled below
    bare = unwrap(net)
    own = bare.state_dict()
    # checkpoints saved from DataParallel/DDP carry a 'module.' prefix
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    missing_real = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing_real or unexpected:
        raise CheckpointError(
            f"checkpoint '{path}' does not match the network {type(bare).__name__}: "
            f"missing keys {missing_real[:10]}{'...' if len(missing_real) > 10 else ''}, "
            f"unexpected keys {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}. "
            "Check --netG/--netD/--norm/--ngf/--ndf against the run that wrote it."
        )
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"checkpoint '{path}' is not a network state dict: entries {not_tensors[:5]} are not "
                              "tensors")
    bad = [f"{k}: file {tuple(sd[k].shape)} vs net {tuple(own[k].shape)}" for k in sd if sd[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"checkpoint '{path}' has tensors of the wrong shape: {bad[:5]}")
    nonfinite = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:
        raise CheckpointError(f"checkpoint '{path}' holds NaN or infinite values in {len(nonfinite)} tensor(s) "
                              f"({', '.join(nonfinite[:5])}): the network diverged before it was saved; use an "
                              "earlier --epoch")
    for k in missing:  # only num_batches_tracked here
        sd[k] = own[k]
    bare.load_state_dict(sd, strict=True)
    log.info("loaded %s", path)
    return net


# ---- checkpoint sets ----------------------------------------------------------------------------------------------
#
# A *checkpoint set* is every file saved under one label (``latest``, an epoch number, ``iter_<n>``): one
# ``<label>_net_<name>.pth`` per network, ``<label>_state.pth`` (training state) and the manifest
# ``<label>_set.json`` (label, set id, epoch/iteration, model, options, and the sha256 and size of every file).
#
# Writing (:func:`write_set`) is a small write-ahead protocol, so a reader sees the whole old set or the whole new one:
#   1. every file is written into a staging folder ``.ckptset-<id>.partial`` beside the experiment, then the manifest;
#   2. the folder is renamed to ``.ckptset-<id>.commit`` (one atomic rename: the commit point);
#   3. each file is moved onto its classic name (``os.replace``), the manifest last, and the folder removed.
# A kill before 2 leaves the old set untouched (the staging folder is garbage, removed by the next training run); a
# kill during 3 leaves a committed folder whose files are complete: readers take each file from it (or, once moved,
# from the experiment folder, checked against the manifest's sha256), and the next training run finishes the moves.
# Readers never modify the folder; only a training run (holding ``.train.lock``) cleans up.

SET_FORMAT = 1


class NoSuchSetError(CheckpointError):
    """The experiment folder has no checkpoint set of the requested label."""


_STAGE_PREFIX = ".ckptset-"
FAULT_ENV = "VIRTUAL_IHC_FAULT"


def _fault_point(name: str) -> None:
    """Fault injection for the reliability tests: with ``VIRTUAL_IHC_FAULT=<name>[:<n>]`` in the environment the
    process kills itself (SIGKILL, no clean-up) the ``n``-th time (default 1st) it reaches point ``name``; with
    ``VIRTUAL_IHC_FAULT=enospc:<name>`` it raises ``OSError(ENOSPC)`` there instead (a full disk). Not for users."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    import errno
    import signal

    parts = spec.split(":")
    if parts[0] == "enospc":
        if len(parts) > 1 and parts[1] == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return
    if parts[0] != name:
        return
    want = int(parts[1]) if len(parts) > 1 else 1
    count = _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if count == want:
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_COUNTS: dict = {}


def _sha256(path: Path) -> str:
    from util.fileio import sha256_file

    return sha256_file(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def manifest_name(label) -> str:
    """``<label>_set.json``: the manifest of checkpoint set ``label``."""
    return f"{label}_set.json"


def write_set(save_dir: PathLike, label, objects: Mapping[str, Any], meta: Mapping[str, Any],
              on_commit=None) -> dict:
    """Write the checkpoint set ``label`` atomically (see the protocol above) and return its manifest.

    Args:
        save_dir: the experiment folder ``<checkpoints_dir>/<name>``.
        label: ``latest``, an epoch number or ``iter_<n>``.
        objects: file name (e.g. ``latest_net_G.pth``) -> object for ``torch.save`` (tensors, plain containers only).
        meta: JSON-serialisable facts stored in the manifest (epoch, iteration, model, options, ...).
        on_commit: called with the manifest right after the commit rename (the set is then the one readers see).

    Raises:
        CheckpointError: a file cannot be written (full disk, read-only folder, ...): the message names it; the
            previous set of this label is untouched and the staging folder is removed.
    """
    import datetime
    import json
    import secrets
    import shutil
    import time

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    set_id = f"{time.time_ns():x}-{secrets.token_hex(4)}"
    stage = save_dir / f"{_STAGE_PREFIX}{set_id}.partial"
    stage.mkdir()
    files: dict = {}
    current = stage
    try:
        for fname, obj in objects.items():
            current = stage / fname
            try:
                _fault_point("save_file")
                torch.save(obj, current)
                with open(current, "rb") as f:
                    os.fsync(f.fileno())
            except (OSError, RuntimeError) as e:
                raise CheckpointError(f"cannot write {save_dir / fname}: {_reason(e)}") from e
            files[fname] = {"sha256": _sha256(current), "bytes": current.stat().st_size}
            os.chmod(current, 0o666 & ~_umask())
        manifest = {"format": SET_FORMAT, "label": str(label), "set_id": set_id,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    **dict(meta), "files": files}
        current = stage / manifest_name(label)
        try:
            _fault_point("save_manifest")
            text = json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"
            with open(current, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(current, 0o666 & ~_umask())
        except OSError as e:
            raise CheckpointError(f"cannot write {save_dir / manifest_name(label)}: {_reason(e)}") from e
        _fault_point("before_commit")
        commit = save_dir / f"{_STAGE_PREFIX}{set_id}.commit"
        os.rename(stage, commit)  # the commit point
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if on_commit is not None:
        on_commit(manifest)
    _fsync_dir(save_dir)
    _apply_commit(commit, manifest)
    return manifest


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" (errno {e.errno})" if e.errno else "")
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _umask() -> int:
    from util.fileio import _umask as um

    return um()


def _apply_commit(commit: Path, manifest: Mapping[str, Any]) -> None:
    """Move the files of a committed set onto their classic names, the manifest last, then remove the folder."""
    save_dir = commit.parent
    for fname in manifest["files"]:
        src = commit / fname
        if src.exists():
            os.replace(src, save_dir / fname)
            _fault_point("apply_file")
    mname = manifest_name(manifest["label"])
    if (commit / mname).exists():
        os.replace(commit / mname, save_dir / mname)
    _fsync_dir(save_dir)
    try:
        commit.rmdir()
    except OSError:  # something unexpected inside: leave it for inspection
        log.warning("could not remove %s after committing checkpoint set '%s'", commit, manifest["label"])


def _read_manifest(path: Path) -> dict:
    import json

    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint set manifest '{path}': {e}") from e
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict) or "label" not in m:
        raise CheckpointError(f"'{path}' is not a checkpoint set manifest (no 'label' / 'files')")
    return m


def _committed(save_dir: Path) -> list[tuple[Path, dict]]:
    """Committed but not yet applied sets: ``(folder, manifest)``, oldest first."""
    out = []
    if not save_dir.is_dir():
        return out
    for p in sorted(save_dir.iterdir()):
        if p.name.startswith(_STAGE_PREFIX) and p.name.endswith(".commit") and p.is_dir():
            mans = list(p.glob("*_set.json"))
            if mans:
                out.append((p, _read_manifest(mans[0])))
            else:  # manifest already moved: nothing left to apply but the empty folder
                out.append((p, None))
    return out


def recover_sets(save_dir: PathLike) -> list[str]:
    """Finish or discard interrupted checkpoint writes in ``save_dir`` (call only from the training run that owns
    the folder): committed sets are completed (roll forward), staging folders and stale temporary files
    (``*.partial*``) are removed. Returns one line per action (also logged)."""
    import shutil

    save_dir = Path(save_dir)
    actions = []
    if not save_dir.is_dir():
        return actions
    for folder, manifest in _committed(save_dir):
        if manifest is None:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        _apply_commit(folder, manifest)
        actions.append(f"completed the interrupted save of checkpoint set '{manifest['label']}' ({folder.name})")
    for p in sorted(save_dir.iterdir()):
        if p.name.startswith(_STAGE_PREFIX) and (p.name.endswith(".partial") or p.name.endswith(".trash")):
            shutil.rmtree(p, ignore_errors=True)
            actions.append(f"removed the unfinished checkpoint write {p.name}")
        elif p.name.startswith(".") and ".partial" in p.name and p.is_file():
            p.unlink()
            actions.append(f"removed the stale temporary file {p.name}")
    for a in actions:
        log.warning("%s in %s", a, save_dir)
    return actions


class CheckpointSet:
    """Read access to checkpoint set ``label`` of an experiment folder (see :func:`open_set`).

    ``manifest`` is None for a *legacy* set (files written before checkpoint sets, or by the authors' release): those
    load with a warning that their consistency cannot be checked.
    """

    def __init__(self, save_dir: Path, label: str, manifest: Optional[dict], where: Mapping[str, Path]):
        self.save_dir, self.label, self.manifest = save_dir, label, manifest
        self._where = dict(where)
        self._verified: set = set()

    @property
    def legacy(self) -> bool:
        return self.manifest is None

    def get(self, key: str, default=None):
        return default if self.manifest is None else self.manifest.get(key, default)

    def has(self, fname: str) -> bool:
        if self.manifest is not None:
            return fname in self.manifest["files"]
        return (self.save_dir / fname).is_file()

    def path(self, fname: str) -> Path:
        """The current location of ``fname`` of this set, checked against the manifest's sha256 (once).

        Raises:
            CheckpointError: the file is missing, or differs from the file the set was written with (names both).
        """
        if self.manifest is None:
            p = self.save_dir / fname
            if not p.is_file():
                have = sorted(q.name for q in self.save_dir.glob(f"{self.label}_*.pth"))
                raise CheckpointError(f"checkpoint '{p}' does not exist (set '{self.label}' has {have or 'no files'})")
            return p
        if fname not in self.manifest["files"]:
            raise CheckpointError(
                f"checkpoint set '{self.label}' in '{self.save_dir}' has no file '{fname}' (it holds "
                f"{', '.join(sorted(self.manifest['files']))}; written by --model {self.manifest.get('model')})")
        p = self._where.get(fname, self.save_dir / fname)
        if fname not in self._verified:
            want = self.manifest["files"][fname]
            if not p.is_file():
                raise CheckpointError(f"checkpoint set '{self.label}' in '{self.save_dir}' is incomplete: '{fname}' "
                                      f"is missing (listed in {manifest_name(self.label)})")
            got = _sha256(p)
            if got != want.get("sha256"):
                raise CheckpointError(
                    f"checkpoint set '{self.label}' in '{self.save_dir}' is inconsistent: '{p.name}' is not the file "
                    f"written with {manifest_name(self.label)} (set {self.manifest.get('set_id')}; sha256 {got[:12]} "
                    f"instead of {str(want.get('sha256'))[:12]}): it was replaced or modified afterwards. Use another "
                    "--epoch, or restore the set's files")
            self._verified.add(fname)
        return p

    def load(self, fname: str, map_location: Any = "cpu") -> Any:
        """``load_checkpoint`` of the verified file ``fname``."""
        return load_checkpoint(self.path(fname), map_location)

    def describe(self) -> str:
        if self.manifest is None:
            return f"'{self.label}' (legacy set without manifest)"
        m = self.manifest
        where = f"epoch {m.get('epoch')}"
        if m.get("epoch_iter"):
            where += f", iteration {m.get('epoch_iter')} of the epoch (mid-epoch)"
        return f"'{self.label}' ({where}, {m.get('total_iters')} images seen, set {m.get('set_id')})"


def open_set(save_dir: PathLike, label, warn_legacy: bool = True) -> CheckpointSet:
    """Open checkpoint set ``label`` of ``save_dir`` for reading (read-only: nothing is moved or deleted).

    A committed but not yet fully applied set (a kill during the final renames) is read from its commit folder.
    Without a manifest the set is a legacy one: a warning says that its consistency cannot be checked.

    Raises:
        CheckpointError: the folder or the set does not exist, or its manifest is unreadable.
    """
    save_dir = Path(save_dir)
    label = str(label)
    if not save_dir.is_dir():
        raise CheckpointError(f"experiment folder '{save_dir}' does not exist (check --checkpoints_dir and --name)")
    pending = [(f, m) for f, m in _committed(save_dir) if m is not None and str(m.get("label")) == label]
    if pending:
        folder, manifest = pending[-1]
        where = {fn: (folder / fn if (folder / fn).exists() else save_dir / fn) for fn in manifest["files"]}
        return CheckpointSet(save_dir, label, manifest, where)
    mpath = save_dir / manifest_name(label)
    if mpath.is_file():
        manifest = _read_manifest(mpath)
        return CheckpointSet(save_dir, label, manifest, {fn: save_dir / fn for fn in manifest["files"]})
    files = sorted(p.name for p in save_dir.glob(f"{label}_*.pth"))
    if not files:
        labels = sorted({p.name[: -len("_set.json")] for p in save_dir.glob("*_set.json")} |
                        {p.name.split("_net_")[0] for p in save_dir.glob("*_net_*.pth")})
        raise NoSuchSetError(f"no checkpoint set '{label}' in '{save_dir}' (--epoch {label}); available: "
                             f"{', '.join(labels) or 'none'}")
    if warn_legacy:
        log.warning("checkpoint set '%s' in %s has no manifest (%s): written before checkpoint sets or by another "
                    "tool, so its consistency cannot be checked", label, save_dir, manifest_name(label))
    return CheckpointSet(save_dir, label, None, {fn: save_dir / fn for fn in files})


def delete_set(save_dir: PathLike, label) -> None:
    """Remove checkpoint set ``label`` (its files, then its manifest) via a ``.trash`` folder (``--keep_last``)."""
    import secrets
    import shutil

    save_dir = Path(save_dir)
    mpath = save_dir / manifest_name(label)
    if not mpath.is_file():
        return
    manifest = _read_manifest(mpath)
    trash = save_dir / f"{_STAGE_PREFIX}{secrets.token_hex(4)}.trash"
    trash.mkdir()
    os.replace(mpath, trash / mpath.name)  # the set disappears as a whole for readers (no manifest, no legacy files
    for fname in manifest["files"]:        # left once the files below are moved too)
        if (save_dir / fname).exists():
            os.replace(save_dir / fname, trash / fname)
    shutil.rmtree(trash, ignore_errors=True)


def list_sets(save_dir: PathLike) -> list[dict]:
    """Manifests of the sets in ``save_dir`` (applied ones), in no particular order."""
    out = []
    for p in Path(save_dir).glob("*_set.json"):
        try:
            out.append(_read_manifest(p))
        except CheckpointError as e:
            log.warning("ignoring %s", e)
    return out
