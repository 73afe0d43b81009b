"""Fault injection: kills during checkpoint saves, write failures, stale temporaries, inconsistent and broken
checkpoints, stale or duplicate results, collapsed models and bad inputs (docs/RELIABILITY.md lists each fault).

Training runs that are killed run in subprocesses (``VIRTUAL_IHC_FAULT`` makes the process SIGKILL itself at a
named point of the checkpoint-set write, see util/checkpoint.py); the others call the entry points' ``main``.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluate
import test as test_script
import train
from util.checkpoint import open_set

from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _args(dataroot, ck, name="run", extra=()):
    # 6 images, batch 1, 2 epochs: 12 iterations; mid-epoch sets every 4 images; dropout on (RNG state matters)
    return ["--dataroot", str(dataroot), "--checkpoints_dir", str(ck), "--name", name, "--model", "pix2pix",
            "--n_epochs", "1", "--n_epochs_decay", "1", "--seed", "0", "--print_freq", "100", "--display_freq", "100",
            "--netG", "resnet_6blocks", "--preprocess", "none", "--save_latest_freq", "4", *TINY, *extra]


def _run_train(args, fault=None, timeout=240, preexec=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("VIRTUAL_IHC_FAULT", None)
    if fault:
        env["VIRTUAL_IHC_FAULT"] = fault
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec)


def _weights(path):
    return torch.load(path, weights_only=True)


def _assert_same_weights(a, b):
    sa, sb = _weights(a), _weights(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _assert_set_loads(exp: Path, label="latest"):
    cs = open_set(exp, label)
    assert not cs.legacy
    for fname in cs.manifest["files"]:
        cs.load(fname)  # every file present and matching the manifest's sha256
    return cs


@pytest.fixture(scope="module")
def straight(sample_bci, tmp_path_factory):
    """An uninterrupted run: the reference for every resumed one."""
    ck = tmp_path_factory.mktemp("straight")
    r = _run_train(_args(sample_bci, ck))
    assert r.returncode == 0, r.stderr[-2000:]
    return ck / "run"


# ---- 1. a checkpoint is a set, written atomically; a killed run resumes bit-identically -----------------------------
@pytest.mark.parametrize("fault, expect_label_epoch", [
    ("save_file:5", (1, 4)),        # killed while writing the 2nd set (end of epoch 1): mid-epoch set of iteration 4
    ("before_commit:3", (1, 0)),    # killed just before committing the 3rd set: the epoch-1 set
    ("apply_file:8", (2, 2)),       # killed between the renames of the 3rd set (committed): the mid-epoch-2 set
    ("save_manifest:1", None),      # killed before the very first set was complete: nothing to resume from
])
def test_kill_during_save_then_resume_is_bit_identical(sample_bci, tmp_path, straight, fault, expect_label_epoch):
    args = _args(sample_bci, tmp_path)
    r = _run_train(args, fault=fault)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    exp = tmp_path / "run"
    if expect_label_epoch is None:
        with pytest.raises(Exception, match="no checkpoint set 'latest'"):
            open_set(exp, "latest")
        resume = _run_train(args + ["--continue_train"])
        assert resume.returncode == 2 and "train.py: error: no checkpoint set 'latest'" in resume.stderr
        assert "Traceback" not in resume.stderr
        return
    cs = _assert_set_loads(exp)
    assert (cs.manifest["epoch"], cs.manifest["epoch_iter"]) == expect_label_epoch
    resume = _run_train(args + ["--continue_train"])
    assert resume.returncode == 0, resume.stderr[-3000:]
    epoch, it = expect_label_epoch
    where = f"continuing at epoch {epoch}, batch {it + 1}" if it else f"continuing at epoch {epoch + 1}"
    assert where in resume.stderr
    assert not [p for p in exp.iterdir() if p.name.startswith(".ckptset-")]  # staging/commit folders cleaned up
    for f in ("latest_net_G.pth", "latest_net_D.pth", "2_net_G.pth"):
        _assert_same_weights(exp / f, straight / f)
    _assert_set_loads(exp)
    _assert_set_loads(exp, "2")


def test_committed_set_is_read_from_its_commit_folder(sample_bci, tmp_path):
    """A kill between the renames of a committed set: readers (test.py) see the whole new set, never a mix."""
    args = _args(sample_bci, tmp_path)
    r = _run_train(args, fault="apply_file:8")
    assert r.returncode == -signal.SIGKILL
    exp = tmp_path / "run"
    commits = [p for p in exp.iterdir() if p.name.endswith(".commit")]
    assert len(commits) == 1
    top = json.loads((exp / "latest_set.json").read_text())  # the old manifest is still at the top
    cs = _assert_set_loads(exp)
    assert cs.manifest["set_id"] != top["set_id"] and (cs.manifest["epoch"], cs.manifest["epoch_iter"]) == (2, 2)
    assert commits[0].exists()  # reading changed nothing


# ---- 2. write failures are errors and keep the previous set ---------------------------------------------------------
def test_full_disk_is_one_error_line_and_keeps_the_previous_set(sample_bci, tmp_path):
    args = _args(sample_bci, tmp_path, extra=["--save_latest_freq", "1000"])
    first = _run_train(args + ["--n_epochs_decay", "0"])
    assert first.returncode == 0, first.stderr[-2000:]
    exp = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in exp.glob("latest_*")}
    r = _run_train(args + ["--continue_train"], fault="enospc:save_file")
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: cannot write ") and "2_net_G.pth" in last  # the epoch set comes first
    assert "No space left on device" in last and "Traceback" not in r.stderr
    assert {p.name: p.read_bytes() for p in exp.glob("latest_*")} == before
    assert _assert_set_loads(exp).manifest["epoch"] == 1
    assert not [p for p in exp.iterdir() if p.name.startswith(".ckptset-")]


def test_file_size_limit_is_a_real_write_failure(sample_bci, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG) even for root: a real I/O error inside torch.save."""
    args = _args(sample_bci, tmp_path, extra=["--save_latest_freq", "1000"])
    ok = _run_train(args + ["--n_epochs_decay", "0"])
    assert ok.returncode == 0
    exp = tmp_path / "run"
    before = (exp / "latest_net_G.pth").read_bytes()
    limit = (exp / "latest_net_G.pth").stat().st_size // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = _run_train(args + ["--continue_train"], preexec=small_files)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("train.py: error: cannot write ")
    assert "Traceback" not in r.stderr
    assert (exp / "latest_net_G.pth").read_bytes() == before
    _assert_set_loads(exp)


