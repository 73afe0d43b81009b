"""Logging configuration for the command-line entry points (library modules only call ``logging.getLogger``)."""
from __future__ import annotations

import argparse
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter for every entry point, except that a help text which already states its
    default keeps it once (``--help`` shows each default once)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower():
            return text
        return super()._get_help_string(action)


_EARLY = {"prog": None}


def exit_on_early_interrupt(prog: str) -> None:
    """For ``if __name__ == "__main__"`` at the top of an entry script, before its heavy imports (torch takes seconds
    to import): Ctrl-C during those imports prints ``<prog>: interrupted`` and exits 130 instead of a traceback.
    :func:`run_cli` restores Python's own handler (``KeyboardInterrupt``) when the program body starts."""
    import os
    import signal

    def handler(signum, frame):
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.stderr.flush()
        os._exit(130)

    _EARLY["prog"] = prog
    signal.signal(signal.SIGINT, handler)


def _restore_interrupt() -> None:
    if _EARLY["prog"] is not None:
        import signal

        signal.signal(signal.SIGINT, signal.default_int_handler)
        _EARLY["prog"] = None


def run_cli(main_body, argv, prog: Optional[str] = None, on_interrupt=None) -> int:
    """Run ``main_body(argv)`` and return its exit status (None counts as 0): the project's error contract.

    * The project's user errors (:class:`util.errors.UserError`) and operating-system errors (a missing, unreadable or
      unwritable file, a full disk) become one stderr line, ``<prog>: error: <message>`` (``error: <message>``
      without ``prog``), and exit status 2; an option-parsing error prints the usage line first, as argparse does.
      The traceback goes to the DEBUG log.
    * Ctrl-C (``KeyboardInterrupt``) prints ``<prog>: interrupted`` (plus ``; <on_interrupt()>``, e.g. the last
      complete checkpoint) and returns 130.
    * Any other exception propagates (a bug shows its traceback)."""
    from util.errors import UserError

    head = f"{prog}: " if prog else ""
    _restore_interrupt()
    try:
        return int(main_body(argv) or 0)
    except KeyboardInterrupt:
        extra = ""
        if on_interrupt is not None:
            extra = f"; {on_interrupt()}"
        print(f"{head}interrupted{extra}", file=sys.stderr)
        return 130
    except (UserError, OSError) as e:
        logging.getLogger("cli").debug("user error", exc_info=True)
        usage = getattr(e, "usage", None)
        if usage:
            print(usage.rstrip(), file=sys.stderr)
        print(f"{head}error: {e}", file=sys.stderr)
        return 2
