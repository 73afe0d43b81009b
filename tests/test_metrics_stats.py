"""Bootstrap and Fisher-z intervals, KID's reduced protocol and the IOD basis, against independent references."""
import math

import numpy as np
import pytest
from scipy import stats

from metrics import distribution as dist
from metrics.report import IOD_BASIS_AREA, IOD_BASIS_IMAGE, fid_kid_text, group_summary
from metrics.scoring import PairScore
from metrics.stats import bootstrap_mean_ci, bootstrap_pearson_ci, fisher_z_ci


def test_bootstrap_mean_equals_scipy_percentile_bootstrap():
    x = np.random.default_rng(1).normal(20, 3, size=37)
    ours = bootstrap_mean_ci(x, n_boot=999, seed=5)
    ref = stats.bootstrap((x,), np.mean, n_resamples=999, method="percentile", rng=np.random.default_rng(5),
                          vectorized=True).confidence_interval
    assert ours == pytest.approx([ref.low, ref.high], rel=1e-12)
    assert ours[0] < x.mean() < ours[1]
    assert bootstrap_mean_ci(x, seed=5) == bootstrap_mean_ci(x, seed=5)  # seeded: repeatable
    assert bootstrap_mean_ci([3.0]) is None


def test_bootstrap_pearson_equals_loop_over_the_same_resamples():
    rng = np.random.default_rng(2)
    x = rng.normal(size=25)
    y = 0.7 * x + rng.normal(scale=0.5, size=25)
    out = bootstrap_pearson_ci(x, y, n_boot=300, seed=3)
    idx = np.random.default_rng(3).integers(0, 25, (300, 25))
    rs = [stats.pearsonr(x[i], y[i]).statistic for i in idx]
    assert out["ci"] == pytest.approx(list(np.percentile(rs, [2.5, 97.5])), rel=1e-10)
    assert out["n_degenerate"] == 0
    assert bootstrap_pearson_ci([1, 2], [2, 1])["ci"] is None


def test_bootstrap_pearson_drops_constant_resamples():
    x = np.array([0.0, 0.0, 0.0, 1.0])  # a quarter of each resample ... often all zeros
    y = np.array([0.0, 0.1, 0.2, 1.0])
    out = bootstrap_pearson_ci(x, y, n_boot=400, seed=0)
    idx = np.random.default_rng(0).integers(0, 4, (400, 4))
    expected = int(sum(np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0 for i in idx))
    assert out["n_degenerate"] == expected > 0


def test_fisher_z_interval_by_hand():
    # r = 0.5, n = 28: z = atanh(0.5) = 0.5493061, se = 1/5, z_0.975 = 1.959964
    lo, hi = fisher_z_ci(0.5, 28)
    assert lo == pytest.approx(math.tanh(0.5493061 - 0.3919928), abs=1e-6)
    assert hi == pytest.approx(math.tanh(0.5493061 + 0.3919928), abs=1e-6)
    assert (round(lo, 4), round(hi, 4)) == (0.156, 0.7358)
    assert fisher_z_ci(0.5, 3) is None and fisher_z_ci(None, 50) is None
    assert fisher_z_ci(1.0, 10) == [1.0, 1.0]


def test_kid_on_whole_sets_is_one_estimate_without_spread():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 6)), rng.normal(0.5, 1, size=(30, 6))
    out = dist.kid_from_features(a, b, subset_size=1000, n_subsets=100)
    assert out["kid"] == pytest.approx(dist.mmd2_unbiased(a, b), rel=1e-12)
    assert out["n_subsets"] == 1 and out["kid_std"] is None and out["reduced"]
    assert "reduced" in out["protocol"] and "no spread" in out["protocol"]
    part = dist.kid_from_features(a, b[:20], subset_size=1000, n_subsets=10)  # subsets of 20 from 30 real: distinct
    assert part["reduced"] and part["n_subsets"] == 10 and part["kid_std"] > 0 and part["subset_size"] == 20
    full = dist.kid_from_features(a, b, subset_size=10, n_subsets=4)
    assert not full["reduced"] and full["protocol"].startswith("standard")
    fk = {"status": "computed", "fid": 1.0, "kid_x1e3": out["kid"] * 1e3, "kid_std_x1e3": None,
          "kid_subsets": 1, "kid_subset_size": 30, "kid_protocol": out["protocol"], "n_images": 30, "extractor": "x"}
    text = fid_kid_text(fk)
    assert "+-" not in text and "no spread" in text


def _score(stem, h, w, iod_r, iod_f):
    return PairScore(stem=stem, her2="0", height=h, width=w, psnr=20.0, ssim=0.5, iod_real=iod_r, iod_fake=iod_f,
                     dab_pos_real=0.1, dab_pos_fake=0.1, dab_mean_od_real=iod_r / (h * w),
                     dab_mean_od_fake=iod_f / (h * w))


def test_iod_agreement_is_per_area_when_sizes_differ():
    same = [_score(f"s{i}", 10, 10, 10.0 * i + 1, 9.0 * i + 3) for i in range(6)]
    g = group_summary(same)
    assert g["iod_basis"] == IOD_BASIS_IMAGE
    assert g["iod_pearson_r"] == pytest.approx(stats.pearsonr([s.iod_real for s in same],
                                                              [s.iod_fake for s in same]).statistic)
    mixed = same + [_score("big", 100, 100, 5000.0, 200.0)]
    g = group_summary(mixed)
    assert g["iod_basis"] == IOD_BASIS_AREA
    ref = stats.pearsonr([s.dab_mean_od_real for s in mixed], [s.dab_mean_od_fake for s in mixed]).statistic
    assert g["iod_pearson_r"] == pytest.approx(ref)
    assert g["iod_mae"] == pytest.approx(np.mean([abs(s.dab_mean_od_fake - s.dab_mean_od_real) for s in mixed]))
    assert g["psnr_ci95"] is not None and g["iod_pearson_r_ci95_fisher"] is not None
