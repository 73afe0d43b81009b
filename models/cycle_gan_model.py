"""CycleGAN (Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks", ICCV 2017).

Two generators ``G_A: A -> B`` (H&E -> IHC) and ``G_B: B -> A`` and two discriminators ``D_A`` (real B vs ``G_A(A)``)
and ``D_B`` (real A vs ``G_B(B)``), trained on unpaired images (``--dataset_mode unaligned``). Objective (paper eqs. 1-3
plus the identity term of sec. 5.2):

``L_G = GAN(D_A(G_A(A)), 1) + GAN(D_B(G_B(B)), 1) + lambda_A ||G_B(G_A(A)) - A||_1 + lambda_B ||G_A(G_B(B)) - B||_1
+ lambda_idt * (lambda_B ||G_A(B) - B||_1 + lambda_A ||G_B(A) - A||_1)``;
``L_D_A = (GAN(D_A(B), 1) + GAN(D_A(pool(G_A(A))), 0)) / 2`` and likewise ``L_D_B``.

Losses logged: D_A G_A cycle_A idt_A D_B G_B cycle_B idt_B. Defaults follow the CycleGAN reference code: resnet_9blocks,
instance norm, no dropout, LSGAN, image pool of 50, lambda_A = lambda_B = 10, lambda_identity 0.5, Adam 2e-4 / 0.5.
At test time only ``G_A`` is built (and ``G_B`` for ``--dataset_mode unaligned``); the default test dataset is
``aligned`` so that ``evaluate.py`` scores ``fake_B`` against the registered ``real_B``.
"""
from __future__ import annotations

import itertools
import logging

import torch

from models import register
from models.base_model import BaseModel
from models.image_pool import ImagePool
from models.losses import GANLoss
from models.networks import define_D, define_G
from util.errors import CheckpointError, OptionError

log = logging.getLogger(__name__)


