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
from typing import Any, Mapping, Union

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
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing or cannot be unpickled safely (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"cannot load checkpoint '{path}' safely (weights_only=True): {e}") from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"cannot load checkpoint '{path}': {e}") from e


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
    bad = [f"{k}: file {tuple(sd[k].shape)} vs net {tuple(own[k].shape)}" for k in sd if sd[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"checkpoint '{path}' has tensors of the wrong shape: {bad[:5]}")
    for k in missing:  # only num_batches_tracked here
        sd[k] = own[k]
    bare.load_state_dict(sd, strict=True)
    log.info("loaded %s", path)
    return net
