"""The project's user-facing errors.

Entry points catch :class:`UserError` (and ``OSError`` from reading files), print one clear line to stderr and exit
with status 2. Library code raises the most specific subclass with the file, folder or option named in the message.
"""
from __future__ import annotations

import re

# PyTorch's DataLoader re-raises a worker's exception as ``type(e)(msg)`` with msg = "Caught <Type> in DataLoader
# worker process <n>.\nOriginal Traceback (most recent call last): ...<module>.<Type>: <message>"
# (torch.utils.data._utils.ExceptionWrapper.reraise).
_WORKER_RE = re.compile(r"\ACaught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback")


def _worker_message(text: str) -> tuple[str, str]:
    """``(message, traceback)``: the original one-line message of a DataLoader worker's re-raised error and the
    worker's traceback text; ``(text, "")`` for any other text."""
    m = _WORKER_RE.match(text)
    if not m:
        return text, ""
    name, worker = m.groups()
    last = re.findall(rf"^(?:[\w.]+\.)?{name}: (.*)$", text, flags=re.MULTILINE)
    if not last:
        return text, ""
    return f"{last[-1]} (in DataLoader worker {worker})", text


class UserError(Exception):
    """Bad input from the user: a file, folder, option or value that cannot be used. The message says which and why.

    A UserError raised inside a DataLoader worker reaches the main process re-created from a message holding the
    worker's whole traceback; the constructor keeps only the original one-line message (plus the worker number), so
    entry points still print one line. The worker's traceback stays in :attr:`worker_traceback` (``""`` otherwise).
    """

    def __init__(self, *args):
        tb = ""
        if len(args) == 1 and isinstance(args[0], str):
            msg, tb = _worker_message(args[0])
            args = (msg,)
        super().__init__(*args)
        self.worker_traceback = tb


class DataError(UserError, ValueError):
    """A dataset folder or file does not match the expected layout or content."""


class OptionError(UserError, ValueError):
    """A command-line option is invalid or contradicts another one (or the saved options of a run)."""


class CheckpointError(UserError, OSError):
    """A checkpoint is missing, unreadable, or does not match the network it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message names the loss, epoch and iteration."""
