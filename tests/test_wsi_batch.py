"""Many slides: list files, sharding (--shard, torchrun and SLURM environments), the per-shard manifest, resume after
a kill, a broken slide among good ones, --overwrite, and the onnxruntime backend in stain_slide.py."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

import stain_slide
from util.errors import OptionError
from wsi import batch as B

SVS = "samples/cmu_small_region.svs"


@pytest.fixture(scope="module")
def exp(tiny_stain_run):
    return tiny_stain_run


@pytest.fixture
def slides(tmp_path):
    """Three small real H&E slides (crops of the bundled SVS at 0.46 um/px) and one broken file."""
    from wsi.reader import open_slide

    d = tmp_path / "in"
    d.mkdir()
    with open_slide(SVS) as s:
        for k, (x, y) in enumerate([(1100, 1300), (600, 900), (1400, 1800)]):
            Image.fromarray(s.read_region(x, y, 0, 120, 100)).save(d / f"s{k}.png", dpi=(25400 / 0.46,) * 2)
    (d / "broken.svs").write_bytes(b"this is not a slide")
    return d


def _args(exp, inp, out, *extra):
    return ["--name", "tiny", "--checkpoints_dir", str(exp), "--input", str(inp), "--output", str(out),
            "--tile_size", "64", "--overlap", "8", "--num_workers", "0", "--no_progress", "--no_tissue_mask",
            "--compression", "deflate", *extra]


def _rows(path):
    with open(path, newline="") as f:
        return {r["input"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_shards_cover_every_slide_exactly_once(n):
    items = [f"slide{k}" for k in range(10)]
    parts = [B.shard_items(items, B.Shard(i, n)) for i in range(n)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(items) and len(flat) == len(set(flat))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_from_option_and_environments():
    assert B.resolve_shard("2/4", {"RANK": "0", "WORLD_SIZE": "2"}) == B.Shard(2, 4, "--shard")
    assert B.resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}) == B.Shard(1, 3, "torchrun")
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    assert B.resolve_shard(None, slurm) == B.Shard(4, 8, "slurm")  # --array=1-8: task 5 is shard 4
    assert B.resolve_shard(None, {}) == B.Shard(0, 1, "none")
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(OptionError, match="shard"):
            B.resolve_shard(bad, {})
    with pytest.raises(OptionError, match="RANK"):
        B.resolve_shard(None, {"WORLD_SIZE": "2"})


def test_list_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "l.txt").write_text("# slides\nsub/a.svs\n\n/abs/b.svs\n")
    assert B.read_list_file(tmp_path / "l.txt") == [tmp_path / "sub" / "a.svs", B.Path("/abs/b.svs")]
    (tmp_path / "l.csv").write_text("case,path\n1,sub/a.svs\n2,c.tiff\n")
    assert B.read_list_file(tmp_path / "l.csv") == [tmp_path / "sub" / "a.svs", tmp_path / "c.tiff"]
    (tmp_path / "d.txt").write_text("a.svs\n./a.svs\n")
    with pytest.raises(OptionError, match="twice"):
        B.read_list_file(tmp_path / "d.txt")


def test_broken_slide_fails_alone_then_resume_skips_done_and_retries_failed(tmp_path, exp, slides, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "out"
    assert stain_slide.main(_args(exp, slides, out)) == 1  # one slide failed
    rows = _rows(out / "manifest.csv")
    assert sorted(rows) == ["broken.svs", "s0.png", "s1.png", "s2.png"]
    assert rows["broken.svs"]["status"] == "failed" and "broken.svs" in rows["broken.svs"]["error"]
    for k in range(3):
        r = rows[f"s{k}.png"]
        tiff = out / f"s{k}_ihc.tiff"
        assert r["status"] == "done" and r["error"] == "" and int(r["tiles"]) > 0
        assert r["sha256"] == hashlib.sha256(tiff.read_bytes()).hexdigest()
    assert not (out / "broken_ihc.tiff").exists()
    # resume: the finished slides are not redone, the broken one is retried (and fails again)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tiff")}
    (slides / "broken.svs").write_bytes(b"still broken")
    assert stain_slide.main(_args(exp, slides, out)) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tiff")} == mtimes
    assert any("3 done earlier, 1 to stain" in r.getMessage() for r in caplog.records)
    # the broken slide replaced by a good one: the next run finishes it, exit 0
    Image.open(slides / "s0.png").save(slides / "broken.png", dpi=(25400 / 0.46,) * 2)
    (slides / "broken.svs").unlink()
    assert stain_slide.main(_args(exp, slides, out)) == 0
    rows = _rows(out / "manifest.csv")
    assert rows["broken.png"]["status"] == "done" and rows["broken.svs"]["status"] == "failed"


def test_killed_run_resumes_without_redoing_or_leaving_partials(tmp_path, slides):
    (slides / "broken.svs").unlink()
    jobs = [(slides / f"s{k}.png", tmp_path / f"s{k}_ihc.tiff") for k in range(3)]
    calls = []

    def stain(src, dst):
        calls.append(src.name)
        if src.name == "s1.png" and calls.count("s1.png") == 1:
            # a kill while s1 is written: its temporary is left, the output never appears
            (tmp_path / ".s1_ihc.tiff.abc123.partial.tiff").write_bytes(b"half")
            raise KeyboardInterrupt
        dst.write_bytes(src.read_bytes())
        return {"tiles_run": 3, "seconds": 0.01}

    with pytest.raises(KeyboardInterrupt):
        B.run_many(stain, jobs, tmp_path, B.Shard())
    rows = _rows(tmp_path / "manifest.csv")
    assert [rows[f"s{k}.png"]["status"] for k in range(3)] == ["done", "running", "pending"]
    assert B.run_many(stain, jobs, tmp_path, B.Shard()) == []
    assert calls == ["s0.png", "s1.png", "s1.png", "s2.png"]  # s0 not redone
    assert not list(tmp_path.glob(".*partial*"))
    rows = _rows(tmp_path / "manifest.csv")
    assert all(rows[f"s{k}.png"]["status"] == "done" for k in range(3))
    assert rows["s2.png"]["sha256"] == hashlib.sha256((slides / "s2.png").read_bytes()).hexdigest()


def test_sharded_runs_split_the_folder(tmp_path, exp, slides):
    (slides / "broken.svs").unlink()
    out = tmp_path / "out"
    assert stain_slide.main(_args(exp, slides, out, "--shard", "0/2")) == 0
    assert stain_slide.main(_args(exp, slides, out, "--shard", "1/2")) == 0
    a, b = _rows(out / "manifest.shard-0-of-2.csv"), _rows(out / "manifest.shard-1-of-2.csv")
    assert sorted(a) == ["s0.png", "s2.png"] and sorted(b) == ["s1.png"]
    assert sorted(p.name for p in out.glob("*.tiff")) == ["s0_ihc.tiff", "s1_ihc.tiff", "s2_ihc.tiff"]
    # an unsharded rerun finds every slide done in the shard manifests
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tiff")}
    assert stain_slide.main(_args(exp, slides, out)) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tiff")} == mtimes


def test_existing_output_refused_without_overwrite(tmp_path, exp, slides, capsys):
    dst = tmp_path / "one.tiff"
    dst.write_bytes(b"precious")
    assert stain_slide.main(_args(exp, slides / "s0.png", dst)) == 2
    err = capsys.readouterr().err
    assert err.startswith("stain_slide.py: error:") and str(dst) in err and "--overwrite" in err
    assert dst.read_bytes() == b"precious"
    assert stain_slide.main(_args(exp, slides / "s0.png", dst, "--overwrite")) == 0
    assert dst.read_bytes()[:4] in (b"II+\x00", b"MM\x00+")  # a BigTIFF now
    # a folder run: an output no manifest accounts for stops the run before any work
    out = tmp_path / "out"
    out.mkdir()
    (out / "s1_ihc.tiff").write_bytes(b"someone else's")
    assert stain_slide.main(_args(exp, slides, out)) == 2
    assert "s1_ihc.tiff" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["s1_ihc.tiff"]


def test_list_file_input_and_onnxruntime_backend(tmp_path, exp, slides):
    pytest.importorskip("onnxruntime")
    from scripts import export as export_cli

    onnx = tmp_path / "g.onnx"
    assert export_cli.main(["--name", "tiny", "--checkpoints_dir", str(exp), "--format", "onnx", "--output",
                            str(onnx), "--verify_tile", "64", "--verify_count", "1"]) == 0
    lst = tmp_path / "list.csv"
    lst.write_text("path\nin/s0.png\nin/s2.png\n")
    assert stain_slide.main(_args(exp, lst, tmp_path / "t")) == 0
    args = _args(exp, lst, tmp_path / "o", "--backend", "onnxruntime", "--onnx", str(onnx))
    args.remove("--name"), args.remove("tiny")  # the sidecar describes the network
    assert stain_slide.main(args) == 0
    for k in (0, 2):
        import tifffile

        a = tifffile.imread(tmp_path / "t" / f"s{k}_ihc.tiff").astype(int)
        b = tifffile.imread(tmp_path / "o" / f"s{k}_ihc.tiff").astype(int)
        assert a.shape == b.shape == (100, 120, 3) and np.abs(a - b).max() <= 1
    assert sorted(_rows(tmp_path / "o" / "manifest.csv")) == ["s0.png", "s2.png"]


@pytest.mark.parametrize("path", ["channels_last", "winograd"])
def test_cpu_paths_stain_like_eager(tmp_path, exp, slides, path):
    import tifffile

    src = slides / "s0.png"
    assert stain_slide.main(_args(exp, src, tmp_path / "e.tiff")) == 0
    assert stain_slide.main(_args(exp, src, tmp_path / "f.tiff", "--cpu_path", path)) == 0
    a, b = (tifffile.imread(tmp_path / f).astype(int) for f in ("e.tiff", "f.tiff"))
    assert np.abs(a - b).max() <= 1
