"""CUT and FastCUT (Park, Efros, Zhang, Zhu, "Contrastive Learning for Unpaired Image-to-Image Translation", ECCV 2020).

One generator ``G: A -> B`` (ResNet), an unconditional PatchGAN ``D`` on B images and the patch-sampling MLP head
``F`` (:class:`models.networks.patch_sample.PatchSampleF`). Objective (paper eq. 5):

``L_G = lambda_GAN * GAN(D(G(A)), 1) + lambda_NCE * PatchNCE(G, F, A)`` (FastCUT), and with the identity term (CUT)
``... + lambda_NCE * PatchNCE(G, F, B)`` where the two NCE terms are averaged: ``(NCE + NCE_Y) / 2``.
``PatchNCE(G, F, X)`` compares the encoder features of ``G(X)`` (queries) with those of ``X`` (keys) at the same
256 sampled locations of each of the ``--nce_layers`` (:func:`models.contrastive.patch_nce_loss`), averaged over
the layers. ``L_D = (GAN(D(B), 1) + GAN(D(G(A).detach()), 0)) / 2``.

``--CUT_mode`` sets the paper's two configurations (sec. 4 and appendix), each value overridable on the command line:

=================  ==========  ==========
option             CUT         FastCUT
=================  ==========  ==========
``--nce_idt``      true        false
``--lambda_NCE``   1           10
flip_equivariance  false       true
``--n_epochs``     200         150
n_epochs_decay     200         50
=================  ==========  ==========

Other defaults (authors' release): resnet_9blocks, basic PatchGAN (70x70), instance norm, no dropout, LSGAN, no image
pool, ``--nce_layers 0,4,8,12,16``, ``--nce_T 0.07``, ``--num_patches 256``, ``--netF mlp_sample``,
``--netF_nc 256``, ``--lambda_GAN 1``, Adam 2e-4 / 0.5, batch 1, unaligned data for training and aligned for testing
(so ``evaluate.py`` can score ``fake_B`` against the registered ``real_B``). ``--nce_layers`` uses the numbering of
the authors' generator (see :mod:`models.networks.patch_sample`). Negatives come from the same image only (the
release's default; its option to draw them from the whole batch is not offered).

The MLP head is built from the first batch (:meth:`CUTModel.data_dependent_initialize`), before checkpoints are
loaded, so ``--continue_train`` restores it; its parameters are a second parameter group of ``optimizer_G`` (Adam is
per parameter, so this equals the release's separate ``optimizer_F`` with the same rate and schedule, and under
``--amp fp16`` one gradient scaler serves the one backward pass that feeds both). ``F`` is saved with every
checkpoint (``<epoch>_net_F.pth``); testing needs only ``G``.

Losses logged: G_GAN, D_real, D_fake, G, NCE (and NCE_Y with the identity term).
"""
from __future__ import annotations

import argparse
import logging
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from models import register
from models.base_model import BaseModel
from models.contrastive import patch_nce_loss
from models.losses import GANLoss, gradient_penalty
from models.networks import define_D, define_G
from models.networks.patch_sample import (FeatureTap, PatchSampleF, cut_to_local_layer, encode_features,
                                          parse_nce_layers)
from util.errors import OptionError

log = logging.getLogger(__name__)

CUT_MODES = ("CUT", "FastCUT")
WEIGHT_NORMS = ("none", "spectral")
NET_F = ("mlp_sample",)

#: mode-dependent defaults, CUT paper (Park et al. 2020, sec. 4 "CUT" / "FastCUT")
CUT_RECIPES: Dict[str, Dict[str, object]] = {
    "CUT": {"nce_idt": True, "lambda_NCE": 1.0, "flip_equivariance": False, "n_epochs": 200, "n_epochs_decay": 200},
    "FastCUT": {"nce_idt": False, "lambda_NCE": 10.0, "flip_equivariance": True, "n_epochs": 150,
                "n_epochs_decay": 50},
}


