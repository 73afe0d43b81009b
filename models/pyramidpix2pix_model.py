"""Pyramid pix2pix (Liu et al., "BCI: Breast Cancer Immunohistochemical Image Generation through Pyramid Pix2pix",
CVPR Workshops 2022, section 4.1, eqs. 1-5).

pix2pix whose generator is also constrained by L1 losses between Gaussian-pyramid octaves of the generated and the
real IHC image (eq. 5): ``L_G = L_cGAN + sum_{k in pattern} w_k * S_k`` with ``w_1 = --lambda_L1`` and
``w_k = --weight_Lk``. Only the generator objective differs from :class:`models.pix2pix_model.Pix2PixModel`.

Paper names vs ``--pattern``: pix2pix = ``L1``; "pix2pix+S1" = ``L1_L2``; "+S1+S2" = ``L1_L2_L3``;
"+S1+S2+S3" = ``L1_L2_L3_L4`` (the released default).
"""
from __future__ import annotations

import torch

from models import misalignment, register
from models.pix2pix_model import Pix2PixModel
from models.pyramid import check_image_size, parse_pattern, pyramid_l1


@register("pyramidpix2pix")
class PyramidPix2PixModel(Pix2PixModel):
    """pix2pix + pyramid octave L1 losses. Losses logged: G_GAN, G_L1..G_L4 (those in ``--pattern``), D_real, D_fake
    (+ G_DAB, G_smooth, R_mean_px, R_max_px with ``--lambda_dab`` / ``--reg_correction``)."""

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = True):
        """The paper's recipe as defaults: resnet_9blocks, basic PatchGAN, batch norm, vanilla GAN, batch size 2,
        Adam 2e-4 / beta1 0.5, full-resolution images (``--preprocess none``); weights 25 each as released."""
        Pix2PixModel.modify_commandline_options(parser, is_train)
        parser.set_defaults(netG="resnet_9blocks", netD="basic", norm="batch", batch_size=2, preprocess="none")
        if is_train:
            parser.set_defaults(gan_mode="vanilla", lambda_L1=25.0, lr=0.0002, beta1=0.5)
            parser.add_argument("--pattern", default="L1_L2_L3_L4",
                                help="pyramid levels whose L1 loss trains G, underscore-separated, from L1 L2 L3 L4 "
                                     "(L1 = full resolution; Lk = first layer of octave k)")
            for k in (2, 3, 4):
                parser.add_argument(f"--weight_L{k}", type=float, default=25.0, help=f"weight of the level-{k} L1 loss")
        return parser

    @staticmethod
    def check_options(opt) -> None:
        """Validate ``--pattern`` and, when images are cropped to ``--crop_size``, that the crop fits the deepest
        octave (raises :class:`util.errors.OptionError`)."""
        if not opt.isTrain:
            return
        misalignment.check_options(opt)
        levels = parse_pattern(opt.pattern)
        if "crop" in opt.preprocess:
            check_image_size(opt.crop_size, opt.crop_size, max(levels))

    def __init__(self, opt):
        super().__init__(opt)
        if self.isTrain:
            self.levels = parse_pattern(opt.pattern)
            self.level_weights = [opt.lambda_L1 if k == 1 else getattr(opt, f"weight_L{k}") for k in self.levels]
            self.loss_names = (["G_GAN"] + [f"G_L{k}" for k in self.levels] + ["D_real", "D_fake"]
                               + self.supervision.loss_names())
            if self.supervision.reg and 1 in self.levels:  # RegGAN's correction weight replaces lambda_L1
                self.level_weights[self.levels.index(1)] = self.supervision.l1_weight(opt.lambda_L1)

    def validate_input_size(self, height: int, width: int) -> None:
        """Raise before training when the images are too small for the deepest requested octave."""
        check_image_size(height, width, max(self.levels))

    def compute_G_loss(self) -> torch.Tensor:
        """``GAN + sum_k w_k * S_k`` over the pattern's levels (eq. 5); each logged term is weighted.

        With ``--reg_correction`` every octave compares the *warped* virtual IHC with the real one, ``w_1`` is
        ``--lambda_corr`` and the smoothness penalty is added; ``--lambda_dab`` adds the DAB loss
        (``models/misalignment.py``). Under ``--amp`` the pyramid is built in float32 with autocast off (a loss, as
        the PyTorch AMP recipe keeps reductions in float32)."""
        pred = self.supervision.prediction()
        if self.amp.enabled:
            with torch.autocast(device_type=self.device.type, enabled=False):
                _, per_level = pyramid_l1(pred.float(), self.real_B.float(), self.levels)
        else:
            _, per_level = pyramid_l1(pred, self.real_B, self.levels)
        total = self.gan_loss_G()
        for k, w, s in zip(self.levels, self.level_weights, per_level):
            term = s * w
            setattr(self, f"loss_G_L{k}", term)
            total = total + term
        extra = self.supervision.extra_terms(pred)
        self.loss_G = total if extra is None else total + extra
        return self.loss_G
