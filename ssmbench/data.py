"""The dataset registry: name -> facts (model_zoo.datasets) and a loader returning images in [0, 1]
as (N, C, H, W) float32 + int64 labels, or for the UCR/UEA sequence sets (ssmbench.timeseries) raw
series (N, C, L) float32 + int64 labels.

    >>> from ssmbench.data import load_split
    >>> images, labels = load_split("digits", "train")   # (1437, 1, 8, 8), no download

Files live under a data directory: the `data_dir` argument, else $SSMBENCH_DATA, else
~/.cache/ssmbench/data, with one sub-folder per dataset (data_dir/mnist, data_dir/cifar10, ...).
Missing files are downloaded from their publishers with an md5 check when `download=True`;
otherwise, or when the network is unreachable, a one-line DataError says which files to put where.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model_zoo.datasets import DATASETS, DatasetInfo, add_dataset, get_dataset, list_datasets
from model_zoo.registries import Registry
from ssmbench.datasets import DataError
from ssmbench.datasets.cifar import load_cifar10
from ssmbench.datasets.idx import load_fashion_mnist, load_mnist
from ssmbench.datasets.tinyimagenet import load_tiny_imagenet
from ssmbench.timeseries import SERIES, read_series

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "augment",
    "default_data_dir",
    "get_dataset",
    "list_datasets",
    "load_split",
    "register_dataset",
    "register_loader",
]

SPLITS = ("train", "test")
DATA_ENV = "SSMBENCH_DATA"
DIGITS_SEED = 0
AUGMENT_PADDING = 4

Arrays = tuple[np.ndarray, np.ndarray]
Loader = Callable[[str, Path, bool], Arrays]

# Name -> loader; every name is also in DATASETS, which holds its facts.
_LOADERS: Registry[Loader] = Registry("dataset loader", DataError)


def register_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make `loader(split, directory, download) -> (images, labels)` the reader of the
    dataset `name`, whose facts are already in DATASETS.

    The loader returns numpy arrays, images (N, C, H, W) either uint8 (0-255) or floating point
    already in [0, 1]; `load_split` checks them against the declared shape and converts them.
    `directory` is the dataset's own folder under the data directory.
    """
    get_dataset(name)
    return _LOADERS.register(name, lambda loader: loader)


def register_dataset(
    name: str, *, channels: int, height: int, width: int, classes: int, augment: bool, description: str,
    train_size: int, test_size: int, paper_epochs: int, preset: str = "small",
) -> Callable[[Loader], Loader]:
    """Decorator: a new dataset, its facts and its loader in one step (see `register_loader`)."""
    info = DatasetInfo(name, channels, height, width, classes, train_size, test_size, paper_epochs, augment, preset, description)

    def decorate(loader: Loader) -> Loader:
        add_dataset(info)
        return register_loader(name)(loader)

    return decorate


def default_data_dir() -> Path:
    """$SSMBENCH_DATA if set, else ~/.cache/ssmbench/data."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "ssmbench" / "data"


def load_split(
    name: str, split: str, data_dir: str | Path | None = None, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 in [0, 1] of shape (N, C, H, W) (sequence sets: raw (N, C, L)) and labels int64 (N,) of one split."""
    info = get_dataset(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    images, labels = _LOADERS.get(name)(split, root / name, download)
    _check(info, split, images, labels)
    return _to_unit_float(images), torch.from_numpy(labels.astype(np.int64))


def _check(info: DatasetInfo, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Catch files of another dataset (or a reader bug) before a model sees wrong shapes."""
    expected = info.input_shape
    if images.ndim != len(expected) + 1 or images.shape[1:] != expected:
        raise DataError(f"{info.name} {split}: images of shape {images.shape[1:]}, expected {expected}")
    if labels.shape != (len(images),):
        raise DataError(f"{info.name} {split}: {len(images)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.classes):
        raise DataError(f"{info.name} {split}: labels outside 0..{info.classes - 1}")


def _to_unit_float(images: np.ndarray) -> torch.Tensor:
    if images.dtype == np.uint8:
        scaled = np.divide(images, 255, dtype=np.float32)
    else:
        scaled = images.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled))


@register_loader("digits")
def _digits(split: str, directory: Path, download: bool) -> Arrays:
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.RandomState(DIGITS_SEED).permutation(len(bunch.target))
    train_size = get_dataset("digits").train_size
    rows = order[:train_size] if split == "train" else order[train_size:]
    return (bunch.images[rows] / 16.0)[:, None], bunch.target[rows]


@register_loader("mnist")
def _mnist(split: str, directory: Path, download: bool) -> Arrays:
    return load_mnist(directory, split, download)


@register_loader("fashion-mnist")
def _fashion_mnist(split: str, directory: Path, download: bool) -> Arrays:
    return load_fashion_mnist(directory, split, download)


@register_loader("cifar10")
def _cifar10(split: str, directory: Path, download: bool) -> Arrays:
    return load_cifar10(directory, split, download)


@register_loader("tiny-imagenet")
def _tiny_imagenet(split: str, directory: Path, download: bool) -> Arrays:
    return load_tiny_imagenet(directory, split, download, get_dataset("tiny-imagenet").classes)


def _series_loader(name: str) -> Loader:
    def load(split: str, directory: Path, download: bool) -> Arrays:
        return read_series(name, split)  # shipped inside ssmbench: no directory, no download

    return load


for _name in SERIES:
    register_loader(_name)(_series_loader(_name))


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding 4, then a random horizontal flip, drawn independently per image.

    Both are one gather: output pixel (i, j) of image n reads the zero-padded input at row dy[n] + i
    and column dx[n] + j, or dx[n] + W-1-j when the image is flipped. Random numbers are drawn on
    the generator's device (CPU by default) so that a seeded generator gives the same crops
    whatever device the images are on. The input is not modified.
    """
    if images.ndim != 4:
        raise ValueError(f"augment expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, _, height, width = images.shape
    draw_device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * AUGMENT_PADDING + 1, (2, n), generator=generator, device=draw_device)
    flip = torch.rand(n, generator=generator, device=draw_device) < 0.5
    dy, dx, flip = offsets[0].to(images.device), offsets[1].to(images.device), flip.to(images.device)
    padded = F.pad(images, (AUGMENT_PADDING,) * 4)
    row_steps = torch.arange(height, device=images.device)
    col_steps = torch.arange(width, device=images.device)
    rows = dy[:, None] + row_steps
    cols = dx[:, None] + torch.where(flip[:, None], width - 1 - col_steps, col_steps)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indices around a slice put their broadcast dims first: (N, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