def str2bool(text) -> bool:
    """argparse type for ``--flag true|false`` (also yes/no, 1/0)."""
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("true", "yes", "1", "t", "y"):
        return True
    if t in ("false", "no", "0", "f", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_nce_options(parser) -> None:
    """The options shared by ``cut`` and ``asp`` (training only); mode-dependent ones default to None and are
    resolved by :meth:`CUTModel.check_options`."""
    g = parser.add_argument_group("contrastive (CUT / ASP)")
    g.add_argument("--lambda_GAN", type=float, default=1.0, help="weight of the GAN loss GAN(G(X))")
    g.add_argument("--lambda_NCE", type=float, default=None,
                   help="weight of the PatchNCE loss NCE(G(X), X) (default: --CUT_mode's value for cut, 10 for "
                        "asp)")
    g.add_argument("--nce_idt", type=str2bool, nargs="?", const=True, default=None,
                   help="also use the identity PatchNCE loss NCE(G(Y), Y) (true|false; default: --CUT_mode's value "
                        "for cut, false for asp)")
    g.add_argument("--flip_equivariance", type=str2bool, nargs="?", const=True, default=None,
                   help="flip the input horizontally at random and the query features back, enforcing flip "
                        "equivariance (true|false; default: --CUT_mode's value for cut, false for asp)")
    g.add_argument("--nce_layers", default="0,4,8,12,16",
                   help="generator layers for PatchNCE, in the numbering of the CUT authors' ResNet generator")
    g.add_argument("--nce_T", type=float, default=0.07, help="temperature of the InfoNCE logits")
    g.add_argument("--num_patches", type=int, default=256, help="patch locations sampled per layer and image")
    g.add_argument("--netF", default="mlp_sample", choices=NET_F, help="patch feature head: a 2-layer MLP per layer")
    g.add_argument("--netF_nc", type=int, default=256, help="output channels of the netF MLPs")
    g.add_argument("--weight_norm", default="none", choices=WEIGHT_NORMS,
                   help="weight normalisation of the discriminator's convolutions (spectral: Miyato et al. 2018)")


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Wrap every ``nn.Conv2d`` of ``net`` in :func:`torch.nn.utils.parametrizations.spectral_norm` (after the
    weights are initialised; checkpoint keys become ``<conv>.parametrizations.weight.original`` and the power-iteration
    vectors ``..._u`` / ``..._v``). Returns ``net``."""
    from torch.nn.utils.parametrizations import spectral_norm

    for module in list(net.modules()):
        if isinstance(module, nn.Conv2d):
            spectral_norm(module)
    return net


def patchgan_output_size(size: int, netD: str, n_layers_D: int) -> int:
    """Side of the PatchGAN output for an input side ``size`` (4x4 kernels, padding 1; ``n_layers`` stride-2
    convolutions then two stride-1 ones; ``basic`` is ``n_layers`` = 3; ``pixel`` keeps the size)."""
    if netD == "pixel":
        return size
    n = 3 if netD == "basic" else n_layers_D
    for stride in [2] * n + [1, 1]:
        size = (size + 2 - 4) // stride + 1
    return size


@register("cut")
class CUTModel(BaseModel):
    """CUT / FastCUT. Inputs ``A`` ``(N, input_nc, H, W)`` and ``B`` ``(N, output_nc, H', W')`` in [-1, 1] (unpaired
    for training); testing applies ``G`` to ``A`` at native resolution like the other models."""

    RECIPE_OPTIONS = ("nce_idt", "lambda_NCE", "flip_equivariance", "n_epochs", "n_epochs_decay")

    @staticmethod
    def modify_commandline_options(parser, is_train: bool = True):
        """CUT defaults (authors' release): resnet_9blocks, basic D, instance norm, no dropout; unaligned training
        data, aligned test data; training adds the contrastive options and ``--CUT_mode``."""
        parser.set_defaults(netG="resnet_9blocks", netD="basic", norm="instance", no_dropout=True,
                            dataset_mode="unaligned" if is_train else "aligned")
        if is_train:
            parser.set_defaults(gan_mode="lsgan", pool_size=0, batch_size=1, lr=0.0002, beta1=0.5)
            parser.add_argument("--CUT_mode", default="CUT", choices=CUT_MODES,
                                help="CUT (identity NCE, lambda_NCE 1, 200+200 epochs) or FastCUT (no identity NCE, "
                                     "lambda_NCE 10, flip equivariance, 150+50 epochs); explicit options win")
            add_nce_options(parser)
        return parser

    @classmethod
    def recipe(cls, opt) -> Dict[str, object]:
        """The mode-dependent defaults for ``opt`` (see the module docstring)."""
        return CUT_RECIPES[opt.CUT_mode]

    @classmethod
    def check_options(cls, opt) -> None:
        """Fill the mode-dependent options not given on the command line from :meth:`recipe`; check the generator,
        ``--nce_layers``, ``--nce_T``, ``--num_patches`` and the loss weights.

        Raises:
            OptionError: a U-Net or pix2pixHD generator; bad ``--nce_layers``; ``--nce_T`` <= 0; ``--num_patches``
                < 1; a negative weight.
        """
        if not opt.isTrain:
            return
        explicit = set(getattr(opt, "explicit", []))
        for k, v in cls.recipe(opt).items():
            if k not in explicit or getattr(opt, k, None) is None:
                setattr(opt, k, v)
        if not opt.netG.startswith("resnet_"):
            raise OptionError(f"--model {opt.model} needs a ResNet generator (--netG resnet_9blocks or "
                              f"resnet_6blocks): PatchNCE reads its encoder layers; got --netG {opt.netG}")
        n_blocks = int(opt.netG.split("_")[1].replace("blocks", ""))
        for i in parse_nce_layers(opt.nce_layers):
            cut_to_local_layer(i, n_blocks)
        if not opt.nce_T > 0:
            raise OptionError(f"--nce_T must be > 0, got {opt.nce_T}")
        if opt.num_patches < 1:
            raise OptionError(f"--num_patches must be >= 1, got {opt.num_patches}")
        for name in ("lambda_GAN", "lambda_NCE"):
            if getattr(opt, name) < 0:
                raise OptionError(f"--{name} must be >= 0, got {getattr(opt, name)}")
        if opt.nce_idt and opt.input_nc != opt.output_nc:
            raise OptionError(f"--nce_idt needs --input_nc == --output_nc (G is applied to B images), got "
                              f"{opt.input_nc} and {opt.output_nc}; pass --nce_idt false")

    def __init__(self, opt):
        super().__init__(opt)
        self.visual_names = ["real_A", "fake_B", "real_B"]
        self.model_names = ["G"]
        self.netG = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, not opt.no_dropout,
                             opt.init_type, opt.init_gain, device=self.device)
        self.current_epoch = getattr(opt, "epoch_count", 1)
        if not self.isTrain:
            return
        self.model_names = ["G", "F", "D"]
        self.loss_names = ["G_GAN", "D_real", "D_fake", "G", "NCE"]
        if opt.nce_idt:
            self.loss_names.append("NCE_Y")
            self.visual_names.append("idt_B")
        n_blocks = int(opt.netG.split("_")[1].replace("blocks", ""))
        self.nce_layers = parse_nce_layers(opt.nce_layers)
        self.local_layers = [cut_to_local_layer(i, n_blocks) for i in self.nce_layers]
        self.netF = PatchSampleF(opt.netF_nc, opt.init_type, opt.init_gain)
        self.netD = define_D(opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm, opt.init_type,
                             opt.init_gain, device=self.device)
        if getattr(opt, "weight_norm", "none") == "spectral":
            apply_spectral_norm(self.netD)
        self.criterionGAN = GANLoss(opt.gan_mode).to(self.device)
        self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
        self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
        self.optimizers = [self.optimizer_G, self.optimizer_D]
        self.flipped_for_equivariance = False

    # ---- lazily built netF ------------------------------------------------------------------------------------
    def data_dependent_initialize(self, data: dict) -> None:
        """Build ``netF``'s MLPs from the channel counts of the generator's ``--nce_layers`` features on the first
        batch ``data`` and add their parameters to ``optimizer_G`` (training only; testing needs no ``F``)."""
        if not self.isTrain or self.netF.n_layers:
            return
        x = data["A"][:1].to(self.device)
        with torch.no_grad():
            feats = encode_features(self.netG, x, self.local_layers)
        self.netF.create_mlps([f.shape[1] for f in feats], self.device)
        self.optimizer_G.add_param_group({"params": list(self.netF.parameters())})

    def validate_input_size(self, height: int, width: int) -> None:
        """Raise :class:`OptionError` before training when the images are too small for the discriminator."""
        if self.isTrain and min(patchgan_output_size(height, self.opt.netD, self.opt.n_layers_D),
                                patchgan_output_size(width, self.opt.netD, self.opt.n_layers_D)) < 1:
            raise OptionError(f"images of {height}x{width} px are too small for --netD {self.opt.netD} with "
                              f"--n_layers_D {self.opt.n_layers_D} (no output patch left); use a larger --crop_size "
                              "or a smaller --n_layers_D")

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(self) -> None:
        """Training: ``G`` on ``A`` (and ``B`` when ``nce_idt``) in one batch, horizontally flipped with probability
        1/2 under flip equivariance; testing: ``fake_B = G(A)`` padded to the generator's stride (TTA aware)."""
        if not (self.isTrain and self.netG.training):
            self.fake_B = self.run_generator(self.netG, self.real_A)
            return
        n = self.real_A.shape[0]
        real = torch.cat((self.real_A, self.real_B), 0) if self.opt.nce_idt else self.real_A
        self.flipped_for_equivariance = bool(self.opt.flip_equivariance) and bool(torch.rand(()) < 0.5)
        if self.flipped_for_equivariance:
            real = torch.flip(real, [3])
        # the keys of NCE(G(A), A) (and NCE(G(B), B)) are the encoder features of A (and B): recorded during this
        # pass (detached) instead of a second encoder pass, unless the input was flipped
        self.tapped = []
        if self.flipped_for_equivariance:
            fake = self.netG(real)
        else:
            with FeatureTap(self.netG, self.local_layers) as tap:
                fake = self.netG(real)
            self.tapped.append((self.real_A, [f[:n] for f in tap.features]))
            if self.opt.nce_idt:
                self.tapped.append((self.real_B, [f[n:] for f in tap.features]))
        self.fake_B = fake[:n]
        if self.opt.nce_idt:
            self.idt_B = fake[n:]

    # ---- losses (pure computation; no optimizer steps) --------------------------------------------------------
    def compute_D_loss(self) -> Tensor:
        """``(GAN(D(G(A).detach()), 0) + GAN(D(B), 1)) / 2`` (+ WGAN-GP penalty with ``--gan_mode wgangp``)."""
        fake = self.fake_B.detach()
        self.loss_D_fake = self.criterionGAN(self.netD(fake), False)
        self.loss_D_real = self.criterionGAN(self.netD(self.real_B), True)
        self.loss_D = (self.loss_D_fake + self.loss_D_real) * 0.5
        if self.opt.gan_mode == "wgangp":
            gp, _ = gradient_penalty(self.netD, self.real_B, fake, type="mixed", lambda_gp=10.0)
            self.loss_D = self.loss_D + gp
        return self.loss_D

    def key_features(self, images: Sequence[Tensor]) -> List[List[Tensor]]:
        """Encoder features (no gradient) of each key image, one list of per-layer maps each; images whose features
        were recorded during :meth:`forward` reuse them (identical with instance norm and no dropout, the defaults)."""
        out, todo = [], []
        tapped = getattr(self, "tapped", [])
        for i, img in enumerate(images):
            hit = next((f for t, f in tapped if t is img), None)
            out.append(hit)
            if hit is None:
                todo.append(i)
        if todo:
            with torch.no_grad():
                feats = encode_features(self.netG, torch.cat([images[i] for i in todo], 0), self.local_layers)
            start = 0
            for i in todo:
                n = images[i].shape[0]
                out[i] = [f[start:start + n] for f in feats]
                start += n
        return out

    def nce_pairs(self, queries: Sequence[Tensor], keys: Sequence[Tensor]) -> List[Tuple[List[Tensor], List[Tensor]]]:
        """Sampled, projected patch features for PatchNCE terms ``(query image, key image)``.

        ``queries[t]`` (generated images, with gradient) and ``keys[t]`` (source or target images) are encoded by
        ``G``; for each term the locations are drawn on the key features (``netF``), reused for the query features
        (flipped back under flip equivariance). All queries go through ``G``'s encoder in one pass and through
        ``netF`` in one call (one DDP forward of each network per iteration). Returns per term
        ``(q_layers, k_layers)``, each a list of ``(N * P, nc)`` tensors.
        """
        key_feats = self.key_features(keys)
        with torch.no_grad():
            sampled = [self.netF(kf, self.opt.num_patches, None) for kf in key_feats]
        uniq: List[Tensor] = []
        for q in queries:
            if not any(q is u for u in uniq):
                uniq.append(q)
        feats_q = encode_features(self.netG, torch.cat(uniq, 0), self.local_layers)
        if self.flipped_for_equivariance:
            feats_q = [torch.flip(f, [3]) for f in feats_q]
        offsets, start = [], 0
        for u in uniq:
            offsets.append(start)
            start += u.shape[0]
        per_layer_feats, per_layer_ids = [], []
        for layer, fq in enumerate(feats_q):
            chunks, ids = [], []
            for q, (_, k_ids) in zip(queries, sampled):
                j = next(i for i, u in enumerate(uniq) if u is q)
                n = q.shape[0]
                chunks.append(fq[offsets[j]:offsets[j] + n])
                ids.append(k_ids[layer].unsqueeze(0).expand(n, -1))
            per_layer_feats.append(torch.cat(chunks, 0))
            per_layer_ids.append(torch.cat(ids, 0))
        q_all, _ = self.netF(per_layer_feats, self.opt.num_patches, per_layer_ids)
        out, rows = [], [0] * len(q_all)  # per layer: layers with fewer locations than --num_patches have fewer rows
        for k_samples, _ in sampled:
            q_layers = []
            for layer, qa in enumerate(q_all):
                m = k_samples[layer].shape[0]
                q_layers.append(qa[rows[layer]:rows[layer] + m])
                rows[layer] += m
            out.append((q_layers, k_samples))
        return out

    def layer_mean(self, q_layers: Sequence[Tensor], k_layers: Sequence[Tensor], batch_size: int) -> Tensor:
        """PatchNCE averaged over patches, then over layers (CUT: ``sum_l mean(loss_l) / n_layers``)."""
        total = sum(patch_nce_loss(q, k, batch_size, self.opt.nce_T).mean() for q, k in zip(q_layers, k_layers))
        return total / len(q_layers)

    def gan_loss_G(self) -> Tensor:
        self.loss_G_GAN = (self.criterionGAN(self.netD(self.fake_B), True) * self.opt.lambda_GAN
                           if self.opt.lambda_GAN > 0 else torch.zeros((), device=self.device))
        return self.loss_G_GAN

    def compute_G_loss(self) -> Tensor:
        """``lambda_GAN * GAN + lambda_NCE * NCE`` (``(NCE + NCE_Y) / 2`` with the identity term)."""
        n = self.real_A.shape[0]
        total = self.gan_loss_G()
        if self.opt.lambda_NCE > 0:
            queries, keys = [self.fake_B], [self.real_A]
            if self.opt.nce_idt:
                queries.append(self.idt_B)
                keys.append(self.real_B)
            pairs = self.nce_pairs(queries, keys)
            self.loss_NCE = self.layer_mean(*pairs[0], n) * self.opt.lambda_NCE
            if self.opt.nce_idt:
                self.loss_NCE_Y = self.layer_mean(*pairs[1], n) * self.opt.lambda_NCE
                total = total + (self.loss_NCE + self.loss_NCE_Y) * 0.5
            else:
                total = total + self.loss_NCE
        else:
            self.loss_NCE = torch.zeros((), device=self.device)
            self.loss_NCE_Y = torch.zeros((), device=self.device)
        self.loss_G = total
        return self.loss_G

    # ---- the only place that steps ----------------------------------------------------------------------------
    def optimize_parameters(self) -> None:
        """One D step, then one step of G and F (their parameter groups share ``optimizer_G``), as the release."""
        self.gan_iteration([self.netD], d_first=True)
