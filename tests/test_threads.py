"""util/threads.py: the OpenMP defaults every entry point sets before torch is imported (issue 19)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from util.threads import ThreadChoice, configure_threads, plan_threads

REPO = Path(__file__).resolve().parents[1]


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "VIRTUAL_IHC_THREAD_DEFAULTS")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_plan_sets_passive_wait_policy_unless_the_user_chose():
    assert plan_threads({}, 8).set == {"OMP_WAIT_POLICY": "PASSIVE"}
    c = plan_threads({"OMP_WAIT_POLICY": "ACTIVE"}, 8)
    assert c.set == {} and c.kept == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_plan_divides_cores_among_torchrun_processes():
    # no user value: cores // processes per node, at least 1
    assert plan_threads({"LOCAL_WORLD_SIZE": "2"}, 16).set["OMP_NUM_THREADS"] == "8"
    assert plan_threads({"LOCAL_WORLD_SIZE": "4"}, 2).set["OMP_NUM_THREADS"] == "1"
    assert plan_threads({"LOCAL_WORLD_SIZE": "3"}, 16).set["OMP_NUM_THREADS"] == "5"
    # torchrun's own default "1" (absent from the launcher's initial environment) is replaced
    c = plan_threads({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 16, launcher_environ={})
    assert c.set["OMP_NUM_THREADS"] == "8"
    # the user's value is kept, also 1 when the user gave it to the launcher, and when the launcher is unknown
    for launcher in ({"OMP_NUM_THREADS": "1"}, None):
        c = plan_threads({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 16, launcher_environ=launcher)
        assert "OMP_NUM_THREADS" not in c.set and c.kept["OMP_NUM_THREADS"] == "1"
    c = plan_threads({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}, 16, launcher_environ={})
    assert c.kept["OMP_NUM_THREADS"] == "3" and "OMP_NUM_THREADS" not in c.set


def test_plan_leaves_thread_count_to_torch_outside_torchrun():
    assert "OMP_NUM_THREADS" not in plan_threads({}, 16).set
    assert "OMP_NUM_THREADS" not in plan_threads({"LOCAL_WORLD_SIZE": "1"}, 16).set
    assert "OMP_NUM_THREADS" not in plan_threads({"LOCAL_WORLD_SIZE": "x"}, 16).set


def test_configure_opt_out_changes_nothing():
    env = {"VIRTUAL_IHC_THREAD_DEFAULTS": "0"}
    assert not configure_threads(env).applied and env == {"VIRTUAL_IHC_THREAD_DEFAULTS": "0"}


def test_configure_changes_nothing_once_torch_is_imported():
    import torch  # noqa: F401 - the situation under test

    env = {}
    assert configure_threads(env) == ThreadChoice(applied=False) and env == {}


def _child(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_clean_env(**env), capture_output=True,
                          text=True, timeout=120)


def test_openmp_runtime_of_the_child_gets_passive_wait_policy():
    """libgomp itself reports its settings (OMP_DISPLAY_ENV=VERBOSE) when torch is imported after
    configure_threads: PASSIVE means a spin count of 0 (libgomp's default, with the policy unset, is 300000)."""
    code = "from util.threads import configure_threads; configure_threads(); import torch"
    r = _child(code, OMP_DISPLAY_ENV="VERBOSE")
    assert r.returncode == 0, r.stderr
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in r.stderr and "GOMP_SPINCOUNT = '0'" in r.stderr
    r = _child(code, OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="ACTIVE")  # the user's choice is respected
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in r.stderr and "GOMP_SPINCOUNT = '0'" not in r.stderr


# records the environment when the entry point first imports torch, then stops it there (no torch load: fast)
_PROBE = r"""
import importlib.abc, json, os, runpy, sys
seen = {}
class TorchImported(BaseException):
    pass
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            seen.setdefault("policy", os.environ.get("OMP_WAIT_POLICY"))
            raise TorchImported
        return None
sys.meta_path.insert(0, Hook())
g = runpy.run_path(sys.argv[1], run_name="entry")
try:
    g["main"](["--help"])
except (SystemExit, TorchImported):
    pass
seen.setdefault("policy", os.environ.get("OMP_WAIT_POLICY"))  # torch not imported at all: the env at exit
sys.stderr.write("\nPROBE " + json.dumps(seen) + "\n")
"""


@pytest.mark.parametrize("entry", ["train.py", "test.py", "evaluate.py", "stain_slide.py", "scripts/ablation.py",
                                   "scripts/table1.py", "scripts/bench_train.py", "scripts/bench_wsi.py",
                                   "scripts/misalignment_benchmark.py"])
def test_entry_points_set_the_wait_policy_before_torch_is_imported(entry):
    r = subprocess.run([sys.executable, "-c", _PROBE, str(REPO / entry)], cwd=REPO, env=_clean_env(),
                       capture_output=True, text=True, timeout=120)
    line = [x for x in r.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, r.stderr[-2000:]
    assert json.loads(line[-1][6:]) == {"policy": "PASSIVE"}
