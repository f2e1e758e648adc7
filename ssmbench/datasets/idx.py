"""The IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw, and where the files come from."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ssmbench.datasets import DataError
from ssmbench.datasets.download import Remote, ensure_files, missing_message

# Type codes from the IDX specification; multi-byte values are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Debian's dataset-fashion-mnist installs the real files here. Debian re-compressed them, so their
# md5 differs from the publisher's; they come through apt's own verification and are not re-checked.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_APT = "apt-get install dataset-fashion-mnist"


def split_filenames(split: str) -> tuple[str, str]:
    """The canonical (images, labels) file names of a split."""
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt gzip data ({err}); delete it and fetch it again") from err


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip detected from its magic bytes, not its name) as a numpy array."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: truncated or padded IDX file ({len(raw)} bytes, its header says {expected})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def find_idx(directory: Path, filename: str) -> Path | None:
    """`filename` (.gz) or its decompressed twin in `directory`, whichever exists."""
    for candidate in (directory / filename, directory / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def read_idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 1, H, W), labels (N,)) of one split from the IDX pair in `directory`."""
    found = [find_idx(directory, name) for name in split_filenames(split)]
    paths = [path for path in found if path is not None]
    if len(paths) != len(found):
        absent = [name for name, path in zip(split_filenames(split), found) if path is None]
        raise DataError(missing_message("IDX", directory, absent, "put the files there"))
    images, labels = (read_idx(path) for path in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{directory}: {paths[0].name} holds shape {images.shape} and {paths[1].name} {labels.shape};"
            " expected (N, H, W) images and N labels"
        )
    return images[:, None], labels


def mnist_remotes(split: str) -> list[Remote]:
    return [Remote(name, MNIST_MD5[name], MNIST_MIRRORS) for name in split_filenames(split)]


def fashion_remotes(split: str) -> list[Remote]:
    return [Remote(name, FASHION_MD5[name], FASHION_MIRRORS) for name in split_filenames(split)]


def _has_split(directory: Path, split: str) -> bool:
    return all(find_idx(directory, name) is not None for name in split_filenames(split))


def load_mnist(directory: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    if not _has_split(directory, split):
        ensure_files("mnist", directory, mnist_remotes(split), download)
    return read_idx_split(directory, split)


def load_fashion_mnist(directory: Path, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """From Debian's package when installed, else from `directory` (downloading if allowed)."""
    if _has_split(FASHION_SYSTEM_DIR, split):
        return read_idx_split(FASHION_SYSTEM_DIR, split)
    if not _has_split(directory, split):
        try:
            ensure_files("fashion-mnist", directory, fashion_remotes(split), download)
        except DataError as err:
            raise DataError(f"{err} (or: {FASHION_APT})") from None
    return read_idx_split(directory, split)
