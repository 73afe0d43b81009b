"""Network factories: ``define_G`` and ``define_D`` build, initialise and place the networks named by the options.

Builders are looked up in two tables that other modules extend (``register_generator`` /
``register_discriminator``), e.g. the pix2pixHD networks add ``global``, ``local`` and ``multiscale``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from models.networks.discriminators import NLayerDiscriminator, PixelDiscriminator
from models.networks.generators import ResnetGenerator, UnetGenerator
from models.networks.init import init_weights
from models.networks.norms import get_norm_layer
from util.errors import OptionError

_GENERATORS: dict[str, Callable[..., nn.Module]] = {
    "resnet_9blocks": lambda i, o, ngf, norm, drop, **kw: ResnetGenerator(i, o, ngf, norm, drop, n_blocks=9),
    "resnet_6blocks": lambda i, o, ngf, norm, drop, **kw: ResnetGenerator(i, o, ngf, norm, drop, n_blocks=6),
    "unet_256": lambda i, o, ngf, norm, drop, **kw: UnetGenerator(i, o, 8, ngf, norm, drop),
    "unet_128": lambda i, o, ngf, norm, drop, **kw: UnetGenerator(i, o, 7, ngf, norm, drop),
}
_STRIDES = {"resnet_9blocks": 4, "resnet_6blocks": 4, "unet_256": 256, "unet_128": 128}
_DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {
    "basic": lambda i, ndf, n_layers, norm, **kw: NLayerDiscriminator(i, ndf, 3, norm),
    "n_layers": lambda i, ndf, n_layers, norm, **kw: NLayerDiscriminator(i, ndf, n_layers, norm),
    "pixel": lambda i, ndf, n_layers, norm, **kw: PixelDiscriminator(i, ndf, norm),
}
_EXTENSIONS_LOADED = False


def register_generator(name: str, builder: Callable[..., nn.Module], stride: int) -> None:
    """Add a generator: ``builder(input_nc, output_nc, ngf, norm_layer, use_dropout, **extra)``; ``stride`` is the
    factor H and W must be multiples of."""
    _GENERATORS[name] = builder
    _STRIDES[name] = stride


def register_discriminator(name: str, builder: Callable[..., nn.Module]) -> None:
    """Add a discriminator: ``builder(input_nc, ndf, n_layers, norm_layer, **extra)``."""
    _DISCRIMINATORS[name] = builder


def _load_extensions() -> None:
    global _EXTENSIONS_LOADED
    if not _EXTENSIONS_LOADED:
        _EXTENSIONS_LOADED = True
        try:
            import models.networks.pix2pixhd_networks  # noqa: F401  (registers global/local/multiscale)
        except ModuleNotFoundError as e:
            if e.name != "models.networks.pix2pixhd_networks":
                raise


#: option names that shape a generator beyond --netG/--ngf/--norm (pix2pixHD), passed to define_G as extras
GENERATOR_EXTRAS = ("n_downsample_global", "n_blocks_global", "n_local_enhancers", "n_blocks_local")


def generator_extras(opt) -> dict:
    """The generator-structure options present in ``opt`` (a namespace or a dict), as ``define_G`` /
    ``generator_stride`` keyword extras (empty for pix2pix/CycleGAN generators)."""
    o = opt if isinstance(opt, dict) else vars(opt)
    return {k: o[k] for k in GENERATOR_EXTRAS if k in o}


def generator_stride(netG: str, **extra) -> int:
    """H and W of a generator's input must be multiples of this (resnet 4, unet_256 256, unet_128 128, ...)."""
    _load_extensions()
    if netG not in _STRIDES:
        raise OptionError(f"--netG '{netG}' is not a generator; valid: {', '.join(sorted(_GENERATORS))}")
    s = _STRIDES[netG]
    return s(**extra) if callable(s) else s


def place(net: nn.Module, device: Optional[torch.device] = None) -> nn.Module:
    """Move ``net`` to ``device`` (CPU when None)."""
    return net.to(device if device is not None else torch.device("cpu"))


def define_G(input_nc: int, output_nc: int, ngf: int, netG: str, norm: str = "batch", use_dropout: bool = False,
             init_type: str = "normal", init_gain: float = 0.02, device: Optional[torch.device] = None,
             **extra) -> nn.Module:
    """Build and initialise a generator mapping ``(N, input_nc, H, W)`` to ``(N, output_nc, H, W)``, values in [-1, 1].

    Raises:
        OptionError: unknown ``netG`` or ``norm`` (the message lists the valid names).
    """
    _load_extensions()
    if netG not in _GENERATORS:
        raise OptionError(f"--netG '{netG}' is not a generator; valid: {', '.join(sorted(_GENERATORS))}")
    net = _GENERATORS[netG](input_nc, output_nc, ngf, get_norm_layer(norm), use_dropout, **extra)
    return place(init_weights(net, init_type, init_gain), device)


def define_D(input_nc: int, ndf: int, netD: str, n_layers_D: int = 3, norm: str = "batch", init_type: str = "normal",
             init_gain: float = 0.02, device: Optional[torch.device] = None, **extra) -> nn.Module:
    """Build and initialise a discriminator on ``(N, input_nc, H, W)`` returning patch logits.

    Raises:
        OptionError: unknown ``netD`` or ``norm``.
    """
    _load_extensions()
    if netD not in _DISCRIMINATORS:
        raise OptionError(f"--netD '{netD}' is not a discriminator; valid: {', '.join(sorted(_DISCRIMINATORS))}")
    net = _DISCRIMINATORS[netD](input_nc, ndf, n_layers_D, get_norm_layer(norm), **extra)
    return place(init_weights(net, init_type, init_gain), device)
