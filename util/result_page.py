"""The test page (``<results_dir>/<name>/<phase>_<epoch>/index.html``): one row per image, labelled by what it shows.

Each row holds the image's visuals captioned with :data:`util.html.VISUAL_LABELS` (H&E / virtual IHC / real IHC; the
files keep pix2pix's ``<stem>_real_A.png`` / ``_fake_B`` / ``_real_B`` names) and, when the real IHC is present, the
image's PSNR and SSIM computed exactly as evaluate.py does (:mod:`metrics.image_quality`, scikit-image, on the uint8
images as saved). The page links to the evaluation report ``report.html`` that ``evaluate.py`` writes into the same
folder.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
from dominate import tags

from util.html import HTMLPage, visual_label

PAGE_SCORES = ("psnr_ssim", "psnr", "none")


def start_result_page(out_dir: Path, title: str) -> HTMLPage:
    """A new test page in ``out_dir`` with a link to the evaluation report (``report.html``, same folder)."""
    page = HTMLPage(out_dir, title)
    with page.doc:
        tags.p("Evaluation report: ", tags.a("report.html", href="report.html"),
               " (written by python evaluate.py --result_path <results_dir>/<name>; PSNR/SSIM per HER2 level, "
               "DAB IOD, best and worst images). Columns: H&E input, virtual IHC (generated), real IHC.")
    return page


def image_scores(real: np.ndarray, fake: np.ndarray, which: str = "psnr_ssim") -> str:
    """Caption text with PSNR (dB) and SSIM of ``fake`` against ``real`` (uint8 ``(H, W, 3)``), e.g.
    ``'PSNR 21.34 dB, SSIM 0.4712'``; ``which`` is one of :data:`PAGE_SCORES` (``'none'`` -> ``''``)."""
    if which not in PAGE_SCORES:
        raise ValueError(f"page scores must be one of {PAGE_SCORES}, got {which!r}")
    if which == "none" or real.shape != fake.shape:
        return ""
    from metrics.image_quality import psnr, ssim

    p = psnr(real, fake)
    text = "PSNR " + ("inf (identical)" if math.isinf(p) else f"{p:.2f} dB")
    if which == "psnr_ssim":
        text += f", SSIM {ssim(real, fake):.4f}"
    return text


def add_result_row(page: HTMLPage, stem: str, images: Mapping[str, np.ndarray], width: int,
                   scores: str = "psnr_ssim", images_rel: str = "images", header_suffix: str = "") -> Optional[str]:
    """Add one image's row: a header with ``stem`` and ``header_suffix`` (and its scores when ``real_B`` and
    ``fake_B`` are present), then the visuals ``<images_rel>/<stem>_<name>.png`` captioned with their labels.
    Returns the score text or None."""
    text = None
    if "real_B" in images and "fake_B" in images and images["real_B"].ndim == 3:
        text = image_scores(images["real_B"], images["fake_B"], scores) or None
    page.add_header(stem + header_suffix + (f": {text}" if text else ""))
    names = [f"{images_rel}/{stem}_{name}.png" for name in images]
    page.add_images(names, [visual_label(n) for n in images], names, width=width)
    return text
