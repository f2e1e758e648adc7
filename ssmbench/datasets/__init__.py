"""Readers for the on-disk dataset formats behind `ssmbench.data`.

Each module reads one canonical format (IDX, CIFAR python batches, the Tiny-ImageNet folders) and
knows where its files come from. `ssmbench.data` is the registry that users call; this package
holds the exception they all raise so that the readers need not import the registry.
"""

from model_zoo.errors import UsageError


class DataError(UsageError):
    """Dataset files that are missing, incomplete or corrupt, or a bad dataset name or split.

    The message is one line that says what to do: which files are expected in which directory and
    where to get them.
    """
