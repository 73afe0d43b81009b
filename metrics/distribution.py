"""Distribution metrics between the real_B and fake_B image sets: FID and KID.

FID (Heusel et al., NeurIPS 2017): fit a Gaussian to each set's features and take the Fréchet distance

    FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))

with ``mu`` the feature mean and ``S`` the unbiased (ddof = 1) covariance, as pytorch-fid does.
``Tr (S_r S_f)^(1/2)`` is computed as ``sum_i sqrt(lambda_i)`` over the eigenvalues of the symmetric PSD matrix
``S_r^(1/2) S_f S_r^(1/2)`` (same value as ``scipy.linalg.sqrtm(S_r @ S_f)``'s trace, without its complex round-off).

KID (Binkowski et al., ICLR 2018, "Demystifying MMD GANs"; defaults of torch-fidelity): the unbiased MMD^2 estimator
with the cubic polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` (d = feature dimension), on ``n_subsets`` random
subsets of ``subset_size`` features drawn without replacement from each set; KID is the mean over subsets (std also
reported). For m samples per subset:

    MMD^2_u = [sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)] / (m (m - 1)) - 2 sum_{i,j} k(x_i, y_j) / m^2

Papers report KID x 10^3.

Features: pytorch-fid's ``InceptionV3`` (2048-d pool3 output, TF-Inception "FID weights"
``pt_inception-2015-12-05-6726825d.pth``); images as float in [0, 1], bilinearly resized to 299 x 299 inside the
network, exactly as ``python -m pytorch_fid`` does, so numbers compare with published BCI results that used it.
The weights are never downloaded here: they are read from ``--inception_weights`` or from torch hub's checkpoint cache
(``torch.hub.get_dir()/checkpoints``), and FID/KID are skipped (with instructions) when neither holds them.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from tqdm import tqdm

from util.checkpoint import load_checkpoint
from util.errors import OptionError
from util.image_io import read_rgb_uint8
from util.threads import rebalance

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE
KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
KID_SEED = 2020
FEATURE_LAYER = "pool3: 2048-d output of the final average pool (pytorch-fid InceptionV3 block index 3)"
RESIZE_RULE = ("bilinear to 299x299 inside the network (pytorch-fid resize_input=True, align_corners=False), "
               "after scaling [0, 1] to [-1, 1] (normalize_input=True)")


# ----------------------------------------------------------------------------------------------------- functional cores
def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features (float64).

    Raises:
        ValueError: not 2-D, or fewer than 2 samples.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2) (formula in module doc).

    Args:
        mu1, mu2: ``(D,)`` means. sigma1, sigma2: ``(D, D)`` symmetric positive semi-definite covariances.

    Returns:
        The distance (>= 0 up to round-off; tiny negative round-off is clipped to 0).

    Raises:
        ValueError: shapes disagree or values are not finite.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("Fréchet distance of non-finite statistics")
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    r1 = _sqrtm_psd(s1)
    m = r1 @ s2 @ r1
    tr_covmean = float(np.sqrt(np.clip(linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return max(0.0, float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two ``(N, D)`` feature sets (see :func:`frechet_distance`)."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``(x @ y.T / d + coef0) ** degree`` for ``(n, d)`` and ``(m, d)`` arrays -> ``(n, m)`` (KID's kernel)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (formula in the module doc) between ``(m, d)`` samples ``x`` and ``y`` (same m >= 2)."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError(f"mmd2_unbiased needs two samples of equal size >= 2, got {x.shape} and {y.shape}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    sxx = kxx.sum() - np.trace(kxx)
    syy = kyy.sum() - np.trace(kyy)
    return float((sxx + syy) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid_from_features(real: np.ndarray, fake: np.ndarray, subset_size: int = KID_SUBSET_SIZE,
                      n_subsets: int = KID_SUBSETS, seed: int = KID_SEED) -> Dict[str, float]:
    """KID between two ``(N, D)`` feature sets.

    ``subset_size`` larger than the smaller set is reduced to its size, and the result says so (``reduced``). When
    the reduced size equals both set sizes, every "subset" is the whole set: all subsets give the same value, so one
    is computed, ``n_subsets`` is 1 and ``kid_std`` is None (a spread of 0 would be meaningless, not a precision).

    Returns:
        ``{"kid": mean MMD^2_u, "kid_std": std over subsets (ddof=0) or None, "subset_size": m,
        "n_subsets": subsets used, "requested_subset_size", "requested_subsets", "reduced": bool,
        "protocol": one line}``.

    Raises:
        ValueError: fewer than 2 features in a set, dimensions differ, or n_subsets < 1.
    """
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need (N, D) feature sets of equal D, got {real.shape} and {fake.shape}")
    if n_subsets < 1:
        raise ValueError(f"KID needs n_subsets >= 1, got {n_subsets}")
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {real.shape[0]} and {fake.shape[0]}")
    reduced = m < subset_size
    whole_sets = m == real.shape[0] == fake.shape[0]
    if whole_sets:  # MMD^2_u is permutation-invariant: every subset gives this one value
        vals = np.array([mmd2_unbiased(real, fake)])
    else:
        rng = np.random.RandomState(seed)
        vals = np.empty(n_subsets)
        for i in range(n_subsets):
            xi = real[rng.choice(real.shape[0], m, replace=False)]
            yi = fake[rng.choice(fake.shape[0], m, replace=False)]
            vals[i] = mmd2_unbiased(xi, yi)
    if not reduced:
        protocol = f"standard: {n_subsets} subsets of {m} (seed {seed})"
    elif whole_sets:
        protocol = (f"reduced: {real.shape[0]} images < subset size {subset_size}, so one estimate on all images "
                    "(no subsets, no spread)")
    else:
        protocol = (f"reduced: subset size {m} (requested {subset_size}, fewer images than that), "
                    f"{n_subsets} subsets (seed {seed})")
    return {"kid": float(vals.mean()), "kid_std": float(vals.std()) if vals.size > 1 else None,
            "subset_size": int(m), "n_subsets": int(vals.size), "requested_subset_size": int(subset_size),
            "requested_subsets": int(n_subsets), "reduced": bool(reduced), "protocol": protocol}


# ----------------------------------------------------------------------------------------------- feature extraction
def _batches(paths: Sequence[Path], batch_size: int):
    batch, shape = [], None
    for p in paths:
        a = read_rgb_uint8(p)
        if batch and (len(batch) == batch_size or a.shape != shape):
            yield np.stack(batch)
            batch = []
        batch.append(a)
        shape = a.shape
    if batch:
        yield np.stack(batch)


@torch.no_grad()
def extract_features(paths: Sequence[PathLike], model: Callable[[torch.Tensor], object], batch_size: int = 50,
                     device: Union[str, torch.device] = "cpu", progress: bool = True, desc: str = "features"
                     ) -> np.ndarray:
    """Run ``model`` over images and return ``(N, D)`` float64 features.

    The model receives ``(B, 3, H, W)`` float32 in [0, 1] (pytorch-fid's input convention; consecutive images of equal
    size are batched). Its output may be a tensor or a list whose first element is used (pytorch-fid's
    ``InceptionV3`` returns a list); a ``(B, D, h, w)`` map with h, w > 1 is average-pooled to ``(B, D)``.

    Raises:
        util.image_io.ImageReadError: an image cannot be read. ValueError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    paths = [Path(p) for p in paths]
    out: List[np.ndarray] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for arr in _batches(paths, batch_size):
            x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            y = model(x)
            rebalance()  # fewer intra-op threads while other jobs use cores (util/threads.py)
            if isinstance(y, (list, tuple)):
                y = y[0]
            if y.dim() == 4 and y.shape[2:] != (1, 1):
                y = F.adaptive_avg_pool2d(y, 1)
            out.append(y.reshape(y.shape[0], -1).double().cpu().numpy())
            bar.update(arr.shape[0])
    return np.concatenate(out, axis=0)


