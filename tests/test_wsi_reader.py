"""wsi.reader: OpenSlide and plain-image reading, MPP metadata, level choice, errors."""
from __future__ import annotations

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from util.errors import UserError
from wsi.reader import (SlideError, SlideMPPError, UnsupportedSlideFormatError, choose_level, open_slide)

SVS = "samples/cmu_small_region.svs"


def test_svs_through_openslide_matches_direct_openslide():
    ref = openslide.OpenSlide(SVS)
    with open_slide(SVS) as s:
        assert s.dimensions == (2220, 2967) == ref.dimensions
        assert s.level_count == 1 and s.level_downsamples == [1.0]
        assert s.mpp == pytest.approx(0.499)
        region = s.read_region(1000, 1200, 0, 65, 33)  # odd sizes
        assert region.shape == (33, 65, 3) and region.dtype == np.uint8
        direct = np.asarray(ref.read_region((1000, 1200), 0, (65, 33)))
        assert direct[..., 3].min() == 255
        np.testing.assert_array_equal(region, direct[..., :3])
        # partly outside: outside pixels white, inside ones unchanged
        edge = s.read_region(2200, -5, 0, 40, 20)
        assert (edge[:5] == 255).all() and (edge[:, 20:] == 255).all()
        np.testing.assert_array_equal(edge[5:, :20], np.asarray(ref.read_region((2200, 0), 0, (20, 15)))[..., :3])
        th = s.get_thumbnail(300)
        assert max(th.shape[:2]) == 300 and th.shape[1] == round(2220 * 300 / 2967)


def _pyramid_tiff(path, img, mpp, levels=3, tile=128):
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        lv = img
        for k in range(levels):
            ppcm = 1e4 / (mpp * 2 ** k)
            tw.write(lv, tile=(tile, tile), photometric="rgb", compression="zlib", subfiletype=int(k > 0),
                     resolution=(ppcm, ppcm), resolutionunit="CENTIMETER", metadata=None)
            lv = np.ascontiguousarray(lv[::2, ::2])


def test_generic_tiled_tiff_levels_and_mpp_choice(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (512, 768, 3), dtype=np.uint8)
    p = tmp_path / "pyr.tiff"
    _pyramid_tiff(p, img, 0.25)
    with open_slide(p) as s:
        assert s.level_count == 3
        assert s.level_dimensions == [(768, 512), (384, 256), (192, 128)]
        assert s.level_downsamples == pytest.approx([1, 2, 4])
        assert s.mpp == pytest.approx(0.25)
        np.testing.assert_array_equal(s.read_level(2), img[::4, ::4])
        # level-0 coordinates for a region of level 1
        np.testing.assert_array_equal(s.read_region(64, 32, 1, 10, 7), img[::2, ::2][16:23, 32:42])
        assert s.best_level_for_mpp(0.5) == 1  # exact
        assert s.best_level_for_mpp(0.27) == 0  # within 10 %
        assert s.best_level_for_mpp(0.95) == 2  # 1.0 within 10 %
        assert s.best_level_for_mpp(0.7) == 1  # no match: coarsest level finer than target (0.5)
        assert s.best_level_for_mpp(0.1) == 0  # all coarser: finest


def test_choose_level_rule():
    assert choose_level([0.25, 0.5, 1.0], 0.46) == 1  # 0.5 within 10 % of 0.46
    assert choose_level([0.25, 1.0], 0.46) == 0  # none within 10 %: finer level, to be downsampled
    assert choose_level([0.44, 0.48], 0.46) in (0, 1)
    with pytest.raises(ValueError):
        choose_level([0.25], 0.0)


def test_png_mpp_from_phys_and_region(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (37, 51, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    Image.fromarray(img).save(p, dpi=(25400 / 0.5, 25400 / 0.5))
    with open_slide(p) as s:
        assert s.dimensions == (51, 37) and s.level_count == 1
        assert s.mpp == pytest.approx(0.5, rel=1e-3)
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 51, 37), img)
        r = s.read_region(40, 30, 0, 20, 10)
        np.testing.assert_array_equal(r[:7, :11], img[30:, 40:])
        assert (r[7:] == 255).all() and (r[:, 11:] == 255).all()


