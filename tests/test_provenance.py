"""Provenance in metrics.json: versions, git state (also without git), command, run manifest, Inception weights hash."""
import hashlib
import json
import shutil
import subprocess
from importlib import metadata

import numpy as np
import pytest

import evaluate
from metrics import provenance
from tests.test_evaluate import _make_run


@pytest.fixture(autouse=True)
def _no_cached_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_versions_are_the_installed_ones():
    v = provenance.versions()
    assert v["numpy"] == np.__version__
    assert v["scikit-image"] == metadata.version("scikit-image")
    import torch

    assert v["torch"] == torch.__version__.split("+")[0] or v["torch"] == torch.__version__
    assert v["python"].count(".") == 2


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed here")
def test_git_state_of_this_checkout_and_outside_one(tmp_path):
    head = subprocess.run(["git", "-C", str(provenance.PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    state = provenance.git_state()
    if head.returncode == 0:
        assert state["commit"] == head.stdout.strip() and isinstance(state["dirty"], bool)
    outside = provenance.git_state(tmp_path)
    assert outside["commit"] is None and "not a git checkout" in outside["error"]


def test_git_absent_is_recorded_not_raised(monkeypatch):
    monkeypatch.setenv("PATH", "")
    state = provenance.git_state()
    assert state == {"commit": None, "dirty": None, "error": "git is not installed"}


def test_weights_hash_checked_against_prefix(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"not the inception weights")
    digest = hashlib.sha256(b"not the inception weights").hexdigest()
    with pytest.raises(provenance.WeightsHashError, match="--fid_weights_unchecked"):
        provenance.check_inception_weights(w)
    info = provenance.check_inception_weights(w, unchecked=True)
    assert info["sha256"] == digest and info["check"] == "unchecked-mismatch"
    assert provenance.check_inception_weights(w, expected_prefix=digest[:8])["check"] == "match"
    assert provenance.INCEPTION_SHA256_PREFIX in "pt_inception-2015-12-05-6726825d.pth"


def test_evaluate_refuses_weights_with_a_wrong_hash(tmp_path, capsys):
    exp = tmp_path / "exp"
    _make_run(exp, n=3)
    w = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    w.write_bytes(b"x" * 100)
    rc = evaluate.main(["--result_path", str(exp), "--inception_weights", str(w), "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "sha256" in err and "--fid_weights_unchecked" in err
    assert not (exp / "test_latest" / "metrics.json").exists()


def test_metrics_json_carries_provenance_and_the_manifest_checkpoint(tmp_path, capsys):
    exp = tmp_path / "exp"
    img_dir = _make_run(exp, n=3)
    checkpoint = {"label": "latest", "dir": "checkpoints/exp", "set_id": "abc123",
                  "files": {"latest_net_G.pth": "0" * 64}}
    stems = sorted(p.name[: -len("_fake_B.png")] for p in img_dir.glob("*_fake_B.png"))
    images = [{"stem": st, "files": {r: f"images/{st}_{r}.png" for r in ("real_A", "fake_B", "real_B")},
               "flags": []} for st in stems]
    (exp / "test_latest" / "run_manifest.json").write_text(json.dumps(
        {"version": 1, "checkpoint": checkpoint, "images": images, "flagged": {}}))
    argv = ["--result_path", str(exp), "--no_progress", "--num_workers", "1", "--no_report"]
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    prov = json.loads((exp / "test_latest" / "metrics.json").read_text())["provenance"]
    assert prov["checkpoint"] == checkpoint
    assert prov["command"].startswith("evaluate.py --result_path") and "--no_report" in prov["command"]
    assert prov["versions"]["numpy"] == np.__version__
    assert prov["created"].endswith("+00:00") and "commit" in prov["git"]
    (exp / "test_latest" / "run_manifest.json").unlink()
    assert evaluate.main(argv) == 0
    prov = json.loads((exp / "test_latest" / "metrics.json").read_text())["provenance"]
    assert prov["checkpoint"] is None and "run_manifest.json" in prov["checkpoint_note"]
