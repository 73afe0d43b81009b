"""Misalignment-tolerant supervision for the pix2pix family: registration-corrected training (``--reg_correction``,
RegGAN) and the DAB-aware loss (``--lambda_dab``, PSPStain-like). One shared helper, so every paired model that
builds on pix2pix gets the same options and wiring (pix2pix, pyramidpix2pix, and later models that call
:func:`add_options` from their ``modify_commandline_options`` and :class:`RealIHCSupervision` from their model).

``--reg_correction`` (Kong et al., "Breaking the Dilemma of Medical Image-to-Image Translation", NeurIPS 2021):
a registration network ``netR`` (``models/networks/registration.py``) takes ``(G(A), B)`` and predicts a displacement
field ``u``; every real-IHC loss of the model (L1; each pyramid octave of pyramidpix2pix; the DAB loss) is computed
between ``warp(G(A), u)`` and ``B`` instead of ``G(A)`` and ``B``, and ``--lambda_smooth * L_smooth(u)`` is added to
the generator objective. The adversarial term still sees the unwarped ``G(A)``. ``netR`` is trained jointly with G
on the same objective by its own Adam optimizer. Defaults from the authors' repository configuration (Kid-Liet/Reg-GAN,
``Yaml/CycleGan.yaml`` and its RegGAN settings; not re-checked against the paper's text): ``Corr_lamda = 20`` (``--lambda_corr``), ``Smooth_lamda = 10`` (``--lambda_smooth``), ``Adv_lamda = 1``
(the GAN term keeps weight 1 here too), R's Adam lr 1e-4 (``--lr_R``) with betas (0.5, 0.999). netR itself is a
smaller U-Net than the authors' registration network (this toolkit's choice, to keep the step within 1.5x of the
plain one; ``--netR_nf`` widens it).
``--lambda_corr`` is the weight of the full-resolution correction term ``L1(warp(G(A), u), B)``: with
``--reg_correction`` it **replaces** ``--lambda_L1`` (RegGAN's correction loss takes the place of pix2pix's L1);
pyramid octaves k >= 2 keep their ``--weight_Lk``. Give ``--lambda_corr`` equal to ``--lambda_L1`` to change only the
warping. Logged: ``G_smooth`` (weighted) and ``R_mean_px`` / ``R_max_px`` (mean and max displacement length over the
batch, pixels; measurements, not losses: they carry no gradient); visuals ``warped_B`` (the warped virtual IHC) and
``flow_R`` (the field, colour-coded by :func:`util.flow_vis.flow_to_rgb`: hue = direction, brightness = length up to
the batch maximum). Test time is unchanged: only G is built and loaded.

``--lambda_dab`` (default 0 = off): ``--lambda_dab * models.dab_loss.dab_loss(G(A) [warped], B)`` with
``--dab_block_size``, ``--dab_gamma``, ``--dab_hist_bins``; logged as ``G_DAB`` (weighted).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from util.errors import OptionError

#: RegGAN defaults (authors' repository configuration, see the module docstring).
REGGAN_LAMBDA_CORR = 20.0
REGGAN_LAMBDA_SMOOTH = 10.0
REGGAN_LR_R = 1e-4
REGGAN_BETAS_R = (0.5, 0.999)


def add_options(parser, is_train: bool = True):
    """Add ``--reg_correction --lambda_corr --lambda_smooth --lr_R --netR_nf --lambda_dab --dab_block_size
    --dab_gamma --dab_hist_bins`` (training only; test.py never builds netR). Returns ``parser``."""
    if not is_train:
        return parser
    parser.add_argument("--reg_correction", action="store_true",
                        help="RegGAN: learn a registration field netR(G(A), B) jointly with G and compute the real-IHC "
                             "losses on the warped virtual IHC (docs/MISALIGNMENT.md)")
    parser.add_argument("--lambda_corr", type=float, default=REGGAN_LAMBDA_CORR,
                        help="with --reg_correction: weight of L1(warp(G(A)), B), replacing --lambda_L1 (RegGAN "
                             "Corr_lamda)")
    parser.add_argument("--lambda_smooth", type=float, default=REGGAN_LAMBDA_SMOOTH,
                        help="with --reg_correction: weight of the field's smoothness penalty (RegGAN Smooth_lamda)")
    parser.add_argument("--lr_R", type=float, default=REGGAN_LR_R,
                        help="with --reg_correction: Adam learning rate of netR (betas 0.5, 0.999; RegGAN)")
    parser.add_argument("--netR_nf", type=int, default=32,
                        help="with --reg_correction: channels of netR's first level (2x deeper)")
    parser.add_argument("--lambda_dab", type=float, default=0.0,
                        help="weight of the DAB-aware block loss between virtual and real IHC (0 = off)")
    parser.add_argument("--dab_block_size", type=int, default=16, help="DAB loss: block side in pixels")
    parser.add_argument("--dab_gamma", type=float, default=2.0, help="DAB loss: focal exponent on the DAB OD map (>= 1)")
    parser.add_argument("--dab_hist_bins", type=int, default=0,
                        help="DAB loss: bins of an extra soft-histogram term (0 = none, else >= 2)")
    return parser


def check_options(opt) -> None:
    """Raise :class:`OptionError` for values the helper cannot use (named), before anything is built."""
    if not getattr(opt, "isTrain", False):
        return
    for name in ("lambda_corr", "lambda_smooth", "lambda_dab"):
        if getattr(opt, name) < 0:
            raise OptionError(f"--{name} must be >= 0, got {getattr(opt, name)}")
    if opt.lr_R <= 0:
        raise OptionError(f"--lr_R must be > 0, got {opt.lr_R}")
    if opt.netR_nf < 1:
        raise OptionError(f"--netR_nf must be >= 1, got {opt.netR_nf}")
    if opt.dab_block_size < 1:
        raise OptionError(f"--dab_block_size must be >= 1, got {opt.dab_block_size}")
    if opt.dab_gamma < 1:
        raise OptionError(f"--dab_gamma must be >= 1, got {opt.dab_gamma}")
    if opt.dab_hist_bins == 1 or opt.dab_hist_bins < 0:
        raise OptionError(f"--dab_hist_bins must be 0 (off) or >= 2, got {opt.dab_hist_bins}")
    if opt.reg_correction and getattr(opt, "amp", "none") == "fp16":
        raise OptionError("--reg_correction does not support --amp fp16 (netR's gradients come from the generator's "
                          "scaled loss); use --amp bf16 or --amp none")


class RealIHCSupervision:
    """The model-side wiring of ``--reg_correction`` and ``--lambda_dab`` for a pix2pix-family model.

    ``RealIHCSupervision(model, opt)`` (training only) adds ``netR`` to ``model.model_names`` (saved with the
    checkpoint set, loaded by ``--continue_train``), its Adam optimizer ``model.optimizer_R`` to ``model.optimizers``
    (after G and D, so the training state keeps its order), and the loss / visual names. In ``compute_G_loss`` the
    model calls :meth:`prediction` for the image its real-IHC losses compare with ``B``, and adds :meth:`extra_terms`.
    """

    def __init__(self, model, opt):
        check_options(opt)
        self.model = model
        self.reg = bool(opt.reg_correction)
        self.lambda_smooth = float(opt.lambda_smooth)
        self.lambda_dab = float(opt.lambda_dab)
        self.dab_args = dict(block_size=int(opt.dab_block_size), gamma=float(opt.dab_gamma),
                             hist_bins=int(opt.dab_hist_bins))
        if self.reg:
            from models.networks.registration import define_R

            model.netR = define_R(opt.output_nc, opt.netR_nf, device=model.device)
            model.optimizer_R = torch.optim.Adam(model.netR.parameters(), lr=opt.lr_R, betas=REGGAN_BETAS_R)
            model.model_names.append("R")
            model.optimizers.append(model.optimizer_R)
            model.visual_names += ["warped_B", "flow_R"]
        model.flow = None

    def l1_weight(self, lambda_L1: float) -> float:
        """Weight of the full-resolution L1 term: ``--lambda_corr`` with ``--reg_correction``, else ``lambda_L1``."""
        return float(self.model.opt.lambda_corr) if self.reg else float(lambda_L1)

    def loss_names(self) -> List[str]:
        """Names to append to the model's ``loss_names`` (after the real-IHC terms)."""
        names = []
        if self.lambda_dab > 0:
            names.append("G_DAB")
        if self.reg:
            names += ["G_smooth", "R_mean_px", "R_max_px"]
        return names

    def extra_G_optimizers(self) -> list:
        """Optimizers stepped together with G in the generator step (``[optimizer_R]`` with ``--reg_correction``)."""
        return [self.model.optimizer_R] if self.reg else []

    def prediction(self) -> Tensor:
        """The virtual IHC the real-IHC losses compare with ``real_B``: ``warp(fake_B, netR(fake_B, real_B))`` with
        ``--reg_correction`` (the field is kept as ``model.flow``), else ``fake_B``."""
        m = self.model
        if not self.reg:
            return m.fake_B
        from models.networks.registration import warp
        from models.registration_losses import displacement_stats

        m.flow = m.netR(m.fake_B, m.real_B)
        m.warped_B = warp(m.fake_B, m.flow)
        m.loss_R_mean_px, m.loss_R_max_px = displacement_stats(m.flow)
        return m.warped_B

    def extra_terms(self, pred: Tensor) -> Optional[Tensor]:
        """Weighted DAB and smoothness terms (set as ``loss_G_DAB`` / ``loss_G_smooth``); ``None`` when both are off.
        ``pred`` is :meth:`prediction`'s image."""
        m = self.model
        total = None
        if self.lambda_dab > 0:
            from models.dab_loss import dab_loss

            with torch.autocast(device_type=m.device.type, enabled=False):
                m.loss_G_DAB = dab_loss(pred.float(), m.real_B.float(), **self.dab_args) * self.lambda_dab
            total = m.loss_G_DAB
        if self.reg:
            from models.registration_losses import smoothness_loss

            m.loss_G_smooth = smoothness_loss(m.flow.float()) * self.lambda_smooth
            total = m.loss_G_smooth if total is None else total + m.loss_G_smooth
        return total

    def compute_visuals(self) -> None:
        """The colour-coded field as the ``flow_R`` visual (``(N, 3, H, W)`` in [-1, 1])."""
        m = self.model
        if self.reg and m.flow is not None:
            from util.flow_vis import flow_to_rgb

            m.flow_R = flow_to_rgb(m.flow[:1])
