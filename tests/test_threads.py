"""util/threads.py: the OpenMP defaults every entry point sets before torch is imported (issue 19)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from util.threads import (CoreShare, CpuSample, ThreadChoice, configure_threads, fair_threads, plan_threads,
                          sample_cpu, usable_cores)

REPO = Path(__file__).resolve().parents[1]


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "VIRTUAL_IHC_THREAD_DEFAULTS")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def test_plan_leaves_the_wait_policy_to_openmp():
    # libgomp's spin-then-sleep makes a solo step fastest; other jobs are given room by rebalance() instead
    assert plan_threads({}, 8).set == {}
    c = plan_threads({"OMP_WAIT_POLICY": "PASSIVE"}, 8)
    assert c.set == {} and c.kept == {"OMP_WAIT_POLICY": "PASSIVE"}


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


def test_openmp_runtime_of_the_child_keeps_libgomp_defaults():
    """libgomp itself reports its settings (OMP_DISPLAY_ENV=VERBOSE) when torch is imported after
    configure_threads: its default spin count (300000) unless the user chose a wait policy."""
    code = "from util.threads import configure_threads; configure_threads(); import torch"
    r = _child(code, OMP_DISPLAY_ENV="VERBOSE")
    assert r.returncode == 0, r.stderr
    assert "GOMP_SPINCOUNT = '300000'" in r.stderr
    r = _child(code, OMP_DISPLAY_ENV="VERBOSE", OMP_WAIT_POLICY="PASSIVE")  # the user's choice is respected
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in r.stderr and "GOMP_SPINCOUNT = '0'" in r.stderr


_ADAPTIVE = ("from util import threads; c = threads.configure_threads(); import torch; "
             "print('ADAPTIVE', c.adaptive, threads._STATE.adaptive)")


@pytest.mark.parametrize("env, expected", [({}, True), ({"OMP_NUM_THREADS": "2"}, False),
                                           ({"LOCAL_WORLD_SIZE": "2"}, False),
                                           ({"VIRTUAL_IHC_THREAD_DEFAULTS": "0"}, False)])
def test_thread_count_adapts_only_when_pytorch_chose_it(env, expected):
    r = _child(_ADAPTIVE, **env)
    assert r.returncode == 0, r.stderr
    assert f"ADAPTIVE {expected} {expected}" in r.stdout


def test_rebalance_is_a_no_op_when_torch_was_imported_first():
    import torch  # noqa: F401 - the situation under test (pytest's own process)

    from util import threads

    assert not configure_threads({}).adaptive and threads.rebalance() is None


@pytest.mark.parametrize("other, cores, max_threads, expected", [
    (0.0, 2, 2, 2), (0.3, 2, 2, 2), (0.6, 2, 2, 1), (1.0, 2, 2, 1), (1.9, 2, 2, 1), (5.0, 2, 2, 1),
    (-0.5, 2, 2, 2), (2.0, 8, 8, 6), (0.0, 8, 4, 4), (3.0, 8, 4, 4), (6.2, 8, 8, 2), (0.0, 1, 1, 1)])
def test_fair_threads(other, cores, max_threads, expected):
    assert fair_threads(other, cores, max_threads) == expected


class _FakeMachine:
    """Counters of a 2-core machine on which this process keeps ``own`` cores busy and others ``other``."""

    def __init__(self):
        self.t = 0.0
        self.busy = self.own = 0.0
        self.samples = 0

    def run(self, seconds: float, own: float, other: float):
        self.t += seconds
        self.own += own * seconds
        self.busy += (own + other) * seconds

    def sample(self) -> CpuSample:
        self.samples += 1
        return CpuSample(self.t, self.busy, self.own)


def test_core_share_gives_way_to_other_jobs_and_takes_the_cores_back(caplog):
    m, calls = _FakeMachine(), []
    share = CoreShare(2, 2, interval=2.0, sampler=m.sample, set_threads=calls.append, clock=lambda: m.t)
    m.run(1.0, own=2.0, other=0.0)
    assert share.tick() is None and m.samples == 1  # before the interval: no measurement at all
    m.run(1.5, own=2.0, other=0.0)
    assert share.tick() is None and calls == []  # alone: unchanged
    with caplog.at_level(logging.INFO, logger="util.threads"):
        m.run(2.0, own=1.0, other=1.0)  # a second training started
        assert share.tick() == 1 and calls == [1] and share.threads == 1
    assert "other processes keep 1.00 of 2 core(s) busy: 1 intra-op thread(s) (was 2)" in caplog.text
    m.run(2.0, own=1.0, other=1.0)
    assert share.tick() is None and calls == [1]  # still shared: stays at 1
    m.run(2.0, own=1.0, other=0.2)  # the other job ended (a little background load)
    assert share.tick() == 2 and calls == [1, 2]
    m.run(2.0, own=2.0, other=7.0)  # never below one thread
    assert share.tick() == 1


def test_core_share_does_not_flip_on_a_load_near_the_rounding_point():
    m, calls = _FakeMachine(), []
    share = CoreShare(2, 2, interval=1.0, sampler=m.sample, set_threads=calls.append, clock=lambda: m.t)
    for other in (0.45, 0.55, 0.45, 0.6, 0.5):  # within 0.2 cores of the x.5 rounding point: no change
        m.run(1.0, own=1.5, other=other)
        assert share.tick() is None
    m.run(1.0, own=1.0, other=0.75)  # clearly past it
    assert share.tick() == 1
    for other in (0.55, 0.45, 0.35):  # back near the point, and a little below: stays at 1
        m.run(1.0, own=1.0, other=other)
        assert share.tick() is None
    m.run(1.0, own=1.0, other=0.25)
    assert share.tick() == 2 and calls == [1, 2]


def test_core_share_never_exceeds_the_starting_count():
    m, calls = _FakeMachine(), []
    share = CoreShare(1, 4, interval=1.0, sampler=m.sample, set_threads=calls.append, clock=lambda: m.t)
    m.run(2.0, own=1.0, other=0.0)
    assert share.tick() is None and calls == []


_BUSY = "import time\nt = time.time()\nwhile time.time() - t < {s}:\n    pass\n"
# starts argv[1] as a busy process that is not the caller's descendant (its parent exits at once) and prints its pid;
# its output goes nowhere, so the caller's capture does not wait for it
_SPAWN_STRAY = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', sys.argv[1]], "
                "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")


def test_sample_cpu_counts_descendants_as_own_and_others_as_other():
    """A busy child (like a DataLoader worker) is this process's load; a busy process that is not a descendant
    (its parent exited: reparented) is another job's."""
    child = subprocess.Popen([sys.executable, "-c", _BUSY.format(s=6)])
    stray = subprocess.run(  # starts a busy grandchild and exits at once: the grandchild is not ours any more
        [sys.executable, "-c", _SPAWN_STRAY, _BUSY.format(s=6)], capture_output=True, text=True, timeout=60)
    assert stray.returncode == 0, stray.stderr
    try:
        time.sleep(0.5)
        a = sample_cpu()
        time.sleep(2.0)
        b = sample_cpu()
    finally:
        child.kill()
        child.wait()
        try:
            os.kill(int(stray.stdout), signal.SIGKILL)
        except ProcessLookupError:
            pass
    wall = b.wall - a.wall
    own, other = (b.own - a.own) / wall, ((b.busy - a.busy) - (b.own - a.own)) / wall
    if usable_cores() >= 2:  # each busy process has a core of its own
        assert own > 0.5 and other > 0.5, (own, other)
    assert own + other > 0.5 and b.busy >= a.busy and b.own >= a.own


