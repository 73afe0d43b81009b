"""Coarse stage: the points CSV, the homography (scikit-image) and resampling through it (registration.sampling)."""
import numpy as np
import pytest
from PIL import Image
from skimage.registration import phase_cross_correlation
from skimage.transform import ProjectiveTransform, warp

from registration.coarse import estimate_homography
from registration.points import PointsError, read_points_csv, write_points_csv
from registration.sampling import grid_to_level0, read_warped
from util.errors import UserError
from wsi.reader import open_slide

HISTO = "samples/histo.jpg"  # real H&E, 500x300

H_TRUE = np.array([[1.03, 0.04, 12.0], [-0.05, 0.97, 9.0], [2e-4, -1.5e-4, 1.0]])


def _project(m, p):
    h = np.c_[p, np.ones(len(p))] @ np.asarray(m).T
    return h[:, :2] / h[:, 2:]


def test_csv_round_trip_and_column_order(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("ihc_y,he_x,note,he_y,ihc_x\n4,1,a,2,3\n8,5,b,6,7\n12,9,c,10,11\n16,13,d,14,15\n")
    he, ihc = read_points_csv(p)
    np.testing.assert_array_equal(he, [[1, 2], [5, 6], [9, 10], [13, 14]])
    np.testing.assert_array_equal(ihc, [[3, 4], [7, 8], [11, 12], [15, 16]])
    write_points_csv(tmp_path / "b.csv", he, ihc)
    he2, ihc2 = read_points_csv(tmp_path / "b.csv")
    np.testing.assert_array_equal(he, he2)
    np.testing.assert_array_equal(ihc, ihc2)


@pytest.mark.parametrize("text, needle", [
    ("he_x,he_y,ihc_x\n1,2,3\n", "ihc_y"),
    ("he_x,he_y,ihc_x,ihc_y\n1,2,3,4\n5,6,7,8\n9,1,2,3\n", "3 point pair"),
    ("he_x,he_y,ihc_x,ihc_y\n1,2,3,4\n5,x,7,8\n9,1,2,3\n4,4,4,4\n", "line 3"),
    ("he_x,he_y,ihc_x,ihc_y\n1,2,3,4\n5,nan,7,8\n9,1,2,3\n4,4,4,4\n", "finite"),
    ("", "empty"),
])
def test_csv_errors_name_the_file(tmp_path, text, needle):
    p = tmp_path / "my_points.csv"
    p.write_text(text)
    with pytest.raises(PointsError, match=needle) as e:
        read_points_csv(p)
    assert "my_points.csv" in str(e.value)
    assert isinstance(e.value, UserError)


def test_missing_csv_is_points_error(tmp_path):
    with pytest.raises(PointsError, match="nope.csv"):
        read_points_csv(tmp_path / "nope.csv")


@pytest.mark.parametrize("he", [
    [[0, 0], [10, 10], [20, 20], [30, 30]],                 # all collinear
    [[0, 0], [10, 10], [20, 20], [30, 30], [5, 40]],         # all but one collinear: still not unique
    [[0, 0], [100, 0], [0, 100], [100, 100], [0, 0.2]],      # duplicate H&E point
])
def test_degenerate_sets_are_errors(he):
    he = np.asarray(he, float)
    with pytest.raises(PointsError, match="pts.csv"):
        estimate_homography(he, _project(H_TRUE, he), source="pts.csv")


def test_duplicate_ihc_point_is_error():
    he = np.array([[0, 0], [100, 0], [0, 100], [100, 100], [50, 40]], float)
    ihc = _project(H_TRUE, he)
    ihc[4] = ihc[0]
    with pytest.raises(PointsError, match="rows 1 and 5"):
        estimate_homography(he, ihc, source="pts.csv")


def test_fewer_than_four_points():
    he = np.array([[0, 0], [100, 0], [0, 100]], float)
    with pytest.raises(PointsError, match="at least 4"):
        estimate_homography(he, he + 1, source="pts.csv")


def test_folding_transform_is_error():
    # a homography whose line at infinity (x = 250) crosses a 500 px wide slide
    m = np.array([[1, 0, 0], [0, 1, 0], [-1 / 250, 0, 1]])
    he = np.array([[10, 10], [200, 20], [30, 250], [220, 240], [400, 100]], float)
    with pytest.raises(PointsError, match="folds"):
        estimate_homography(he, _project(m, he), source="pts.csv", he_size=(500, 300))


def test_residuals_per_point_match_direct_computation():
    rng = np.random.default_rng(0)
    he = rng.uniform(0, 1000, (8, 2))
    ihc = _project(H_TRUE, he) + rng.normal(0, 2.0, (8, 2))
    res = estimate_homography(he, ihc)
    ref = ProjectiveTransform.from_estimate(he, ihc)  # the library call, independently
    np.testing.assert_allclose(res.residuals, np.hypot(*(ref(he) - ihc).T), rtol=1e-6, atol=1e-9)
    assert res.rms == pytest.approx(np.sqrt(np.mean(res.residuals ** 2)))
    assert 0.5 < res.rms < 4


def test_projective_distortion_undone_from_four_points(tmp_path):
    """A known homography applied to real H&E is undone from 4 point pairs to well below 1 px."""
    he = np.asarray(Image.open(HISTO).convert("RGB"))
    h, w = he.shape[:2]
    # IHC frame: he sampled at H^-1(q) (skimage warp's inverse-map convention)
    ihc = warp(he, ProjectiveTransform(np.linalg.inv(H_TRUE)), output_shape=(h + 20, w + 20), order=3,
               mode="constant", cval=1.0, preserve_range=False)
    ihc = np.clip(np.rint(ihc * 255), 0, 255).astype(np.uint8)
    Image.fromarray(ihc).save(tmp_path / "ihc.png")
    pts = np.array([[40, 30], [460, 25], [35, 270], [455, 260]], float)
    res = estimate_homography(pts, _project(H_TRUE, pts), he_size=(w, h))
    # geometric error of the fitted transform over the whole slide
    yy, xx = np.mgrid[0:h:10, 0:w:10]
    grid = np.c_[xx.ravel(), yy.ravel()].astype(float)
    assert np.hypot(*(res.transform(grid) - _project(H_TRUE, grid)).T).max() < 0.05
    # resampling the IHC slide back onto the H&E frame through the fit recovers the image to sub-pixel accuracy
    with open_slide(tmp_path / "ihc.png") as r:
        back, cov = read_warped(r, res.matrix @ grid_to_level0(1.0), h, w, tile=128)
    assert cov[20:-20, 20:-20].all()
    a = he[30:-30, 30:-30].mean(-1)
    b = back[30:-30, 30:-30].mean(-1)
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=20)
    assert np.hypot(*shift) < 0.25
    assert np.abs(a - b).mean() < 6
    # and without the transform the images are far apart
    assert np.abs(a - ihc[30:h - 30, 30:w - 30].mean(-1)).mean() > 20


