"""CPU thread defaults of every entry point: OpenMP settings chosen before PyTorch is imported, and an intra-op
thread count that makes room for other jobs while they run.

PyTorch's CPU wheels run their intra-op parallelism on GNU OpenMP (libgomp), whose idle worker threads *spin*
(busy-wait, up to ``GOMP_SPINCOUNT`` = 300000 pause loops, milliseconds) before they sleep. Alone that is what makes
the many short parallel regions of a training step fast; but when two PyTorch processes share a machine, each one's
spinning threads take the cores the other one's working threads need: on the 2-core development machine two 256 px
pyramid pix2pix training steps started together took 19.5 s per step each against 3.6 s alone (5.4x; a fair share is
2x; issue 19). ``OMP_WAIT_POLICY=PASSIVE`` (sleep at once) fixed the pair but cost the solo step 7-60 % (every
parallel region then waits for a sleeping thread to wake). So the fix is not in the wait policy but in the thread
count:

* :func:`rebalance` (called once per training step, test batch and slide tile batch) measures, every 2 s, how many
  cores of this process's affinity mask *other* processes keep busy (``psutil``: the cores' busy time minus this
  process's and its children's, e.g. DataLoader workers) and sets ``torch.set_num_threads`` to the cores they leave
  free, rounded, between 1 and the thread count the process started with (:func:`fair_threads`). Alone nothing
  changes; two such jobs on 2 cores each drop to 1 thread within a few seconds, so no thread of either job spins
  on a core the other needs, and each returns to 2 threads when the other ends. The change is logged.
* Under torchrun (``LOCAL_WORLD_SIZE`` > 1): ``OMP_NUM_THREADS`` = the cores this process may use
  (``os.sched_getaffinity``) // the processes per node, at least 1, set before torch is imported. torchrun itself
  sets ``OMP_NUM_THREADS=1`` for every process when the user did not set it; that default (recognised by
  ``OMP_NUM_THREADS`` being absent from the environment the launcher was started with, ``/proc/<parent>/environ`` on
  Linux) is replaced too, so a CPU node's cores are divided among its processes instead of one each. A value the
  user gave (also ``1``) is kept.

:func:`configure_threads` is called first thing in the ``main()`` of every entry point that trains or infers
(train.py, test.py, evaluate.py, stain_slide.py, scripts/ablation.py, scripts/table1.py, scripts/bench_train.py,
scripts/bench_wsi.py, scripts/misalignment_benchmark.py). It only sets variables the user has not set, and turns the
thread adaptation on only when the thread count is PyTorch's own choice: not when the user set ``OMP_NUM_THREADS``,
not under torchrun (its processes are already divided), not when torch was imported before (e.g. a test calling an
entry point's ``main()`` in the pytest process) and not with ``VIRTUAL_IHC_THREAD_DEFAULTS=0``. PyTorch starts no
more intra-op threads than the cores in the process's affinity mask (``taskset -c 0`` gives 1 thread) and
DataLoader workers run one thread each (PyTorch's worker loop sets it).

Numerics: a different thread count can change how some reductions are split, i.e. float32 rounding in the last
bits; for bit-reproducible runs on a shared machine set ``OMP_NUM_THREADS``. This module does not import torch
at import time.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, MutableMapping, NamedTuple, Optional

log = logging.getLogger(__name__)

WAIT_POLICY = "OMP_WAIT_POLICY"
OPT_OUT = "VIRTUAL_IHC_THREAD_DEFAULTS"  # "0": leave the OpenMP environment as the user gave it
NUM_THREADS = "OMP_NUM_THREADS"


@dataclass
class ThreadChoice:
    """What :func:`configure_threads` decided: ``set`` the variables it set (name -> value), ``kept`` the ones the
    user had set (name -> value), ``applied`` False when torch was imported before (nothing was changed),
    ``adaptive`` whether :func:`rebalance` adapts the intra-op thread count (PyTorch chose the count)."""

    set: Dict[str, str] = field(default_factory=dict)
    kept: Dict[str, str] = field(default_factory=dict)
    applied: bool = True
    adaptive: bool = False


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


def configure_threads(environ: Optional[MutableMapping[str, str]] = None, cli: bool = False) -> ThreadChoice:
    """Set the thread defaults (module notes) in ``environ`` (default ``os.environ``) unless torch is already
    imported in this process or ``VIRTUAL_IHC_THREAD_DEFAULTS=0`` is set (the libraries' own defaults, e.g. for a
    release-style benchmark), in which case nothing changes (``applied`` False). Logs the decision at DEBUG level.
    Call it at the very start of an entry point's ``main()``, before anything imports torch, with ``cli=argv is
    None and __name__ == "__main__"``: a command-line process is first restarted with TCMalloc preloaded where the system has it
    (:func:`util.allocator.reexec_with_tcmalloc`; a bad ``VIRTUAL_IHC_ALLOCATOR`` ends the process with one
    ``<prog>: error:`` line and exit status 2)."""
    if environ is None:
        from util.allocator import reexec_with_tcmalloc

        reexec_with_tcmalloc(cli)
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
    choice.adaptive = _local_world(env) <= 1 and NUM_THREADS not in env
    if environ is None:  # the running process: rebalance() may adapt its thread count
        _STATE.adaptive = choice.adaptive
        _STATE.share = None
    log.debug("thread defaults: set %s; kept the user's %s; thread count adapts to other jobs: %s",
              choice.set or "nothing", choice.kept or "nothing", choice.adaptive)
    return choice


# ------------------------------------------------------------------------------------------ sharing the cores
REBALANCE_INTERVAL_S = 2.0  # seconds between two measurements of the other processes' load
HYSTERESIS_CORES = 0.2  # the free cores must be this far past the rounding point before the count changes


def fair_threads(other_cores: float, cores: int, max_threads: int) -> int:
    """The intra-op thread count that fits beside other processes: the cores they leave free, rounded to the
    nearest whole core, between 1 and ``max_threads``.

    Args:
        other_cores: cores kept busy by other processes, averaged over the last interval (>= 0; e.g. 1.0 when a
            second training uses one of two cores).
        cores: cores this process may run on (its affinity mask).
        max_threads: the thread count the process started with (PyTorch's choice).
    """
    return max(1, min(max_threads, int(cores - max(0.0, other_cores) + 0.5)))


class CpuSample(NamedTuple):
    """Cumulative counters at one moment: ``wall`` (s, monotonic), ``busy`` (CPU-seconds of all processes on this
    process's cores: user + nice + system + irq + softirq; a virtual machine's steal time is not ours to give
    back), ``own`` (CPU-seconds of this process, its waited-for children and its live descendants, e.g.
    DataLoader workers)."""

    wall: float
    busy: float
    own: float


def sample_cpu() -> CpuSample:
    """Read :class:`CpuSample` now with ``psutil`` (Linux, macOS, Windows). A descendant that exits while it is read
    is left out of that sample."""
    import psutil

    me = psutil.Process()
    per_cpu = psutil.cpu_times(percpu=True)
    try:
        mine = [c for c in me.cpu_affinity() if c < len(per_cpu)] or range(len(per_cpu))
    except (AttributeError, psutil.Error):  # cpu_affinity does not exist on macOS
        mine = range(len(per_cpu))
    busy = 0.0
    for c in mine:
        t = per_cpu[c]
        busy += t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    t = me.cpu_times()
    own = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            ct = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        own += ct.user + ct.system
    return CpuSample(time.monotonic(), busy, own)


class CoreShare:
    """Adapts the intra-op thread count to the cores other processes leave free (module notes).

    :meth:`tick` is cheap (one clock read) between measurements; every ``interval`` seconds it takes a
    :class:`CpuSample`, computes the other processes' average load over the interval and, when
    :func:`fair_threads` gives another count and the free cores are more than ``HYSTERESIS_CORES`` (0.2) past the
    rounding point, sets it and logs the change.

    Args:
        max_threads: the thread count to return to when the machine is free (PyTorch's initial choice).
        cores: cores this process may run on.
        interval: seconds between measurements.
        sampler, set_threads, clock: injectable for tests (default :func:`sample_cpu`, ``torch.set_num_threads``,
            ``time.monotonic``).
    """

    def __init__(self, max_threads: int, cores: int, interval: float = REBALANCE_INTERVAL_S,
                 sampler: Callable[[], CpuSample] = sample_cpu, set_threads: Optional[Callable[[int], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.max_threads, self.cores, self.interval = max(1, max_threads), max(1, cores), interval
        self.threads = self.max_threads
        self._sampler, self._set, self._clock = sampler, set_threads, clock
        self._last = sampler()
        self._next = clock() + interval

    def tick(self) -> Optional[int]:
        """Measure if the interval has passed; returns the new thread count when it changed, else None."""
        if self._clock() < self._next:
            return None
        now = self._sampler()
        dt = now.wall - self._last.wall
        other = max(0.0, (now.busy - self._last.busy) - (now.own - self._last.own)) / dt if dt > 0 else 0.0
        self._last, self._next = now, self._clock() + self.interval
        target = fair_threads(other, self.cores, self.max_threads)
        # hysteresis: change only when the free cores are clearly past the rounding point (a load hovering at
        # x.5 cores would otherwise flip the count every interval)
        if target == self.threads or abs((self.cores - other) - self.threads) < 0.5 + HYSTERESIS_CORES:
            return None
        log.info("other processes keep %.2f of %d core(s) busy: %d intra-op thread(s) (was %d)", other, self.cores,
                 target, self.threads)
        if self._set is None:
            import torch

            torch.set_num_threads(target)
        else:
            self._set(target)
        self.threads = target
        return target


class _State:
    adaptive = False
    share: Optional[CoreShare] = None


_STATE = _State()


def rebalance() -> Optional[int]:
    """Adapt this process's intra-op thread count to the other jobs on the machine (module notes); call it once per
    iteration of a training, inference or scoring loop. A no-op returning None unless :func:`configure_threads`
    turned the adaptation on for this process; else the new thread count when it changed, None otherwise."""
    if not _STATE.adaptive:
        return None
    if _STATE.share is None:
        import torch

        _STATE.share = CoreShare(torch.get_num_threads(), usable_cores())
        return None
    return _STATE.share.tick()
