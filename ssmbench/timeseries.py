"""UCR/UEA time-series data sets: a reader of the archive's `.ts` files and the training-set scale.

    >>> from ssmbench.timeseries import load_series
    >>> x, y = load_series("gunpoint", "train")     # float32 (50, 1, 150) in raw units, int64 labels

Why a reader and not `aeon`: aeon 1.6.0 (the wheel that ships these files) needs numba 0.63, which
needs numpy < 2.4, so installing it would downgrade the pinned environment's numpy (2.4.6); with
its dependencies it adds 313 MB and took 65 s to install here. The five sets registered below are
aeon's shipped `.ts` files (BSD-3 packaging of the UCR/UEA archives), gzipped: 1.4 MB inside
ssmbench/datasets/ucr/, nothing to install and nothing downloaded at run time.

The archive's own train/test split is kept. Labels are the position of each case's class in the
file's `@classLabel` list, so both splits map a class to the same index.

Variable length (JapaneseVowels, 7-29 steps): every case is resampled by linear interpolation to
the declared length (the archive's longest case). Padding with a mask was the alternative; it
would need every mixer to honour a mask (causal convolutions, Mega's bidirectional EMA and the
mean pool all read padded steps), which breaks the "every mixer unchanged" contract, and the
eps-ball would be defined over steps that do not exist.

Scale: the series stay in raw units here. A sequence classifier fits the per-channel mean, std
and range of the series it trains on (`SequenceClassifier.fit_input`, called by the trainer on
the training part of the training split only) and keeps them in its checkpoint.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model_zoo.datasets import get_dataset
from ssmbench.datasets import DataError

FILES = Path(__file__).parent / "datasets" / "ucr"
SPLIT_FILES = {"train": "TRAIN", "test": "TEST"}


@dataclass(frozen=True)
class SeriesFiles:
    """Where a registered sequence set's files are and how to read them; its sizes (channels,
    length, classes, split sizes) are the dataset registry's (model_zoo.datasets), checked on load."""

    name: str
    archive_name: str
    variable_length: bool = False


SERIES: dict[str, SeriesFiles] = {
    files.name: files
    for files in (
        SeriesFiles("gunpoint", "GunPoint"),
        SeriesFiles("italypowerdemand", "ItalyPowerDemand"),
        SeriesFiles("acsf1", "ACSF1"),
        SeriesFiles("basicmotions", "BasicMotions"),
        SeriesFiles("japanesevowels", "JapaneseVowels", variable_length=True),
    )
}


@dataclass(frozen=True)
class TsFile:
    """A parsed `.ts` file: the cases as (C, L_i) arrays, their class names, the declared class list."""

    cases: list[np.ndarray]
    labels: list[str]
    class_names: list[str]


def parse_ts(text: str, source: str) -> TsFile:
    """Parse the sktime/aeon `.ts` text format (header `@key value` lines, then `@data`).

    Each data line is `dim1:dim2:...:label`, each dimension a comma-separated series. Missing
    values ('?') and time stamps are refused: none of the registered sets has them.
    """
    class_names: list[str] | None = None
    cases: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            key, _, value = line.partition(" ")
            key = key.lower()
            if key == "@classlabel":
                flag, *names = value.split()
                if flag.lower() != "true" or not names:
                    raise DataError(f"{source}: line {number}: no class labels declared")
                class_names = names
            elif key == "@timestamps" and value.strip().lower() == "true":
                raise DataError(f"{source}: time-stamped series are not supported")
            elif key == "@data":
                in_data = True
            continue
        *dims, label = line.split(":")
        if "?" in line:
            raise DataError(f"{source}: line {number}: missing values ('?') are not supported")
        try:
            series = [np.array(dim.split(","), dtype=np.float64) for dim in dims]
        except ValueError:
            raise DataError(f"{source}: line {number}: a value is not a number") from None
        if not series or len({len(s) for s in series}) != 1:
            raise DataError(f"{source}: line {number}: dimensions of unequal length")
        cases.append(np.stack(series))
        labels.append(label.strip())
    if class_names is None or not in_data:
        raise DataError(f"{source}: not a .ts file (no @classLabel or @data line)")
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise DataError(f"{source}: labels {', '.join(unknown[:5])} are not in @classLabel")
    return TsFile(cases, labels, class_names)


def resample(case: np.ndarray, length: int) -> np.ndarray:
    """(C, L_i) -> (C, length) by linear interpolation on [0, 1] (the identity when L_i == length)."""
    if case.shape[1] == length:
        return case
    if case.shape[1] == 1:
        return np.repeat(case, length, axis=1)
    old = np.linspace(0.0, 1.0, case.shape[1])
    new = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(new, old, channel) for channel in case])


def get_series(name: str) -> SeriesFiles:
    try:
        return SERIES[name]
    except KeyError:
        raise DataError(f"unknown time-series data set {name!r}; choose one of {', '.join(SERIES)}") from None


def series_path(files: SeriesFiles, split: str) -> Path:
    if split not in SPLIT_FILES:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_FILES)}")
    return FILES / f"{files.archive_name}_{SPLIT_FILES[split]}.ts.gz"


def read_series(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 (N, C, L) in the archive's units and int64 labels of one split, checked against the registry."""
    files, info = get_series(name), get_dataset(name)
    length = info.width
    path = series_path(files, split)
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read {path} ({exc}); reinstall ssmbench, which ships it") from None
    parsed = parse_ts(text, str(path))
    lengths = {case.shape[1] for case in parsed.cases}
    if not files.variable_length and lengths != {length}:
        raise DataError(f"{path}: series of length {sorted(lengths)}, expected {length}")
    series = np.stack([resample(case, length) for case in parsed.cases]).astype(np.float32)
    index = {class_name: i for i, class_name in enumerate(parsed.class_names)}
    labels = np.array([index[label] for label in parsed.labels], dtype=np.int64)
    expected = info.train_size if split == "train" else info.test_size
    if series.shape != (expected, info.channels, length) or len(parsed.class_names) != info.classes:
        raise DataError(
            f"{path}: {series.shape} with {len(parsed.class_names)} classes, "
            f"expected {(expected, info.channels, length)} with {info.classes}"
        )
    return series, labels


def load_series(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-unit series float32 (N, C, L) and int64 labels (N,) of `split`."""
    series, labels = read_series(name, split)
    return torch.from_numpy(series), torch.from_numpy(labels)