@register("cycle_gan")
class CycleGANModel(BaseModel):
    """Unpaired translation. Inputs: ``A`` ``(N, input_nc, H, W)`` and ``B`` ``(N, output_nc, H', W')`` in [-1, 1]
    (the dataset applies ``--direction``; ``A`` is always H&E for ``AtoB``)."""

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = True):
        """CycleGAN defaults (resnet_9blocks, instance norm, no dropout; unaligned data for training, aligned for
        testing) and, for training, ``--lambda_A``, ``--lambda_B``, ``--lambda_identity``; LSGAN and
        ``--pool_size 50`` are the training defaults already."""
        parser.set_defaults(no_dropout=True, netG="resnet_9blocks", netD="basic", norm="instance",
                            dataset_mode="unaligned" if is_train else "aligned")
        if is_train:
            parser.set_defaults(gan_mode="lsgan", pool_size=50)
            parser.add_argument("--lambda_A", type=float, default=10.0, help="weight of the cycle loss A -> B -> A")
            parser.add_argument("--lambda_B", type=float, default=10.0, help="weight of the cycle loss B -> A -> B")
            parser.add_argument("--lambda_identity", type=float, default=0.5,
                                help="weight of the identity loss relative to lambda_A / lambda_B (0 = off); "
                                     "needs --input_nc == --output_nc")
        return parser

    @staticmethod
    def check_options(opt) -> None:
        """Raise :class:`OptionError` for negative loss weights or pool size, or an identity loss between images of
        different channel counts."""
        if not opt.isTrain:
            return
        if opt.dataset_mode == "single":
            raise OptionError("--model cycle_gan trains on A and B images: use --dataset_mode unaligned (the default) "
                              "or aligned, not single")
        for name in ("lambda_A", "lambda_B", "lambda_identity"):
            if getattr(opt, name) < 0:
                raise OptionError(f"--{name} must be >= 0, got {getattr(opt, name)}")
        if opt.pool_size < 0:
            raise OptionError(f"--pool_size must be >= 0 (0 = no image pool), got {opt.pool_size}")
        if opt.lambda_identity > 0 and opt.input_nc != opt.output_nc:
            raise OptionError(f"--lambda_identity {opt.lambda_identity} needs --input_nc == --output_nc (got "
                              f"{opt.input_nc} and {opt.output_nc}); pass --lambda_identity 0")

    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ["D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"]
        use_dropout = not opt.no_dropout
        self.netG_A = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, use_dropout,
                               opt.init_type, opt.init_gain, device=self.device)
        need_G_B = self.isTrain or getattr(opt, "dataset_mode", "aligned") == "unaligned"
        if need_G_B:
            self.netG_B = define_G(opt.output_nc, opt.input_nc, opt.ngf, opt.netG, opt.norm, use_dropout,
                                   opt.init_type, opt.init_gain, device=self.device)
        if self.isTrain:
            self.model_names = ["G_A", "G_B", "D_A", "D_B"]
            self.visual_names = ["real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B"]
            if opt.lambda_identity > 0:
                self.visual_names += ["idt_B", "idt_A"]
            self.netD_A = define_D(opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm, opt.init_type,
                                   opt.init_gain, device=self.device)
            self.netD_B = define_D(opt.input_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm, opt.init_type,
                                   opt.init_gain, device=self.device)
            self.fake_A_pool = ImagePool(opt.pool_size)
            self.fake_B_pool = ImagePool(opt.pool_size)
            self.criterionGAN = GANLoss(opt.gan_mode).to(self.device)
            self.criterionCycle = torch.nn.L1Loss()
            self.criterionIdt = torch.nn.L1Loss()
            self.optimizer_G = torch.optim.Adam(itertools.chain(self.netG_A.parameters(), self.netG_B.parameters()),
                                                lr=opt.lr, betas=(opt.beta1, 0.999))
            self.optimizer_D = torch.optim.Adam(itertools.chain(self.netD_A.parameters(), self.netD_B.parameters()),
                                                lr=opt.lr, betas=(opt.beta1, 0.999))
            self.optimizers = [self.optimizer_G, self.optimizer_D]
        elif need_G_B:
            self.model_names = ["G_A", "G_B"]
            self.visual_names = ["real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B"]
        else:
            self.model_names = ["G_A"]
            self.visual_names = ["real_A", "fake_B", "real_B"]

    def forward(self) -> None:
        """``fake_B = G_A(A)``, ``rec_A = G_B(fake_B)``, ``fake_A = G_B(B)``, ``rec_B = G_A(fake_A)`` (training);
        at test time only what the built generators allow, padded to the generator's stride."""
        if self.isTrain and self.netG_A.training:
            self.fake_B = self.netG_A(self.real_A)
            self.rec_A = self.netG_B(self.fake_B)
            self.fake_A = self.netG_B(self.real_B)
            self.rec_B = self.netG_A(self.fake_A)
            return
        self.fake_B = self.run_generator(self.netG_A, self.real_A)
        if hasattr(self, "netG_B"):
            self.rec_A = self.run_generator(self.netG_B, self.fake_B)
            if self.real_B is not None:
                self.fake_A = self.run_generator(self.netG_B, self.real_B)
                self.rec_B = self.run_generator(self.netG_A, self.fake_A)

    # ---- losses (pure computation; no optimizer steps) ------------------------------------------------------
    def _basic_D_loss(self, netD, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss_real = self.criterionGAN(netD(real), True)
        loss_fake = self.criterionGAN(netD(fake.detach()), False)
        return (loss_real + loss_fake) * 0.5

    def compute_D_loss(self) -> torch.Tensor:
        """``L_D_A + L_D_B``, fakes drawn through the image pools (each call updates the pools)."""
        fake_B = self.fake_B_pool.query(self.fake_B.detach())
        fake_A = self.fake_A_pool.query(self.fake_A.detach())
        self.loss_D_A = self._basic_D_loss(self.netD_A, self.real_B, fake_B)
        self.loss_D_B = self._basic_D_loss(self.netD_B, self.real_A, fake_A)
        self.loss_D = self.loss_D_A + self.loss_D_B
        return self.loss_D

    def compute_G_loss(self) -> torch.Tensor:
        """Adversarial + cycle + identity terms (see the module docstring); each logged term is weighted."""
        lambda_idt, lambda_A, lambda_B = self.opt.lambda_identity, self.opt.lambda_A, self.opt.lambda_B
        if lambda_idt > 0:
            self.idt_A = self.netG_A(self.real_B)
            self.loss_idt_A = self.criterionIdt(self.idt_A, self.real_B) * lambda_B * lambda_idt
            self.idt_B = self.netG_B(self.real_A)
            self.loss_idt_B = self.criterionIdt(self.idt_B, self.real_A) * lambda_A * lambda_idt
        else:
            self.loss_idt_A = torch.zeros((), device=self.real_A.device)
            self.loss_idt_B = torch.zeros((), device=self.real_A.device)
        self.loss_G_A = self.criterionGAN(self.netD_A(self.fake_B), True)
        self.loss_G_B = self.criterionGAN(self.netD_B(self.fake_A), True)
        self.loss_cycle_A = self.criterionCycle(self.rec_A, self.real_A) * lambda_A
        self.loss_cycle_B = self.criterionCycle(self.rec_B, self.real_B) * lambda_B
        self.loss_G = (self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B
                       + self.loss_idt_A + self.loss_idt_B)
        return self.loss_G

    # ---- the only place that steps (CycleGAN order: G with D frozen, then D) ---------------------------------
    def optimize_parameters(self) -> None:
        """G_A and G_B with D_A and D_B frozen, then D_A and D_B, see :meth:`BaseModel.gan_iteration`."""
        self.gan_iteration([self.netD_A, self.netD_B], d_first=False)

    # ---- exact resume: the image pools ------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """The two image pools (CPU tensors), so that ``--continue_train`` resumes exactly."""
        if not self.isTrain:
            return {}
        return {"fake_A_pool": self.fake_A_pool.state_dict(), "fake_B_pool": self.fake_B_pool.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        """Restore the pools saved by :meth:`extra_state` (absent in states of older runs: the pools start empty).

        Raises:
            CheckpointError: a saved pool does not fit ``--pool_size``.
        """
        if not self.isTrain:
            return
        for key, pool in (("fake_A_pool", self.fake_A_pool), ("fake_B_pool", self.fake_B_pool)):
            if key not in state:
                log.warning("training state has no %s: the image pool starts empty", key)
                continue
            try:
                pool.load_state_dict(state[key], device=self.device)
            except ValueError as e:
                raise CheckpointError(f"cannot restore {key} from the training state of '{self.save_dir}': {e}") from e
