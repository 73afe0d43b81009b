"""One training run per experiment folder: an advisory ``flock`` on ``<experiment>/.train.lock``.

Two trainings writing checkpoint sets into one folder would interleave their sets (and each would clean up the
other's unfinished writes); the second one is refused at start. The lock is released when the process ends, also
when it is killed, so a stale lock file never blocks a later run.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from util.errors import UserError


class ExperimentLock:
    """Hold the training lock of experiment folder ``exp`` (created if missing) until :meth:`release`.

    Raises:
        UserError: another process holds the lock (names the folder).
    """

    def __init__(self, exp: Path):
        exp = Path(exp)
        exp.mkdir(parents=True, exist_ok=True)
        self.path = exp / ".train.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise UserError(f"another training run is writing to '{exp}' (it holds {self.path.name}); wait for it, "
                            "or use another --name") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
