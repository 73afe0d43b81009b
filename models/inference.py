"""Load a trained generator from an experiment folder, for test-time use outside the training code (slides, tools)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Union

import torch
from torch import nn

from models.networks import define_G, generator_extras
from options import load_train_options
from util.checkpoint import NoSuchSetError, load_network, open_set
from util.errors import CheckpointError

log = logging.getLogger(__name__)


def generator_net_name(train_model: str) -> str:
    """The network name of the A -> B generator of a run trained with ``--model train_model``: ``'G_A'`` for
    CycleGAN (classic layout, ``<epoch>_net_G_A.pth``), ``'G'`` otherwise (``<epoch>_net_G.pth``)."""
    return "G_A" if train_model == "cycle_gan" else "G"


def generator_file(train_opt: dict, exp_dir: Path, epoch: str) -> Path:
    """``<epoch>_net_G.pth`` (``_net_G_A.pth`` for CycleGAN, which translates A -> B with G_A)."""
    return exp_dir / f"{epoch}_net_{generator_net_name(train_opt.get('model'))}.pth"


def build_generator(train_opt: Union[dict, argparse.Namespace], device="cpu") -> nn.Module:
    """Build (untrained) the generator described by a run's saved options."""
    o = train_opt if isinstance(train_opt, dict) else vars(train_opt)
    extra = generator_extras(o)
    return define_G(o["input_nc"], o["output_nc"], o["ngf"], o["netG"], o["norm"], not o.get("no_dropout", False),
                    o.get("init_type", "normal"), o.get("init_gain", 0.02), device=torch.device(device), **extra)


def load_generator(checkpoints_dir: Union[str, Path], name: str, epoch: str = "latest",
                   device: Union[str, torch.device] = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the generator of run ``name`` from ``<checkpoints_dir>/<name>/train_opt.json`` and load its weights.

    Returns ``(netG, train_opt)``; ``netG`` is in eval mode on ``device`` and maps ``(N, input_nc, H, W)`` in [-1, 1] to
    ``(N, output_nc, H, W)`` in [-1, 1] (H, W multiples of :func:`models.networks.generator_stride`).

    Raises:
        OptionError: no saved options for ``name``; CheckpointError: missing or mismatched weights, or a file that
            differs from its checkpoint set's manifest (a legacy set without manifest loads with a warning).
    """
    exp = Path(checkpoints_dir) / name
    train_opt = load_train_options(checkpoints_dir, name)
    path = generator_file(train_opt, exp, str(epoch))
    try:
        cs = open_set(exp, str(epoch))
    except NoSuchSetError:  # any other problem (an unreadable manifest, ...) is reported as it is
        cs = None
    if cs is None or not cs.has(path.name):
        have = sorted(p.name for p in exp.glob("*_net_G*.pth"))
        raise CheckpointError(f"no generator checkpoint '{path}' (--epoch {epoch}); available: {have or 'none'}")
    net = build_generator(train_opt, device)
    load_network(net, cs.path(path.name), map_location=device)  # checked against the set's manifest
    net.eval()
    return net, train_opt
