"""Training options (pix2pix names and defaults)."""
from __future__ import annotations

import argparse

LR_POLICIES = ("linear", "step", "plateau", "cosine")
GAN_MODES = ("vanilla", "lsgan", "wgangp")


def add_train_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("visualization")
    g.add_argument("--display_freq", type=int, default=400, help="frequency (images seen) of showing results on visdom/HTML")
    g.add_argument("--display_ncols", type=int, default=4, help="images per row in visdom")
    g.add_argument("--display_id", type=int, default=0,
                   help="visdom window id; 0 = no visdom (no network call at all); > 0 sends to --display_server")
    g.add_argument("--display_server", default="http://localhost", help="visdom server of the web display")
    g.add_argument("--display_env", default="main", help="visdom display environment name")
    g.add_argument("--display_port", type=int, default=8097, help="visdom port")
    g.add_argument("--update_html_freq", type=int, default=1000, help="frequency (images seen) of saving results to HTML")
    g.add_argument("--print_freq", type=int, default=100, help="frequency (images seen) of printing losses")
    g.add_argument("--no_html", action="store_true", help="do not save results to <checkpoints_dir>/<name>/web/")
    g.add_argument("--use_tensorboard", action="store_true",
                   help="log losses, learning rate and visuals to <checkpoints_dir>/<name>/tensorboard (pip install "
                        "tensorboard)")
    g.add_argument("--use_wandb", action="store_true",
                   help="log losses, learning rate and visuals to a wandb run in <checkpoints_dir>/<name>/wandb "
                        "(pip install wandb)")
    g.add_argument("--wandb_project", default="virtual-ihc", help="wandb project name")
    g.add_argument("--wandb_mode", default="auto", choices=["auto", "offline", "online"],
                   help="auto: online when a wandb API key is configured (wandb login), else offline (no network)")
    g.add_argument("--progress_interval", type=float, default=30.0,
                   help="seconds between progress lines (images/s, time left) when the output is not a terminal; "
                        "0 = none")
    g = parser.add_argument_group("saving")
    g.add_argument("--save_latest_freq", type=int, default=5000,
                   help="frequency (images seen) of saving the checkpoint set 'latest' within an epoch (a whole set: "
                        "networks and training state, so a resume continues at that iteration)")
    g.add_argument("--save_epoch_freq", type=int, default=5, help="frequency (epochs) of saving checkpoint sets")
    g.add_argument("--save_by_iter", action="store_true",
                   help="label the mid-epoch sets iter_<images seen> instead of overwriting 'latest'")
    g.add_argument("--keep_last", type=int, default=0,
                   help="keep only the K most recent epoch-numbered checkpoint sets ('latest' is always kept); "
                        "0 keeps all")
    g.add_argument("--continue_train", action="store_true",
                   help="resume from checkpoint set --epoch (networks, optimizers, schedulers, RNG states, the epoch "
                        "and the iteration within it)")
    g.add_argument("--epoch_count", type=int, default=1, help="starting epoch when not resuming")
    g.add_argument("--phase", default="train", help="train, val, test, etc")
    g = parser.add_argument_group("training")
    g.add_argument("--n_epochs", type=int, default=100, help="# epochs at the starting learning rate")
    g.add_argument("--n_epochs_decay", type=int, default=100, help="# epochs to decay the learning rate linearly to zero")
    g.add_argument("--beta1", type=float, default=0.5, help="momentum term of adam")
    g.add_argument("--lr", type=float, default=0.0002, help="initial learning rate for adam")
    g.add_argument("--gan_mode", default="lsgan", choices=GAN_MODES,
                   help="GAN objective: vanilla = cross-entropy (original pix2pix), lsgan = least squares, wgangp")
    g.add_argument("--pool_size", type=int, default=50, help="size of the image buffer of previously generated images")
    g.add_argument("--lr_policy", default="linear", choices=LR_POLICIES, help="learning rate policy")
    g.add_argument("--lr_decay_iters", type=int, default=50, help="multiply by a gamma every lr_decay_iters epochs (step)")
    add_speed_options(parser, is_train=True)
    return parser


