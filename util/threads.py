"""CPU thread defaults of every entry point, chosen before PyTorch is imported.

PyTorch's CPU wheels run their intra-op parallelism on GNU OpenMP (libgomp). By default libgomp's idle worker threads
*spin* (busy-wait) for a while before they sleep, so a waiting thread keeps a core at 100 %. When two PyTorch
processes share a machine, each one's spinning threads take the cores the other one's working threads need: on the
2-core development machine two 256 px pyramid pix2pix training steps started together took 19.5 s per step each
against 3.6 s alone (5.4x; a fair share is 2x). With ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at once; the
OpenMP specification's wait-policy ICV, which libgomp reads once, when it is loaded) the pair ran at 6.3-6.6 s each
and the solo step did not get slower (issue 19; ``scripts/bench_train.py --concurrent 2`` measures it).

:func:`configure_threads` is called first thing in the ``main()`` of every entry point that trains or infers
(train.py, test.py, evaluate.py, stain_slide.py, scripts/ablation.py, scripts/table1.py, scripts/bench_train.py,
scripts/bench_wsi.py, scripts/misalignment_benchmark.py). It only sets environment variables the user has not set:

* ``OMP_WAIT_POLICY=PASSIVE``;
* under torchrun (``LOCAL_WORLD_SIZE`` > 1): ``OMP_NUM_THREADS`` = the cores this process may use
  (``os.sched_getaffinity``) // the processes per node, at least 1. torchrun itself sets ``OMP_NUM_THREADS=1``
  for every process when the user did not set it; that default (recognised by ``OMP_NUM_THREADS`` being absent from
  the environment the launcher was started with, ``/proc/<parent>/environ`` on Linux) is replaced too, so a CPU
  node's cores are divided among its processes instead of one each. A value the user gave (also ``1``) is kept.

Outside torchrun PyTorch already starts no more intra-op threads than the cores the process may use (libgomp counts
the affinity mask; ``taskset -c 0`` gives 1 thread), and DataLoader workers run one thread each (PyTorch's worker
loop calls ``torch.set_num_threads(1)``), so nothing else needs changing.

The settings only take effect when made before ``import torch`` (libgomp reads them when it is loaded). If torch is
already imported (e.g. a test that calls an entry point's ``main()`` in the pytest process), :func:`configure_threads`
changes nothing and says so at DEBUG level: the running process keeps its OpenMP runtime as it is. This module does
not import torch.
"""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, Mapping, MutableMapping, Optional

log = logging.getLogger(__name__)

WAIT_POLICY = "OMP_WAIT_POLICY"
OPT_OUT = "VIRTUAL_IHC_THREAD_DEFAULTS"  # "0": leave the OpenMP environment as the user gave it
NUM_THREADS = "OMP_NUM_THREADS"


@dataclass
class ThreadChoice:
    """What :func:`configure_threads` decided: ``set`` the variables it set (name -> value), ``kept`` the ones the
    user had set (name -> value), ``applied`` False when torch was imported before (nothing was changed)."""

    set: Dict[str, str] = field(default_factory=dict)
    kept: Dict[str, str] = field(default_factory=dict)
    applied: bool = True


def usable_cores() -> int:
    """Cores this process may run on: ``len(os.sched_getaffinity(0))`` where available, else ``os.cpu_count()``
    (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _launcher_environ() -> Optional[Mapping[str, str]]:
    """The environment the parent process (torchrun's agent) was started with, or None where unreadable."""
    try:
        raw = open(f"/proc/{os.getppid()}/environ", "rb").read()  # noqa: SIM115 - tiny read-only file
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _local_world(environ: Mapping[str, str]) -> int:
    """Processes on this node under torchrun (``LOCAL_WORLD_SIZE``), 1 when unset or not a number."""
    try:
        return int(environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return 1


def plan_threads(environ: Mapping[str, str], cores: int,
                 launcher_environ: Optional[Mapping[str, str]] = None) -> ThreadChoice:
    """The variables to set, as a pure function (see the module notes for the rules).

    Args:
        environ: the process environment (e.g. ``os.environ``).
        cores: cores the process may use (:func:`usable_cores`).
        launcher_environ: the parent's initial environment (torchrun's agent), None if unknown; used to tell
            torchrun's own ``OMP_NUM_THREADS=1`` from the user's.
    Returns:
        a :class:`ThreadChoice` (``applied`` True).
    """
    choice = ThreadChoice()
    if WAIT_POLICY in environ:
        choice.kept[WAIT_POLICY] = environ[WAIT_POLICY]
    else:
        choice.set[WAIT_POLICY] = "PASSIVE"
    if _local_world(environ) > 1:
        given = environ.get(NUM_THREADS)
        torchrun_default = (given == "1" and launcher_environ is not None and NUM_THREADS not in launcher_environ)
        if given is None or torchrun_default:
            choice.set[NUM_THREADS] = str(max(1, cores // _local_world(environ)))
        else:
            choice.kept[NUM_THREADS] = given
    elif NUM_THREADS in environ:
        choice.kept[NUM_THREADS] = environ[NUM_THREADS]
    return choice


def configure_threads(environ: Optional[MutableMapping[str, str]] = None) -> ThreadChoice:
    """Set the thread defaults (module notes) in ``environ`` (default ``os.environ``) unless torch is already
    imported in this process or ``VIRTUAL_IHC_THREAD_DEFAULTS=0`` is set (the libraries' own defaults, e.g. for a
    release-style benchmark), in which case nothing changes (``applied`` False). Logs the decision at DEBUG level.
    Call it at the very start of an entry point's ``main()``, before anything imports torch."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT) == "0":
        log.debug("thread defaults off (%s=0)", OPT_OUT)
        return ThreadChoice(applied=False)
    if "torch" in sys.modules:
        log.debug("thread defaults not applied: torch was imported before configure_threads() (OpenMP reads its "
                  "settings when loaded); %s=%s, %s=%s", WAIT_POLICY, env.get(WAIT_POLICY, "(unset)"), NUM_THREADS,
                  env.get(NUM_THREADS, "(unset)"))
        return ThreadChoice(applied=False)
    launcher = _launcher_environ() if _local_world(env) > 1 else None
    choice = plan_threads(env, usable_cores(), launcher)
    env.update(choice.set)
    log.debug("thread defaults: set %s; kept the user's %s", choice.set or "nothing", choice.kept or "nothing")
    return choice
