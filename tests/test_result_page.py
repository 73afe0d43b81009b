"""Test and training pages say what they show: H&E / virtual IHC / real IHC, per-image PSNR/SSIM, report link."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from util.html import visual_label
from util.image_io import save_png
from util.result_page import add_result_row, image_scores, start_result_page


def _arrays(seed=0, shape=(24, 20, 3)):
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 256, shape, dtype=np.uint8)
    fake = np.clip(real + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)
    return {"real_A": real[..., ::-1].copy(), "fake_B": fake, "real_B": real}


def write_page(out_dir, n=3):
    """A test page as test.py writes it, with its images; returns {stem: arrays}."""
    page = start_result_page(out_dir, "run: test, epoch latest")
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    made = {}
    for i in range(n):
        stem = f"{i:05d}_test_{i % 4}+".replace("_0+", "_0")
        arrays = _arrays(i)
        for k, a in arrays.items():
            save_png(a, out_dir / "images" / f"{stem}_{k}.png")
        add_result_row(page, stem, arrays, 128)
        made[stem] = arrays
    page.save()
    return made


def test_page_labels_scores_and_report_link(tmp_path):
    made = write_page(tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert '<a href="report.html">report.html</a>' in page
    for stem, a in made.items():
        p = peak_signal_noise_ratio(a["real_B"], a["fake_B"], data_range=255)
        s = structural_similarity(a["real_B"], a["fake_B"], channel_axis=-1, data_range=255)
        assert f"{stem}: PSNR {p:.2f} dB, SSIM {s:.4f}" in page
    captions = re.findall(r"<p>([^<]+)</p>", page)
    assert captions.count("H&amp;E") == 3 and captions.count("virtual IHC") == 3 and captions.count("real IHC") == 3
    assert len(re.findall(r'src="images/[^"]+_fake_B.png"', page)) == 3  # file names keep pix2pix's roles


def test_scores_only_with_real_ihc_and_options(tmp_path):
    a = _arrays()
    assert image_scores(a["real_B"], a["fake_B"], "psnr").startswith("PSNR ") and "SSIM" not in \
        image_scores(a["real_B"], a["fake_B"], "psnr")
    assert image_scores(a["real_B"], a["fake_B"], "none") == ""
    assert image_scores(a["real_B"], a["real_B"]) .startswith("PSNR inf")
    with pytest.raises(ValueError, match="page scores"):
        image_scores(a["real_B"], a["fake_B"], "ssim")
    page = start_result_page(tmp_path, "t")
    assert add_result_row(page, "he_only", {"real": a["real_A"], "fake": a["fake_B"]}, 64) is None
    html = page.render()
    assert ">H&amp;E<" in html and ">virtual IHC<" in html and "<h3>he_only</h3>" in html


def test_visual_labels_and_training_page(tmp_path):
    assert (visual_label("real_A"), visual_label("fake_B"), visual_label("real_B")) == ("H&E", "virtual IHC",
                                                                                        "real IHC")
    assert visual_label("some_map") == "some_map"
    from types import SimpleNamespace

    from util.visualizer import Visualizer

    opt = SimpleNamespace(display_id=0, isTrain=True, no_html=False, display_winsize=64, name="exp",
                          checkpoints_dir=str(tmp_path), display_port=8097, display_server="http://localhost",
                          display_env="main", display_ncols=4, rank=0, verbose=False)
    vz = Visualizer(opt)
    vz.display_current_results({"real_A": torch.zeros(1, 3, 8, 8), "fake_B": torch.zeros(1, 3, 8, 8)}, 1, True)
    page = (tmp_path / "exp" / "web" / "index.html").read_text()
    assert "H&amp;E (real_A)" in page and "virtual IHC (fake_B)" in page
    assert Image.open(tmp_path / "exp" / "web" / "images" / "epoch001_real_A.png").size == (8, 8)
