"""The C memory allocator of a training or inference process: TCMalloc where the system has it.

A CPU training step allocates and frees gigabytes of activations, gradients and transient tiles of many sizes. With
glibc's ``malloc`` the heap fragments: in a 256 px pyramid pix2pix step (batch 2) the live memory peaks at about
1.8 GiB (measured with every block above 1 MiB ``mmap``-ed, which returns it at once but page-faults ~1.5 million
times per step and doubles the step time), while the process's peak RSS settles at 2.4-2.5 GiB after a few steps
(2.1-2.3 GiB for the release-style step, whose allocation order fragments less). TCMalloc (gperftools, the
allocator PyTorch's CPU tuning guide recommends besides jemalloc) keeps freed blocks in size classes and page spans
and reuses them: 1.88 GiB peak RSS at the same speed (2.47-2.69 s per step against 2.33-2.52 s with tuned glibc,
within this machine's noise), no page faults after the first steps (issue 19).

A running process cannot change its ``malloc``, so :func:`reexec_with_tcmalloc` (called by the entry points'
``main()`` when run from the command line, before anything else) starts the same command again with TCMalloc in
``LD_PRELOAD`` (``os.execv``: same process id, same open files; torch is not imported yet, ~50 ms). In the new
process the variable is put back as it was, so programs this process starts do not inherit the preload. Nothing
happens (glibc stays, and :func:`util.fast_paths.tune_cpu_allocator` tunes it) when:

* the system has no TCMalloc (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``; Fedora: ``gperftools-libs``);
* ``VIRTUAL_IHC_ALLOCATOR=system`` is set (or anything other than ``auto``/``tcmalloc``);
* the platform is not Linux, or the process is not the command-line entry point (``main()`` called from Python,
  e.g. in tests or notebooks: the entry points pass ``cli`` only when run as ``__main__`` without ``argv``), the
  program was read from stdin or ``-c``, or torch is already imported;
* ``LD_PRELOAD`` is set (the user's choice is kept, e.g. jemalloc; add TCMalloc to it yourself if you want both).

``SIGINT``/``SIGTERM`` are blocked across the ``execve`` and unblocked in the restarted process once the entry point
has installed its handlers, so a Ctrl-C during the restart ends in the entry point's one-line message.

``VIRTUAL_IHC_ALLOCATOR=tcmalloc`` makes a missing library an error instead of a silent glibc fallback (logged at
DEBUG level otherwise). This module does not import torch.
"""
from __future__ import annotations

import ctypes.util
import logging
import os
import signal
import sys
from typing import Mapping, MutableMapping, NamedTuple, Optional, Sequence

from util.errors import OptionError

log = logging.getLogger(__name__)

ALLOCATOR = "VIRTUAL_IHC_ALLOCATOR"  # auto (default) | tcmalloc (required) | system (glibc)
PRELOADED = "VIRTUAL_IHC_PRELOADED"  # set for the re-executed process: the library it preloads
SAVED_PRELOAD = "VIRTUAL_IHC_SAVED_LD_PRELOAD"  # the LD_PRELOAD to put back in the re-executed process
_LIBRARIES = ("tcmalloc_minimal", "tcmalloc")  # gperftools; the minimal one has no heap profiler
_RESTARTED: list = []  # the library this process was restarted with


class AllocatorPlan(NamedTuple):
    """What :func:`plan_allocator` decided: ``preload`` the library to preload (None: keep the allocator) and
    ``reason`` in words."""

    preload: Optional[str]
    reason: str