def test_read_warped_identity_and_level_choice(tmp_path):
    """Integer windows on level 0 are exact copies; an outside source is white and uncovered."""
    he = np.asarray(Image.open(HISTO).convert("RGB"))
    Image.fromarray(he).save(tmp_path / "he.png")
    with open_slide(tmp_path / "he.png") as r:
        out, cov = read_warped(r, grid_to_level0(1.0, 450, 270), 40, 60)
    np.testing.assert_array_equal(out[:30, :50], he[270:300, 450:500])
    assert cov[:30, :50].all() and not cov[30:].any() and not cov[:, 50:].any()
    assert (out[30:] == 255).all()


def test_read_warped_downsample_matches_block_mean(tmp_path):
    """Downsample 2 on a single-level image: close to a 2x2 block mean (anti-aliased bilinear, centre rule)."""
    he = np.asarray(Image.open(HISTO).convert("RGB"))
    Image.fromarray(he).save(tmp_path / "he.png")
    with open_slide(tmp_path / "he.png") as r:
        out, cov = read_warped(r, grid_to_level0(2.0), 150, 250, tile=64)
    ref = he.astype(float).reshape(150, 2, 250, 2, 3).mean(axis=(1, 3))
    assert cov.all()
    assert np.abs(out[2:-2, 2:-2] - ref[2:-2, 2:-2]).mean() < 8
