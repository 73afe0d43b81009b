"""DAB optical density / IOD on images of known stain content, and the agreement statistics."""
import math

import numpy as np
import pytest
from scipy import stats
from skimage.color import hed2rgb

from metrics.stain import DAB_THRESHOLD_OD, dab_od, dab_stats, iod_agreement, pearson_r


def _render(h, e, d):
    """RGB float in [0, 1] from per-pixel H, E, DAB amounts in scikit-image's units (decimal OD / 6)."""
    return hed2rgb(np.stack([h, e, d], axis=-1))


def test_iod_recovered_from_known_dab_float():
    rng = np.random.default_rng(0)
    h = rng.uniform(0.0, 0.04, (40, 50))
    d = rng.uniform(0.0, 0.12, (40, 50))  # up to 0.72 decimal OD
    img = _render(h, np.zeros_like(h), d)
    st = dab_stats(img)
    assert st.iod == pytest.approx(6 * d.sum(), rel=1e-6)
    assert st.mean_od == pytest.approx(6 * d.mean(), rel=1e-6)
    assert st.positive_fraction == pytest.approx(np.mean(6 * d > DAB_THRESHOLD_OD), abs=2 / d.size)


def test_iod_recovered_from_known_dab_uint8():
    # half the image DAB-positive at 0.6 OD (0.1 skimage units), half hematoxylin only
    d = np.zeros((64, 64))
    d[:, :32] = 0.1
    h = np.full((64, 64), 0.03)
    img = (_render(h, np.zeros_like(h), d) * 255).round().astype(np.uint8)
    st = dab_stats(img)
    assert st.iod == pytest.approx(0.6 * 64 * 32, rel=0.02)  # uint8 quantisation only
    assert st.positive_fraction == 0.5
    od = dab_od(img)
    assert od.shape == (64, 64) and od.dtype == np.float64 and od.min() >= 0
    assert od[:, 32:].max() < 0.02  # no DAB where none was put


def test_white_is_zero_and_more_dab_is_more_iod():
    white = np.full((8, 8, 3), 255, np.uint8)
    assert dab_stats(white).iod == 0.0
    # 0.015 and 0.15 skimage units = 0.09 and 0.9 decimal OD, either side of the 0.15 OD threshold
    weak = (_render(np.zeros((8, 8)), np.zeros((8, 8)), np.full((8, 8), 0.015)) * 255).round().astype(np.uint8)
    strong = (_render(np.zeros((8, 8)), np.zeros((8, 8)), np.full((8, 8), 0.15)) * 255).round().astype(np.uint8)
    assert dab_stats(white).iod < dab_stats(weak).iod < dab_stats(strong).iod
    assert dab_stats(weak).positive_fraction == 0.0 and dab_stats(strong).positive_fraction == 1.0


def test_threshold_validation_and_layout():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        dab_stats(img, threshold_od=-0.1)
    with pytest.raises(ValueError):
        dab_stats(img, threshold_od=math.nan)
    with pytest.raises(ValueError):
        dab_od(np.zeros((8, 8), np.uint8))


def test_pearson_matches_scipy_and_undefined_cases():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=30), rng.normal(size=30)
    assert pearson_r(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert pearson_r([1.0], [2.0]) is None
    assert pearson_r([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    with pytest.raises(ValueError):
        pearson_r([1.0, 2.0], [1.0])


def test_iod_agreement_hand_computed():
    out = iod_agreement([10.0, 20.0, 30.0], [12.0, 18.0, 33.0])
    assert out["iod_mae"] == pytest.approx((2 + 2 + 3) / 3)
    assert out["iod_pearson_r"] == pytest.approx(stats.pearsonr([10, 20, 30], [12, 18, 33])[0])
    assert out["iod_pearson_r_note"] is None
    assert iod_agreement([], []) == {"iod_pearson_r": None, "iod_pearson_r_note": "fewer than 3 images (0)",
                                     "iod_mae": None}
    two = iod_agreement([10.0, 20.0], [12.0, 18.0])  # r = 1 from two points: not reported
    assert two["iod_pearson_r"] is None and two["iod_pearson_r_note"] == "fewer than 3 images (2)"
    flat = iod_agreement([10.0, 20.0, 30.0], [5.0, 5.0 + 1e-6, 5.0 - 1e-6])  # a collapsed generator's outputs
    assert flat["iod_pearson_r"] is None and flat["iod_pearson_r_note"].startswith("near-constant virtual IOD")
    spread = iod_agreement([10.0, 20.0, 30.0], [5.0, 5.2, 5.1])  # 1.6 % spread: reported
    assert spread["iod_pearson_r_note"] is None and spread["iod_pearson_r"] is not None
