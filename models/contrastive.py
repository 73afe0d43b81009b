"""Contrastive losses of CUT / FastCUT and ASP as pure functions of tensors.

* PatchNCE (Park et al., "Contrastive Learning for Unpaired Image-to-Image Translation", ECCV 2020, eq. 2 and
  sec. 3.1): InfoNCE over patch features. The query ``q_i`` is the feature of patch ``i`` of the generated image; its
  positive is the feature ``k_i`` of the source image at the same location; the negatives are the features ``k_j``
  (``j != i``) of the *same* image (negatives are never taken across the batch, CUT's default). Logits are
  ``[q_i . k_i, q_i . k_j ...] / tau`` and the loss is the cross entropy with the positive at index 0. The diagonal of
  the negative block (``q_i . k_i`` again) is filled with ``-10`` before dividing by ``tau``, as in the authors'
  release, so that the positive is not counted twice.
* ASP, the adaptive supervised PatchNCE (Li et al., "Adaptive Supervised PatchNCE Loss for Learning H&E-to-IHC Stain
  Translation with Inconsistent Groundtruth Image Pairs", MICCAI 2023): the same InfoNCE with the positive taken from
  the *real IHC* image at the same location (paired data), each patch's loss multiplied by
  ``w = p + (1 - p) * lookup(cos(q_i, k_i))`` and the weights normalised to mean 1, where ``p`` falls from 1 as
  training progresses (:func:`asp_progress`) so that patches whose real IHC disagrees with the prediction (an
  inconsistent ground truth) count less late in training.

Features are L2-normalised rows (``(M, C)`` with ``M = N * P``: ``P`` patches per image of a batch of ``N``), the
output of :class:`models.networks.patch_sample.PatchSampleF`.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from util.errors import OptionError

__all__ = ["ASP_SCHEDULERS", "ASP_LOOKUPS", "ASP_LOSS_MODES", "DIAGONAL_FILL", "patch_nce_logits", "patch_nce_loss",
           "asp_progress", "asp_lookup", "asp_weights", "parse_asp_mode", "supervised_patch_nce_loss"]

#: ``p`` schedules of ASP (first half of ``--asp_loss_mode``)
ASP_SCHEDULERS = ("sigmoid", "linear", "lambda", "zero")
#: similarity lookups of ASP (second half of ``--asp_loss_mode``)
ASP_LOOKUPS = ("top", "linear", "bell", "uniform")
#: every ``--asp_loss_mode`` value: ``<scheduler>_<lookup>``, or ``none`` (unweighted supervised PatchNCE)
ASP_LOSS_MODES = ("none",) + tuple(f"{s}_{k}" for s in ASP_SCHEDULERS for k in ASP_LOOKUPS)
#: value written on the diagonal of the negative logits before the temperature (CUT / ASP release)
DIAGONAL_FILL = -10.0


def _check_features(feat_q: Tensor, feat_k: Tensor, batch_size: int) -> None:
    if feat_q.dim() != 2 or feat_q.shape != feat_k.shape:
        raise ValueError(f"patch features must both be (M, C) of one shape, got {tuple(feat_q.shape)} and "
                         f"{tuple(feat_k.shape)}")
    if batch_size < 1 or feat_q.shape[0] % batch_size:
        raise ValueError(f"{feat_q.shape[0]} patch features do not split into batch_size {batch_size} images")


def patch_nce_logits(feat_q: Tensor, feat_k: Tensor, batch_size: int, nce_T: float) -> Tensor:
    """The InfoNCE logits of PatchNCE: ``(M, 1 + P)``, column 0 the positive.

    Args:
        feat_q: queries ``(M, C)``, ``M = batch_size * P`` rows ordered image by image (``P`` patches each), usually
            L2-normalised (then the dot products are cosines in [-1, 1]).
        feat_k: keys ``(M, C)`` at the same patch locations; detached here (no gradient flows to the keys, as in CUT).
        batch_size: ``N``, the number of images the rows belong to; negatives come from the same image only.
        nce_T: temperature ``tau`` > 0 (CUT: 0.07).

    Returns:
        ``logits[i] = [q_i . k_i, q_i . k_1, ..., q_i . k_P] / tau`` where ``q_i . k_i`` in the negative block is
        replaced by :data:`DIAGONAL_FILL` (-10) before the division.

    Raises:
        ValueError: shapes that differ, are not 2-D, or do not split into ``batch_size`` images; ``nce_T`` <= 0.
    """
    _check_features(feat_q, feat_k, batch_size)
    if not nce_T > 0:
        raise ValueError(f"nce_T must be > 0, got {nce_T}")
    feat_k = feat_k.detach()
    m, c = feat_q.shape
    l_pos = (feat_q * feat_k).sum(dim=1, keepdim=True)  # (M, 1)
    q = feat_q.view(batch_size, -1, c)
    k = feat_k.view(batch_size, -1, c)
    p = q.shape[1]
    l_neg = torch.bmm(q, k.transpose(1, 2))  # (N, P, P)
    eye = torch.eye(p, device=feat_q.device, dtype=torch.bool)[None]
    l_neg = l_neg.masked_fill(eye, DIAGONAL_FILL).view(m, p)
    return torch.cat((l_pos, l_neg), dim=1) / nce_T


def patch_nce_loss(feat_q: Tensor, feat_k: Tensor, batch_size: int, nce_T: float = 0.07) -> Tensor:
    """Per-patch PatchNCE loss (CUT eq. 2 for one layer): cross entropy of :func:`patch_nce_logits` with target 0.

    Args:
        feat_q, feat_k, batch_size, nce_T: see :func:`patch_nce_logits`.

    Returns:
        ``(M,)`` losses, one per patch (not reduced; the model averages them per layer).
    """
    logits = patch_nce_logits(feat_q, feat_k, batch_size, nce_T)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # reduced precision (--amp): the loss in float32
    return F.cross_entropy(logits, target, reduction="none")


def parse_asp_mode(mode: str) -> Tuple[Optional[str], Optional[str]]:
    """Split ``--asp_loss_mode`` into ``(scheduler, lookup)``; ``'none'`` gives ``(None, None)``.

    Raises:
        OptionError: a value outside :data:`ASP_LOSS_MODES` (names the option and the valid values).
    """
    if mode not in ASP_LOSS_MODES:
        raise OptionError(f"--asp_loss_mode {mode!r} is not valid; choose 'none' or <scheduler>_<lookup> with "
                          f"scheduler in {', '.join(ASP_SCHEDULERS)} and lookup in {', '.join(ASP_LOOKUPS)}")
    if mode == "none":
        return None, None
    scheduler, lookup = mode.split("_")
    return scheduler, lookup


def asp_progress(scheduler: str, epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """ASP's ``p`` (the weight of the uniform part) at training epoch ``epoch`` (1-based, as train.py counts).

    With ``t = (epoch - 1) / (n_epochs + n_epochs_decay)`` (0 at the first epoch):

    * ``sigmoid``: ``p = 1 / (1 + exp(10 (t - 0.5)))``;
    * ``linear``: ``p = 1 - t``;
    * ``lambda``: ``p = 1`` while ``t < k`` with ``k = 1 - n_epochs_decay / total``, then ``p = m - m t`` with
      ``m = 1 / (1 - k)`` (linear from 1 to 0 over the decay epochs; ``p = 1`` throughout without decay epochs);
    * ``zero``: ``p = 1`` (the lookup never takes over: uniform weights).

    Source: the ASP authors' release (schedulers of their weighted PatchNCE loss).

    Raises:
        OptionError: unknown scheduler; ValueError: ``n_epochs + n_epochs_decay`` < 1.
    """
    total = n_epochs + n_epochs_decay
    if total < 1:
        raise ValueError(f"n_epochs + n_epochs_decay must be >= 1, got {n_epochs} + {n_epochs_decay}")
    t = (epoch - 1) / total
    if scheduler == "sigmoid":
        return 1.0 / (1.0 + math.exp((t - 0.5) * 10.0))
    if scheduler == "linear":
        return 1.0 - t
    if scheduler == "lambda":
        k = 1.0 - n_epochs_decay / total
        if n_epochs_decay <= 0 or t < k:
            return 1.0
        m = 1.0 / (1.0 - k)
        return m - m * t
    if scheduler == "zero":
        return 1.0
    raise OptionError(f"ASP scheduler {scheduler!r} is unknown; choose one of {', '.join(ASP_SCHEDULERS)}")


def asp_lookup(lookup: str, x: Tensor) -> Tensor:
    """ASP's weight of a patch from the cosine ``x`` of its positive pair (``(M,)`` in [-1, 1]):

    * ``top``: ``sqrt(1 - (max(x, 0) - 1)^2)`` (quarter circle: 0 at x <= 0, 1 at x = 1);
    * ``linear``: ``max(x, 0)``;
    * ``bell``: the standard normal density at ``4 (x - 0.5)``: ``exp(-(4 (x - 0.5))^2 / 2) / sqrt(2 pi)``;
    * ``uniform``: 1.

    Raises:
        OptionError: unknown lookup.
    """
    if lookup == "top":
        x = torch.clamp(x, min=0.0)
        return torch.sqrt(torch.clamp(1.0 - (x - 1.0) ** 2, min=0.0))
    if lookup == "linear":
        return torch.clamp(x, min=0.0)
    if lookup == "bell":
        z = (x - 0.5) * 4.0
        return torch.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
    if lookup == "uniform":
        return torch.ones_like(x)
    raise OptionError(f"ASP lookup {lookup!r} is unknown; choose one of {', '.join(ASP_LOOKUPS)}")


def asp_weights(similarity: Tensor, lookup: str, p: float) -> Tensor:
    """Per-patch ASP weights ``w = p + (1 - p) * lookup(similarity)``, normalised to mean 1 (``w / sum(w) * M``).

    Args:
        similarity: ``(M,)`` cosines of the positive pairs; detached here (the weights get no gradient).
        lookup: one of :data:`ASP_LOOKUPS`.
        p: the progress weight of :func:`asp_progress`, in [0, 1].

    Returns:
        ``(M,)`` non-negative weights with mean 1 (all-zero raw weights, possible only with ``p = 0`` and every
        cosine <= 0 under ``top``/``linear``, return ones rather than dividing by zero).
    """
    sim = similarity.detach()
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.float()
    w = p + (1.0 - p) * asp_lookup(lookup, sim)
    s = w.sum()
    if float(s) <= 0.0:
        return torch.ones_like(w)
    return w / s * w.numel()


def supervised_patch_nce_loss(feat_q: Tensor, feat_k: Tensor, batch_size: int, nce_T: float, mode: str,
                              epoch: int, n_epochs: int, n_epochs_decay: int) -> Tensor:
    """ASP's per-patch loss for one layer: :func:`patch_nce_loss` between the generated image's features ``feat_q``
    and the *real target* image's features ``feat_k`` at the same locations, times :func:`asp_weights` of the
    positive cosines with ``p = asp_progress(scheduler, epoch, ...)``; ``mode='none'`` leaves it unweighted.

    Returns:
        ``(M,)`` weighted losses (the model averages them per layer and over layers, times ``--lambda_asp``).
    """
    scheduler, lookup = parse_asp_mode(mode)
    loss = patch_nce_loss(feat_q, feat_k, batch_size, nce_T)
    if scheduler is None:
        return loss
    with torch.no_grad():
        similarity = (feat_q.detach() * feat_k.detach()).sum(dim=1)
    p = asp_progress(scheduler, epoch, n_epochs, n_epochs_decay)
    return loss * asp_weights(similarity, lookup, p)
