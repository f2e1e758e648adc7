"""Readers for the on-disk dataset formats behind `ssmbench.data`.

Each module reads one canonical format (IDX, CIFAR python batches, the Tiny-ImageNet folders) and
knows where its files come from. `ssmbench.data` is the registry that users call; this package
re-exports the exception they all raise (declared with the dataset facts in model_zoo.datasets)
so that the readers need not import the registry.
"""

from model_zoo.datasets import DataError

__all__ = ["DataError"]
