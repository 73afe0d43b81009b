"""util/allocator.py: command-line processes restart once with TCMalloc preloaded (issue 19: peak memory)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from util.allocator import ALLOCATOR, PRELOADED, find_tcmalloc, plan_allocator
from util.errors import OptionError

REPO = Path(__file__).resolve().parents[1]
LIB = "libtcmalloc_minimal.so.4"


def test_plan_preloads_tcmalloc_for_a_fresh_linux_process():
    plan = plan_allocator({}, "linux", LIB, torch_imported=False)
    assert plan.preload == LIB
    assert plan_allocator({ALLOCATOR: "tcmalloc"}, "linux", LIB, False).preload == LIB
    assert plan_allocator({"LD_PRELOAD": "libm.so.6"}, "linux", LIB, False).preload == LIB  # added in front


@pytest.mark.parametrize("environ, platform, library, torch_imported, reason", [
    ({ALLOCATOR: "system"}, "linux", LIB, False, "system"),
    ({PRELOADED: LIB}, "linux", LIB, False, "already restarted"),
    ({}, "darwin", LIB, False, "not Linux"),
    ({}, "linux", None, False, "no TCMalloc"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux", LIB, False, "already in LD_PRELOAD"),
    ({}, "linux", LIB, True, "torch is already imported"),
])
def test_plan_keeps_the_allocator(environ, platform, library, torch_imported, reason):
    plan = plan_allocator(environ, platform, library, torch_imported)
    assert plan.preload is None and reason in plan.reason


def test_plan_refuses_a_bad_setting_or_a_required_missing_library():
    with pytest.raises(OptionError, match="expected auto, tcmalloc or system"):
        plan_allocator({ALLOCATOR: "jemalloc"}, "linux", LIB, False)
    with pytest.raises(OptionError, match="libtcmalloc-minimal4"):
        plan_allocator({ALLOCATOR: "tcmalloc"}, "linux", None, False)


# an entry point in miniature: what the process sees before and after configure_threads(cli=True)
_ENTRY = r"""
import os, subprocess, sys
print("START", os.getpid(), flush=True)
from util.threads import configure_threads
configure_threads(cli=True)
from util.allocator import tcmalloc_in_use
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('LD_PRELOAD'))"],
                       capture_output=True, text=True).stdout.strip()
print("READY", os.getpid(), tcmalloc_in_use(), os.environ.get("LD_PRELOAD"), child, flush=True)
"""


def _entry(tmp_path, **env):
    script = tmp_path / "entry.py"
    script.write_text(_ENTRY)
    full = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR, PRELOADED, "LD_PRELOAD")}
    full.update(PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=full, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(sys.platform != "linux" or find_tcmalloc() is None, reason="needs Linux with TCMalloc "
                    "(apt install libtcmalloc-minimal4; .ci/run installs it)")
def test_command_restarts_once_with_tcmalloc_and_children_do_not_inherit_it(tmp_path):
    r = _entry(tmp_path)
    assert r.returncode == 0, r.stderr
    starts = [line for line in r.stdout.splitlines() if line.startswith("START")]
    pid = starts[0].split()[1]
    assert starts == [f"START {pid}"] * 2  # the same process (exec), started twice, not more
    assert f"READY {pid} True None None" in r.stdout  # LD_PRELOAD put back: a child starts without it
    r = _entry(tmp_path, LD_PRELOAD="libm.so.6")  # the user's preload is kept, after ours, and passed on as it was
    assert "True libm.so.6 libm.so.6" in r.stdout, r.stdout + r.stderr


def test_system_allocator_when_asked_and_a_bad_setting_is_one_error_line(tmp_path):
    r = _entry(tmp_path, **{ALLOCATOR: "system"})
    assert r.returncode == 0 and r.stdout.count("START") == 1 and " False " in r.stdout, r.stdout + r.stderr
    r = _entry(tmp_path, **{ALLOCATOR: "bogus"})
    assert r.returncode == 2 and "READY" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        "entry.py: error: environment variable VIRTUAL_IHC_ALLOCATOR='bogus': expected auto, tcmalloc or system"]


def test_in_process_calls_never_restart():
    """main(argv) called from Python (tests, notebooks) keeps its process: cli=False plans nothing."""
    from util.allocator import reexec_with_tcmalloc

    assert reexec_with_tcmalloc(cli=False).preload is None
