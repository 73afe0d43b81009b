"""pix2pixHD networks (Wang et al., "High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs",
CVPR 2018, sec. 3.2): the global generator G1, the local enhancer G2 wrapped around it, and the multi-scale
discriminator returning intermediate features for the feature-matching loss.

Module names follow the released pix2pixHD code so its state dicts keep their key layout (``model.<i>``,
``model1_1`` / ``model1_2`` of the enhancers, ``scale<i>_layer<j>`` of the discriminator). Convolutions have biases
whatever the norm (pix2pixHD convention). Importing this module registers ``global`` and ``local`` generators and the
``multiscale`` discriminator with :mod:`models.networks` (``define_G`` / ``define_D`` / ``generator_stride``).

Extra builder arguments (``define_G(..., **extra)``): ``n_downsample_global`` (4), ``n_blocks_global`` (9),
``n_local_enhancers`` (1), ``n_blocks_local`` (3); (``define_D(..., **extra)``): ``num_D`` (2), ``get_interm_feat``
(True).
"""
from __future__ import annotations

import math
from typing import List

from torch import Tensor, nn

from models.networks import register_discriminator, register_generator
from models.networks.generators import ResnetBlock

__all__ = ["GlobalGenerator", "LocalEnhancer", "NLayerFeatureDiscriminator", "MultiscaleDiscriminator",
           "global_stride", "local_stride"]


def _check_non_negative(**values: int) -> None:
    for name, v in values.items():
        if int(v) < 0:
            raise ValueError(f"--{name} must be >= 0, got {v}")


class GlobalGenerator(nn.Module):
    """pix2pixHD global generator G1: c7s1-ngf, ``n_downsampling`` stride-2 3x3 convolutions (channels doubling),
    ``n_blocks`` residual blocks at ``ngf * 2**n_downsampling`` channels, as many transposed convolutions, c7s1-out,
    tanh.

    Input ``(N, input_nc, H, W)`` in [-1, 1], H and W multiples of ``2**n_downsampling``; output
    ``(N, output_nc, H, W)`` in [-1, 1].

    Raises:
        ValueError: negative ``n_downsampling`` or ``n_blocks``.
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 64, n_downsampling: int = 4, n_blocks: int = 9,
                 norm_layer=nn.InstanceNorm2d, padding_type: str = "reflect"):
        super().__init__()
        _check_non_negative(n_downsample_global=n_downsampling, n_blocks_global=n_blocks)
        self.stride = 2 ** n_downsampling
        layers: List[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, padding=0), norm_layer(ngf),
                                   nn.ReLU(True)]
        ch = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), norm_layer(ch * 2), nn.ReLU(True)]
            ch *= 2
        layers += [ResnetBlock(ch, padding_type, norm_layer, use_dropout=False, use_bias=True) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1), norm_layer(ch // 2),
                       nn.ReLU(True)]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, output_nc, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _half(x: Tensor) -> Tensor:
    """pix2pixHD's downsampling between scales: 3x3 average, stride 2, padding 1, padding not counted."""
    return nn.functional.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


