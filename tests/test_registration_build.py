"""End to end: scripts/build_pairs.py on a synthetic slide pair built from real H&E (cmu_small_region.svs)."""
import csv

import numpy as np
import pytest
from PIL import Image

from registration import synthetic
from registration.points import write_points_csv
from registration.stains import grey_channel

pytest.importorskip("itk", reason="fine registration needs itk-elastix")
# itk's SWIG wrappers emit ~1000 of these on import; they say nothing about this project
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute")

from scripts.build_pairs import main  # noqa: E402

H = np.array([[0.98, 0.03, 20.0], [-0.02, 1.01, 15.0], [1e-5, -1e-5, 1.0]])
PTS = np.array([[30, 30], [480, 40], [40, 350], [470, 340]], float)
ARGS = ["--her2", "2+", "--blocks", "2x2", "--patch_size", "128", "--margin", "24", "--overlap", "12",
        "--affine_iterations", "32", "--bspline_iterations", "48", "--grid_spacing", "32", "--resolutions", "2",
        "--score_downsample", "2", "--min_score", "0.6", "--min_tissue", "0.3", "--thumb_size", "200"]


def _project(m, p):
    h = np.c_[p, np.ones(len(p))] @ m.T
    return h[:, :2] / h[:, 2:]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import openslide

    d = tmp_path_factory.mktemp("pair")
    with openslide.OpenSlide("samples/cmu_small_region.svs") as s:
        he = np.asarray(s.read_region((900, 1050), 0, (512, 384)).convert("RGB"))
    truth = synthetic.ihc_like(he)
    ihc = synthetic.deform(truth, (410, 540), H, amplitude=3.0, period=180)
    # a misaligned region: the IHC's content under H&E rows/cols ~[0, 128) x [384, 512) replaced by other tissue
    q = _project(H, np.array([[384, 0], [511, 127]], float)).round().astype(int)
    ihc[max(q[0, 1] - 4, 0):q[1, 1] + 4, q[0, 0] - 4:q[1, 0] + 4] = np.rot90(
        ihc[150:150 + q[1, 1] - max(q[0, 1] - 4, 0) + 4, 40:40 + q[1, 0] - q[0, 0] + 8], 2)
    Image.fromarray(he).save(d / "slide<he>.png")
    Image.fromarray(ihc).save(d / "ihc.png")
    write_points_csv(d / "points.csv", PTS, _project(H, PTS))
    out = d / "out"
    rc = main(["--he", str(d / "slide<he>.png"), "--ihc", str(d / "ihc.png"), "--points", str(d / "points.csv"),
               "--out", str(out), "--phase", "test", "--keep_registered"] + ARGS)
    assert rc == 0
    return d, out, he, truth


def test_layout_names_sizes_and_table(pair):
    d, out, he, truth = pair
    he_files = sorted(p.name for p in (out / "HE" / "test").iterdir())
    ihc_files = sorted(p.name for p in (out / "IHC" / "test").iterdir())
    assert he_files == ihc_files and len(he_files) >= 4
    assert he_files[0] == "00000_test_2+.png"
    assert all(n.endswith("_test_2+.png") and n[:5].isdigit() for n in he_files)
    for n in he_files:
        a, b = Image.open(out / "HE" / "test" / n), Image.open(out / "IHC" / "test" / n)
        assert a.size == b.size == (128, 128) and a.mode == b.mode == "RGB"
    rows = list(csv.DictReader(open(out / "registration" / "slide<he>" / "patches.csv")))
    assert len(rows) == 3 * 4  # whole 128 px patches of a 512x384 frame
    assert sorted(r["name"] for r in rows if r["status"] == "kept") == he_files
    # kept H&E patches are the H&E pixels at the recorded position
    r0 = next(r for r in rows if r["name"] == he_files[0])
    x, y = int(r0["x"]), int(r0["y"])
    np.testing.assert_array_equal(np.asarray(Image.open(out / "HE" / "test" / he_files[0])), he[y:y + 128, x:x + 128])
    assert not list((out / "registration" / "slide<he>").glob(".*partial*"))


