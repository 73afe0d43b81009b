"""scripts/make_sample_dataset.py: structure, names, derivation, determinism, refusing to overwrite."""
import argparse
import csv
import re
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import color

import data
from data.her2 import HER2_LEVELS
from scripts import make_sample_dataset as msd

NAME_RE = re.compile(r"^\d{5}_(train|test)_(0|1\+|2\+|3\+)\.png$")
ARGS = ["--tile_size", "64", "--n_train", "6", "--n_test", "4", "--seed", "3"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("s") / "sample_bci"
    assert msd.main(["--out", str(out), *ARGS]) == 0
    return out


def read_rows(out):
    with open(out / "tiles.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_structure_and_names(built):
    assert sorted(p.name for p in built.iterdir()) == ["HE", "IHC", "README.md", "tiles.csv"]
    for phase, n in (("train", 6), ("test", 4)):
        he = sorted(p.name for p in (built / "HE" / phase).iterdir())
        ihc = sorted(p.name for p in (built / "IHC" / phase).iterdir())
        assert he == ihc and len(he) == n
        assert [int(x[:5]) for x in he] == list(range(n))
        for name in he:
            m = NAME_RE.match(name)
            assert m and m.group(1) == phase
            for sub in ("HE", "IHC"):
                with Image.open(built / sub / phase / name) as im:
                    assert im.size == (64, 64) and im.mode == "RGB"
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
    readme = (built / "README.md").read_text()
    assert "DERIVED" in readme and "no known copyright restrictions" in readme and "BSD-3" in readme


def test_ihc_is_the_real_image_and_he_has_no_dab(built):
    src = np.asarray(Image.open(msd.DEFAULT_SOURCE).convert("RGB"))
    rows = read_rows(built)
    assert len(rows) == 10
    for r in rows:
        top, left, k, flip = int(r["top"]), int(r["left"]), int(r["rot90"]), r["flip"] == "1"
        ref = np.rot90(src[top:top + 64, left:left + 64], k)
        ref = ref[:, ::-1] if flip else ref
        ihc = np.asarray(Image.open(built / "IHC" / r["phase"] / r["name"]))
        np.testing.assert_array_equal(ihc, ref)
        if r["phase"] == "train":
            assert left + 64 <= src.shape[1] - 64  # train tiles never reach the test strip
        else:
            assert left == src.shape[1] - 64
    he_dab = np.mean([color.rgb2hed(np.asarray(Image.open(p)))[..., 2].mean() for p in built.glob("HE/*/*.png")])
    ihc_dab = np.mean([color.rgb2hed(np.asarray(Image.open(p)))[..., 2].mean() for p in built.glob("IHC/*/*.png")])
    assert he_dab < 0.25 * ihc_dab


def test_her2_levels_follow_dab_fraction(built):
    rows = read_rows(built)
    for r in rows:
        assert r["name"].endswith(f"_{r['her2']}.png")
    order = sorted(rows, key=lambda r: float(r["dab_fraction"]))
    ranks = [HER2_LEVELS.index(r["her2"]) for r in order]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1, 2, 3}


def test_loads_as_aligned_dataset_with_her2(built):
    opt = argparse.Namespace(dataroot=str(built), phase="test", direction="AtoB", input_nc=3, output_nc=3,
                             preprocess="none", load_size=64, crop_size=64, no_flip=True, serial_batches=True,
                             batch_size=1, num_threads=0, max_dataset_size=sys.maxsize, isTrain=False, seed=None,
                             dataset_mode="aligned", A_dir="HE", B_dir="IHC", gpu_ids=[])
    ds = data.create_dataset(opt)
    assert len(ds) == 4
    for i in range(4):
        item = ds[i]
        assert item["A"].shape == (3, 64, 64) and item["her2"] == NAME_RE.match(item["A_paths"].rsplit("/", 1)[1])[2]


def test_deterministic_for_a_seed(built, tmp_path):
    again = tmp_path / "again"
    assert msd.main(["--out", str(again), *ARGS]) == 0
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((built / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    assert msd.main(["--out", str(other), *ARGS[:-1], "4"]) == 0
    assert (other / "tiles.csv").read_text() != (built / "tiles.csv").read_text()


def test_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert msd.main(["--out", str(out), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "precious"
    assert msd.main(["--out", str(out), *ARGS, "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "tiles.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # old copy and temp folders removed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert msd.main(["--out", str(empty), *ARGS]) == 0  # an empty folder is not "existing data"


def test_tile_too_large(tmp_path, capsys):
    assert msd.main(["--out", str(tmp_path / "x"), "--tile_size", "300"]) == 2
    assert "--tile_size 300" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
