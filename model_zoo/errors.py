"""Exceptions that the CLI turns into one-line messages and exit codes.

UsageError (exit 2): the user can fix the input (a bad name, option or file).
RunError (exit 1): the input was fine but the run failed (e.g. training diverged).
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input that the user can fix; the message says what to do."""


class RunError(RuntimeError):
    """A run that started with valid input and failed."""


class ZooError(UsageError):
    """A bad name or option given to the model zoo."""


class CheckpointError(UsageError):
    """A checkpoint file that cannot be trusted: wrong format, truncated, tampered or foreign."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
