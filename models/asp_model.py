"""ASP: adaptive supervised PatchNCE (Li, Hu, Shen, Bai, Xu, "Adaptive Supervised PatchNCE Loss for Learning H&E-to-IHC
Stain Translation with Inconsistent Groundtruth Image Pairs", MICCAI 2023), on top of FastCUT.

Generator objective (paired data):

``L_G = lambda_GAN * GAN(D(G(A)), 1) + lambda_NCE * PatchNCE(G(A) | A) + lambda_asp * ASP(G(A) | B)
+ lambda_gp * GP(G(A), B)``

* ``PatchNCE(G(A) | A)``: CUT's unsupervised term (keys from the H&E input), :func:`models.contrastive.patch_nce_loss`;
* ``ASP(G(A) | B)``: the supervised PatchNCE with keys from the *real IHC* image at the same locations, each patch
  weighted by ``p + (1 - p) * lookup(cosine of its positive pair)`` (mean 1), ``p`` falling with the epoch
  (``--asp_loss_mode <scheduler>_<lookup>``, :func:`models.contrastive.supervised_patch_nce_loss`); both NCE terms
  are averaged over patches and then over the ``--nce_layers``;
* ``GP``: the Gaussian-pyramid L1 (6 levels, 5x5 binomial kernel, weights ``--gp_weights``, averaged over the levels;
  :func:`models.pyramid.gaussian_pyramid_l1`). "gp" is a Gaussian pyramid, not a gradient penalty.

Defaults: the authors' MIST training command (their repository's launcher for the ``cpt`` model): FastCUT
(``--nce_idt false``, ``--flip_equivariance false``), ``--lambda_NCE 10``, ``--lambda_asp 10``,
``--asp_loss_mode lambda_linear``, ``--lambda_gp 10``, ``--gp_weights 0.015625,0.03125,0.0625,0.125,0.25,1``,
resnet_6blocks, instance norm, ``--netD n_layers --n_layers_D 5 --ndf 32`` with spectral norm, LSGAN, nce_layers
0,4,8,12,16, ``--nce_T 0.07``, 256 patches, batch 1, ``--preprocess crop --load_size 1024 --crop_size 512``, 30 + 10
epochs. (The model file of that repository defaults FastCUT to 20 + 10 epochs; the launcher's 30 + 10 is what the
published runs used.) Aligned (paired) data; testing as for every model (the authors test at 1024 px, the whole image,
which ``--preprocess none`` gives here).

Losses logged: G_GAN, D_real, D_fake, G, NCE, ASP, GP.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from models import misalignment, register
from models.contrastive import ASP_LOSS_MODES, parse_asp_mode, supervised_patch_nce_loss
from models.cut_model import CUTModel, add_nce_options
from models.pyramid import ASP_GP_WEIGHTS, gaussian_pyramid_l1, gaussian_pyramid_min_size
from util.errors import OptionError

#: defaults of the options that CUT sets per mode; ASP fixes them to its FastCUT-based recipe
ASP_RECIPE: Dict[str, object] = {"nce_idt": False, "lambda_NCE": 10.0, "flip_equivariance": False, "n_epochs": 30,
                                 "n_epochs_decay": 10}


def parse_gp_weights(text: str) -> list:
    """Parse ``--gp_weights`` (comma-separated non-negative floats, optionally in brackets).

    Raises:
        OptionError: empty, not numbers, or negative (names ``--gp_weights``).
    """
    try:
        weights = [float(t) for t in str(text).strip("[] ").split(",") if t.strip() != ""]
    except ValueError:
        raise OptionError(f"--gp_weights {text!r} must be comma-separated numbers, finest level first") from None
    if not weights or any(w < 0 for w in weights):
        raise OptionError(f"--gp_weights {text!r} must list one weight >= 0 per pyramid level, finest first")
    return weights


@register("asp")
class ASPModel(CUTModel):
    """ASP on paired H&E/IHC data: ``A`` ``(N, input_nc, H, W)`` and its registered ``B`` ``(N, output_nc, H, W)``
    in [-1, 1]."""

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = True):
        """The ASP authors' MIST recipe as defaults (see the module docstring)."""
        parser.set_defaults(netG="resnet_6blocks", netD="n_layers", n_layers_D=5, ndf=32, norm="instance",
                            no_dropout=True, dataset_mode="aligned", preprocess="crop", load_size=1024,
                            crop_size=512, batch_size=1)
        if is_train:
            parser.set_defaults(gan_mode="lsgan", pool_size=0, lr=0.0002, beta1=0.5)
            add_nce_options(parser)
            parser.set_defaults(weight_norm="spectral")
            g = parser.add_argument_group("ASP")
            g.add_argument("--lambda_asp", type=float, default=10.0, help="weight of the adaptive supervised PatchNCE")
            g.add_argument("--asp_loss_mode", default="lambda_linear", choices=ASP_LOSS_MODES,
                           help="<scheduler>_<lookup> of the patch weights (scheduler: sigmoid, linear, lambda, zero; "
                                "lookup: top, linear, bell, uniform), or none for unweighted supervised PatchNCE")
            g.add_argument("--lambda_gp", type=float, default=10.0, help="weight of the Gaussian-pyramid L1 loss")
            g.add_argument("--gp_weights", default=",".join(str(w) for w in ASP_GP_WEIGHTS),
                           help="per-level weights of the Gaussian-pyramid L1, finest level first (one per level)")
        # --reg_correction / --lambda_dab (models/misalignment.py): ASP's pixel loss (the Gaussian-pyramid L1) and the
        # DAB loss compare the warped virtual IHC; the PatchNCE terms keep the unwarped features
        misalignment.add_options(parser, is_train)
        return parser

    @classmethod
    def recipe(cls, opt) -> Dict[str, object]:
        return ASP_RECIPE

    @classmethod
    def check_options(cls, opt) -> None:
        """CUT's checks plus ``--asp_loss_mode``, ``--gp_weights``, non-negative ASP weights, paired data, and a
        ``--crop_size`` large enough for the pyramid (raises :class:`OptionError`)."""
        if not opt.isTrain:
            return
        super().check_options(opt)
        misalignment.check_options(opt)
        parse_asp_mode(opt.asp_loss_mode)
        weights = parse_gp_weights(opt.gp_weights)
        for name in ("lambda_asp", "lambda_gp"):
            if getattr(opt, name) < 0:
                raise OptionError(f"--{name} must be >= 0, got {getattr(opt, name)}")
        if opt.dataset_mode != "aligned":
            raise OptionError(f"--model asp trains on registered pairs: use --dataset_mode aligned, not "
                              f"{opt.dataset_mode}")
        need = gaussian_pyramid_min_size(len(weights))
        if opt.lambda_gp > 0 and "crop" in opt.preprocess and opt.crop_size < need:
            raise OptionError(f"--crop_size {opt.crop_size} is too small for the {len(weights)}-level Gaussian "
                              f"pyramid of --gp_weights (needs >= {need} px); enlarge it or pass fewer --gp_weights")

    def __init__(self, opt):
        super().__init__(opt)
        if self.isTrain:
            self.loss_names = ["G_GAN", "D_real", "D_fake", "G", "NCE", "ASP", "GP"]
            self.gp_weights = parse_gp_weights(opt.gp_weights)
            self.supervision = misalignment.RealIHCSupervision(self, opt)  # netR / optimizer_R with --reg_correction
            self.loss_names += self.supervision.loss_names()

    def extra_G_optimizers(self) -> list:
        """netR's optimizer with ``--reg_correction`` (stepped in the generator step)."""
        return self.supervision.extra_G_optimizers() if self.isTrain else []

    def compute_visuals(self) -> None:
        super().compute_visuals()
        if self.isTrain:
            self.supervision.compute_visuals()

    def validate_input_size(self, height: int, width: int) -> None:
        super().validate_input_size(height, width)
        need = gaussian_pyramid_min_size(len(self.gp_weights))
        if self.opt.lambda_gp > 0 and min(height, width) < need:
            raise OptionError(f"images of {height}x{width} px are too small for the {len(self.gp_weights)}-level "
                              f"Gaussian pyramid (needs >= {need} px a side)")

    def compute_G_loss(self) -> Tensor:
        """``lambda_GAN * GAN + lambda_NCE * NCE(fake_B | real_A) + lambda_asp * ASP(fake_B | real_B)
        + lambda_gp * GP(fake_B, real_B)``."""
        opt = self.opt
        n = self.real_A.shape[0]
        total = self.gan_loss_G()
        zero = torch.zeros((), device=self.device)
        queries, keys = [], []
        if opt.lambda_NCE > 0:
            queries.append(self.fake_B)
            keys.append(self.real_A)
        if opt.lambda_asp > 0:
            queries.append(self.fake_B)
            keys.append(self.real_B)
        pairs = self.nce_pairs(queries, keys) if queries else []
        self.loss_NCE, self.loss_ASP = zero, zero
        if opt.lambda_NCE > 0:
            self.loss_NCE = self.layer_mean(*pairs.pop(0), n) * opt.lambda_NCE
            total = total + self.loss_NCE
        if opt.lambda_asp > 0:
            q_layers, k_layers = pairs.pop(0)
            per_layer = [supervised_patch_nce_loss(q, k, n, opt.nce_T, opt.asp_loss_mode, self.current_epoch,
                                                   opt.n_epochs, opt.n_epochs_decay).mean()
                         for q, k in zip(q_layers, k_layers)]
            self.loss_ASP = sum(per_layer) / len(per_layer) * opt.lambda_asp
            total = total + self.loss_ASP
        pred = self.supervision.prediction()  # fake_B, or warp(fake_B, netR(fake_B, real_B)) with --reg_correction
        if opt.lambda_gp > 0:
            if self.amp.enabled:
                with torch.autocast(device_type=self.device.type, enabled=False):
                    gp = gaussian_pyramid_l1(pred.float(), self.real_B.float(), self.gp_weights)
            else:
                gp = gaussian_pyramid_l1(pred, self.real_B, self.gp_weights)
            self.loss_GP = gp * opt.lambda_gp
            total = total + self.loss_GP
        else:
            self.loss_GP = zero
        extra = self.supervision.extra_terms(pred)
        if extra is not None:
            total = total + extra
        self.loss_G = total
        return self.loss_G