def test_png_without_or_with_screen_dpi_has_no_mpp(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(img).save(tmp_path / "b.png", dpi=(96, 96))  # 264.6 um/px: a screen default, not a scan
    for name in ("a.png", "b.png"):
        with open_slide(tmp_path / name) as s:
            assert s.mpp is None
            with pytest.raises(SlideMPPError):
                s.best_level_for_mpp(0.46)


def test_rgba_png_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[0, 0, 3] = 255
    a[0, 1, 3] = 0
    a[0, 2, 3] = 128
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    with open_slide(tmp_path / "t.png") as s:
        r = s.read_region(0, 0, 0, 4, 1)[0].astype(int)
    assert r[0].tolist() == [200, 0, 0]
    assert r[1].tolist() == [255, 255, 255]
    assert r[2].tolist() == [round((200 * 128 + 255 * 127) / 255), round(255 * 127 / 255), round(255 * 127 / 255)]


def test_plain_strip_tiff_with_resolution_inch(tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, img, photometric="rgb", resolution=(25400 / 0.8, 25400 / 0.8), resolutionunit="INCH")
    assert openslide.OpenSlide.detect_format(str(p)) is None  # not tiled: the plain reader serves it
    with open_slide(p) as s:
        assert s.mpp == pytest.approx(0.8)
        np.testing.assert_array_equal(s.read_level(0), img)
        np.testing.assert_array_equal(s.read_region(3, 5, 0, 4, 6), img[5:11, 3:7])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(SlideError, match="nope.svs"):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedSlideFormatError, match=r"notes\.txt.*supported formats"):
        open_slide(tmp_path / "notes.txt")
    (tmp_path / "fake.svs").write_text("not a slide")
    with pytest.raises(UnsupportedSlideFormatError, match="fake.svs"):
        open_slide(tmp_path / "fake.svs")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 20)
    with pytest.raises(SlideError, match="broken.png"):
        open_slide(tmp_path / "broken.png")
    with pytest.raises(SlideError, match="not a file"):
        open_slide(tmp_path)
    assert issubclass(SlideError, UserError) and issubclass(SlideError, OSError)
    with open_slide(SVS) as s, pytest.raises(ValueError):
        s.read_region(0, 0, 1, 10, 10)


def test_thumbnail_is_read_in_strips_and_equals_whole_image_box_resize(monkeypatch):
    """Memory of get_thumbnail is bounded by a strip, not the level; the result equals Pillow's BOX resize of the
    whole level (the independent reference)."""
    import wsi.reader as R

    monkeypatch.setattr(R, "THUMBNAIL_STRIP_PIXELS", 2220 * 200)
    ref = openslide.OpenSlide(SVS)
    whole = Image.fromarray(np.asarray(ref.read_region((0, 0), 0, ref.dimensions))[..., :3])
    reads = []
    with open_slide(SVS) as s:
        orig = s.read_region

        def spy(x, y, level, w, h):
            reads.append(w * h)
            return orig(x, y, level, w, h)

        s.read_region = spy
        th = s.get_thumbnail(301)
    assert th.shape == (301, round(2220 * 301 / 2967), 3)
    assert len(reads) > 5 and max(reads) <= 2220 * 200 + 2 * 2220
    expect = np.asarray(whole.resize((th.shape[1], th.shape[0]), Image.Resampling.BOX))
    assert np.abs(th.astype(int) - expect.astype(int)).max() <= 1


def test_thumbnail_uses_the_smallest_sufficient_level(tmp_path):
    img = np.random.default_rng(3).integers(0, 256, (512, 768, 3), dtype=np.uint8)
    p = tmp_path / "pyr.tiff"
    _pyramid_tiff(p, img, 0.25)
    with open_slide(p) as s:
        levels = []
        orig = s.read_region
        s.read_region = lambda x, y, level, w, h: levels.append(level) or orig(x, y, level, w, h)
        th = s.get_thumbnail(150)  # 150x100: level 2 (192x128) is the smallest at least that large
        assert set(levels) == {2} and th.shape == (100, 150, 3)
        levels.clear()
        assert s.get_thumbnail(384).shape == (256, 384, 3) and set(levels) == {1}
