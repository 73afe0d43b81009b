"""stain_slide.py end to end with a tiny trained-format experiment, and every bad input (exit 2, nothing written)."""
from __future__ import annotations


import numpy as np
import openslide
import pytest
from PIL import Image

import stain_slide

SVS = "samples/cmu_small_region.svs"


@pytest.fixture(scope="module")
def exp(tiny_stain_run):
    return tiny_stain_run


@pytest.fixture(scope="module")
def small_png(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    from wsi.reader import open_slide
    with open_slide(SVS) as s:
        img = s.read_region(1100, 1300, 0, 200, 150)
    p = d / "he & <x>.png"
    Image.fromarray(img).save(p, dpi=(25400 / 0.46, 25400 / 0.46))
    return p


def _args(exp, inp, out, *extra):
    return ["--name", "tiny", "--checkpoints_dir", str(exp), "--input", str(inp), "--output", str(out),
            "--tile_size", "64", "--overlap", "8", "--num_workers", "0", "--no_progress", "--no_tissue_mask",
            *extra]


def test_cli_writes_tiff_thumbnails_and_escaped_html(tmp_path, exp, small_png):
    out = tmp_path / "res"
    assert stain_slide.main(_args(exp, small_png, out, "--compression", "deflate")) == 0
    tiff = out / "he & <x>_ihc.tiff"
    s = openslide.OpenSlide(str(tiff))
    assert s.dimensions == (200, 150) and float(s.properties["openslide.mpp-x"]) == pytest.approx(0.46)
    html = (out / "he & <x>_ihc.html").read_text()
    assert "he &amp; &lt;x&gt;.png" in html and "<x>" not in html
    assert (out / "he & <x>_ihc_thumbnail.jpg").is_file() and (out / "he & <x>_ihc_he_thumbnail.jpg").is_file()
    # the generator really ran: output differs from the input
    a = np.asarray(s.read_region((0, 0), 0, (200, 150)))[..., :3]
    assert np.abs(a.astype(int) - np.asarray(Image.open(small_png)).astype(int)).mean() > 5


def test_cli_tta_option(tmp_path, exp, small_png):
    assert stain_slide.main(_args(exp, small_png, tmp_path / "o.tif", "--tta", "--tta_modes", "id,flipH")) == 0
    assert (tmp_path / "o.tif").is_file()


@pytest.mark.parametrize("case", ["missing", "unsupported", "corrupt", "no_mpp", "no_ckpt", "stride", "overlap",
                                  "bad_level", "bad_gpu"])
def test_cli_bad_input_exit_2_nothing_written(tmp_path, exp, small_png, capsys, case):
    out = tmp_path / "out"
    inp, extra, expect = small_png, [], None
    if case == "missing":
        inp, expect = tmp_path / "nope.svs", "nope.svs"
    elif case == "unsupported":
        inp = tmp_path / "slide.svs"
        inp.write_text("text")
        expect = "supported formats"
    elif case == "corrupt":
        inp = tmp_path / "c.png"
        inp.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
        expect = "c.png"
    elif case == "no_mpp":
        inp = tmp_path / "nompp.png"
        Image.open(small_png).save(inp)
        expect = "--slide_mpp"
    elif case == "no_ckpt":
        extra, expect = ["--epoch", "7"], "7_net_G.pth"
    elif case == "stride":
        extra, expect = ["--tile_size", "66"], "multiple of 4"
    elif case == "overlap":
        extra, expect = ["--overlap", "32"], "less than half"
    elif case == "bad_level":
        extra, expect = ["--level", "3"], "--level 3"
    elif case == "bad_gpu":
        extra, expect = ["--gpu_ids", "cuda"], "--gpu_ids 'cuda'"
    rc = stain_slide.main(_args(exp, inp, out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err and err[-1].startswith("stain_slide.py: error:") and expect in err[-1]
    assert not out.exists() or list(out.iterdir()) == []


def test_outputs_that_would_collide_or_overwrite_an_input_are_refused(tmp_path, exp, small_png, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    img = Image.open(small_png)
    img.save(folder / "a.png", dpi=(25400 / 0.46, 25400 / 0.46))
    img.save(folder / "a.jpg", dpi=(25400 / 0.46, 25400 / 0.46))  # same stem: both -> a_ihc.tiff
    assert stain_slide.main(_args(exp, folder, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "a.jpg" in err and "a_ihc.tiff" in err
    assert not (tmp_path / "out").exists()
    # the output is the input itself
    tif = tmp_path / "in.tiff"
    import tifffile
    tifffile.imwrite(tif, np.asarray(img), photometric="rgb", resolution=(1e4 / 0.46, 1e4 / 0.46),
                     resolutionunit="CENTIMETER")
    before = tif.read_bytes()
    assert stain_slide.main(_args(exp, tif, tif)) == 2
    assert "would be overwritten" in capsys.readouterr().err
    assert tif.read_bytes() == before
