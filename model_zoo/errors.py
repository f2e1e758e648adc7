"""Exceptions that the CLI turns into one-line messages."""


class ZooError(ValueError):
    """A bad name or option given to the model zoo (the user can fix it)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: wrong format, truncated, tampered or foreign."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
