"""Experiment tracking: TensorBoard event files and Weights & Biases runs (both optional dependencies).

``--use_tensorboard`` writes ``<checkpoints_dir>/<name>/tensorboard/events.out.tfevents.*`` with
``torch.utils.tensorboard.SummaryWriter`` (needs the ``tensorboard`` package); view with
``tensorboard --logdir checkpoints``. ``--use_wandb`` starts a wandb run in ``<checkpoints_dir>/<name>/wandb/``:
``--wandb_mode offline`` (the default ``auto`` picks it when no API key is configured) needs no network and keeps the
run on disk (``wandb sync <folder>`` uploads it later); ``online`` needs ``wandb login``.

What is logged (step = images seen, ``total_iters``): the losses at ``--print_freq`` (``loss/<name>``), the learning
rate at the end of each epoch (``lr``), the current visuals at ``--display_freq`` (``images/<label>``, uint8 RGB) and,
from ``evaluate.py --tensorboard_dir/--use_wandb``, the evaluation metrics (``eval/psnr`` ...).

A missing package is an :class:`util.errors.OptionError` naming the option and the ``pip install`` line.
"""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np

from util.errors import OptionError

log = logging.getLogger(__name__)

WANDB_MODES = ("auto", "offline", "online")


class TensorBoardTracker:
    """Scalars and images into TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise OptionError("--use_tensorboard needs the tensorboard package: pip install tensorboard==2.21.0") from e
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        log.info("TensorBoard events in %s (tensorboard --logdir %s)", self.log_dir, self.log_dir.parent)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), int(step))

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        """``images``: name -> ``(H, W, 3)`` uint8 RGB."""
        for k, a in images.items():
            self.writer.add_image(k, a, int(step), dataformats="HWC")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> ``online`` when an API key is configured (``WANDB_API_KEY`` or ``~/.netrc``), else ``offline``."""
    if mode not in WANDB_MODES:
        raise OptionError(f"--wandb_mode must be one of {', '.join(WANDB_MODES)}, got '{mode}'")
    if mode == "auto":
        return "online" if _wandb_logged_in() else "offline"
    return mode


class WandbTracker:
    """A wandb run in ``root/wandb`` (offline: on disk only)."""

    def __init__(self, root: Path, project: str, name: str, mode: str = "auto", config: Optional[dict] = None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise OptionError("--use_wandb needs the wandb package: pip install wandb==0.31.0") from e
        self.wandb = wandb
        self.mode = resolve_wandb_mode(mode)
        Path(root).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=name, dir=str(root), mode=self.mode, config=config or {},
                              reinit="finish_previous")
        self.dir = Path(self.run.dir).parent  # <root>/wandb/<offline-run-...>
        log.info("wandb run %s (%s) in %s", name, self.mode, self.dir)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log({k: float(v) for k, v in values.items()}, step=int(step))

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        self.run.log({k: self.wandb.Image(a) for k, a in images.items()}, step=int(step))

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The enabled trackers as one: every call goes to each (no tracker: nothing happens)."""

    def __init__(self, trackers: Optional[List[object]] = None) -> None:
        self.trackers = list(trackers or [])

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_scalars(values, step)

    def log_images(self, images: Mapping[str, np.ndarray], step: int) -> None:
        for t in self.trackers:
            t.log_images(images, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


def from_options(opt, config: Optional[Dict] = None) -> Trackers:
    """Trackers for ``opt.use_tensorboard`` / ``opt.use_wandb`` in ``<checkpoints_dir>/<name>/``.

    Raises:
        OptionError: a requested tracker's package is not installed, or a bad ``--wandb_mode``.
    """
    exp = Path(opt.checkpoints_dir) / opt.name
    out = []
    if getattr(opt, "use_tensorboard", False):
        out.append(TensorBoardTracker(exp / "tensorboard"))
    if getattr(opt, "use_wandb", False):
        out.append(WandbTracker(exp, getattr(opt, "wandb_project", "virtual-ihc"), opt.name,
                                getattr(opt, "wandb_mode", "auto"), config))
    return Trackers(out)


def evaluation_scalars(summary: Mapping) -> Dict[str, float]:
    """``eval/...`` scalars of an evaluate.py summary (metrics.json dict); undefined values are left out."""
    out: Dict[str, float] = {}

    def put(key, value):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            out[key] = float(value)

    for k in ("psnr", "ssim", "iod_pearson_r", "iod_mae"):
        put(f"eval/{k}", summary.get(k))
    for level, g in (summary.get("per_level") or {}).items():
        put(f"eval/her2_{level}/psnr", g.get("psnr"))
        put(f"eval/her2_{level}/ssim", g.get("ssim"))
    fk = summary.get("fid_kid") or {}
    if fk.get("status") == "computed":
        put("eval/fid", fk.get("fid"))
        put("eval/kid_x1e3", fk.get("kid_x1e3"))
    return out


def log_evaluation(summary: Mapping, step: int, tensorboard_dir: Optional[Path] = None,
                   wandb_dir: Optional[Path] = None, wandb_mode: str = "auto",
                   wandb_project: str = "virtual-ihc") -> Dict[str, float]:
    """Send :func:`evaluation_scalars` of ``summary`` to TensorBoard (``tensorboard_dir``) and/or a wandb run in
    ``wandb_dir`` at ``step`` (the epoch, 0 for ``latest``); returns the scalars."""
    values = evaluation_scalars(summary)
    trackers = []
    if tensorboard_dir is not None:
        trackers.append(TensorBoardTracker(Path(tensorboard_dir)))
    if wandb_dir is not None:
        trackers.append(WandbTracker(Path(wandb_dir), wandb_project, f"{summary.get('experiment')}-eval", wandb_mode))
    t = Trackers(trackers)
    try:
        t.log_scalars(values, step)
    finally:
        t.close()
    return values