def find_tcmalloc() -> Optional[str]:
    """The TCMalloc shared library the dynamic loader would find (e.g. ``libtcmalloc_minimal.so.4``), or None."""
    for name in _LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def plan_allocator(environ: Mapping[str, str], platform: str, library: Optional[str],
                   torch_imported: bool) -> AllocatorPlan:
    """Whether to restart the process with ``library`` preloaded, as a pure function of its inputs (module notes).

    Raises:
        OptionError: ``VIRTUAL_IHC_ALLOCATOR`` is ``tcmalloc`` but there is no library, or the value is unknown.
    """
    choice = (environ.get(ALLOCATOR) or "auto").strip().lower()
    if choice not in ("auto", "tcmalloc", "system"):
        raise OptionError(f"environment variable {ALLOCATOR}={choice!r}: expected auto, tcmalloc or system")
    if choice == "system":
        return AllocatorPlan(None, f"{ALLOCATOR}=system")
    if PRELOADED in environ:
        return AllocatorPlan(None, f"already restarted with {environ[PRELOADED]}")
    if not platform.startswith("linux"):
        return AllocatorPlan(None, f"not Linux ({platform})")
    if library is None:
        if choice == "tcmalloc":
            raise OptionError(f"{ALLOCATOR}=tcmalloc but no TCMalloc library was found (Debian/Ubuntu: apt install "
                              "libtcmalloc-minimal4; Fedora: dnf install gperftools-libs)")
        return AllocatorPlan(None, "no TCMalloc library on this system")
    if environ.get("LD_PRELOAD", "").strip():  # the user's choice (it may be another allocator, e.g. jemalloc)
        return AllocatorPlan(None, f"LD_PRELOAD is set ({environ['LD_PRELOAD']}): left as it is")
    if torch_imported:
        return AllocatorPlan(None, "torch is already imported")
    return AllocatorPlan(library, f"restarting with {library} preloaded")


def _restore_preload(environ: MutableMapping[str, str]) -> None:
    """In the re-executed process: put ``LD_PRELOAD`` back as the user had it (children do not inherit ours)."""
    saved = environ.pop(SAVED_PRELOAD, None)
    if saved is None:
        return
    if saved:
        environ["LD_PRELOAD"] = saved
    else:
        environ.pop("LD_PRELOAD", None)


def reexec_with_tcmalloc(cli: bool, argv: Optional[Sequence[str]] = None) -> AllocatorPlan:
    """Restart this command-line process with TCMalloc preloaded when the module notes allow it; in the restarted
    process, restore ``LD_PRELOAD``. Returns the plan when it does not restart (``os.execv`` does not return).

    Args:
        cli: True only when called from an entry point run as a command (``main()`` with ``argv=None``).
        argv: the command to run again (default ``sys.orig_argv``: interpreter options, script or ``-m``, args).
    Raises:
        SystemExit: exit status 2 after one ``<prog>: error: ...`` line for the cases where :func:`plan_allocator`
            raise (a bad ``VIRTUAL_IHC_ALLOCATOR``).
    """
    env = os.environ
    if PRELOADED in env:  # the restarted process: the marker and our LD_PRELOAD are not passed on to children
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked over the restart
        library = env.pop(PRELOADED)
        _restore_preload(env)
        _RESTARTED.append(library)
        if _loaded("tcmalloc"):
            log.debug("allocator: %s (preloaded by the restart)", library)
        else:
            log.warning("%s was preloaded but is not in this process's memory map; glibc malloc is in use", library)
    if _RESTARTED:
        return AllocatorPlan(None, f"restarted with {_RESTARTED[0]} preloaded")
    if not cli:
        return AllocatorPlan(None, "not the command-line entry point")
    try:
        plan = plan_allocator(env, sys.platform, find_tcmalloc(), "torch" in sys.modules)
    except OptionError as e:  # before the entry point's own error handling: its one-line error contract here
        sys.stderr.write(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {e}\n")
        raise SystemExit(2) from e
    if plan.preload is None:
        log.debug("allocator unchanged: %s", plan.reason)
        return plan
    command = list(argv if argv is not None else getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    new_env = dict(env)
    new_env[SAVED_PRELOAD] = env.get("LD_PRELOAD", "")
    new_env["LD_PRELOAD"] = ":".join(p for p in (plan.preload, env.get("LD_PRELOAD", "")) if p)
    new_env[PRELOADED] = plan.preload
    if command[1:2] in (["-"], ["-c"], [""]) or sys.argv[0] in ("-", "-c", ""):  # stdin or -c: cannot run it again
        return AllocatorPlan(None, "the program was read from stdin or -c")
    sys.stdout.flush()
    sys.stderr.flush()
    # a Ctrl-C during the restart waits (blocked signals survive execve) until the restarted entry point has its
    # handlers (exit_on_early_interrupt at import), then reaches them: one line, not a traceback
    blocked = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        os.execve(sys.executable, [sys.executable, *command[1:]], new_env)
    finally:  # only reached when execve failed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    return plan  # not reached


def tcmalloc_in_use() -> bool:
    """Whether this process runs on TCMalloc (restarted with it, or preloaded by the user)."""
    return bool(_RESTARTED) or _loaded("tcmalloc")


def _loaded(name: str) -> bool:
    """Whether a shared object whose path contains ``name`` is mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            return any(name in line for line in f)
    except OSError:
        return False
