"""pix2pixHD (Wang et al., "High-Resolution Image Synthesis and Semantic Manipulation with Conditional GANs", CVPR 2018)
for paired H&E -> IHC translation.

Generator: the global generator G1 (``--netG global``: ``--ngf`` 64, ``--n_downsample_global`` 4 stride-2 levels,
``--n_blocks_global`` 9 residual blocks), optionally inside local enhancers (``--netG local``, ``--n_local_enhancers``,
``--n_blocks_local`` 3). Discriminator: ``--num_D`` (2) PatchGANs of ``--n_layers_D`` (3) layers at 1, 1/2, ...
resolution (``--netD multiscale``) on the concatenated (A, B) pair, returning intermediate features.

Objective (paper eq. 5, released code): LSGAN adversarial terms summed over scales,
``L_G = GAN(D(A, G(A)), 1) + L_FM + lambda_vgg * L_VGG(G(A), B)`` with the feature-matching loss
``L_FM = sum_i sum_j (1 / num_D) (4 / (n_layers_D + 1)) lambda_feat * ||D_i^j(A, G(A)) - D_i^j(A, B)||_1`` (eq. 4) and the
VGG19 perceptual loss of :class:`models.losses.VGGPerceptualLoss` (weights 1/32 ... 1); the released code multiplies
the VGG loss by ``lambda_feat`` too, so ``--lambda_vgg`` defaults to ``--lambda_feat`` (10).
``L_D = (GAN(D(A, G(A)), 0) + GAN(D(A, B), 1)) / 2``. Losses logged: G_GAN G_GAN_Feat G_VGG D_real D_fake.

The VGG loss needs ImageNet VGG19 weights (torchvision's standard loading from the torch hub cache, or
``--vgg_weights PATH``). When they cannot be loaded the model refuses to start with a message naming ``--vgg_weights``
and ``--no_vgg_loss``; it never turns the loss off silently.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from models import register
from models.base_model import BaseModel
from models.pix2pix_model import Pix2PixModel
from models.losses import GANLoss, PretrainedWeightsUnavailable, VGGPerceptualLoss, feature_matching_loss
from models.networks import define_D, define_G, generator_extras
from util.errors import CheckpointError, OptionError

log = logging.getLogger(__name__)


def build_vgg_loss(vgg_weights: Optional[str] = None) -> VGGPerceptualLoss:
    """The VGG19 perceptual loss from ``--vgg_weights`` or, when None, torchvision's standard loading.

    Raises:
        PretrainedWeightsUnavailable: no cached weights and no download possible; names ``--vgg_weights`` and
            ``--no_vgg_loss``.
        CheckpointError: ``--vgg_weights`` missing or not a VGG19 state dict (names the option and the file).
    """
    try:
        return VGGPerceptualLoss(weights_path=vgg_weights)
    except PretrainedWeightsUnavailable as e:
        raise PretrainedWeightsUnavailable(
            "--model pix2pixhd: the VGG19 perceptual loss needs ImageNet weights and none could be loaded. Pass "
            "--vgg_weights PATH (a torchvision vgg19 state dict such as vgg19-dcbb9e9d.pth), or train without the "
            f"loss with --no_vgg_loss. Details: {e}") from e
    except CheckpointError as e:
        raise CheckpointError(f"--vgg_weights {vgg_weights}: {e}") from e


@register("pix2pixhd")
class Pix2PixHDModel(BaseModel):
    """Paired translation with pix2pixHD's networks and losses. Inputs: ``A`` ``(N, input_nc, H, W)`` and ``B``
    ``(N, output_nc, H, W)`` in [-1, 1], H and W multiples of the generator's stride (16 for the default global
    generator, ``2**(n_downsample_global + n_local_enhancers)`` for ``local``).

    Args:
        opt: parsed options.
        vgg_loss: a ready perceptual-loss module to use instead of building the VGG19 one (e.g. a small random
            network in tests); ignored with ``--no_vgg_loss`` or at test time.
    """

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = True):
        """pix2pixHD defaults: global generator, multiscale D, instance norm, no dropout, aligned data, LSGAN, no
        image pool; adds the generator structure options and, for training, the loss options."""
        parser.set_defaults(netG="global", netD="multiscale", norm="instance", no_dropout=True, dataset_mode="aligned")
        parser.add_argument("--n_downsample_global", type=int, default=4, help="# stride-2 levels of the global generator")
        parser.add_argument("--n_blocks_global", type=int, default=9, help="# residual blocks of the global generator")
        parser.add_argument("--n_local_enhancers", type=int, default=1, help="# local enhancers (--netG local)")
        parser.add_argument("--n_blocks_local", type=int, default=3, help="# residual blocks of each local enhancer")
        if is_train:
            parser.set_defaults(gan_mode="lsgan", pool_size=0)
            parser.add_argument("--num_D", type=int, default=2, help="# scales of the multiscale discriminator")
            parser.add_argument("--lambda_feat", type=float, default=10.0, help="weight of the feature-matching loss")
            parser.add_argument("--no_ganFeat_loss", action="store_true",
                                help="no discriminator feature-matching loss")
            parser.add_argument("--no_vgg_loss", action="store_true", help="no VGG19 perceptual loss")
            parser.add_argument("--lambda_vgg", type=float, default=None,
                                help="weight of the VGG19 perceptual loss (default: --lambda_feat, as pix2pixHD)")
            parser.add_argument("--vgg_weights", default=None, metavar="PATH",
                                help="local torchvision vgg19 state dict for the perceptual loss (default: the torch "
                                     "hub cache, downloading when possible)")
        return parser

    @staticmethod
    def check_options(opt) -> None:
        """Raise :class:`OptionError` for structure values out of range or feature matching without the multiscale
        discriminator."""
        for name, low in (("n_downsample_global", 0), ("n_blocks_global", 0), ("n_local_enhancers", 1),
                          ("n_blocks_local", 0)):
            if getattr(opt, name) < low:
                raise OptionError(f"--{name} must be >= {low}, got {getattr(opt, name)}")
        if not opt.isTrain:
            return
        if opt.num_D < 1:
            raise OptionError(f"--num_D must be >= 1, got {opt.num_D}")
        for name in ("lambda_feat", "lambda_vgg"):
            v = getattr(opt, name)
            if v is not None and v < 0:
                raise OptionError(f"--{name} must be >= 0, got {v}")
        if not opt.no_ganFeat_loss and opt.netD != "multiscale":
            raise OptionError(f"the feature-matching loss needs --netD multiscale (got --netD {opt.netD}); "
                              "pass --no_ganFeat_loss to use another discriminator")
        if opt.gan_mode == "wgangp":
            raise OptionError("--model pix2pixhd supports --gan_mode lsgan (pix2pixHD) or vanilla, not wgangp")

    def __init__(self, opt, vgg_loss: Optional[nn.Module] = None):
        super().__init__(opt)
        self.loss_names = ["G_GAN", "G_GAN_Feat", "G_VGG", "D_real", "D_fake"]
        self.visual_names = ["real_A", "fake_B", "real_B"]
        self.model_names = ["G", "D"] if self.isTrain else ["G"]
        self.netG = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, not opt.no_dropout,
                             opt.init_type, opt.init_gain, device=self.device, **generator_extras(opt))
        if not self.isTrain:
            return
        d_extra = {"num_D": opt.num_D, "get_interm_feat": True} if opt.netD == "multiscale" else {}
        self.netD = define_D(opt.input_nc + opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm,
                             opt.init_type, opt.init_gain, device=self.device, **d_extra)
        self.criterionGAN = GANLoss(opt.gan_mode, multiscale_reduction="sum").to(self.device)
        self.lambda_vgg = opt.lambda_feat if opt.lambda_vgg is None else opt.lambda_vgg
        self.criterionVGG = None
        if not opt.no_vgg_loss:
            self.criterionVGG = (vgg_loss if vgg_loss is not None else build_vgg_loss(opt.vgg_weights)).to(self.device)
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
        self.optimizers = [self.optimizer_G, self.optimizer_D]

    # ---- sizes (the stride, 2**n_downsample_global or 2**(n_downsample_global + n_local_enhancers), comes from
    # BaseModel.generator_stride through the registered generator) ------------------------------------------------
    def validate_input_size(self, height: int, width: int) -> None:
        """Raise :class:`OptionError` before training when the training images are not multiples of the stride."""
        s = self.generator_stride()
        if height % s or width % s:
            raise OptionError(f"--netG {self.opt.netG} needs training images whose height and width are multiples of "
                              f"{s} (2**(--n_downsample_global{' + --n_local_enhancers' if self.opt.netG == 'local' else ''})); "
                              f"got {height}x{width}: choose --crop_size / --load_size / --preprocess accordingly")

    # ---- forward and the discriminator objective are pix2pix's (conditional D on (A, B)); with the multiscale D
    # GANLoss sums the scales -------------------------------------------------------------------------------------
    forward = Pix2PixModel.forward
    compute_D_loss = Pix2PixModel.compute_D_loss

    # ---- losses (pure computation; no optimizer steps) ------------------------------------------------------
    def compute_G_loss(self) -> torch.Tensor:
        """``GAN + feature matching + lambda_vgg * VGG`` (disabled terms are logged as 0). The real pair's features
        for feature matching come from the current discriminator without gradients."""
        fake_AB = torch.cat((self.real_A, self.fake_B), 1)
        pred_fake = self.netD(fake_AB)
        self.loss_G_GAN = self.criterionGAN(pred_fake, True)
        zero = torch.zeros((), device=self.fake_B.device, dtype=self.fake_B.dtype)
        if self.opt.no_ganFeat_loss:
            self.loss_G_GAN_Feat = zero
        else:
            with torch.no_grad():
                pred_real = self.netD(torch.cat((self.real_A, self.real_B), 1))
            self.loss_G_GAN_Feat = feature_matching_loss(pred_fake, pred_real, self.opt.num_D, self.opt.n_layers_D,
                                                         self.opt.lambda_feat)
        if self.criterionVGG is None:
            self.loss_G_VGG = zero
        else:
            self.loss_G_VGG = self.criterionVGG(self.fake_B, self.real_B) * self.lambda_vgg
        self.loss_G = self.loss_G_GAN + self.loss_G_GAN_Feat + self.loss_G_VGG
        return self.loss_G

    # ---- the only place that steps ----------------------------------------------------------------------------
    def optimize_parameters(self) -> None:
        """One D step then one G step (pix2pixHD order), see :meth:`BaseModel.gan_iteration`."""
        self.gan_iteration([self.netD], d_first=True)
