"""PatchGAN discriminators of pix2pix (Isola et al. 2017), classic state-dict key layout.

A conditional discriminator sees A and B concatenated: ``(N, input_nc + output_nc, H, W)`` in [-1, 1]. It returns
unnormalised scores (logits) per patch, ``(N, 1, H', W')``.
"""
from __future__ import annotations

from torch import nn

from models.networks.norms import uses_bias


class NLayerDiscriminator(nn.Module):
    """PatchGAN with ``n_layers`` stride-2 convolutions; ``n_layers=3`` is the 70x70 PatchGAN (``--netD basic``).

    Layers: C64 (no norm) - C128 - C256 - C512 (stride 1) - 1-channel output, 4x4 kernels, LeakyReLU 0.2.
    Output ``(N, 1, H/8 - 2, W/8 - 2)`` for n_layers=3.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer=nn.BatchNorm2d):
        super().__init__()
        bias = uses_bias(norm_layer)
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            seq += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                    norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN (PixelGAN, ``--netD pixel``): classifies every pixel; output ``(N, 1, H, W)``."""

    def __init__(self, input_nc: int, ndf: int = 64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        bias = uses_bias(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, 1, stride=1, padding=0), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, stride=1, padding=0, bias=bias), norm_layer(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, stride=1, padding=0, bias=bias))

    def forward(self, x):
        return self.net(x)