def check_train_options(opt) -> None:
    """Refuse training options that cannot give a meaningful run (instead of training nothing and exiting 0).

    Raises:
        OptionError: names the option, its value and what is expected.
    """
    from util.errors import OptionError

    problems = []
    if not opt.lr > 0 or opt.lr != opt.lr or opt.lr == float("inf"):
        problems.append(f"--lr must be a positive finite number, got {opt.lr}")
    for name in ("n_epochs", "n_epochs_decay", "keep_last"):
        if getattr(opt, name) < 0:
            problems.append(f"--{name} must be >= 0, got {getattr(opt, name)}")
    if opt.n_epochs >= 0 and opt.n_epochs_decay >= 0 and opt.n_epochs + opt.n_epochs_decay < 1:
        problems.append("--n_epochs + --n_epochs_decay must be at least 1 (nothing would be trained), got "
                        f"{opt.n_epochs} + {opt.n_epochs_decay}")
    for name in ("epoch_count", "save_latest_freq", "save_epoch_freq", "print_freq", "display_freq",
                 "update_html_freq", "lr_decay_iters"):
        if getattr(opt, name) < 1:
            problems.append(f"--{name} must be >= 1, got {getattr(opt, name)}")
    if not 0.0 <= opt.beta1 < 1.0:
        problems.append(f"--beta1 must be in [0, 1), got {opt.beta1}")
    if opt.pool_size < 0:
        problems.append(f"--pool_size must be >= 0, got {opt.pool_size}")
    if problems:
        raise OptionError("; ".join(problems))


def resolve_fast_cpu(opt) -> None:
    """``--fast_cpu on`` (the default): CPU training in float32 without ``--compile`` gets ``--channels_last`` and
    ``--winograd`` (docs/PERFORMANCE.md: the same operations in NHWC order, and Winograd F(4x4, 3x3) for the ResNet
    blocks, ~1e-5 relative rounding differences); ``opt.fast_cpu_applied`` lists what was turned on. GPUs, ``--amp``
    and ``--compile`` keep the flags as given. Call after ``opt.device`` is set."""
    opt.fast_cpu_applied = []
    if getattr(opt, "fast_cpu", "off") != "on" or opt.device.type != "cpu" or opt.amp != "none" or opt.compile:
        return
    for flag in ("channels_last", "winograd"):
        if not getattr(opt, flag):
            setattr(opt, flag, True)
            opt.fast_cpu_applied.append(f"--{flag}")


def add_speed_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
    """``--amp`` (both phases); ``--channels_last``, ``--winograd`` and ``--compile`` (training). See
    docs/PERFORMANCE.md."""
    from models.amp import AMP_MODES

    g = parser.add_argument_group("speed and scale (docs/PERFORMANCE.md)")
    g.add_argument("--amp", default="none", choices=AMP_MODES,
                   help="mixed precision: none = float32; bf16 = bfloat16 autocast (CPU and Ampere+ GPUs); fp16 = "
                        "float16 autocast with a gradient scaler per optimizer")
    if is_train:
        g.add_argument("--fast_cpu", default="on", choices=("on", "off"),
                       help="on: CPU float32 training (no --amp, no --compile) turns on --channels_last and --winograd "
                            "(about 2x the step of the release's code); off: only the flags given")
        g.add_argument("--channels_last", action="store_true",
                       help="channels-last (NHWC) memory format for networks and batches (faster convolutions)")
        g.add_argument("--winograd", action="store_true",
                       help="CPU float32: 3x3 stride-1 convolutions (the ResNet blocks) by Winograd F(4x4,3x3), 4x fewer "
                            "multiplications, float32 rounding differs from direct convolution by ~1e-5 relative")
        g.add_argument("--compile", action="store_true",
                       help="torch.compile the networks (slow first steps; eager mode with a warning where it cannot)")
    return parser
