"""CUT's patch-sampling MLP head (``netF``, ``--netF mlp_sample``) and encoder-feature extraction for the ResNet
generator (Park et al., "Contrastive Learning for Unpaired Image-to-Image Translation", ECCV 2020, sec. 3.1).

``--nce_layers`` keeps the numbering of the authors' code: indices into the ``nn.Sequential`` of CUT's default
(anti-aliased) ResNet generator, where each downsampling is four modules (conv stride 1, norm, ReLU, blur-pool
Downsample) and the residual blocks start at index 12. This project's generator has the classic pix2pix layout (the
one CUT uses with ``--no_antialias``: conv stride 2, norm, ReLU; residual blocks from index 10), which keeps the
pix2pix/CycleGAN checkpoint keys. :func:`cut_to_local_layer` maps the authors' indices onto the same layers here:
the default ``0,4,8,12,16`` (padded input image; output of the first and of the second downsampling convolution;
outputs of residual blocks 1 and 5) becomes local indices ``0,4,7,10,14``. The only difference left is where the
stride is applied (blur-pool after the ReLU there, strided convolution here), so the first downsampling
convolution's features are at half resolution here.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from models.networks.init import init_weights
from util.checkpoint import unwrap
from util.errors import OptionError

#: number of modules before the residual blocks in CUT's anti-aliased generator / in this project's generator
_CUT_BLOCK_START, _LOCAL_BLOCK_START = 12, 10
#: CUT (anti-aliased) stem/downsampling index -> local index (7 and 11, CUT's blur-pools, map to the ReLU before)
_CUT_STEM = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 6, 8: 7, 9: 8, 10: 9, 11: 9}


def parse_nce_layers(text: str) -> List[int]:
    """Parse ``--nce_layers`` (comma-separated ints, e.g. ``'0,4,8,12,16'``).

    Raises:
        OptionError: empty, non-integer, negative or repeated entries (names ``--nce_layers``).
    """
    try:
        layers = [int(t) for t in str(text).split(",") if t.strip() != ""]
    except ValueError:
        raise OptionError(f"--nce_layers {text!r} must be comma-separated integers such as 0,4,8,12,16") from None
    if not layers or any(i < 0 for i in layers) or len(set(layers)) != len(layers):
        raise OptionError(f"--nce_layers {text!r} must list distinct integers >= 0, e.g. 0,4,8,12,16")
    return layers


def cut_to_local_layer(index: int, n_blocks: int) -> int:
    """Map an index of CUT's anti-aliased ResNet generator (encoder part) to this project's ``ResnetGenerator``
    (see the module docstring).

    Raises:
        OptionError: the index is not an encoder layer (decoder layers are not used for PatchNCE).
    """
    if index in _CUT_STEM:
        return _CUT_STEM[index]
    b = index - _CUT_BLOCK_START
    if 0 <= b < n_blocks:
        return _LOCAL_BLOCK_START + b
    raise OptionError(f"--nce_layers: index {index} is not an encoder layer of a ResNet generator with {n_blocks} "
                      f"residual blocks (valid: 0-11 and {_CUT_BLOCK_START}-{_CUT_BLOCK_START + n_blocks - 1}, "
                      "in the numbering of CUT's generator)")


def encoder_layers(net: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` of a ResNet generator (through DDP / compile wrappers).

    Raises:
        OptionError: ``net`` is not a ResNet generator (CUT/ASP need ``--netG resnet_*``).
    """
    bare = unwrap(net)
    seq = getattr(bare, "model", None)
    if not isinstance(seq, nn.Sequential) or type(bare).__name__ != "ResnetGenerator":
        raise OptionError(f"PatchNCE features need a ResNet generator (--netG resnet_6blocks or resnet_9blocks), got "
                          f"{type(bare).__name__}")
    return seq


def encode_features(net: nn.Module, x: Tensor, layers: Sequence[int]) -> List[Tensor]:
    """Outputs of the generator's modules ``layers`` (local indices, any order) for input ``x`` ``(N, C, H, W)``,
    in the order of ``layers``; the pass stops after the deepest one (CUT's ``encode_only``). Runs the bare module
    (no DDP forward: gradients reach the same parameters and are reduced with the main forward's)."""
    seq = encoder_layers(net)
    wanted = set(layers)
    last = max(layers)
    out: Dict[int, Tensor] = {}
    feat = x
    for i, layer in enumerate(seq):
        feat = layer(feat)
        if i in wanted:
            out[i] = feat
        if i == last:
            break
    return [out[i] for i in layers]