# ---------------------------------------------------------------------------------------------------- Inception model
def cached_inception_path() -> Path:
    """Where pytorch-fid / torch hub cache the FID Inception weights (``$TORCH_HOME/hub/checkpoints/...``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def how_to_get_weights() -> str:
    """One-line instructions for obtaining the FID Inception weights."""
    return (f"download {INCEPTION_URL} on a machine with internet, then pass --inception_weights FILE "
            "or copy it to that cache path")


def find_inception_weights(explicit: Optional[PathLike] = None) -> Tuple[Optional[Path], str]:
    """Locate the FID Inception weights without touching the network.

    Returns:
        ``(path, "")`` when found, ``(None, reason)`` when ``explicit`` is None and the cache lacks the file.

    Raises:
        OptionError: ``explicit`` is given but is not a file.
    """
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise OptionError(f"--inception_weights '{p}' does not exist or is not a file "
                              f"(expected {INCEPTION_FILE}, from {INCEPTION_URL}; without the option the torch hub "
                              f"cache {cached_inception_path()} is used)")
        return p, ""
    p = cached_inception_path()
    if p.is_file():
        return p, ""
    return None, f"FID Inception weights not found at {p}: {how_to_get_weights()}"


def load_fid_inception(weights: PathLike, device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """Build pytorch-fid's ``InceptionV3`` (2048-d pool3 block) with the weights in file ``weights``.

    The weights are read with ``torch.load(weights_only=True)``; pytorch-fid's own downloader is replaced by that file
    while the network is built, so no network access can happen.

    Raises:
        OptionError: pytorch-fid is not installed. util.errors.CheckpointError: the file cannot be loaded or does not
            fit the network.
    """
    try:
        from pytorch_fid import inception as pfi
    except ImportError as e:
        raise OptionError("FID/KID need pytorch-fid: pip install pytorch-fid==0.3.0 (or pass --no_fid)") from e
    from util.errors import CheckpointError

    state = load_checkpoint(weights, map_location="cpu")
    original = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
    except RuntimeError as e:  # load_state_dict mismatch
        raise CheckpointError(f"'{weights}' does not hold the FID Inception weights ({INCEPTION_FILE}): {e}") from e
    finally:
        pfi.load_state_dict_from_url = original
    return model.eval().to(device)


def distribution_metrics(real_paths: Sequence[PathLike], fake_paths: Sequence[PathLike],
                         model: Optional[torch.nn.Module] = None, weights: Optional[PathLike] = None,
                         device: Union[str, torch.device] = "cpu", batch_size: int = 50,
                         kid_subset_size: int = KID_SUBSET_SIZE, kid_subsets: int = KID_SUBSETS,
                         progress: bool = True, weights_unchecked: bool = False) -> Dict[str, object]:
    """FID and KID between the real and generated image sets.

    Uses ``model`` when given (any feature extractor, see :func:`extract_features`), else pytorch-fid's Inception
    with ``weights`` (or the torch hub cache).

    The Inception weights file is hashed and checked against the standard file's sha256 prefix
    (:func:`metrics.provenance.check_inception_weights`; ``weights_unchecked`` turns a mismatch into a warning).

    Returns:
        ``{"status": "computed", "fid", "kid" (MMD^2), "kid_x1e3", "kid_std_x1e3" (None for a single estimate),
        "kid_subset_size", "kid_subsets", "kid_reduced", "kid_protocol", "n_images", "feature_dim", "feature_layer",
        "resize", "weights" (file, sha256, check), "note"}`` or ``{"status": "skipped", "reason": ...}`` when no
        weights.

    Raises:
        OptionError: ``weights`` given but missing, or pytorch-fid missing.
        metrics.provenance.WeightsHashError: the weights' sha256 is not the standard one (without
        ``weights_unchecked``). ValueError: fewer than 2 images.
    """
    if model is None:
        path, reason = find_inception_weights(weights)
        if path is not None and weights is None and importlib.util.find_spec("pytorch_fid") is None:
            path, reason = None, "pytorch-fid is not installed: pip install pytorch-fid==0.3.0"
        if path is None:
            log.warning("FID/KID skipped: %s", reason)
            return {"status": "skipped", "reason": reason}
        from metrics.provenance import check_inception_weights

        weights_info = check_inception_weights(path, weights_unchecked)
        model = load_fid_inception(path, device)
        extractor = f"pytorch-fid InceptionV3 pool3 ({path.name})"
        layer, resize = FEATURE_LAYER, RESIZE_RULE
    else:
        extractor = type(model).__name__
        weights_info, layer, resize = None, f"output of {extractor}", "none (the given model's own)"
    fr = extract_features(real_paths, model, batch_size, device, progress, desc="features real_B")
    ff = extract_features(fake_paths, model, batch_size, device, progress, desc="features fake_B")
    fid = fid_from_features(fr, ff)
    kid = kid_from_features(fr, ff, kid_subset_size, kid_subsets)
    n, d = fr.shape
    note = ""
    if n < d:
        note = (f"{n} images < feature dimension {d}: covariances are rank-deficient and FID is biased upwards; "
                "compare FID only between runs with the same number of images")
    return {"status": "computed", "extractor": extractor, "fid": fid, "kid": kid["kid"],
            "kid_x1e3": kid["kid"] * 1e3,
            "kid_std_x1e3": None if kid["kid_std"] is None else kid["kid_std"] * 1e3,
            "kid_subset_size": kid["subset_size"], "kid_subsets": kid["n_subsets"], "kid_seed": KID_SEED,
            "kid_requested_subset_size": kid["requested_subset_size"],
            "kid_requested_subsets": kid["requested_subsets"], "kid_reduced": kid["reduced"],
            "kid_protocol": kid["protocol"], "feature_layer": layer, "resize": resize, "weights": weights_info,
            "n_images": int(n), "n_images_fake": int(ff.shape[0]), "feature_dim": int(d), "note": note}
