"""pix2pix (Isola et al., CVPR 2017): G(A) -> B with a conditional PatchGAN on (A, B) and an L1 term.

Generator objective: ``L_G = L_cGAN(G, D) + lambda_L1 * ||B - G(A)||_1``; discriminator objective:
``L_D = (L_GAN(D(A, B), real) + L_GAN(D(A, G(A)), fake)) / 2``. Losses logged: G_GAN, G_L1, D_real, D_fake.

Misalignment options shared by the pix2pix family (``models/misalignment.py``): ``--reg_correction`` (RegGAN: the L1
term becomes ``lambda_corr * ||B - warp(G(A), netR(G(A), B))||_1`` plus a smoothness penalty) and ``--lambda_dab``
(DAB-aware block loss).
"""
from __future__ import annotations

import torch

from models import misalignment, register
from models.base_model import BaseModel
from models.losses import GANLoss, gradient_penalty
from models.networks import define_D, define_G


@register("pix2pix")
class Pix2PixModel(BaseModel):
    """Paired image-to-image translation. Inputs: ``A`` ``(N, input_nc, H, W)`` and ``B`` ``(N, output_nc, H, W)``
    in [-1, 1]; ``--direction BtoA`` is applied by the dataset (it delivers the IHC image as ``A``)."""

    def _accepts_set_of(self, model_name: str) -> bool:
        # pix2pix and pyramid pix2pix have the same networks: a run of one may be tested or continued as the other
        return model_name in ("pix2pix", "pyramidpix2pix")

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = True):
        """pix2pix defaults: U-Net 256 generator, batch norm, aligned data, vanilla GAN, no image pool, lambda_L1 100."""
        parser.set_defaults(norm="batch", netG="unet_256", dataset_mode="aligned")
        if is_train:
            parser.set_defaults(pool_size=0, gan_mode="vanilla")
            parser.add_argument("--lambda_L1", type=float, default=100.0, help="weight of the L1 loss")
        misalignment.add_options(parser, is_train)
        return parser

    @staticmethod
    def check_options(opt) -> None:
        """Validate the misalignment options (``models/misalignment.py``; raises :class:`util.errors.OptionError`)."""
        misalignment.check_options(opt)

    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ["G_GAN", "G_L1", "D_real", "D_fake"]
        self.visual_names = ["real_A", "fake_B", "real_B"]
        self.model_names = ["G", "D"] if self.isTrain else ["G"]
        self.netG = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, not opt.no_dropout,
                             opt.init_type, opt.init_gain, device=self.device)
        if self.isTrain:
            self.netD = define_D(opt.input_nc + opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm,
                                 opt.init_type, opt.init_gain, device=self.device)
            self.criterionGAN = GANLoss(opt.gan_mode).to(self.device)
            self.criterionL1 = torch.nn.L1Loss()
            self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
            self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
            self.optimizers = [self.optimizer_G, self.optimizer_D]
            self.supervision = misalignment.RealIHCSupervision(self, opt)  # netR / optimizer_R with --reg_correction
            self.loss_names += self.supervision.loss_names()

    def forward(self) -> None:
        """``fake_B = G(real_A)``; at test time padded to the generator's stride and cropped back."""
        if self.isTrain and self.netG.training:
            self.fake_B = self.netG(self.real_A)
        else:
            self.fake_B = self.run_generator(self.netG, self.real_A)

    # ---- losses (pure computation; no optimizer steps) ------------------------------------------------------
    def compute_D_loss(self) -> torch.Tensor:
        """``(GAN(D(A, G(A)), fake) + GAN(D(A, B), real)) / 2`` (+ WGAN-GP penalty with ``--gan_mode wgangp``)."""
        fake_AB = torch.cat((self.real_A, self.fake_B.detach()), 1)
        real_AB = torch.cat((self.real_A, self.real_B), 1)
        self.loss_D_fake = self.criterionGAN(self.netD(fake_AB), False)
        self.loss_D_real = self.criterionGAN(self.netD(real_AB), True)
        self.loss_D = (self.loss_D_fake + self.loss_D_real) * 0.5
        if self.opt.gan_mode == "wgangp":
            gp, _ = gradient_penalty(self.netD, real_AB, fake_AB, type="mixed", lambda_gp=10.0)
            self.loss_D = self.loss_D + gp
        return self.loss_D

    def gan_loss_G(self) -> torch.Tensor:
        """The generator's adversarial term ``GAN(D(A, G(A)), real)``."""
        fake_AB = torch.cat((self.real_A, self.fake_B), 1)
        self.loss_G_GAN = self.criterionGAN(self.netD(fake_AB), True)
        return self.loss_G_GAN

    def compute_G_loss(self) -> torch.Tensor:
        """``GAN + lambda_L1 * L1(G(A), B)``; with ``--reg_correction`` ``GAN + lambda_corr * L1(warp(G(A)), B) +
        lambda_smooth * L_smooth``, with ``--lambda_dab`` ``+ lambda_dab * L_DAB`` (``models/misalignment.py``)."""
        pred = self.supervision.prediction()
        self.loss_G_L1 = self.criterionL1(pred, self.real_B) * self.supervision.l1_weight(self.opt.lambda_L1)
        self.loss_G = self.gan_loss_G() + self.loss_G_L1
        extra = self.supervision.extra_terms(pred)
        if extra is not None:
            self.loss_G = self.loss_G + extra
        return self.loss_G

    def extra_G_optimizers(self) -> list:
        """netR's optimizer with ``--reg_correction`` (stepped in the generator step)."""
        return self.supervision.extra_G_optimizers() if self.isTrain else []

    def compute_visuals(self) -> None:
        """The registration field as the ``flow_R`` visual with ``--reg_correction``."""
        if self.isTrain:
            self.supervision.compute_visuals()

    # ---- the only place that steps ----------------------------------------------------------------------------
    def optimize_parameters(self) -> None:
        """One D step then one G step (pix2pix order), see :meth:`BaseModel.gan_iteration`."""
        self.gan_iteration([self.netD], d_first=True)
