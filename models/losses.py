"""GAN objectives and auxiliary losses: adversarial (vanilla / LSGAN / WGAN-GP), gradient penalty, pix2pixHD feature
matching and the pix2pixHD VGG19 perceptual loss.

Conventions follow the pix2pix/CycleGAN code (``GANLoss``, ``cal_gradient_penalty``) and pix2pixHD (Wang et al.,
CVPR 2018: multiscale discriminators, feature matching, ``VGGLoss``). Images are ``(N, 3, H, W)`` in [-1, 1].
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from util.errors import CheckpointError, OptionError, UserError

log = logging.getLogger(__name__)

__all__ = [
    "GAN_MODES",
    "GANLoss",
    "gradient_penalty",
    "feature_matching_loss",
    "PretrainedWeightsUnavailable",
    "VGGPerceptualLoss",
    "VGG_SLICE_ENDS",
    "VGG_LAYER_WEIGHTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

#: Supported ``--gan_mode`` values.
GAN_MODES = ("vanilla", "lsgan", "wgangp")

Prediction = Union[Tensor, Sequence[Union[Tensor, Sequence[Tensor]]]]


# --------------------------------------------------------------------------------------------------------- GAN loss
class GANLoss(nn.Module):
    """Adversarial objective for a discriminator's raw output (no sigmoid in the network).

    * ``'vanilla'``: ``BCEWithLogits(prediction, target)`` (original GAN, Goodfellow et al. 2014);
    * ``'lsgan'``: ``MSE(prediction, target)`` (Mao et al. 2017);
    * ``'wgangp'``: ``-mean(prediction)`` for real, ``+mean(prediction)`` for fake (Gulrajani et al. 2017; add
      :func:`gradient_penalty` to the discriminator's loss).

    The target is the buffer ``real_label`` (1.0) or ``fake_label`` (0.0), cast to the prediction's dtype/device and
    broadcast to its shape, as in pix2pix. The buffers are non-persistent (never in a state dict).

    ``forward(prediction, target_is_real)`` accepts:

    * a tensor (PatchGAN map ``(N, 1, h, w)`` or any shape): the mean loss over its elements;
    * a list of tensors (one per discriminator scale), or a list of lists (pix2pixHD multiscale discriminator with
      ``--getIntermFeat``: the *last* element of each inner list is that scale's prediction, the others are features).
      Per-scale losses are **summed** (``multiscale_reduction='sum'``, pix2pixHD's choice) or averaged
      (``'mean'``).

    Args:
        gan_mode: one of :data:`GAN_MODES`.
        target_real_label / target_fake_label: label values (pix2pix defaults 1.0 / 0.0).
        multiscale_reduction: ``'sum'`` (default) or ``'mean'`` over scales.

    Raises:
        OptionError: unknown ``gan_mode`` (names ``--gan_mode``) or ``multiscale_reduction``.
        ValueError / TypeError (forward): an empty list or a non-tensor prediction.
    """

    def __init__(self, gan_mode: str, target_real_label: float = 1.0, target_fake_label: float = 0.0,
                 multiscale_reduction: str = "sum"):
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise OptionError(f"--gan_mode {gan_mode!r} is not supported; choose one of {', '.join(GAN_MODES)}")
        if multiscale_reduction not in ("sum", "mean"):
            raise OptionError(f"multiscale_reduction must be 'sum' or 'mean', got {multiscale_reduction!r}")
        self.gan_mode = gan_mode
        self.multiscale_reduction = multiscale_reduction
        self.register_buffer("real_label", torch.tensor(float(target_real_label)), persistent=False)
        self.register_buffer("fake_label", torch.tensor(float(target_fake_label)), persistent=False)

    def get_target_tensor(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        """Label tensor of ``prediction``'s shape, dtype and device (an expanded view, no copy)."""
        label = self.real_label if target_is_real else self.fake_label
        return label.to(dtype=prediction.dtype, device=prediction.device).expand_as(prediction)

    def _single(self, prediction: Tensor, target_is_real: bool) -> Tensor:
        if not isinstance(prediction, Tensor):
            raise TypeError(f"GANLoss: expected a tensor prediction, got {type(prediction).__name__}")
        if self.gan_mode == "wgangp":
            return -prediction.mean() if target_is_real else prediction.mean()
        target = self.get_target_tensor(prediction, target_is_real)
        if self.gan_mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)

    def forward(self, prediction: Prediction, target_is_real: bool) -> Tensor:
        """Loss as a 0-dim tensor of the prediction's dtype/device (see the class docstring for the input forms)."""
        if isinstance(prediction, Tensor):
            return self._single(prediction, target_is_real)
        if not isinstance(prediction, (list, tuple)) or len(prediction) == 0:
            raise ValueError("GANLoss: prediction must be a tensor or a non-empty list of tensors / lists of tensors")
        losses = []
        for scale in prediction:
            if isinstance(scale, (list, tuple)):
                if len(scale) == 0:
                    raise ValueError("GANLoss: empty inner list in a multiscale prediction")
                scale = scale[-1]
            losses.append(self._single(scale, bool(target_is_real)))
        total = torch.stack(losses).sum()
        return total / len(losses) if self.multiscale_reduction == "mean" else total


# ------------------------------------------------------------------------------------------------- gradient penalty
def _flatten_outputs(out) -> List[Tensor]:
    """Discriminator outputs as a flat list of prediction tensors (last element of inner lists, as GANLoss)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (list, tuple)) and out:
        return [o[-1] if isinstance(o, (list, tuple)) else o for o in out]
    raise TypeError(f"gradient_penalty: netD returned {type(out).__name__}; expected a tensor or a list of tensors")


def gradient_penalty(netD: nn.Module, real: Tensor, fake: Tensor, type: str = "mixed", constant: float = 1.0,
                     lambda_gp: float = 10.0, generator: Optional[torch.Generator] = None
                     ) -> Tuple[Tensor, Optional[Tensor]]:
    """WGAN-GP gradient penalty ``lambda_gp * mean_n (||grad_x D(x_n)||_2 - constant)^2`` (Gulrajani et al. 2017,
    eq. 3; the pix2pix ``cal_gradient_penalty`` convention).

    Args:
        netD: discriminator; called on ``(N, C, H, W)``; may return a tensor or a multiscale list (predictions are
            summed before differentiation).
        real, fake: ``(N, C, H, W)`` batches of equal shape (any range; both detached here).
        type: where ``x`` is taken: ``'real'``, ``'fake'`` or ``'mixed'`` (``alpha * real + (1 - alpha) * fake``,
            ``alpha ~ U[0, 1)`` per sample).
        constant: target gradient norm (1 in the paper).
        lambda_gp: penalty weight (10 in the paper); ``<= 0`` disables the penalty.
        generator: optional ``torch.Generator`` for ``alpha`` (reproducibility); must live on ``real``'s device.

    Returns:
        ``(penalty, gradients)``: ``penalty`` a 0-dim tensor with a graph (``create_graph=True``) so it can be
        back-propagated into ``netD``'s parameters; ``gradients`` the ``(N, C*H*W)`` input gradients. With
        ``lambda_gp <= 0``: ``(tensor(0.), None)``.

    Raises:
        ValueError: unknown ``type`` or shapes that differ.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    if lambda_gp <= 0.0:
        return torch.zeros((), dtype=real.dtype, device=real.device), None
    real = real.detach()
    fake = fake.detach().to(dtype=real.dtype, device=real.device)
    if type == "real":
        x = real.clone()
    elif type == "fake":
        x = fake.clone()
    elif type == "mixed":
        n = real.shape[0]
        alpha = torch.rand((n,) + (1,) * (real.dim() - 1), dtype=real.dtype, device=real.device, generator=generator)
        x = alpha * real + (1.0 - alpha) * fake
    else:
        raise ValueError(f"gradient_penalty: type must be 'real', 'fake' or 'mixed', got {type!r}")
    x.requires_grad_(True)
    outputs = _flatten_outputs(netD(x))
    grads = torch.autograd.grad(outputs=outputs, inputs=x, grad_outputs=[torch.ones_like(o) for o in outputs],
                                create_graph=True, retain_graph=True)[0]
    grads = grads.reshape(real.shape[0], -1)
    # the 1e-16 keeps the norm differentiable at a zero gradient (pix2pix convention)
    penalty = ((grads + 1e-16).norm(2, dim=1) - constant).pow(2).mean() * lambda_gp
    return penalty, grads


# ----------------------------------------------------------------------------------------------- feature matching
def feature_matching_loss(pred_fake: Sequence[Sequence[Tensor]], pred_real: Sequence[Sequence[Tensor]], num_D: int,
                          n_layers_D: int, lambda_feat: float = 10.0) -> Tensor:
    """pix2pixHD discriminator feature-matching loss (Wang et al. 2018, eq. 4).

    ``sum_i sum_j (1 / num_D) * (4 / (n_layers_D + 1)) * lambda_feat * L1(fake_i[j], real_i[j].detach())``
    over scales ``i < num_D`` and intermediate features ``j`` (every element of an inner list except the last,
    which is the prediction). ``L1`` is the mean absolute difference.

    Args:
        pred_fake, pred_real: per scale, the list of intermediate outputs of the discriminator for the fake and the
            real pair (``--getIntermFeat`` layout); ``pred_real`` is detached (only the generator is trained).
        num_D: number of discriminator scales; ``n_layers_D``: layers per discriminator; ``lambda_feat``: weight.

    Returns:
        0-dim tensor.

    Raises:
        ValueError: the structures do not have ``num_D`` scales, inner lengths differ, a scale has no intermediate
            feature, or features differ in shape.
    """
    if len(pred_fake) != num_D or len(pred_real) != num_D:
        raise ValueError(f"feature_matching_loss: expected {num_D} scales (num_D), got {len(pred_fake)} fake and "
                         f"{len(pred_real)} real")
    feat_weight = 4.0 / (n_layers_D + 1)
    d_weight = 1.0 / num_D
    total = None
    for i, (fake_i, real_i) in enumerate(zip(pred_fake, pred_real)):
        if not isinstance(fake_i, (list, tuple)) or not isinstance(real_i, (list, tuple)):
            raise ValueError("feature_matching_loss: each scale must be a list of intermediate outputs "
                             "(train the discriminator with intermediate features, pix2pixHD --getIntermFeat)")
        if len(fake_i) != len(real_i) or len(fake_i) < 2:
            raise ValueError(f"feature_matching_loss: scale {i} has {len(fake_i)} fake and {len(real_i)} real outputs; "
                             "expected equal lengths with at least one intermediate feature before the prediction")
        for j in range(len(fake_i) - 1):
            if fake_i[j].shape != real_i[j].shape:
                raise ValueError(f"feature_matching_loss: scale {i} feature {j} shapes differ: "
                                 f"{tuple(fake_i[j].shape)} vs {tuple(real_i[j].shape)}")
            term = F.l1_loss(fake_i[j], real_i[j].detach()) * (d_weight * feat_weight * lambda_feat)
            total = term if total is None else total + term
    return total


# ---------------------------------------------------------------------------------------------- perceptual (VGG19)
#: End indices (exclusive) into torchvision ``vgg19().features`` of the slices ending at relu1_1, relu2_1, relu3_1,
#: relu4_1 and relu5_1 (pix2pixHD ``Vgg19``: ``[0:2], [2:7], [7:12], [12:21], [21:30]``).
VGG_SLICE_ENDS: Tuple[int, ...] = (2, 7, 12, 21, 30)
#: pix2pixHD ``VGGLoss`` weights of the five slices.
VGG_LAYER_WEIGHTS: Tuple[float, ...] = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
#: ImageNet RGB mean / std of torchvision's pretrained models (inputs in [0, 1]).
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)


class PretrainedWeightsUnavailable(UserError):
    """The pretrained VGG19 weights are neither cached nor downloadable (offline machine)."""


def _vgg19_features_module() -> nn.Sequential:
    """Untrained torchvision VGG19 ``features`` (conv layers only; cheap compared with the full classifier)."""
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["E"], batch_norm=False)


