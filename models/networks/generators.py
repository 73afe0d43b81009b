"""Generators of pix2pix/CycleGAN (Isola et al. 2017; Zhu et al. 2017), with the classic state-dict key layout.

The module nesting (``model.<i>``, ``model.<i>.conv_block.<j>``, ``model.model.1.model.3...``) reproduces the
widely distributed pix2pix/CycleGAN/pyramid pix2pix checkpoints key for key, so they load without renaming
(see ``tests/data/checkpoint_layouts.json``). All generators map ``(N, input_nc, H, W)`` to ``(N, output_nc, H, W)``
in [-1, 1] (final ``tanh``).
"""
from __future__ import annotations

from torch import nn

from models.networks.dropout import Dropout
from models.networks.norms import uses_bias
from util.errors import OptionError


def check_input_size(x, stride: int, net: str) -> None:
    """Raise :class:`OptionError` unless the input ``(N, C, H, W)`` has H and W that are positive multiples of
    ``stride``; other sizes make the generator return a different size (ResNet) or fail deep inside (U-Net).

    ``test.py`` pads to the stride itself (``models.base_model``); this check stops training on such images with one
    clear message instead of a shape error in a loss.
    """
    h, w = x.shape[-2:]
    if h % stride or w % stride or h == 0 or w == 0:
        raise OptionError(
            f"{net} needs images whose height and width are multiples of {stride} px, got {h}x{w}; "
            "choose --crop_size (with --preprocess crop or resize_and_crop) or --load_size accordingly"
        )


class ResnetBlock(nn.Module):
    """Residual block: two 3x3 convolutions with reflect (or replicate/zero) padding, norm, ReLU, optional dropout.

    ``conv_block`` indices follow the classic layout: pad, conv, norm, ReLU, [dropout], pad, conv, norm.
    """

    def __init__(self, dim: int, padding_type: str, norm_layer, use_dropout: bool, use_bias: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for second in (False, True):
            pad = 0
            if padding_type == "reflect":
                layers.append(nn.ReflectionPad2d(1))
            elif padding_type == "replicate":
                layers.append(nn.ReplicationPad2d(1))
            elif padding_type == "zero":
                pad = 1
            else:
                raise ValueError(f"padding '{padding_type}' is not implemented (reflect, replicate, zero)")
            layers += [nn.Conv2d(dim, dim, kernel_size=3, padding=pad, bias=use_bias), norm_layer(dim)]
            if not second:
                layers.append(nn.ReLU(True))
                if use_dropout:
                    layers.append(Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet generator (Johnson et al. 2016 as used by CycleGAN/pix2pix): c7s1-ngf, two stride-2 downsamplings,
    ``n_blocks`` residual blocks at ``4*ngf`` channels, two transposed-conv upsamplings, c7s1-output_nc, tanh.

    Input ``(N, input_nc, H, W)`` in [-1, 1] with H and W multiples of 4; output ``(N, output_nc, H, W)`` in
    [-1, 1].

    Raises:
        OptionError: (forward) H or W is not a multiple of 4 (the output would have another size).
    """

    stride = 4

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, norm_layer=nn.BatchNorm2d,
                 use_dropout: bool = False, n_blocks: int = 6, padding_type: str = "reflect"):
        super().__init__()
        if n_blocks < 0:
            raise ValueError("n_blocks must be >= 0")
        bias = uses_bias(norm_layer)
        model: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0, bias=bias),
                                  norm_layer(ngf), nn.ReLU(True)]
        ch = ngf
        for _ in range(2):
            model += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias), norm_layer(ch * 2), nn.ReLU(True)]
            ch *= 2
        model += [ResnetBlock(ch, padding_type, norm_layer, use_dropout, bias) for _ in range(n_blocks)]
        for _ in range(2):
            model += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                      norm_layer(ch // 2), nn.ReLU(True)]
            ch //= 2
        model += [nn.ReflectionPad2d(3), nn.Conv2d(ch, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*model)

    def forward(self, x):
        check_input_size(x, self.stride, "the ResNet generator")
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """One level of the U-Net: down (LeakyReLU, conv 4x4/2, norm) -> submodule -> up (ReLU, transposed conv, norm),
    with the input concatenated to the output (skip connection) except at the outermost level."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False, innermost: bool = False, norm_layer=nn.BatchNorm2d, use_dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        bias = uses_bias(norm_layer)
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=bias)
        downrelu = nn.LeakyReLU(0.2, True)
        uprelu = nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            model = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            model = [downrelu, downconv, uprelu, upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=bias)
            model = [downrelu, downconv, norm_layer(inner_nc), submodule, uprelu, upconv, norm_layer(outer_nc)]
            if use_dropout:
                model.append(Dropout(0.5))
        self.model = nn.Sequential(*model)

    def forward(self, x):
        import torch

        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net generator (Ronneberger et al. 2015 as used by pix2pix) with ``num_downs`` stride-2 levels.

    ``unet_256`` has 8 levels (H, W multiples of 256), ``unet_128`` has 7 (multiples of 128). Input and output
    ``(N, C, H, W)`` in [-1, 1].

    Raises:
        OptionError: (forward) H or W is not a multiple of ``2 ** num_downs``.
    """

    def __init__(self, input_nc: int, output_nc: int, num_downs: int, ngf: int = 64, norm_layer=nn.BatchNorm2d,
                 use_dropout: bool = False):
        super().__init__()
        if num_downs < 5:
            raise ValueError("a U-Net needs num_downs >= 5")
        self.stride = 2 ** num_downs
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer,
                                            use_dropout=use_dropout)
        for outer, inner in ((ngf * 4, ngf * 8), (ngf * 2, ngf * 4), (ngf, ngf * 2)):
            block = UnetSkipConnectionBlock(outer, inner, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm_layer=norm_layer)

    def forward(self, x):
        check_input_size(x, self.stride, f"the U-Net generator ({self.stride.bit_length() - 1} levels)")
        return self.model(x)