class LocalEnhancer(nn.Module):
    """pix2pixHD coarse-to-fine generator: a global generator (``ngf * 2**n_local_enhancers`` filters, without its
    last three layers) run on the input downsampled ``n_local_enhancers`` times, and ``n_local_enhancers`` enhancer
    networks G2 (front end ``model<n>_1``: c7s1 + one stride-2 conv; back end ``model<n>_2``: ``n_blocks_local``
    residual blocks + one transposed conv, the last adding c7s1-out + tanh), the front end's output being summed with
    the previous stage's features (paper sec. 3.2, Fig. 3).

    Input ``(N, input_nc, H, W)`` in [-1, 1], H and W multiples of ``2**(n_downsample_global + n_local_enhancers)``;
    output ``(N, output_nc, H, W)`` in [-1, 1].

    Raises:
        ValueError: ``n_local_enhancers`` < 1 or negative block counts.
    """

    def __init__(self, input_nc: int, output_nc: int, ngf: int = 32, n_downsample_global: int = 3,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 norm_layer=nn.InstanceNorm2d, padding_type: str = "reflect"):
        super().__init__()
        if n_local_enhancers < 1:
            raise ValueError(f"--n_local_enhancers must be >= 1 for --netG local, got {n_local_enhancers}")
        _check_non_negative(n_blocks_local=n_blocks_local)
        self.n_local_enhancers = n_local_enhancers
        self.stride = 2 ** (n_downsample_global + n_local_enhancers)
        g = GlobalGenerator(input_nc, output_nc, ngf * 2 ** n_local_enhancers, n_downsample_global, n_blocks_global,
                            norm_layer, padding_type)
        self.model = nn.Sequential(*list(g.model.children())[:-3])  # drop the final pad, conv and tanh
        for n in range(1, n_local_enhancers + 1):
            ch = ngf * 2 ** (n_local_enhancers - n)
            front = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ch, 7, padding=0), norm_layer(ch), nn.ReLU(True),
                     nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), norm_layer(ch * 2), nn.ReLU(True)]
            back: List[nn.Module] = [ResnetBlock(ch * 2, padding_type, norm_layer, use_dropout=False, use_bias=True)
                                     for _ in range(n_blocks_local)]
            back += [nn.ConvTranspose2d(ch * 2, ch, 3, stride=2, padding=1, output_padding=1), norm_layer(ch),
                     nn.ReLU(True)]
            if n == n_local_enhancers:
                back += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7, padding=0), nn.Tanh()]
            setattr(self, f"model{n}_1", nn.Sequential(*front))
            setattr(self, f"model{n}_2", nn.Sequential(*back))

    def forward(self, x: Tensor) -> Tensor:
        pyramid = [x]
        for _ in range(self.n_local_enhancers):
            pyramid.append(_half(pyramid[-1]))
        out = self.model(pyramid[-1])
        for n in range(1, self.n_local_enhancers + 1):
            front = getattr(self, f"model{n}_1")
            back = getattr(self, f"model{n}_2")
            out = back(front(pyramid[self.n_local_enhancers - n]) + out)
        return out