def _load_vgg19_features_file(weights_path: Union[str, os.PathLike]) -> nn.Sequential:
    """VGG19 ``features`` loaded from a local state dict: a full torchvision ``vgg19`` dict (``features.*`` keys,
    ``classifier.*`` ignored) or a ``features``-only dict (``0.weight`` ...)."""
    from util.checkpoint import load_checkpoint

    path = Path(weights_path)
    sd = load_checkpoint(path, map_location="cpu")  # CheckpointError if missing or unsafe
    if not isinstance(sd, dict):
        raise CheckpointError(f"VGG19 weights '{path}' hold a {type(sd).__name__}, expected a state dict")
    if any(k.startswith("features.") for k in sd):
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    features = _vgg19_features_module()
    own = features.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise CheckpointError(
            f"VGG19 weights '{path}' do not match torchvision vgg19: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]}, wrong shape {bad[:6]}; pass a state dict of torchvision.models.vgg19 (e.g. "
            "vgg19-dcbb9e9d.pth)")
    features.load_state_dict(sd, strict=True)
    log.info("loaded VGG19 weights from %s", path)
    return features


def _vgg19_features_pretrained() -> nn.Sequential:
    """torchvision's standard loading of ImageNet VGG19 (torch hub cache, download if missing)."""
    from torchvision.models import VGG19_Weights, vgg19

    weights = VGG19_Weights.IMAGENET1K_V1
    try:
        model = vgg19(weights=weights)
    except OSError as e:  # urllib URLError/HTTPError, socket timeouts, connection and cache-folder permission errors
        cache = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise PretrainedWeightsUnavailable(
            f"cannot load the pretrained VGG19 weights for the perceptual loss ({type(e).__name__}: {e}). "
            f"Download {weights.url} on a connected machine and put it at {cache} (the torch hub cache; set "
            "TORCH_HOME to move it), or pass a local file as weights_path, or train without it (--no_vgg_loss)."
        ) from e
    return model.features