def test_registered_ihc_matches_truth_and_bad_patches_dropped(pair):
    d, out, he, truth = pair
    import tifffile

    reg = tifffile.imread(out / "registration" / "slide<he>" / "ihc_registered.tif")
    assert reg.shape == he.shape
    rows = list(csv.DictReader(open(out / "registration" / "slide<he>" / "patches.csv")))
    by_pos = {(int(r["x"]), int(r["y"])): r for r in rows}
    # the replaced region is dropped as misaligned
    assert by_pos[(384, 0)]["reason"] == "misaligned"
    # kept IHC patches sit on the undeformed truth (coarse + fine undid homography and deformation): residual
    # shift (phase correlation, skimage) well below 1 px, where the homography alone leaves pixels-sized shifts
    from skimage.registration import phase_cross_correlation
    from skimage.transform import ProjectiveTransform, warp

    ihc = np.asarray(Image.open(d / "ihc.png"))
    coarse_only = warp(ihc, ProjectiveTransform(H), output_shape=he.shape[:2], order=1, preserve_range=True)
    fine_shift, coarse_shift = [], []
    for r in rows:
        if r["status"] != "kept":
            continue
        x, y = int(r["x"]), int(r["y"])
        ref = grey_channel(truth[y:y + 128, x:x + 128])
        got = grey_channel(np.asarray(Image.open(out / "IHC" / "test" / r["name"])))
        fine_shift.append(np.hypot(*phase_cross_correlation(ref, got, upsample_factor=10)[0]))
        c = grey_channel(coarse_only[y:y + 128, x:x + 128].astype(np.uint8))
        coarse_shift.append(np.hypot(*phase_cross_correlation(ref, c, upsample_factor=10)[0]))
    assert max(fine_shift) < 0.75, fine_shift
    assert np.mean(coarse_shift) > 1.0, coarse_shift
    # background: patches with little tissue are dropped as background
    for r in rows:
        x, y = int(r["x"]), int(r["y"])
        if float(r["tissue"]) < 0.3:
            assert r["reason"] in ("background", "outside_ihc")
    # report with overlays and escaped file names
    html = (out / "registration" / "slide<he>" / "report.html").read_text()
    assert "slide&lt;he&gt;.png" in html and "slide<he>.png" not in html
    for key in ("before_redgreen", "coarse_checker", "fine_redgreen", "histogram", "patch_map"):
        assert (out / "registration" / "slide<he>" / "report_images" / f"{key}.png").is_file()


def test_layout_loads_with_aligned_dataset(pair):
    data = pytest.importorskip("data")
    if not hasattr(data, "create_dataset"):
        pytest.skip("data.create_dataset not available")
    import argparse
    import sys

    d, out, he, truth = pair
    opt = argparse.Namespace(dataroot=str(out), phase="test", direction="AtoB", input_nc=3, output_nc=3,
                             preprocess="none", load_size=128, crop_size=128, no_flip=True, serial_batches=True,
                             batch_size=1, num_threads=0, max_dataset_size=sys.maxsize, isTrain=False, seed=None,
                             dataset_mode="aligned", A_dir="HE", B_dir="IHC", gpu_ids=[])
    ds = data.create_dataset(opt)
    n = len(list((out / "HE" / "test").iterdir()))
    assert len(ds) == n
    item = ds[0]
    assert tuple(item["A"].shape) == tuple(item["B"].shape) == (3, 128, 128)
    assert item["her2"] == "2+"


def test_second_run_continues_numbering_and_refuses_same_name(pair, capsys):
    d, out, he, truth = pair
    common = ["--he", str(d / "slide<he>.png"), "--ihc", str(d / "ihc.png"), "--points", str(d / "points.csv"),
              "--out", str(out), "--phase", "test", "--no_fine", "--no_report"] + ARGS
    assert main(common) == 2
    assert "already holds a build" in capsys.readouterr().err
    n_before = len(list((out / "HE" / "test").iterdir()))
    assert main(common + ["--name", "again"]) == 0
    names = sorted(p.name for p in (out / "HE" / "test").iterdir())
    assert len(names) > n_before and f"{n_before:05d}_test_2+.png" in names


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, pair):
    d = pair[0]
    bad = tmp_path / "few.csv"
    bad.write_text("he_x,he_y,ihc_x,ihc_y\n1,2,3,4\n")
    rc = main(["--he", str(d / "slide<he>.png"), "--ihc", str(d / "ihc.png"), "--points", str(bad),
               "--her2", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "few.csv" in err[0] and "at least 4" in err[0]
    rc = main(["--he", str(tmp_path / "missing.svs"), "--ihc", str(d / "ihc.png"), "--points",
               str(d / "points.csv"), "--her2", "0", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.svs" in err[0]
    rc = main(["--he", str(d / "slide<he>.png"), "--ihc", str(d / "ihc.png"), "--points", str(d / "points.csv"),
               "--her2", "0", "--out", str(tmp_path / "o"), "--mpp", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "MPP" in err[-1]
