"""wsi.tiling (grid, partition-of-unity window), wsi.tissue, wsi.writer.RawFile."""
from __future__ import annotations

import numpy as np
import pytest

from util.errors import OptionError
from wsi.tiling import TileGrid, ramp, validate_tiling
from wsi.tissue import tiles_with_tissue, tissue_mask
from wsi.writer import RawFile, pyramid_shapes


@pytest.mark.parametrize("w,h,tile,overlap", [(300, 170, 64, 16), (64, 64, 64, 0), (65, 63, 32, 15), (500, 97, 48, 7)])
def test_windows_sum_to_one_and_cover(w, h, tile, overlap):
    g = TileGrid(w, h, tile, overlap)
    acc = np.zeros((h + 2 * tile, w + 2 * tile))
    for c, r in g:
        x, y = g.origin(c, r)
        win = g.window(c, r)
        assert win.shape == (tile, tile) and win.min() > 0 and win.max() <= 1
        acc[y:y + tile, x:x + tile] += win
    np.testing.assert_allclose(acc[:h, :w], 1.0, atol=1e-6)
    # the grid is the smallest that covers the image with this stride
    assert (g.n_cols - 1) * g.stride + tile >= w and (g.n_cols - 2) * g.stride + tile < w or g.n_cols == 1
    assert (g.n_rows - 1) * g.stride + tile >= h


def test_ramp_is_smooth_and_symmetric():
    r = ramp(8)
    np.testing.assert_allclose(r + r[::-1], 1.0)
    assert np.all(np.diff(r) > 0) and 0 < r[0] < 0.05
    np.testing.assert_allclose(r[0], np.sin(np.pi / 32) ** 2)


def test_validate_tiling_errors():
    with pytest.raises(OptionError, match="multiple of 4"):
        validate_tiling(130, 16, 4)
    with pytest.raises(OptionError, match="less than half"):
        validate_tiling(128, 64, 4)
    with pytest.raises(OptionError, match="overlap"):
        validate_tiling(128, -1)
    validate_tiling(256, 127, 256)


def test_tissue_mask_finds_stained_region_not_glass():
    rng = np.random.default_rng(0)
    img = np.full((100, 160, 3), 242, np.uint8) + rng.integers(0, 6, (100, 160, 3), dtype=np.uint8)
    img[20:60, 30:90] = (180, 90, 160)  # eosin/hematoxylin-like pink-purple
    m = tissue_mask(img)
    assert m[25:55, 35:85].all()
    assert not m[80:, :].any() and not m[:, 120:].any()
    # an all-tissue crop stays tissue (the Otsu threshold is clipped), an all-glass one stays background
    assert tissue_mask(np.tile(np.array([[[180, 90, 160]], [[200, 120, 190]]], np.uint8), (20, 40, 1))).all()
    assert not tissue_mask(np.full((30, 30, 3), 240, np.uint8)).any()


def test_tiles_with_tissue_selection():
    g = TileGrid(400, 200, 100, 20)  # stride 80, 5 x 3 tiles
    mask = np.zeros((20, 40), bool)  # 10 px per mask pixel
    mask[2, 35] = True  # image (350..360, 20..30): tiles col 3 (240..340)? no; col 4 (320..420) yes; row 0 only
    sel = tiles_with_tissue(mask, (10.0, 10.0), g)
    assert sel.shape == (3, 5) and sel.sum() == 1 and sel[0, 4]


def test_rawfile_roundtrip_ring_and_holes(tmp_path):
    with RawFile(tmp_path, 10, 7, 3, np.float32) as f:
        np.testing.assert_array_equal(f.read(0, 0, 10, 7), 0)
        a = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
        f.write(8, 3, a, ring=True)  # rows 8, 9, 0, 1; columns 3..6 kept, 7 dropped
        back = f.read(8, 3, 4, 5, ring=True)
        np.testing.assert_array_equal(back[:, :4], a[:, :4])
        np.testing.assert_array_equal(back[:, 4], 0)
        np.testing.assert_array_equal(f.read(0, 3, 2, 4), a[2:, :4])
        f.zero(0, 0, 2, 7)
        np.testing.assert_array_equal(f.read(0, 0, 2, 7), 0)
        path = f.path
    assert not path.exists()


def test_pyramid_shapes():
    assert pyramid_shapes(2220, 2967, 512) == [(2220, 2967), (1110, 1484), (555, 742), (278, 371)]
    assert pyramid_shapes(100, 50, 512) == [(100, 50)]