def test_stale_temporaries_are_removed_and_never_loaded(sample_bci, tmp_path):
    args = _args(sample_bci, tmp_path, extra=["--n_epochs_decay", "0"])
    assert _run_train(args).returncode == 0
    exp = tmp_path / "run"
    stage = exp / ".ckptset-dead-0000.partial"
    stage.mkdir()
    (stage / "latest_net_G.pth").write_bytes(b"half a file")
    (exp / ".latest_net_G.pth.x1y2.partial.pth").write_bytes(b"half a file")
    assert test_script.main(["--dataroot", str(args[1]), "--checkpoints_dir", str(tmp_path), "--name", "run",
                             "--results_dir", str(tmp_path / "res")]) == 0  # readers ignore them
    assert stage.exists()  # ... and do not touch them
    r = _run_train(_args(sample_bci, tmp_path) + ["--continue_train"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "removed the unfinished checkpoint write" in r.stderr
    assert not stage.exists() and not (exp / ".latest_net_G.pth.x1y2.partial.pth").exists()


def test_second_training_in_the_same_folder_is_refused(sample_bci, tmp_path):
    from util.run_lock import ExperimentLock

    lock = ExperimentLock(tmp_path / "run")
    try:
        r = _run_train(_args(sample_bci, tmp_path))
    finally:
        lock.release()
    assert r.returncode == 2 and "another training run is writing to" in r.stderr


def test_lock_is_free_once_the_training_is_killed_even_while_its_forked_workers_live(tmp_path):
    """kill -9 of a training whose DataLoader workers (forked children) outlive it for a few seconds: the lock
    belongs to the killed process only, so --continue_train can start at once; a second lock of the same folder in
    one process is refused too."""
    import signal
    import subprocess
    import sys

    from util.errors import UserError
    from util.run_lock import ExperimentLock

    code = ("import os, signal, sys, time\nfrom util.run_lock import ExperimentLock\n"
            "lock = ExperimentLock(sys.argv[1])\n"
            "pid = os.fork()\n"
            # a worker that outlives the trainer (its output closed: the caller does not wait for it)
            "if pid == 0:\n    os.close(1)\n    os.close(2)\n    time.sleep(30)\n    os._exit(0)\n"
            "print('LOCKED', pid, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    repo = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PYTHONPATH=str(repo)))
    assert "LOCKED" in r.stdout and r.returncode == -signal.SIGKILL, r.stderr
    worker = int(r.stdout.split()[1])
    lock = ExperimentLock(tmp_path / "run")  # the orphaned child still runs, holding the inherited descriptor
    try:
        with pytest.raises(UserError, match="another training run is writing to"):
            ExperimentLock(tmp_path / "run")
    finally:
        lock.release()
    ExperimentLock(tmp_path / "run").release()  # released: free again
    try:
        os.kill(worker, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---- sets: consistency, legacy files, other models ---------------------------------------------------------------
def _trained(sample_bci, tmp_path, name="run", extra=()):
    assert train.main(_args(sample_bci, tmp_path, name, extra=["--n_epochs_decay", "0", *extra])) == 0
    return tmp_path / name


def test_mixed_set_is_refused_naming_the_file(sample_bci, tmp_path, capsys):
    exp = _trained(sample_bci, tmp_path)
    other = _trained(sample_bci, tmp_path, "other", extra=["--seed", "5"])
    shutil.copy(other / "latest_net_D.pth", exp / "latest_net_D.pth")  # D from another run: a set of two moments
    capsys.readouterr()
    rc = train.main(_args(sample_bci, tmp_path) + ["--continue_train"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.py: error: checkpoint set 'latest'" in err and "'latest_net_D.pth'" in err
    assert "inconsistent" in err


def test_legacy_set_loads_with_a_warning(sample_bci, tmp_path, capsys):
    exp = _trained(sample_bci, tmp_path)
    (exp / "latest_set.json").unlink()
    (exp / "1_set.json").unlink()
    capsys.readouterr()
    assert test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(tmp_path), "--name", "run",
                             "--results_dir", str(tmp_path / "res")]) == 0
    assert "its consistency cannot be checked" in capsys.readouterr().err
    assert train.main(_args(sample_bci, tmp_path, extra=["--n_epochs", "2", "--n_epochs_decay", "0",
                                                          "--continue_train"])) == 0
    assert "its consistency cannot be checked" in capsys.readouterr().err


def test_set_of_another_model_is_refused(sample_bci, tmp_path, capsys):
    _trained(sample_bci, tmp_path)
    capsys.readouterr()
    rc = train.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(tmp_path), "--name", "run",
                     "--model", "cycle_gan", "--dataset_mode", "unaligned", "--continue_train",
                     "--n_epochs", "1", "--n_epochs_decay", "0", "--netG", "resnet_6blocks", *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and "was written by --model pix2pix (networks G, D), not --model cycle_gan" in err


def test_keep_last_keeps_only_recent_epoch_sets(sample_bci, tmp_path):
    exp = _trained(sample_bci, tmp_path, extra=["--n_epochs", "3", "--save_epoch_freq", "1", "--keep_last", "2",
                                                "--save_latest_freq", "1000"])
    assert sorted(p.name for p in exp.glob("*_set.json")) == ["2_set.json", "3_set.json", "latest_set.json"]
    assert not list(exp.glob("1_*"))
    _assert_set_loads(exp, "2")


# ---- 3. one run per results folder -------------------------------------------------------------------------------
def _test_args(sample_bci, tmp_path, *extra):
    return ["--dataroot", str(sample_bci), "--checkpoints_dir", str(tmp_path), "--name", "run", "--results_dir",
            str(tmp_path / "res"), *extra]


def test_results_folder_holds_one_run(sample_bci, tmp_path, capsys):
    _trained(sample_bci, tmp_path)
    run_dir = tmp_path / "res" / "run" / "test_latest"
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 0
    first = sorted(p.name for p in (run_dir / "images").iterdir())
    man = json.loads((run_dir / "run_manifest.json").read_text())
    assert man["n_images"] == 3 and man["checkpoint"]["label"] == "latest"
    assert man["checkpoint"]["set_id"] == open_set(tmp_path / "run", "latest").manifest["set_id"]
    capsys.readouterr()
    assert test_script.main(_test_args(sample_bci, tmp_path, "--num_test", "2")) == 2
    err = capsys.readouterr().err
    assert "test.py: error: results folder" in err and "--overwrite" in err
    assert sorted(p.name for p in (run_dir / "images").iterdir()) == first  # untouched
    assert test_script.main(_test_args(sample_bci, tmp_path, "--num_test", "2", "--overwrite")) == 0
    assert len(list((run_dir / "images").glob("*_fake_B.png"))) == 2
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".")]
    # a stray pair copied in later is not part of the run: evaluate scores the manifest's images only
    for role in ("fake_B", "real_B"):
        shutil.copy(next((run_dir / "images").glob(f"*_{role}.png")), run_dir / "images" / f"zzz_{role}.png")
    capsys.readouterr()
    assert evaluate.main(["--result_path", str(tmp_path / "res" / "run"), "--no_fid", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "2 image pair(s) (listed in run_manifest.json)" in out and "1 pair(s) in the folder not in the manifest" in out
    assert json.loads((run_dir / "metrics.json").read_text())["n_images"] == 2


def test_interrupted_test_run_leaves_the_previous_results(sample_bci, tmp_path, monkeypatch):
    _trained(sample_bci, tmp_path)
    run_dir = tmp_path / "res" / "run" / "test_latest"
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 0
    before = {p.name: p.read_bytes() for p in (run_dir / "images").iterdir()}
    import util.results_run as rr

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rr, "write_manifest", boom)
    assert test_script.main(_test_args(sample_bci, tmp_path, "--overwrite", "--num_test", "1")) == 130
    assert {p.name: p.read_bytes() for p in (run_dir / "images").iterdir()} == before
    assert not [p for p in run_dir.parent.iterdir() if ".partial-" in p.name]


def test_duplicate_stems_are_refused_with_both_names(tmp_path, sample_bci, capsys):
    _trained(sample_bci, tmp_path)
    he = tmp_path / "he"
    he.mkdir()
    src = next((sample_bci / "HE" / "test").iterdir())
    shutil.copy(src, he / "x.png")
    from PIL import Image

    Image.open(src).convert("RGB").save(he / "x.jpg", quality=95)
    capsys.readouterr()
    rc = test_script.main(["--dataroot", str(he), "--checkpoints_dir", str(tmp_path), "--name", "run", "--model",
                           "test", "--results_dir", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and "x.png" in err and "x.jpg" in err and "share a file stem" in err


def test_no_fid_rerun_keeps_earlier_fid(sample_bci, tmp_path):
    _trained(sample_bci, tmp_path)
    run_dir = tmp_path / "res" / "run" / "test_latest"
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 0
    assert evaluate.main(["--result_path", str(tmp_path / "res" / "run"), "--no_fid", "--no_progress"]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    m["fid_kid"] = {"status": "computed", "fid": 12.5, "kid_x1e3": 1.0, "kid_std_x1e3": 0.1, "kid_subsets": 10,
                    "kid_subset_size": 2, "n_images": 3, "extractor": "test"}  # as if computed with weights
    (run_dir / "metrics.json").write_text(json.dumps(m))
    assert evaluate.main(["--result_path", str(tmp_path / "res" / "run"), "--no_fid", "--no_progress"]) == 0
    kept = json.loads((run_dir / "metrics.json").read_text())["fid_kid"]
    assert kept["fid"] == 12.5 and kept["kept_from_earlier_evaluation"] is True
    assert evaluate.main(["--result_path", str(tmp_path / "res" / "run"), "--no_fid", "--drop_fid",
                          "--no_progress"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["fid_kid"]["status"] == "skipped"


# ---- 4. collapsed or broken outputs are flagged ------------------------------------------------------------------
def test_flat_outputs_are_flagged_and_strict_fails(sample_bci, tmp_path, capsys):
    exp = _trained(sample_bci, tmp_path)
    # a collapsed generator: last convolution's weights zero, bias constant -> a flat grey image
    sd = _weights(exp / "latest_net_G.pth")
    last = [k for k in sd if k.endswith(".weight") and sd[k].dim() == 4][-1]
    sd[last].zero_()
    sd[last.replace(".weight", ".bias")].fill_(0.1)
    torch.save(sd, exp / "latest_net_G.pth")
    (exp / "latest_set.json").unlink()  # hand-edited: now a legacy set (loads with a warning)
    capsys.readouterr()
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 0
    assert "3 of 3 outputs are flagged (flat" in capsys.readouterr().err
    assert test_script.main(_test_args(sample_bci, tmp_path, "--overwrite", "--strict")) == 3
    res = tmp_path / "res" / "run"
    assert evaluate.main(["--result_path", str(res), "--no_fid", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "3 of 3 virtual IHC image(s) flagged" in out and "IOD Pearson r not reported: near-constant" in out
    m = json.loads((res / "test_latest" / "metrics.json").read_text())
    assert m["n_flagged"] == 3 and m["iod_pearson_r"] is None and "near-constant virtual IOD" in m["iod_pearson_r_note"]
    assert "flagged virtual IHC" in (res / "test_latest" / "metrics.md").read_text()
    assert evaluate.main(["--result_path", str(res), "--no_fid", "--no_progress", "--strict"]) == 3


def test_nan_checkpoint_is_refused(sample_bci, tmp_path, capsys):
    exp = _trained(sample_bci, tmp_path)
    sd = _weights(exp / "latest_net_G.pth")
    next(v for v in sd.values() if v.is_floating_point())[0] = float("nan")
    torch.save(sd, exp / "latest_net_G.pth")
    (exp / "latest_set.json").unlink()
    capsys.readouterr()
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 2
    assert "holds NaN or infinite values" in capsys.readouterr().err


# ---- 5. one error contract ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, expect", [
    (b"this is a text file, not a checkpoint\n", "not a readable PyTorch checkpoint"),
    ("truncate", "not a readable PyTorch checkpoint"),
    ("pickle_object", "which the safe loader (weights_only=True) refuses"),
])
def test_broken_checkpoint_files(sample_bci, tmp_path, capsys, content, expect):
    exp = _trained(sample_bci, tmp_path)
    g = exp / "latest_net_G.pth"
    if content == "truncate":
        g.write_bytes(g.read_bytes()[: g.stat().st_size // 3])
    elif content == "pickle_object":
        import argparse

        torch.save({"weights": argparse.Namespace(a=1)}, g)
    else:
        g.write_bytes(content)
    (exp / "latest_set.json").unlink()  # without the manifest the file itself must be diagnosed
    capsys.readouterr()
    rc = test_script.main(_test_args(sample_bci, tmp_path))
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and str(g) in err
    assert "Traceback" not in err and "weights_only=False" not in err and "weights_only` to `False" not in err
    assert err.strip().splitlines()[-1].startswith("test.py: error: ")


def test_truncated_file_of_a_set_is_named(sample_bci, tmp_path, capsys):
    exp = _trained(sample_bci, tmp_path)
    g = exp / "latest_net_G.pth"
    g.write_bytes(g.read_bytes()[:100])
    capsys.readouterr()
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "test.py: error: checkpoint set 'latest'" in err and "'latest_net_G.pth'" in err


def test_tiny_image_is_refused_by_name(sample_bci, tmp_path, capsys):
    _trained(sample_bci, tmp_path)
    he = tmp_path / "he"
    he.mkdir()
    from PIL import Image

    Image.new("RGB", (1, 1), (200, 120, 180)).save(he / "dot.png")
    shutil.copy(next((sample_bci / "HE" / "test").iterdir()), he / "tile.png")
    capsys.readouterr()
    rc = test_script.main(["--dataroot", str(he), "--checkpoints_dir", str(tmp_path), "--name", "run", "--model",
                           "test", "--results_dir", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and "dot.png" in err and "(1x1 px)" in err and "tile.png" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, expect", [
    (["--lr", "-1"], "--lr must be a positive finite number"),
    (["--n_epochs", "-1"], "--n_epochs must be >= 0"),
    (["--n_epochs", "0", "--n_epochs_decay", "0"], "must be at least 1"),
    (["--model", "pyramidpix2pix", "--pattern", "L1_L9"], "unknown token 'L9'"),
    (["--gpu_ids", "7"], "GPU [7] does not exist"),
    (["--save_latest_freq", "0"], "--save_latest_freq must be >= 1"),
])
def test_bad_training_options(sample_bci, tmp_path, capsys, extra, expect):
    rc = train.main(_args(sample_bci, tmp_path) + extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("train.py: error: ") and expect in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_parse_errors_print_usage_and_prefix(capsys):
    assert train.main(["--bogus", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: train.py") and err.strip().splitlines()[-1] == \
        "train.py: error: unrecognized arguments: --bogus 1"


@pytest.mark.parametrize("prog, argv", [("train.py", ["--model", "pyramidpix2pix"]), ("test.py", []),
                                        ("evaluate.py", None)])
def test_help_shows_each_default_once(prog, argv):
    import re

    if prog == "evaluate.py":
        text = evaluate.build_parser().format_help()
    else:
        import options

        text = options.build_parser(prog == "train.py", argv).format_help()
    # argparse wraps help text; join each option's entry and count "default" mentions in it
    entries = re.split(r"\n  (?=-)", text)
    doubled = [e.split()[0] for e in entries if len(re.findall(r"default", e, flags=re.IGNORECASE)) > 1]
    assert doubled == []


def test_ctrl_c_names_the_last_complete_checkpoint(sample_bci, tmp_path):
    args = _args(sample_bci, tmp_path, extra=["--n_epochs", "200", "--save_latest_freq", "2"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "latest_set.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("train.py: interrupted; last complete checkpoint: 'latest' (epoch ") and "Traceback" not in err
    _assert_set_loads(tmp_path / "run")


def test_names_are_escaped_in_reports(sample_bci, tmp_path):
    name = "exp|<img src=x onerror=alert(1)>"
    assert train.main(_args(sample_bci, tmp_path, name, extra=["--n_epochs_decay", "0"])) == 0
    assert test_script.main(["--dataroot", str(sample_bci), "--checkpoints_dir", str(tmp_path), "--name", name,
                             "--results_dir", str(tmp_path / "res")]) == 0
    assert evaluate.main(["--result_path", str(tmp_path / "res"), "--no_fid", "--no_progress"]) == 0
    md = (tmp_path / "res" / name / "test_latest" / "metrics.md").read_text()
    table = (tmp_path / "res" / "metrics_test_latest.md").read_text()
    html = (tmp_path / "res" / name / "test_latest" / "index.html").read_text()
    for text in (md, table, html):
        assert "<img src=x" not in text
    assert "exp\\|&lt;img" in md and "exp\\|&lt;img" in table


# ---- found by an adversarial review ---------------------------------------------------------------------------------
def test_keep_last_keeps_the_newest_sets_of_a_resumed_run(sample_bci, tmp_path, capsys):
    """Resuming from an earlier epoch with --keep_last deletes the stale sets of the abandoned run first, never the
    set just written."""
    exp = _trained(sample_bci, tmp_path, extra=["--n_epochs", "4", "--save_epoch_freq", "1", "--save_latest_freq",
                                                "1000"])
    capsys.readouterr()
    assert train.main(_args(sample_bci, tmp_path, extra=["--n_epochs", "3", "--n_epochs_decay", "0",
                                                          "--save_epoch_freq", "1", "--keep_last", "1",
                                                          "--save_latest_freq", "1000", "--continue_train",
                                                          "--epoch", "2"])) == 0
    assert "checkpoint sets 3, 4 are from a later point of an earlier run" in capsys.readouterr().err
    assert sorted(p.name for p in exp.glob("*_set.json")) == ["3_set.json", "latest_set.json"]
    assert _assert_set_loads(exp, "3").manifest["epoch"] == 3


def test_resume_with_another_batch_size_continues_after_the_same_items(sample_bci, tmp_path):
    args = _args(sample_bci, tmp_path, extra=["--save_latest_freq", "2"])
    r = _run_train(args, fault="before_commit:3")  # sets at 2 and 4 images of epoch 1 are complete
    assert r.returncode == -signal.SIGKILL
    cs = _assert_set_loads(tmp_path / "run")
    assert (cs.manifest["epoch"], cs.manifest["epoch_items"]) == (1, 4)
    resume = _run_train(args + ["--continue_train", "--batch_size", "2"])
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert "continuing at epoch 1, batch 3" in resume.stderr and "will not be bit-identical" in resume.stderr
    state = torch.load(tmp_path / "run" / "latest_state.pth", weights_only=True)
    assert state["total_iters"] == 4 + 2 + 6  # the 2 items left of epoch 1, then all 6 of epoch 2


def test_kill_between_the_epoch_set_and_latest_loses_no_epoch_set(sample_bci, tmp_path, straight):
    args = _args(sample_bci, tmp_path, extra=["--save_epoch_freq", "1"])
    # sets: mid-epoch-1 latest (files 1-3), '1' (4-6), latest (7-9): killed while writing the epoch-1 'latest'
    r = _run_train(args, fault="save_file:8")
    assert r.returncode == -signal.SIGKILL
    exp = tmp_path / "run"
    assert _assert_set_loads(exp, "1").manifest["epoch"] == 1
    resume = _run_train(args + ["--continue_train"])
    assert resume.returncode == 0, resume.stderr[-2000:]
    _assert_set_loads(exp, "1")
    _assert_same_weights(exp / "2_net_G.pth", straight / "2_net_G.pth")


def test_hand_edited_manifest_is_one_error_line(sample_bci, tmp_path, capsys):
    _trained(sample_bci, tmp_path)
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 0
    man_path = tmp_path / "res" / "run" / "test_latest" / "run_manifest.json"
    man = json.loads(man_path.read_text())
    for broken in ({**man, "flagged": [1, 2]}, {**man, "images": ["a", "b"]}):
        man_path.write_text(json.dumps(broken))
        capsys.readouterr()
        assert evaluate.main(["--result_path", str(tmp_path / "res" / "run"), "--no_fid", "--no_progress"]) == 2
        err = capsys.readouterr().err
        assert "evaluate.py: error: " in err and "not a valid run manifest" in err and "Traceback" not in err


def test_metrics_files_are_written_as_a_group(sample_bci, tmp_path):
    _trained(sample_bci, tmp_path)
    assert test_script.main(_test_args(sample_bci, tmp_path)) == 0
    run_dir = tmp_path / "res" / "run" / "test_latest"
    ev = [sys.executable, str(ROOT / "evaluate.py"), "--result_path", str(tmp_path / "res" / "run"), "--no_fid",
          "--no_progress", "--no_report"]
    assert subprocess.run(ev, cwd=ROOT, capture_output=True).returncode == 0
    before = {n: (run_dir / n).read_bytes() for n in ("metrics.csv", "metrics.md", "metrics.json")}
    limit = min(len(b) for b in before.values()) + 1  # the smallest file fits, the others do not

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(ev + ["--dab_threshold", "0.05"], cwd=ROOT, capture_output=True, text=True,
                       preexec_fn=small_files)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("evaluate.py: error: cannot write ")
    assert {n: (run_dir / n).read_bytes() for n in before} == before
    assert not [p for p in run_dir.iterdir() if ".partial" in p.name]


def test_ctrl_c_while_importing_is_one_line():
    for script in ("test.py", "evaluate.py"):
        p = subprocess.Popen([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
        time.sleep(0.4)  # inside the imports (torch and friends take longer than this)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        if p.returncode == 0:  # the machine was fast enough to finish first: nothing to check
            continue
        assert p.returncode == 130 and err.strip() == f"{script}: interrupted", err


def test_overwrite_replaces_a_file_in_the_way(sample_bci, tmp_path):
    _trained(sample_bci, tmp_path)
    run_dir = tmp_path / "res" / "run" / "test_latest"
    run_dir.parent.mkdir(parents=True)
    run_dir.write_text("not a folder")
    assert test_script.main(_test_args(sample_bci, tmp_path, "--overwrite")) == 0
    assert run_dir.is_dir() and sorted(p.name for p in run_dir.parent.iterdir()) == ["test_latest"]