class NLayerFeatureDiscriminator(nn.Module):
    """pix2pixHD PatchGAN for one scale: ``n_layers`` stride-2 4x4 convolutions (C64 without norm, then doubling up
    to 512 with norm), one stride-1 conv with norm, and a 1-channel stride-1 conv; padding 2 (``ceil((4 - 1) / 2)``),
    LeakyReLU 0.2. Each group is ``model<j>`` (``j = 0 .. n_layers + 1``).

    ``forward`` on ``(N, input_nc, H, W)`` returns the ``n_layers + 2`` group outputs (the last is the patch logits
    ``(N, 1, h, w)``) when ``get_interm_feat``, else only the logits in a one-element list.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer=nn.InstanceNorm2d,
                 get_interm_feat: bool = True):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"--n_layers_D must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        self.get_interm_feat = get_interm_feat
        pad = int(math.ceil((4 - 1.0) / 2))
        groups: List[List[nn.Module]] = [[nn.Conv2d(input_nc, ndf, 4, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            groups.append([nn.Conv2d(prev, nf, 4, stride=2, padding=pad), norm_layer(nf), nn.LeakyReLU(0.2, True)])
        prev, nf = nf, min(nf * 2, 512)
        groups.append([nn.Conv2d(prev, nf, 4, stride=1, padding=pad), norm_layer(nf), nn.LeakyReLU(0.2, True)])
        groups.append([nn.Conv2d(nf, 1, 4, stride=1, padding=pad)])
        for j, g in enumerate(groups):
            setattr(self, f"model{j}", nn.Sequential(*g))

    def group_list(self) -> List[nn.Module]:
        return [getattr(self, f"model{j}") for j in range(self.n_layers + 2)]

    def forward(self, x: Tensor) -> List[Tensor]:
        outs = []
        for g in self.group_list():
            x = g(x)
            outs.append(x)
        return outs if self.get_interm_feat else [outs[-1]]


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD multi-scale discriminator: ``num_D`` PatchGANs of identical structure applied to the input at full,
    1/2, 1/4 ... resolution (AvgPool2d(3, stride 2, padding 1, count_include_pad=False) between scales).

    The scales are a list looped over in ``forward``; their modules are stored under pix2pixHD's names
    ``scale<i>_layer<j>`` where scale ``num_D - 1`` sees the full resolution (the released code's order), so
    pix2pixHD checkpoints keep their keys.

    ``forward`` on ``(N, input_nc, H, W)`` in [-1, 1] returns a list of ``num_D`` lists (full resolution first), each
    holding the intermediate features and, last, the patch logits (``n_layers + 2`` tensors; only the logits without
    ``get_interm_feat``): the layout :class:`models.losses.GANLoss` and :func:`models.losses.feature_matching_loss`
    take.

    Raises:
        ValueError: ``num_D`` < 1 or ``n_layers`` < 1.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm_layer=nn.InstanceNorm2d,
                 num_D: int = 2, get_interm_feat: bool = True):
        super().__init__()
        if num_D < 1:
            raise ValueError(f"--num_D must be >= 1, got {num_D}")
        self.num_D = num_D
        self.n_layers = n_layers
        self.get_interm_feat = get_interm_feat
        for i in range(num_D):
            d = NLayerFeatureDiscriminator(input_nc, ndf, n_layers, norm_layer, get_interm_feat=True)
            for j, g in enumerate(d.group_list()):
                setattr(self, f"scale{i}_layer{j}", g)

    def scales(self) -> List[List[nn.Module]]:
        """Layer groups of each scale, full resolution first."""
        return [[getattr(self, f"scale{self.num_D - 1 - k}_layer{j}") for j in range(self.n_layers + 2)]
                for k in range(self.num_D)]

    def forward(self, x: Tensor) -> List[List[Tensor]]:
        result = []
        for k, groups in enumerate(self.scales()):
            if k > 0:
                x = _half(x)
            h, outs = x, []
            for g in groups:
                h = g(h)
                outs.append(h)
            result.append(outs if self.get_interm_feat else [outs[-1]])
        return result


# ---- registration with define_G / define_D / generator_stride ---------------------------------------------------
def global_stride(n_downsample_global: int = 4, **_ignored) -> int:
    """Input H and W of ``--netG global`` must be multiples of ``2**n_downsample_global``."""
    return 2 ** int(n_downsample_global)


def local_stride(n_downsample_global: int = 4, n_local_enhancers: int = 1, **_ignored) -> int:
    """Input H and W of ``--netG local`` must be multiples of ``2**(n_downsample_global + n_local_enhancers)``."""
    return 2 ** (int(n_downsample_global) + int(n_local_enhancers))


def _build_global(input_nc, output_nc, ngf, norm_layer, use_dropout, n_downsample_global: int = 4,
                  n_blocks_global: int = 9, **_ignored) -> nn.Module:
    return GlobalGenerator(input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, norm_layer)


def _build_local(input_nc, output_nc, ngf, norm_layer, use_dropout, n_downsample_global: int = 4,
                 n_blocks_global: int = 9, n_local_enhancers: int = 1, n_blocks_local: int = 3,
                 **_ignored) -> nn.Module:
    return LocalEnhancer(input_nc, output_nc, ngf, n_downsample_global, n_blocks_global, n_local_enhancers,
                         n_blocks_local, norm_layer)


def _build_multiscale(input_nc, ndf, n_layers, norm_layer, num_D: int = 2, get_interm_feat: bool = True,
                      **_ignored) -> nn.Module:
    return MultiscaleDiscriminator(input_nc, ndf, n_layers, norm_layer, num_D, get_interm_feat)


register_generator("global", _build_global, stride=global_stride)
register_generator("local", _build_local, stride=local_stride)
register_discriminator("multiscale", _build_multiscale)
