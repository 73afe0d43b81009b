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
    assert plan_allocator({ALLOCATOR: "", "LD_PRELOAD": " "}, "linux", LIB, False).preload == LIB  # empty = auto
    assert plan_allocator({ALLOCATOR: "TCMalloc"}, "linux", LIB, False).preload == LIB  # any case


@pytest.mark.parametrize("environ, platform, library, torch_imported, reason", [
    ({ALLOCATOR: "system"}, "linux", LIB, False, "system"),
    ({PRELOADED: LIB}, "linux", LIB, False, "already restarted"),
    ({}, "darwin", LIB, False, "not Linux"),
    ({}, "linux", None, False, "no TCMalloc"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "linux", LIB, False, "LD_PRELOAD is set"),
    ({"LD_PRELOAD": "libjemalloc.so.2"}, "linux", LIB, False, "left as it is"),  # the user's allocator stays
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
    r = _entry(tmp_path, LD_PRELOAD="libm.so.6")  # the user's preload: no restart, kept and passed on as it was
    assert r.stdout.count("START") == 1 and "False libm.so.6 libm.so.6" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(sys.platform != "linux" or find_tcmalloc() is None, reason="needs Linux with TCMalloc")
def test_ctrl_c_during_the_restart_is_the_entry_points_one_line(tmp_path):
    """SIGINT/SIGTERM are blocked across execve: a Ctrl-C sent while the process restarts reaches train.py's
    handler (one line, exit 130), never a traceback. The signal is sent right before the exec by a patched
    os.execve, the worst moment."""
    script = tmp_path / "run_train.py"
    script.write_text(
        "import os, runpy, signal, sys\n"
        "real = os.execve\n"
        "def execve(*a):\n"
        "    masked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        "    sys.stderr.write(f'MASKED {masked}\\n'); sys.stderr.flush()\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # blocked now: delivered after the restart\n"
        "    real(*a)\n"
        "os.execve = execve\n"
        f"sys.argv = [{str(REPO / 'train.py')!r}, '--help']\n"
        f"runpy.run_path({str(REPO / 'train.py')!r}, run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR, PRELOADED, "LD_PRELOAD")}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(env, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr[-2000:])
    assert "MASKED True" in r.stderr  # the signal waits across the exec instead of racing the new interpreter
    assert "Traceback" not in r.stderr and "train.py: interrupted" in r.stderr


def test_system_allocator_when_asked_and_a_bad_setting_is_one_error_line(tmp_path):
    r = _entry(tmp_path, **{ALLOCATOR: "system"})
    assert r.returncode == 0 and r.stdout.count("START") == 1 and " False " in r.stdout, r.stdout + r.stderr
    r = _entry(tmp_path, **{ALLOCATOR: "bogus"})
    assert r.returncode == 2 and "READY" not in r.stdout
    assert r.stderr.strip().splitlines() == [
        "entry.py: error: environment variable VIRTUAL_IHC_ALLOCATOR='bogus': expected auto, tcmalloc or system"]


def test_in_process_calls_never_restart(tmp_path):
    """main() called from Python (tests, notebooks, scripts) keeps its process: cli=False plans nothing, and the
    entry points pass cli only when run as __main__: a script calling train.main() runs once."""
    from util.allocator import reexec_with_tcmalloc

    assert reexec_with_tcmalloc(cli=False).preload is None
    script = tmp_path / "caller.py"
    script.write_text("import sys\nprint('CALLER', flush=True)\nimport train\nsys.argv = ['train.py', '--help']\n"
                      "try:\n    train.main()\nexcept SystemExit:\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR, PRELOADED, "LD_PRELOAD")}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(env, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.count("CALLER") == 1, r.stdout + r.stderr
