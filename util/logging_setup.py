"""Logging configuration for the command-line entry points (library modules only call ``logging.getLogger``)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at emit time (robust to redirection and capture)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(verbose: bool = False, log_file: Optional[Path] = None) -> None:
    """Log INFO (DEBUG with ``verbose``) to stderr in a short format, and optionally to ``log_file`` too.

    Re-running it (tests call ``main`` many times) replaces the handlers instead of stacking them.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_virtual_ihc", False):
            root.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [_CurrentStderrHandler()]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        h._virtual_ihc = True
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def run_cli(main_body, argv, prog: Optional[str] = None) -> int:
    """Run ``main_body(argv)`` and return its exit status (None counts as 0). The project's user errors
    (:class:`util.errors.UserError`) and operating-system errors (a missing, unreadable or unwritable file, a full
    disk) become one stderr line, ``<prog>: error: <message>`` (``error: <message>`` without ``prog``), and exit
    status 2; the traceback goes to the DEBUG log. Any other exception propagates (a bug shows its traceback)."""
    from util.errors import UserError

    try:
        return int(main_body(argv) or 0)
    except (UserError, OSError) as e:
        logging.getLogger("cli").debug("user error", exc_info=True)
        print(f"{prog}: error: {e}" if prog else f"error: {e}", file=sys.stderr)
        return 2
