"""One training run per experiment folder: an advisory POSIX record lock (``fcntl.lockf``) on
``<experiment>/.train.lock``.

Two trainings writing checkpoint sets into one folder would interleave their sets (and each would clean up the
other's unfinished writes); the second one is refused at start. The lock is released when the process ends, also
when it is killed, so a stale lock file never blocks a later run. A record lock belongs to the process, not to the
open file: DataLoader worker processes forked from the training do not hold it (with ``flock`` they did, so a
``--continue_train`` right after a ``kill -9`` was refused for the seconds the orphaned workers took to exit).
Record locks do not conflict within one process, so this module also refuses a second lock of the same folder in
the same process.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from util.errors import UserError

_HELD: set = set()  # folders locked by this process


class ExperimentLock:
    """Hold the training lock of experiment folder ``exp`` (created if missing) until :meth:`release`.

    Raises:
        UserError: another process holds the lock (names the folder).
    """

    def __init__(self, exp: Path):
        exp = Path(exp)
        exp.mkdir(parents=True, exist_ok=True)
        self.path = exp / ".train.lock"
        self._key = str(self.path.resolve())
        refused = UserError(f"another training run is writing to '{exp}' (it holds {self.path.name}); wait for it, "
                            "or use another --name")
        self._fd = None
        if self._key in _HELD:
            raise refused
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:  # EACCES or EAGAIN: held by another process
            os.close(self._fd)
            self._fd = None
            raise refused from e
        _HELD.add(self._key)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            _HELD.discard(self._key)
