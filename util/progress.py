"""Progress lines for training when the output is not a terminal (a log file, ``nohup``, a batch scheduler).

tqdm hides its bar when stderr is not a TTY, which leaves a long run silent between loss lines.
:class:`ProgressReporter` then logs one line every ``interval`` seconds:

    epoch 3/10: 40% (12/30 batches), 5.2 images/s, epoch left 0:00:14, training left 0:05:20

Speeds are measured over the last interval (images of all processes per wall-clock second); time left assumes the
mean batch time since the start of the run (``time.monotonic``).
"""
from __future__ import annotations

import datetime
import logging
import sys
import time
from typing import Callable, Optional

log = logging.getLogger("train")


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class ProgressReporter:
    """Log a progress line every ``interval`` seconds.

    Args:
        first_epoch, last_epoch: epochs of the run (inclusive).
        batches_per_epoch: loader length (>= 0).
        interval: seconds between lines (> 0); 0 disables the reporter.
        enabled: None = only when ``sys.stderr`` is not a terminal (where tqdm shows no bar).
        clock: time source in seconds (tests pass a fake one).
    """

    def __init__(self, first_epoch: int, last_epoch: int, batches_per_epoch: int, interval: float = 30.0,
                 enabled: Optional[bool] = None, clock: Callable[[], float] = time.monotonic) -> None:
        if interval < 0:
            raise ValueError(f"progress interval must be >= 0 seconds, got {interval}")
        if enabled is None:
            enabled = not sys.stderr.isatty()
        self.enabled = bool(enabled) and interval > 0
        self.first, self.last, self.per_epoch = first_epoch, last_epoch, max(0, int(batches_per_epoch))
        self.interval, self.clock = float(interval), clock
        self.t0 = self.t_last = clock()
        self.done = 0
        self.images_since = 0

    def update(self, epoch: int, batch_index: int, n_images: int) -> Optional[str]:
        """Record that batch ``batch_index`` (0-based) of ``epoch`` with ``n_images`` images finished; returns the
        line when one is due (and logs it), else None."""
        self.done += 1
        self.images_since += n_images
        if not self.enabled:
            return None
        now = self.clock()
        if now - self.t_last < self.interval:
            return None
        rate = self.images_since / max(now - self.t_last, 1e-9)
        per_batch = (now - self.t0) / self.done
        left_epoch = max(0, self.per_epoch - (batch_index + 1))
        left_all = left_epoch + max(0, self.last - epoch) * self.per_epoch
        pct = 100.0 * (batch_index + 1) / self.per_epoch if self.per_epoch else 100.0
        line = (f"epoch {epoch}/{self.last}: {pct:.0f}% ({batch_index + 1}/{self.per_epoch} batches), "
                f"{rate:.3g} images/s, epoch left {_hms(left_epoch * per_batch)}, "
                f"training left {_hms(left_all * per_batch)}")
        log.info("%s", line)
        self.t_last, self.images_since = now, 0
        return line
