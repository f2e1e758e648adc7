"""The dataset registry: name -> loader returning images in [0, 1] as (N, C, H, W) float32 + int64 labels,
or, for the UCR/UEA time-series sets (ssmbench.timeseries), raw series (N, C, L) float32 + int64 labels.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssmbench.datasets import DataError
from ssmbench.datasets.cifar import load_cifar10
from ssmbench.datasets.idx import load_fashion_mnist, load_mnist
from ssmbench.datasets.tinyimagenet import load_tiny_imagenet
from ssmbench.timeseries import SERIES, SeriesInfo, read_series

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
]

SPLITS = ("train", "test")
DATA_ENV = "SSMBENCH_DATA"
DIGITS_SEED = 0
DIGITS_TRAIN = 1437
TINY_IMAGENET_CLASSES = 50  # the paper's Tiny-ImageNet run used the first 50 classes
AUGMENT_PADDING = 4

Arrays = tuple[np.ndarray, np.ndarray]
Loader = Callable[[str, Path, bool], Arrays]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: input shape, class count, whether training augments it, and where it comes from.

    A sequence set (input_kind "sequence") has height 1 and its length as width; its examples are
    (C, L) series in raw units, not [0, 1] images.
    """

    name: str
    channels: int
    height: int
    width: int
    classes: int
    augment: bool
    description: str
    input_kind: str = "image"

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.input_kind == "sequence":
            return (self.channels, self.width)
        return (self.channels, self.height, self.width)


DATASETS: dict[str, DatasetInfo] = {}
_LOADERS: dict[str, Loader] = {}


def register_dataset(
    name: str, *, channels: int, height: int, width: int, classes: int, augment: bool, description: str,
    input_kind: str = "image",
) -> Callable[[Loader], Loader]:
    """Decorator: make `loader(split, directory, download) -> (images, labels)` loadable by name.

    The loader returns numpy arrays, images (N, C, H, W) either uint8 (0-255) or floating point
    already in [0, 1]; `load_split` checks them against the declared shape and converts them.
    `directory` is the dataset's own folder under the data directory.
    """

    def decorate(loader: Loader) -> Loader:
        if name in DATASETS:
            raise DataError(f"dataset {name!r} registered twice")
        DATASETS[name] = DatasetInfo(name, channels, height, width, classes, augment, description, input_kind)
        _LOADERS[name] = loader
        return loader

    return decorate


def list_datasets() -> list[str]:
    return list(DATASETS)


def get_dataset(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


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
    images, labels = _LOADERS[name](split, root / name, download)
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


@register_dataset(
    "digits", channels=1, height=8, width=8, classes=10, augment=False,
    description="scikit-learn's bundled 8x8 handwritten digits, 1437 train / 360 test; no download",
)
def _digits(split: str, directory: Path, download: bool) -> Arrays:
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.RandomState(DIGITS_SEED).permutation(len(bunch.target))
    rows = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
    return (bunch.images[rows] / 16.0)[:, None], bunch.target[rows]


@register_dataset(
    "mnist", channels=1, height=28, width=28, classes=10, augment=False,
    description="MNIST handwritten digits, 60000 train / 10000 test (IDX .gz files in data_dir/mnist)",
)
def _mnist(split: str, directory: Path, download: bool) -> Arrays:
    return load_mnist(directory, split, download)


@register_dataset(
    "fashion-mnist", channels=1, height=28, width=28, classes=10, augment=False,
    description="Zalando's Fashion-MNIST, 60000 train / 10000 test (Debian's dataset-fashion-mnist, else data_dir)",
)
def _fashion_mnist(split: str, directory: Path, download: bool) -> Arrays:
    return load_fashion_mnist(directory, split, download)


@register_dataset(
    "cifar10", channels=3, height=32, width=32, classes=10, augment=True,
    description="CIFAR-10, 50000 train / 10000 test (python batches in data_dir/cifar10)",
)
def _cifar10(split: str, directory: Path, download: bool) -> Arrays:
    return load_cifar10(directory, split, download)


@register_dataset(
    "tiny-imagenet", channels=3, height=64, width=64, classes=TINY_IMAGENET_CLASSES, augment=True,
    description="Tiny-ImageNet, first 50 classes (sorted ids): 25000 train / 2500 val as test (data_dir/tiny-imagenet)",
)
def _tiny_imagenet(split: str, directory: Path, download: bool) -> Arrays:
    return load_tiny_imagenet(directory, split, download, TINY_IMAGENET_CLASSES)


def _register_series(info: SeriesInfo) -> None:
    """A UCR/UEA set of ssmbench.timeseries as a registry entry (never augmented)."""

    def load(split: str, directory: Path, download: bool) -> Arrays:
        return read_series(info, split)

    register_dataset(
        info.name, channels=info.channels, height=1, width=info.length, classes=info.classes, augment=False,
        description=f"{info.description}; {info.train_size} train / {info.test_size} test, shipped", input_kind="sequence",
    )(load)


for _series in SERIES.values():
    _register_series(_series)


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
