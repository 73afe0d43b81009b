"""registration.pipeline without elastix (coarse only): failures leave no frame-sized temporaries or folders behind."""
import numpy as np
import pytest
from PIL import Image

from registration import pipeline
from registration.coarse import estimate_homography
from util.errors import OptionError
from wsi.reader import open_slide

HISTO = "samples/histo.jpg"  # real H&E, 500x300


@pytest.fixture
def slides(tmp_path):
    he = np.asarray(Image.open(HISTO).convert("RGB"))
    Image.fromarray(he).save(tmp_path / "he.png")
    Image.fromarray(he).save(tmp_path / "ihc.png")
    pts = np.array([[20, 20], [480, 20], [20, 280], [480, 280]], float)
    return tmp_path, estimate_homography(pts, pts + 0.0)


def _cfg(**kw):
    base = dict(her2="1+", skip_fine=True, blocks=(2, 2), patch_size=64, margin=8, overlap=4, report=False)
    base.update(kw)
    return pipeline.BuildConfig(**base)


def test_failure_while_cutting_patches_removes_the_mosaic_temporaries(slides, monkeypatch):
    d, coarse = slides

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline, "_cut_patches", boom)
    with open_slide(d / "he.png") as he, open_slide(d / "ihc.png") as ihc:
        with pytest.raises(RuntimeError, match="disk full"):
            pipeline.build_from_readers(he, ihc, coarse, d / "out", _cfg())
    left = [p.name for p in (d / "out").rglob("*") if p.is_file()]
    assert left == []  # no .ihc_registered.partial.tif / .coverage.partial.tif


def test_bad_level_creates_nothing(slides):
    d, coarse = slides
    with open_slide(d / "he.png") as he, open_slide(d / "ihc.png") as ihc:
        with pytest.raises(OptionError, match="--level 3"):
            pipeline.build_from_readers(he, ihc, coarse, d / "out", _cfg(level=3))
    assert not (d / "out").exists()


def test_coarse_only_build_of_identical_slides_keeps_exact_pixels(slides):
    d, coarse = slides
    with open_slide(d / "he.png") as he, open_slide(d / "ihc.png") as ihc:
        res = pipeline.build_from_readers(he, ihc, coarse, d / "out", _cfg(criteria=pipeline.PatchCriteria(
            min_tissue=0.0, min_score=0.5, score_downsample=2)))
    assert len(res.patches) == 4 * 7  # whole 64 px patches of 500x300
    assert res.kept and all(r.status == "kept" for r in res.patches if r.reason == "kept")
    k = res.kept[0]
    a = np.asarray(Image.open(d / "out" / "HE" / "train" / k.name))
    b = np.asarray(Image.open(d / "out" / "IHC" / "train" / k.name))
    np.testing.assert_array_equal(a, b)  # identity homography on identical slides: pixel-exact pairs
    assert sorted(p.name for p in (d / "out" / "registration" / "he").iterdir()) == ["patches.csv"]


@pytest.mark.parametrize("kw, needle", [
    (dict(stride=0), "--stride 0"),
    (dict(fine=pipeline.fine_mod.FineParams(grid_spacing=0.0)), "--grid_spacing"),
    (dict(fine=pipeline.fine_mod.FineParams(affine_iterations=-1)), "--affine_iterations -1"),
    (dict(skip_fine=False, fine=pipeline.fine_mod.FineParams(affine_iterations=0, bspline_iterations=0)),
     "both 0"),
    (dict(fine=pipeline.fine_mod.FineParams(resolutions=0)), "--resolutions 0"),
    (dict(min_block_tissue=5.0), "--min_block_tissue"),
])
def test_bad_settings_fail_before_any_work(kw, needle):
    """Caught by validate(), not after hours of registration (stride) or as per-block elastix failures."""
    with pytest.raises(OptionError, match=needle):
        _cfg(**kw).validate()
