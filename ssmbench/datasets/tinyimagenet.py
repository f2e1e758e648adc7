"""Tiny-ImageNet in its canonical tiny-imagenet-200 folder layout; the val split serves as test."""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ssmbench.datasets import DataError
from ssmbench.datasets.download import Remote, ensure_files, missing_message, verify

ARCHIVE = Remote("tiny-imagenet-200.zip", "90528d7ca1a48142e341f4ef8d21d0de", ("http://cs231n.stanford.edu/",))
FOLDER = "tiny-imagenet-200"
SIZE = 64


def _complete(folder: Path) -> bool:
    return (folder / "wnids.txt").is_file() and (folder / "val" / "val_annotations.txt").is_file()


def extract(archive: Path, directory: Path) -> None:
    """Unzip into a temporary folder beside the target, then rename it into place in one step.

    zipfile drops absolute paths and '..' from member names, so the archive cannot write elsewhere.
    """
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".{FOLDER}.", suffix=".part"))
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(tmp)
        if not _complete(tmp / FOLDER):
            raise DataError(f"{archive}: no {FOLDER}/wnids.txt and val/val_annotations.txt inside")
        os.replace(tmp / FOLDER, directory / FOLDER)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive}: cannot extract ({err}); delete it and fetch it again") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def class_ids(folder: Path, n_classes: int) -> list[str]:
    """The first `n_classes` WordNet ids in sorted order, the class order of an ImageFolder over train/."""
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()})
    if len(wnids) < n_classes:
        raise DataError(f"{folder / 'wnids.txt'}: {len(wnids)} classes listed, {n_classes} needed")
    return wnids[:n_classes]


def _train_items(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    items: list[tuple[Path, int]] = []
    for label, wnid in enumerate(wnids):
        files = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"{folder / 'train' / wnid / 'images'}: no .JPEG images; the folder is incomplete")
        items.extend((path, label) for path in files)
    return items


def _val_items(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    index = {wnid: label for label, wnid in enumerate(wnids)}
    items = []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            items.append((folder / "val" / "images" / fields[0], index[fields[1]]))
    return items


def _read_image(path: Path) -> np.ndarray:
    """One image as uint8 (64, 64, 3); the few grayscale images in the set become three equal channels."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as err:
        raise DataError(f"{path}: unreadable image ({err})") from err
    if pixels.shape != (SIZE, SIZE, 3):
        raise DataError(f"{path}: image of size {pixels.shape[1]}x{pixels.shape[0]}, expected {SIZE}x{SIZE}")
    return pixels


def _ensure_folder(directory: Path, download: bool) -> Path:
    folder = directory / FOLDER
    if _complete(folder):
        return folder
    if folder.exists():
        raise DataError(f"{folder}: incomplete (no wnids.txt or val/val_annotations.txt); delete it and retry")
    archive = directory / ARCHIVE.filename
    if archive.is_file():
        verify(archive, ARCHIVE.md5)
    elif not download:
        expected = [f"{FOLDER}/ (wnids.txt, train/, val/)"]
        how = f"download {ARCHIVE.urls()[0]} or allow downloading"
        raise DataError(missing_message("tiny-imagenet", directory, expected, how, ARCHIVE.filename))
    else:
        ensure_files("tiny-imagenet", directory, [ARCHIVE], download)
    extract(archive, directory)
    return folder


def load_tiny_imagenet(directory: Path, split: str, download: bool, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 64, 64), labels (N,)) of the first `n_classes` classes; test = val."""
    folder = _ensure_folder(directory, download)
    wnids = class_ids(folder, n_classes)
    items = _train_items(folder, wnids) if split == "train" else _val_items(folder, wnids)
    images = np.empty((len(items), SIZE, SIZE, 3), dtype=np.uint8)
    for row, (path, _) in enumerate(items):
        images[row] = _read_image(path)
    labels = np.array([label for _, label in items], dtype=np.int64)
    return images.transpose(0, 3, 1, 2), labels