class VGGPerceptualLoss(nn.Module):
    """pix2pixHD VGG19 perceptual loss: ``sum_i w_i * L1(phi_i(x), phi_i(y).detach())`` (Wang et al. 2018).

    ``phi_i`` are the activations after relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 of torchvision's VGG19
    (``features`` slices ``[0:2], [2:7], [7:12], [12:21], [21:30]``), ``w = (1/32, 1/16, 1/8, 1/4, 1)``, ``L1`` the
    mean absolute difference. Inputs ``(N, 3, H, W)`` in [-1, 1] are mapped to [0, 1] and normalised with the ImageNet
    mean/std before the network (pix2pixHD feeds [-1, 1] unnormalised; torchvision's weights expect this
    normalisation). The network is frozen (no parameter gradients) and kept in eval mode; gradients flow to ``x``.

    Args:
        weights_path: local state dict of torchvision ``vgg19`` (or of its ``features``), loaded with
            ``weights_only=True``.
        features: an ``nn.Sequential`` the caller built (e.g. a small random VGG-like net in tests); used as is.
        slice_ends: exclusive end indices of the slices into ``features`` (default :data:`VGG_SLICE_ENDS`).
        layer_weights: one weight per slice (default :data:`VGG_LAYER_WEIGHTS`).

    With neither ``weights_path`` nor ``features``, torchvision's standard loading
    (``vgg19(weights=VGG19_Weights.IMAGENET1K_V1)``, torch hub cache) is used.

    Raises:
        ValueError: both ``weights_path`` and ``features`` given, slice ends not increasing or beyond ``features``,
            or weights of the wrong length.
        CheckpointError: ``weights_path`` missing, unreadable or not a VGG19 state dict.
        PretrainedWeightsUnavailable: standard loading failed (offline and not cached); the message says where to put
            the file, how to pass one, or ``--no_vgg_loss``.
    """

    def __init__(self, weights_path: Optional[Union[str, os.PathLike]] = None, features: Optional[nn.Sequential] = None,
                 slice_ends: Sequence[int] = VGG_SLICE_ENDS, layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS):
        super().__init__()
        if weights_path is not None and features is not None:
            raise ValueError("VGGPerceptualLoss: give weights_path or features, not both")
        slice_ends = [int(e) for e in slice_ends]
        if len(layer_weights) != len(slice_ends):
            raise ValueError(f"VGGPerceptualLoss: {len(layer_weights)} layer weights for {len(slice_ends)} slices")
        if not slice_ends or any(b <= a for a, b in zip([0] + slice_ends[:-1], slice_ends)):
            raise ValueError(f"VGGPerceptualLoss: slice_ends must be increasing positive ints, got {slice_ends}")
        if features is None:
            features = (_load_vgg19_features_file(weights_path) if weights_path is not None
                        else _vgg19_features_pretrained())
        if len(features) < slice_ends[-1]:
            raise ValueError(f"VGGPerceptualLoss: features has {len(features)} layers, slices need {slice_ends[-1]}")
        starts = [0] + slice_ends[:-1]
        self.slices = nn.ModuleList(nn.Sequential(*[features[k] for k in range(a, b)])
                                    for a, b in zip(starts, slice_ends))
        self.layer_weights = [float(w) for w in layer_weights]
        for p in self.slices.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.slices.eval()

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        """Keep the feature network in eval mode whatever ``mode`` is (it is a fixed feature extractor)."""
        super().train(mode)
        self.slices.eval()
        return self

    def _normalise(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"VGGPerceptualLoss: expected (N, 3, H, W) images in [-1, 1], got {tuple(x.shape)}")
        mean = self.mean.to(dtype=x.dtype, device=x.device)
        std = self.std.to(dtype=x.dtype, device=x.device)
        return ((x + 1.0) * 0.5 - mean) / std

    def _features(self, x: Tensor) -> List[Tensor]:
        out = []
        h = self._normalise(x)
        for s in self.slices:
            h = s(h)
            out.append(h)
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Loss between ``x`` (generated, receives gradients) and ``y`` (target, constant); both ``(N, 3, H, W)`` in
        [-1, 1] of the same shape. Returns a 0-dim tensor.

        Raises:
            ValueError: shapes differ or are not ``(N, 3, H, W)``.
        """
        if x.shape != y.shape:
            raise ValueError(f"VGGPerceptualLoss: x {tuple(x.shape)} and y {tuple(y.shape)} differ in shape")
        fx = self._features(x)
        with torch.no_grad():
            fy = self._features(y.detach())
        total = None
        for w, a, b in zip(self.layer_weights, fx, fy):
            term = F.l1_loss(a, b) * w
            total = term if total is None else total + term
        return total
