"""The project's user-facing errors.

Entry points catch :class:`UserError` (and ``OSError`` from reading files), print one clear line to stderr and exit
with status 2. Library code raises the most specific subclass with the file, folder or option named in the message.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, folder, option or value that cannot be used. The message says which and why."""


class DataError(UserError, ValueError):
    """A dataset folder or file does not match the expected layout or content."""


class OptionError(UserError, ValueError):
    """A command-line option is invalid or contradicts another one (or the saved options of a run)."""


class CheckpointError(UserError, OSError):
    """A checkpoint is missing, unreadable, or does not match the network it is loaded into."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message names the loss, epoch and iteration."""
