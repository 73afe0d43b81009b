"""wsi.pipeline on the real H&E slide samples/cmu_small_region.svs (2220x2967, 0.499 um/px) with tiny generators:
identity exactness, seam measure, MPP planning, output reopened by OpenSlide, interrupted runs."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile
import torch
import torch.nn.functional as F

from util.errors import OptionError
from wsi.pipeline import StainSettings, plan_reading, stain_slide
from wsi.reader import SlideMPPError, open_slide

SVS = "samples/cmu_small_region.svs"
MPP = 0.499


def _settings(**kw):
    base = dict(tile_size=128, overlap=32, batch_size=4, num_workers=0, tissue_mask=False, white_background=False, compression="deflate",
                progress=False, tiff_tile=256)
    base.update(kw)
    return StainSettings(**base)


def _read_all(path):
    s = openslide.OpenSlide(str(path))
    a = np.asarray(s.read_region((0, 0), 0, s.dimensions))
    return a[..., :3], s


@pytest.fixture(scope="module")
def crop_tiff(tmp_path_factory):
    """A 768x768 tissue crop of the SVS as a 2-level tiled TIFF (OpenSlide generic-tiff), MPP kept."""
    with open_slide(SVS) as s:
        img = s.read_region(1000, 1200, 0, 768, 768)
    p = tmp_path_factory.mktemp("crop") / "crop.tiff"
    ppcm = 1e4 / MPP
    with tifffile.TiffWriter(p, bigtiff=True) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb", compression="zlib", resolution=(ppcm, ppcm),
                 resolutionunit="CENTIMETER", metadata=None)
        tw.write(np.ascontiguousarray(img[::2, ::2]), tile=(128, 128), photometric="rgb", compression="zlib",
                 subfiletype=1, resolution=(ppcm / 2, ppcm / 2), resolutionunit="CENTIMETER", metadata=None)
    return p, img


def test_identity_is_exact_on_the_real_slide_and_output_reopens(tmp_path):
    out = tmp_path / "id.tiff"
    summary = stain_slide(lambda x: x, SVS, out, _settings(tile_size=512, overlap=64, batch_size=4))
    assert summary["level"] == 0 and summary["scale"] == 1.0  # 0.499 is within 10 % of 0.46: no resampling
    ref, _ = _read_all(SVS)
    got, s = _read_all(out)
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert s.level_count > 1 and s.level_dimensions[1] == (1110, 1484)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(MPP, rel=1e-4)
    assert float(s.properties["openslide.mpp-y"]) == pytest.approx(MPP, rel=1e-4)
    for k in ("thumb", "he_thumb", "html"):
        assert (tmp_path / {"thumb": "id_thumbnail.jpg", "he_thumb": "id_he_thumbnail.jpg",
                            "html": "id.html"}[k]).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.html", "id.tiff", "id_he_thumbnail.jpg",
                                                        "id_thumbnail.jpg"]  # no temporaries left
    # both thumbnails at the requested size (the virtual IHC one is not the tiny last pyramid level), and with an
    # identity generator they show the same picture
    from PIL import Image
    ihc_th = np.asarray(Image.open(tmp_path / "id_thumbnail.jpg")).astype(int)
    he_th = np.asarray(Image.open(tmp_path / "id_he_thumbnail.jpg")).astype(int)
    assert ihc_th.shape == he_th.shape == (1024, round(2220 * 1024 / 2967), 3)
    # (different resampling chains: 2x2 box pyramid + Lanczos vs one box filter, so not pixel-exact)
    assert np.abs(ihc_th - he_th).mean() < 4.0
    assert np.corrcoef(ihc_th.ravel(), he_th.ravel())[0, 1] > 0.97


class SeamyNet(torch.nn.Module):
    """A 'trained model' with tile artefacts: zero-padded blur (dark tile edges) plus a per-tile bias."""

    def forward(self, x):
        k = torch.full((3, 1, 5, 5), 1 / 25.0)
        y = F.conv2d(x, k, padding=2, groups=3)
        return (0.8 * y + 0.6 * x.mean(dim=(1, 2, 3), keepdim=True) + 0.1).clamp(-1, 1)


def _seam_ratio(img, borders):
    g = img.astype(float).mean(axis=2)
    gx = np.abs(np.diff(g, axis=1))  # gx[:, j]: between columns j and j+1
    gy = np.abs(np.diff(g, axis=0))
    bx = [b - 1 for b in borders if 0 < b < g.shape[1]]
    by = [b - 1 for b in borders if 0 < b < g.shape[0]]
    at = np.concatenate([gx[:, bx].ravel(), gy[by, :].ravel()])
    ox = np.setdiff1d(np.arange(gx.shape[1]), bx)
    oy = np.setdiff1d(np.arange(gy.shape[0]), by)
    else_ = np.concatenate([gx[:, ox].ravel(), gy[oy, :].ravel()])
    return at.mean() / else_.mean()


def test_blending_hides_the_tile_grid(tmp_path, crop_tiff):
    src, _ = crop_tiff
    T, O = 128, 32
    S = T - O
    stain_slide(SeamyNet(), src, tmp_path / "blend.tiff", _settings(tile_size=T, overlap=O))
    blended, _ = _read_all(tmp_path / "blend.tiff")
    # every tile edge (start and end of each tile) is a candidate seam
    edges = sorted({i * S for i in range(1, 9)} | {i * S + T for i in range(0, 8)})
    r_blend = _seam_ratio(blended, edges)
    stain_slide(SeamyNet(), src, tmp_path / "naive.tiff", _settings(tile_size=T, overlap=0))
    naive, _ = _read_all(tmp_path / "naive.tiff")
    r_naive = _seam_ratio(naive, [i * T for i in range(1, 6)])
    assert r_naive > 1.5, r_naive  # the artefact is real
    assert r_blend <= 1.10, r_blend  # and blending hides it


def test_mpp_plan_level_choice_and_resampling(tmp_path, crop_tiff):
    src, img = crop_tiff
    with open_slide(src) as r:
        p = plan_reading(r, 0.46)
        assert (p.level, p.scale, p.width, p.out_mpp) == (0, 1.0, 768, pytest.approx(MPP))
        p = plan_reading(r, 1.0)
        assert (p.level, p.scale, p.width, p.out_mpp) == (1, 1.0, 384, pytest.approx(2 * MPP))
        p = plan_reading(r, 0.7)  # no level within 10 %: level 0 shrunk by 0.7 / 0.499
        assert p.level == 0 and p.scale == pytest.approx(0.7 / MPP) and p.width == round(768 * MPP / 0.7)
        p = plan_reading(r, 0.46, slide_mpp=0.25)  # metadata overridden: 0.5 (level 1) matches
        assert (p.level, p.scale) == (1, 1.0)
        p = plan_reading(r, 0.46, level=1)
        assert (p.level, p.scale, p.out_mpp) == (1, 1.0, pytest.approx(2 * MPP))
        with pytest.raises(OptionError, match="--level 5"):
            plan_reading(r, 0.46, level=5)
    out = tmp_path / "r.tiff"
    summary = stain_slide(lambda x: x, src, out, _settings(target_mpp=0.7))
    got, s = _read_all(out)
    n = round(768 * MPP / 0.7)
    assert got.shape == (n, n, 3) and summary["mpp"] == pytest.approx(0.7)
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.7, rel=1e-4)
    # identity at the target resolution equals a direct box-resampling of the crop (same geometry)
    from PIL import Image
    k = 0.7 / MPP
    ref = np.asarray(Image.fromarray(img).resize((n, n), Image.Resampling.BOX, box=(0, 0, n * k, n * k)))
    assert np.abs(got.astype(int) - ref.astype(int))[8:-8, 8:-8].mean() < 1.0


def test_no_mpp_needs_slide_mpp_or_level(tmp_path):
    from PIL import Image
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "nompp.png")
    with open_slide(tmp_path / "nompp.png") as r:
        with pytest.raises(SlideMPPError, match="--slide_mpp.*--level"):
            plan_reading(r, 0.46)
        assert plan_reading(r, 0.46, slide_mpp=0.46).out_mpp == 0.46
        assert plan_reading(r, 0.46, level=0).out_mpp is None


def test_background_tiles_skipped_and_white(tmp_path):
    calls = []

    def black(x):
        calls.append(x.shape[0])
        return torch.full_like(x, -1.0)

    # at 4x the slide's MPP (resampled, 555x742 px) to keep the test small
    summary = stain_slide(black, SVS, tmp_path / "m.tiff", _settings(tile_size=128, overlap=16, tissue_mask=True,
                                                                     target_mpp=4 * MPP))
    assert 0 < summary["tiles_run"] < summary["tiles_total"] and sum(calls) == summary["tiles_run"]
    out, _ = _read_all(tmp_path / "m.tiff")
    assert (out[:50, :50] == 255).all()  # top-left corner of this slide is glass: never sent to the network
    assert (out == 0).mean() > 0.2  # tissue came out of the (black) generator


def test_generator_failure_leaves_nothing(tmp_path):
    n = {"calls": 0}

    def flaky(x):
        n["calls"] += 1
        if n["calls"] == 3:
            raise RuntimeError("boom")
        return x

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        stain_slide(flaky, SVS, out_dir / "x.tiff", _settings(tile_size=256, overlap=32, num_workers=1))
    assert list(out_dir.iterdir()) == []


def _glass_slide(tmp_path):
    """A 512x512 TIFF: glass (243, 241, 244) with one square of tissue-coloured pixels, 0.46 um/px."""
    img = np.full((512, 512, 3), (243, 241, 244), np.uint8)
    img[160:320, 160:320] = (190, 110, 160)
    p = tmp_path / "glass.tiff"
    ppcm = 1e4 / 0.46
    tifffile.imwrite(p, img, tile=(128, 128), photometric="rgb", resolution=(ppcm, ppcm),
                     resolutionunit="CENTIMETER", metadata=None)
    return p, img


PINK = torch.tensor([230.0, 200.0, 212.0]) / 127.5 - 1  # what a generator may paint on glass


def _pink(x):
    return PINK.view(1, 3, 1, 1).expand_as(x).clone()


def test_glass_is_white_in_processed_and_skipped_tiles(tmp_path):
    from wsi.tissue import glass_weight

    src, img = _glass_slide(tmp_path)
    out = tmp_path / "o.tiff"
    stain_slide(_pink, src, out, _settings(tissue_mask=True, white_background=True, target_mpp=0.46))
    got, _ = _read_all(out)
    glass = np.all(img == (243, 241, 244), axis=-1)
    assert got[glass].min() >= 254  # one white background, run or skipped
    assert np.abs(got[200:280, 200:280].astype(int) - (230, 200, 212)).max() <= 1  # tissue keeps the output
    stain_slide(_pink, src, tmp_path / "k.tiff", _settings(tissue_mask=True, white_background=False,
                                                           target_mpp=0.46))
    kept, _ = _read_all(tmp_path / "k.tiff")
    # without the fade, glass inside processed tiles takes the generator's colour: the old patchwork
    pink_glass = np.all(np.abs(kept.astype(int) - (230, 200, 212)) <= 1, axis=-1) & glass
    white_glass = np.all(kept >= 254, axis=-1) & glass
    assert pink_glass.sum() > 5000 and white_glass.sum() > 5000
    w = glass_weight(torch.tensor([[[[243]], [[241]], [[244]]], [[[190]], [[110]], [[160]]]], dtype=torch.uint8))
    assert w.flatten().tolist() == [1.0, 0.0]


def test_thumbnails_are_jpeg(tmp_path):
    from PIL import Image

    src, _ = _glass_slide(tmp_path)
    stain_slide(_pink, src, tmp_path / "o.tiff", _settings(target_mpp=0.46))
    for name in ("o_thumbnail.jpg", "o_he_thumbnail.jpg"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "JPEG"
    assert 'src="o_thumbnail.jpg"' in (tmp_path / "o.html").read_text()