_GIVE_WAY = r"""
import logging, os, signal, subprocess, sys, time
from util import threads
threads.configure_threads()
import torch
logging.basicConfig(level=logging.INFO)
threads._STATE.share = threads.CoreShare(torch.get_num_threads(), threads.usable_cores(), interval=0.5)
seen = [torch.get_num_threads()]
# another job, not ours: started through a parent that exits at once (busy for at most 20 s)
hog = int(subprocess.run([sys.executable, "-c", sys.argv[2], sys.argv[1]], capture_output=True, text=True,
                         check=True).stdout)
try:
    t = time.time()
    while time.time() - t < 8 and torch.get_num_threads() > 1:
        threads.rebalance()
        time.sleep(0.05)
    seen.append(torch.get_num_threads())
finally:
    os.kill(hog, signal.SIGKILL)
t = time.time()
while time.time() - t < 8 and torch.get_num_threads() < seen[0]:  # the other job ended: the cores come back
    threads.rebalance()
    time.sleep(0.05)
seen.append(torch.get_num_threads())
print("SEEN", seen)
"""


def test_a_process_gives_way_to_another_job_and_takes_the_core_back():
    """End to end in a fresh process: beside another busy process on a 2-core machine the intra-op thread count
    drops to 1 within seconds (rebalance, torch.set_num_threads), and returns to 2 when it ends."""
    if usable_cores() != 2:
        pytest.skip("the expected counts are written for 2 cores")
    a = sample_cpu()
    time.sleep(1.0)
    b = sample_cpu()
    background = ((b.busy - a.busy) - (b.own - a.own)) / (b.wall - a.wall)
    if background > 0.3:
        pytest.skip(f"other processes already keep {background:.1f} cores busy; the expected counts need a quiet "
                    "machine")
    r = subprocess.run([sys.executable, "-c", _GIVE_WAY, _BUSY.format(s=20), _SPAWN_STRAY], cwd=REPO,
                       env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "SEEN [2, 1, 2]" in r.stdout, r.stdout + r.stderr
    assert "1 intra-op thread(s) (was 2)" in r.stderr and "2 intra-op thread(s) (was 1)" in r.stderr


# records the environment when the entry point first imports torch, then stops it there (no torch load: fast)
_PROBE = r"""
import importlib.abc, json, os, runpy, sys
seen = {}
class TorchImported(BaseException):
    pass
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            seen.setdefault("threads", os.environ.get("OMP_NUM_THREADS"))
            raise TorchImported
        return None
sys.meta_path.insert(0, Hook())
g = runpy.run_path(sys.argv[1], run_name="entry")
try:
    g["main"](["--help"])
except (SystemExit, TorchImported):
    pass
seen.setdefault("threads", os.environ.get("OMP_NUM_THREADS"))  # torch not imported at all: the env at exit
sys.stderr.write("\nPROBE " + json.dumps(seen) + "\n")
"""


@pytest.mark.parametrize("entry", ["train.py", "test.py", "evaluate.py", "stain_slide.py", "scripts/ablation.py",
                                   "scripts/table1.py", "scripts/bench_train.py", "scripts/bench_wsi.py",
                                   "scripts/misalignment_benchmark.py"])
def test_entry_points_configure_threads_before_torch_is_imported(entry):
    """Seen through the torchrun rule: with 2 processes per node, OMP_NUM_THREADS is already set when the entry
    point first imports torch."""
    r = subprocess.run([sys.executable, "-c", _PROBE, str(REPO / entry)], cwd=REPO,
                       env=_clean_env(LOCAL_WORLD_SIZE="2"), capture_output=True, text=True, timeout=120)
    line = [x for x in r.stderr.splitlines() if x.startswith("PROBE ")]
    assert line, r.stderr[-2000:]
    assert json.loads(line[-1][6:]) == {"threads": str(max(1, usable_cores() // 2))}
