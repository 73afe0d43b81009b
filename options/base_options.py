"""Options shared by training and testing (pix2pix/CycleGAN names and defaults).

Parsing happens in two passes, as in the pix2pix code: the base options are parsed first to learn ``--model`` and
``--dataset_mode``; then the chosen model's and dataset's ``modify_commandline_options(parser, is_train)`` add their
own options and defaults, and the full command line is parsed again. Parsing has no side effects: nothing is
printed, written, created or seeded (see :func:`options.save_options` for saving and :func:`options.seed_everything`).
"""
from __future__ import annotations

import argparse
import os
import sys

NORMS = ("batch", "instance", "none")
INITS = ("normal", "xavier", "kaiming", "orthogonal")
NET_G = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128", "global", "local")
NET_D = ("basic", "n_layers", "pixel", "multiscale")
PREPROCESS = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors raise :class:`util.errors.OptionError` instead of exiting the process."""

    def error(self, message):  # noqa: D401 - argparse API
        from util.errors import OptionError

        e = OptionError(message)
        e.usage = self.format_usage()  # printed above the error line by util.logging_setup.run_cli, as argparse does
        raise e



def gpu_ids_type(text: str) -> list[int]:
    """Parse ``--gpu_ids``: ``'-1'`` -> ``[]`` (CPU), ``'0,1'`` -> ``[0, 1]``."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpu_ids expects comma-separated integers such as 0 or 0,1 or -1 for CPU, got '{text}'")
    return [i for i in ids if i >= 0]


def default_num_threads() -> int:
    """``min(4, usable CPU cores)``: pix2pix's 4 loader workers, never more than the cores this process may use
    (``os.sched_getaffinity`` where available, else ``os.cpu_count()``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def add_base_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("basic")
    g.add_argument("--dataroot", default="./datasets/sample_bci",
                   help="path to images: BCI layout (HE/<phase>, IHC/<phase>), AB images in <phase>/, or <phase>A + <phase>B")
    g.add_argument("--name", default="experiment_name", help="name of the experiment; folder under --checkpoints_dir")
    g.add_argument("--gpu_ids", type=gpu_ids_type, default=[], metavar="IDS",
                   help="gpu ids, e.g. 0 or 0,1; -1 for CPU (default: CPU)")
    g.add_argument("--checkpoints_dir", default="./checkpoints", help="models, options and logs are saved here")
    g.add_argument("--seed", type=int, default=None, help="random seed for torch, numpy and python (repeatable CPU runs)")
    g = parser.add_argument_group("model")
    import models  # the registry (models/__init__.py) names the valid --model values

    g.add_argument("--model", default="pix2pix", choices=models.available_models(), help="model")
    g.add_argument("--input_nc", type=int, default=3, choices=(1, 3), help="# of input image channels: 3 RGB, 1 grey")
    g.add_argument("--output_nc", type=int, default=3, choices=(1, 3), help="# of output image channels: 3 RGB, 1 grey")
    g.add_argument("--ngf", type=int, default=64, help="# of generator filters in the last conv layer")
    g.add_argument("--ndf", type=int, default=64, help="# of discriminator filters in the first conv layer")
    g.add_argument("--netD", default="basic", choices=NET_D,
                   help="discriminator: basic = 70x70 PatchGAN, n_layers = --n_layers_D PatchGAN, pixel = 1x1 PixelGAN")
    g.add_argument("--netG", default="resnet_9blocks", choices=NET_G, help="generator architecture")
    g.add_argument("--n_layers_D", type=int, default=3, help="only used if netD == n_layers (and by multiscale D)")
    g.add_argument("--norm", default="instance", choices=NORMS, help="normalization layer")
    g.add_argument("--init_type", default="normal", choices=INITS, help="network initialization")
    g.add_argument("--init_gain", type=float, default=0.02, help="scaling factor for normal, xavier and orthogonal")
    g.add_argument("--no_dropout", action="store_true", help="no dropout for the generator")
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset_mode", default="aligned", choices=("aligned", "single", "unaligned"),
                   help="aligned: paired H&E/IHC; single: inputs only; unaligned: unpaired (CycleGAN)")
    g.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="AtoB = H&E -> IHC")
    g.add_argument("--A_dir", default="HE", help="folder name of the A images in the <A_dir>/<phase> layout (LLVIP: visible)")
    g.add_argument("--B_dir", default="IHC", help="folder name of the B images in the <B_dir>/<phase> layout (LLVIP: infrared)")
    g.add_argument("--serial_batches", action="store_true", help="take images in order (no shuffling)")
    g.add_argument("--num_threads", type=int, default=default_num_threads(),
                   help="# DataLoader worker processes (0 = load in the main process); default min(4, CPU cores)")
    g.add_argument("--batch_size", type=int, default=1, help="input batch size (per process under torchrun)")
    g.add_argument("--load_size", type=int, default=286, help="scale images to this size")
    g.add_argument("--crop_size", type=int, default=256, help="then crop to this size")
    g.add_argument("--max_dataset_size", type=int, default=sys.maxsize,
                   help="maximum number of samples per dataset (explicit cap; default: all)")
    g.add_argument("--preprocess", default="resize_and_crop", choices=PREPROCESS, help="scaling and cropping at load time")
    g.add_argument("--no_flip", action="store_true", help="do not flip images for data augmentation")
    g.add_argument("--display_winsize", type=int, default=256, help="display window size for visdom and HTML")
    g = parser.add_argument_group("misc")
    g.add_argument("--epoch", default="latest", help="which epoch to load: 'latest' or a number")
    g.add_argument("--load_iter", type=int, default=0, help="if > 0, load the models saved at iteration iter_[load_iter]")
    g.add_argument("--verbose", action="store_true", help="print network architectures and debug logging")
    g.add_argument("--suffix", default="", help="customized suffix: opt.name = opt.name + suffix, e.g. {model}_{netG}_size{load_size}")
    return parser
