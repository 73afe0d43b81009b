"""Test options (pix2pix names; full resolution and eval mode by default)."""
from __future__ import annotations

import argparse


def add_test_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("testing")
    g.add_argument("--results_dir", default="./results", help="results are saved here")
    g.add_argument("--aspect_ratio", type=float, default=1.0, help="aspect ratio of result images in the HTML page")
    g.add_argument("--phase", default="test", help="train, val, test, etc")
    g.add_argument("--num_test", type=int, default=None,
                   help="cap on the number of test images (default: every image of the phase; the log says 'N of M')")
    g.add_argument("--train_mode_inference", action="store_true",
                   help="run G in train mode (batch statistics, dropout) as the released pix2pix test.py does without "
                        "--eval; default: eval mode")
    g.add_argument("--page_scores", default="psnr_ssim", choices=["psnr_ssim", "psnr", "none"],
                   help="per-image scores on index.html when the real IHC is present (SSIM costs about 0.4 s per "
                        "1024x1024 image on a CPU core)")
    g.add_argument("--eval", action="store_true", help="kept for compatibility: eval mode is already the default")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in <results_dir>/<name>/<phase>_<epoch> (the new images are written "
                        "beside it first and swapped in when complete); without it such a folder is refused")
    g.add_argument("--flat_std", type=float, default=1.0,
                   help="flag a generated image whose every channel has a standard deviation below this many grey "
                        "levels (0-255) as flat (a collapsed generator)")
    g.add_argument("--strict", action="store_true", help="exit with status 3 when any output is flagged")
    from models.tta import add_tta_options

    add_tta_options(g)
    from options.train_options import add_speed_options

    add_speed_options(parser, is_train=False)
    return parser
