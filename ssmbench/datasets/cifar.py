"""CIFAR-10 in its canonical python-pickle batches (cifar-10-batches-py), from the published archive."""

from __future__ import annotations

import importlib
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.files import atomic_write_bytes
from ssmbench.datasets import DataError
from ssmbench.datasets.download import Remote, ensure_files, missing_message, verify

ARCHIVE = Remote("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", ("https://www.cs.toronto.edu/~kriz/",))
FOLDER = "cifar-10-batches-py"
SPLIT_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_PIXELS = 3 * 32 * 32

# The only globals that a published CIFAR batch references: numpy's array reconstruction, written
# as numpy.core by the Python 2 numpy that made the files and resolved from numpy._core on numpy 2.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "numpy.core.multiarray"),
    ("numpy", "ndarray"): ("numpy",),
    ("numpy", "dtype"): ("numpy",),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches and nothing else.

    Pickle is acceptable here only because it is the format in which CIFAR-10 is published (the
    python version of the archive); it is never used for model files. Even so, a batch may only
    name the few numpy globals above, so a tampered file cannot run code when it is read.
    """

    def find_class(self, module: str, name: str) -> Any:
        homes = _ALLOWED_GLOBALS.get((module, name))
        if homes is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        for home in homes:
            try:
                return getattr(importlib.import_module(home), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels (N,)) from one batch file."""
    try:
        with open(path, "rb") as stream:
            # The batches were written by Python 2: bytes keys, hence encoding="bytes".
            batch = _BatchUnpickler(stream, encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - a corrupt pickle fails in many ways; all mean "not a batch"
        raise DataError(f"{path}: not a CIFAR-10 python batch ({err})") from err
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{path}: not a CIFAR-10 python batch (no uint8 b'data' array of shape (N, {_PIXELS}))")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but labels of shape {labels.shape}")
    # Each row is the red plane, then green, then blue, each row-major: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def extract(archive: Path, folder: Path) -> None:
    """Copy the batch files out of the archive, each written to a temporary file then renamed.

    Only the expected regular files are read out of the tar, by name, so no member of the archive
    can write outside `folder`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [name for batches in SPLIT_BATCHES.values() for name in batches]
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                member = tar.getmember(f"{FOLDER}/{name}")
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise DataError(f"{archive}: {FOLDER}/{name} is not a regular file")
                atomic_write_bytes(folder / name, source.read())
    except (tarfile.TarError, KeyError, EOFError, OSError) as err:
        reason = f"cannot extract the CIFAR-10 batches ({err}); delete it and fetch it again"
        raise DataError(f"{archive}: {reason}") from err


def load_cifar10(directory: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Read the batches in `directory`/cifar-10-batches-py, extracting the archive there if needed."""
    folder = directory / FOLDER
    wanted = SPLIT_BATCHES[split]
    archive = directory / ARCHIVE.filename
    if not all((folder / name).is_file() for name in wanted):
        if archive.is_file():
            verify(archive, ARCHIVE.md5)
        elif not download:
            expected = [f"{FOLDER}/{name}" for name in wanted]
            how = f"download {ARCHIVE.urls()[0]} or allow downloading"
            raise DataError(missing_message("cifar10", directory, expected, how, ARCHIVE.filename))
        else:
            ensure_files("cifar10", directory, [ARCHIVE], download)
        extract(archive, folder)
    parts = [read_batch(folder / name) for name in wanted]
    return np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts])