class FeatureTap:
    """Context manager recording (detached) the outputs of the generator's modules ``layers`` during a forward pass
    (forward hooks on the bare network, so it works through DDP and Winograd). ``features`` is filled in the order of
    ``layers`` after the ``with`` block."""

    def __init__(self, net: nn.Module, layers: Sequence[int]):
        self.seq = encoder_layers(net)
        self.layers = list(layers)
        self.features: List[Tensor] = []
        self._store: Dict[int, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "FeatureTap":
        for i in self.layers:
            self._handles.append(self.seq[i].register_forward_hook(
                lambda _m, _inp, out, i=i: self._store.__setitem__(i, out.detach())))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if exc[0] is None:
            self.features = [self._store[i] for i in self.layers]


def l2_normalize(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Rows of ``x`` ``(M, C)`` divided by their L2 norm plus ``eps`` (CUT's ``Normalize(2)``)."""
    return x / (x.pow(2).sum(1, keepdim=True).sqrt() + eps)


class PatchSampleF(nn.Module):
    """``netF``: for each feature layer, sample patch locations and project them with a two-layer MLP
    ``Linear(C_l, nc) - ReLU - Linear(nc, nc)``, rows L2-normalised (CUT ``PatchSampleF``, ``--netF mlp_sample``).

    The MLPs are built by :meth:`create_mlps` from the layers' channel counts (CUT builds them lazily from the first
    batch; here the model calls it from ``data_dependent_initialize``). Keys: ``mlp_<l>.0.weight`` ... per layer.

    ``forward(feats, num_patches, patch_ids=None) -> (samples, patch_ids)``:

    * ``feats``: list of ``(B, C_l, H_l, W_l)`` feature maps;
    * ``patch_ids``: ``None`` to draw ``min(num_patches, H_l W_l)`` locations per layer (``torch.randperm``, one set
      shared by the batch), or one LongTensor per layer: ``(P,)`` shared by the batch or ``(B, P)`` per image;
    * ``samples[l]``: ``(B * P, nc)`` L2-normalised rows, image by image; ``patch_ids[l]`` the locations used
      (flattened ``h * W + w``).

    Raises:
        RuntimeError: forward before :meth:`create_mlps`; ValueError: as many id sets as layers are needed.
    """

    def __init__(self, nc: int = 256, init_type: str = "normal", init_gain: float = 0.02):
        super().__init__()
        self.nc = int(nc)
        self.init_type, self.init_gain = init_type, init_gain
        self.n_layers = 0

    def create_mlps(self, channels: Sequence[int], device: Optional[torch.device] = None) -> None:
        """Build one MLP per feature layer with ``channels[l]`` input channels, initialised as the other networks
        (``--init_type``/``--init_gain``, CUT's ``init_net``), on ``device``."""
        for i, c in enumerate(channels):
            mlp = nn.Sequential(nn.Linear(int(c), self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc))
            setattr(self, f"mlp_{i}", mlp)
        self.n_layers = len(channels)
        init_weights(self, self.init_type, self.init_gain)
        if device is not None:
            self.to(device)

    def forward(self, feats: Sequence[Tensor], num_patches: int = 256,
                patch_ids: Optional[Sequence[Tensor]] = None) -> Tuple[List[Tensor], List[Tensor]]:
        if self.n_layers == 0:
            raise RuntimeError("PatchSampleF: create_mlps() must be called before the first forward")
        if len(feats) != self.n_layers:
            raise ValueError(f"PatchSampleF: {len(feats)} feature maps for {self.n_layers} MLPs")
        if patch_ids is not None and len(patch_ids) != len(feats):
            raise ValueError(f"PatchSampleF: {len(patch_ids)} patch id sets for {len(feats)} feature maps")
        samples, ids_out = [], []
        for i, feat in enumerate(feats):
            b, c, h, w = feat.shape
            flat = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)
            if patch_ids is None:
                ids = torch.randperm(h * w)[: min(int(num_patches), h * w)].to(feat.device)
            else:
                ids = patch_ids[i].to(feat.device)
            if ids.dim() == 1:
                x = flat[:, ids, :]
            else:
                x = torch.gather(flat, 1, ids.unsqueeze(-1).expand(-1, -1, c))
            x = getattr(self, f"mlp_{i}")(x.reshape(-1, c))
            samples.append(l2_normalize(x))
            ids_out.append(ids)
        return samples, ids_out
