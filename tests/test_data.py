"""ssmbench.data: the registry, each on-disk format written here by hand, downloads, augmentation."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from ssmbench import data
from ssmbench.data import DataError, augment, get_dataset, list_datasets, load_split
from ssmbench.datasets import cifar, idx, tinyimagenet
from ssmbench.datasets.download import Remote, download_verified

RNG = np.random.default_rng(1234)


# ----------------------------------------------------------------------------- writers (from the specs)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    """An IDX file as the format's specification lays it out: magic, big-endian dims, data."""
    code = {np.dtype("u1"): 0x08, np.dtype(">i2"): 0x0B}[array.dtype]
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_idx_split(
    directory: Path, split: str, n: int, compress: bool = True, size: int = 28
) -> tuple[np.ndarray, np.ndarray]:
    images = RNG.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


class Python2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    """Pickles the way the published CIFAR batches were written: by Python 2 at protocol 2.

    Python 2 strings are byte strings (BINSTRING opcodes) and numpy lived at numpy.core, so the
    reader is tested against the real files' opcodes and globals, not Python 3's.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def python2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def cifar_batch(n: int) -> dict[bytes, object]:
    """A batch dict shaped like the published ones (bytes keys, (N, 3072) uint8 rows, list labels)."""
    return {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in RNG.integers(0, 10, n)],
        b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{k}.png".encode() for k in range(n)],
    }


def write_cifar_folder(folder: Path, n: int = 3) -> dict[str, dict[bytes, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {name: cifar_batch(n) for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    for name, batch in batches.items():
        (folder / name).write_bytes(python2_pickle(batch))
    return batches


def cifar_expected(batches: list[dict[bytes, object]]) -> tuple[np.ndarray, np.ndarray]:
    """Row layout from the CIFAR page: 1024 red values, then green, then blue, each row-major 32x32."""
    rows = np.concatenate([b[b"data"] for b in batches])
    planes = [rows[:, c * 1024 : (c + 1) * 1024].reshape(-1, 32, 32) for c in range(3)]
    labels = np.concatenate([b[b"labels"] for b in batches])
    return np.stack(planes, axis=1) / 255.0, labels


def smooth_image(seed: int, gray: bool = False) -> Image.Image:
    """A smooth 64x64 image, so that JPEG at quality 100 stays within a few levels of it."""
    yy, xx = np.mgrid[0:64, 0:64]
    channels = [(128 + 100 * np.sin(xx / (7 + seed % 5 + c) + yy / (9 + c) + seed)) for c in range(3)]
    pixels = np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(pixels[..., 0]) if gray else Image.fromarray(pixels)


def write_tiny_imagenet(folder: Path, n_wnids: int = 52, per_class: int = 2) -> tuple[list[str], dict[str, str]]:
    """A tiny-imagenet-200 tree with shuffled wnids.txt; returns the wnids and val file -> wnid."""
    wnids = [f"n{10_000_000 + 37 * k:08d}" for k in range(n_wnids)]
    listed = list(RNG.permutation(wnids))
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(listed) + "\n")
    for k, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for j in range(per_class):
            smooth_image(k * 10 + j, gray=(k, j) == (3, 1)).save(images / f"{wnid}_{j}.JPEG", quality=100)
    (folder / "val" / "images").mkdir(parents=True)
    val = {f"val_{j}.JPEG": wnids[w % n_wnids] for j, w in enumerate([0, 51, 7, 49, 50, 7])}
    lines = []
    for j, (name, wnid) in enumerate(val.items()):
        smooth_image(1000 + j).save(folder / "val" / "images" / name, quality=100)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids, val


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def no_system_fashion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(idx, "FASHION_SYSTEM_DIR", tmp_path / "no-debian-package")


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", list_datasets())
def test_every_split_has_the_registered_size_shape_and_classes(name: str) -> None:
    """The registry's facts against the loaded split: digits from its bundled data, the others
    from the size the registry declares (their real files are not here; test_*_format tests read
    files written in the real formats)."""
    info = get_dataset(name)
    assert info.name == name and info.description and info.test_size > 0
    assert info.train_size > info.test_size or info.input_kind == "sequence"  # UCR/UEA splits give test the majority
    assert info.paper_epochs == (180 if info.preset == "large" else 100)  # DESIGN.md: 180 epochs, MNIST-like 100
    if name == "digits" or info.input_kind == "sequence":  # the data that ships
        for split, size in (("train", info.train_size), ("test", info.test_size)):
            images, labels = load_split(name, split)
            assert images.shape == (size, *info.input_shape) and int(labels.max()) == info.classes - 1
    assert {name for name in list_datasets() if get_dataset(name).augment} == {"cifar10", "tiny-imagenet"}


def test_unknown_name_and_split_list_the_choices() -> None:
    with pytest.raises(DataError) as err:
        get_dataset("imagenet")
    assert all(name in str(err.value) for name in list_datasets())
    with pytest.raises(DataError, match="train, test"):
        load_split("digits", "val")


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(DataError, match="twice"):
        data.register_dataset("digits", channels=1, height=8, width=8, classes=10, augment=False, description="x",
                              train_size=1, test_size=1, paper_epochs=1)(
            lambda split, directory, download: (np.zeros((0, 1, 8, 8)), np.zeros(0))
        )


def test_default_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSMBENCH_DATA", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    images, labels = write_idx_split(tmp_path / "mnist", "test", 4)
    x, y = load_split("mnist", "test", download=False)
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    monkeypatch.delenv("SSMBENCH_DATA")
    assert data.default_data_dir() == Path.home() / ".cache" / "ssmbench" / "data"


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_the_documented_permutation() -> None:
    reference = load_digits()
    order = np.random.RandomState(0).permutation(1797)
    x_train, y_train = load_split("digits", "train")
    x_test, y_test = load_split("digits", "test")
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    for position in (0, 1, 700, 1436):
        row = order[position]
        np.testing.assert_allclose(x_train[position, 0].numpy(), reference.images[row] / 16, rtol=0, atol=1e-7)
        assert y_train[position] == reference.target[row]
    for position in (0, 359):
        row = order[1437 + position]
        np.testing.assert_allclose(x_test[position, 0].numpy(), reference.images[row] / 16, rtol=0, atol=1e-7)
        assert y_test[position] == reference.target[row]
    together = np.bincount(np.concatenate([y_train.numpy(), y_test.numpy()]), minlength=10)
    assert together.tolist() == np.bincount(reference.target, minlength=10).tolist()


# ----------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_files_read_back_exactly(name: str, compress: bool, tmp_path: Path, no_system_fashion: None) -> None:
    images, labels = write_idx_split(tmp_path / name, "train", 5, compress)
    x, y = load_split(name, "train", data_dir=tmp_path, download=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255))
    assert y.tolist() == labels.tolist()


def test_idx_reader_handles_multibyte_big_endian(tmp_path: Path) -> None:
    values = np.array([[-2, 300], [7, -32768]], dtype=">i2")
    read = idx.read_idx(write_idx(tmp_path / "x.idx", values, compress=True))
    assert read.tolist() == [[-2, 300], [7, -32768]]


def test_truncated_idx_file_is_refused_with_its_path(tmp_path: Path) -> None:
    write_idx_split(tmp_path / "mnist", "test", 3)
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-5]))
    with pytest.raises(DataError, match="truncated") as err:
        load_split("mnist", "test", data_dir=tmp_path, download=False)
    assert str(path) in str(err.value)


def test_images_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    write_idx_split(tmp_path / "mnist", "test", 3, size=32)
    with pytest.raises(DataError, match=r"expected \(1, 28, 28\)"):
        load_split("mnist", "test", data_dir=tmp_path, download=False)


FASHION_INSTALLED = all((idx.FASHION_SYSTEM_DIR / name).is_file() for name in idx.FASHION_MD5)


@pytest.mark.skipif(not FASHION_INSTALLED, reason=f"Debian's dataset-fashion-mnist is absent ({idx.FASHION_APT})")
def test_real_fashion_mnist_from_the_debian_package(tmp_path: Path) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = load_split("fashion-mnist", split, data_dir=tmp_path, download=False)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        # Fashion-MNIST is exactly balanced: 6000 / 1000 images per class.
        assert torch.bincount(y, minlength=10).tolist() == [n // 10] * 10


# ----------------------------------------------------------------------------- CIFAR-10


def test_cifar_batches_read_back_exactly(tmp_path: Path) -> None:
    batches = write_cifar_folder(tmp_path / "cifar10" / "cifar-10-batches-py")
    x, y = load_split("cifar10", "train", data_dir=tmp_path, download=False)
    expected, labels = cifar_expected([batches[f"data_batch_{i}"] for i in range(1, 6)])
    assert x.shape == (15, 3, 32, 32)
    np.testing.assert_allclose(x.numpy(), expected, rtol=0, atol=1e-7)
    assert y.tolist() == labels.tolist()
    x_test, y_test = load_split("cifar10", "test", data_dir=tmp_path, download=False)
    np.testing.assert_allclose(x_test.numpy(), cifar_expected([batches["test_batch"]])[0], rtol=0, atol=1e-7)
    assert y_test.tolist() == batches["test_batch"][b"labels"]


def make_cifar_archive(path: Path, source: Path) -> Path:
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname="cifar-10-batches-py")
    return path


def test_cifar_archive_is_checked_then_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = write_cifar_folder(tmp_path / "src")
    archive = make_cifar_archive(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz", tmp_path / "src")
    monkeypatch.setattr(cifar, "ARCHIVE", Remote(archive.name, "0" * 32, ()))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_split("cifar10", "test", data_dir=tmp_path / "data", download=False)
    monkeypatch.setattr(cifar, "ARCHIVE", Remote(archive.name, md5(archive), ()))
    x, y = load_split("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert y.tolist() == batches["test_batch"][b"labels"]
    assert (tmp_path / "data" / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()


def test_cifar_batch_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    write_cifar_folder(folder)
    # A pickle that would call os.system("touch <marker>") if globals were resolved freely.
    payload = b"cos\nsystem\n(V" + f"touch {marker}".encode() + b"\ntR."
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DataError, match="os.system is not allowed") as err:
        load_split("cifar10", "test", data_dir=tmp_path, download=False)
    assert str(folder / "test_batch") in str(err.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- Tiny-ImageNet


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1) / 255.0


def test_tiny_imagenet_first_50_sorted_classes(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-imagenet" / "tiny-imagenet-200"
    wnids, val = write_tiny_imagenet(folder)
    x, y = load_split("tiny-imagenet", "train", data_dir=tmp_path, download=False)
    assert x.shape == (100, 3, 64, 64) and y.tolist() == [k // 2 for k in range(100)]
    for row in (0, 7, 99):
        path = folder / "train" / wnids[row // 2] / "images" / f"{wnids[row // 2]}_{row % 2}.JPEG"
        np.testing.assert_allclose(x[row].numpy(), decoded(path), rtol=0, atol=1e-7)
        original = np.asarray(smooth_image((row // 2) * 10 + row % 2)).transpose(2, 0, 1) / 255.0
        if row != 7:  # row 7 is class 3's grayscale image
            assert np.abs(x[row].numpy() - original).mean() < 0.01
    gray = x[7].numpy()
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    x_val, y_val = load_split("tiny-imagenet", "test", data_dir=tmp_path, download=False)
    kept = [(name, wnids.index(wnid)) for name, wnid in val.items() if wnids.index(wnid) < 50]
    assert y_val.tolist() == [label for _, label in kept] == [0, 7, 49, 7]
    for row, (name, _) in enumerate(kept):
        np.testing.assert_allclose(x_val[row].numpy(), decoded(folder / "val" / "images" / name), rtol=0, atol=1e-7)


def test_tiny_imagenet_zip_is_checked_then_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_imagenet(tmp_path / "src" / "tiny-imagenet-200", per_class=1)
    archive = tmp_path / "data" / "tiny-imagenet" / "tiny-imagenet-200.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted((tmp_path / "src").rglob("*")):
            bundle.write(path, path.relative_to(tmp_path / "src").as_posix())
    monkeypatch.setattr(tinyimagenet, "ARCHIVE", Remote(archive.name, md5(archive), ()))
    x, y = load_split("tiny-imagenet", "test", data_dir=tmp_path / "data", download=False)
    assert y.tolist() == [0, 7, 49, 7]
    assert not list(archive.parent.glob(".*.part"))


def test_tiny_imagenet_with_too_few_classes_is_refused(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path / "tiny-imagenet" / "tiny-imagenet-200", n_wnids=8, per_class=1)
    with pytest.raises(DataError, match="8 classes listed, 50 needed"):
        load_split("tiny-imagenet", "train", data_dir=tmp_path, download=False)


# ----------------------------------------------------------------------------- missing files, downloads


@pytest.mark.parametrize("name", [name for name in list_datasets() if name != "digits" and get_dataset(name).input_kind == "image"])  # the others ship
def test_missing_files_without_download_name_the_directory(name: str, tmp_path: Path, no_system_fashion: None) -> None:
    with pytest.raises(DataError) as err:
        load_split(name, "train", data_dir=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / name) in message and "missing" in message and "\n" not in message
    assert not (tmp_path / name).exists()  # nothing is created when downloading is not allowed


def test_download_refuses_a_checksum_mismatch(tmp_path: Path) -> None:
    source = tmp_path / "published.bin"
    source.write_bytes(b"the real bytes")
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_verified(source.as_uri(), dest, hashlib.md5(b"other bytes").hexdigest())
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    download_verified(source.as_uri(), dest, md5(source))
    assert dest.read_bytes() == b"the real bytes"


def test_mnist_download_tries_mirrors_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = tmp_path / "published"
    images, labels = write_idx_split(published, "test", 4)
    sums = {path.name: md5(path) for path in published.iterdir()}
    dead_mirror = (tmp_path / "nowhere").as_uri() + "/"
    monkeypatch.setattr(idx, "MNIST_MIRRORS", (dead_mirror, published.as_uri() + "/"))
    monkeypatch.setattr(idx, "MNIST_MD5", sums)
    x, y = load_split("mnist", "test", data_dir=tmp_path / "data", download=True)
    assert torch.equal(x[:, 0], torch.from_numpy(images.astype(np.float32) / 255)) and y.tolist() == labels.tolist()
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(sums)


def test_failed_download_names_directory_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = tmp_path / "published"
    write_idx_split(published, "train", 2)
    monkeypatch.setattr(idx, "MNIST_MIRRORS", (published.as_uri() + "/",))
    monkeypatch.setattr(idx, "MNIST_MD5", {name: "0" * 32 for name in idx.MNIST_MD5})  # a tampered mirror
    with pytest.raises(DataError) as err:
        load_split("mnist", "train", data_dir=tmp_path / "data", download=True)
    message = str(err.value)
    assert str(tmp_path / "data" / "mnist") in message and "checksum mismatch" in message
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


# ----------------------------------------------------------------------------- augmentation


def candidates(image: torch.Tensor) -> torch.Tensor:
    """All 162 crops (dy, dx in 0..8) of the zero-padded image, then each one mirrored: (2, 9, 9, C, H, W)."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 8, w + 8)
    padded[:, 4 : 4 + h, 4 : 4 + w] = image
    crops = torch.stack([torch.stack([padded[:, dy : dy + h, dx : dx + w] for dx in range(9)]) for dy in range(9)])
    return torch.stack([crops, crops.flip(-1)])


def test_augment_is_a_padded_crop_and_flip_per_image() -> None:
    images = torch.rand(600, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.1
    out = augment(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    found = []
    for image, result in zip(images, out):
        matches = (candidates(image) == result).flatten(3).all(-1).nonzero().tolist()
        assert len(matches) == 1  # exactly one (flip, dy, dx) explains the output
        found.append(matches[0])
    flips, dys, dxs = (np.array(column) for column in zip(*found))
    assert set(dys) == set(range(9)) and set(dxs) == set(range(9))
    assert 0.4 < flips.mean() < 0.6


def test_augment_moves_a_single_pixel_by_the_crop_offset() -> None:
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 6, 9] = 1.0
    out = augment(image.expand(300, -1, -1, -1), torch.Generator().manual_seed(3))
    assert torch.all(out.sum(dim=(1, 2, 3)) == 1.0)  # the pixel is never cropped away or duplicated
    rows, cols = (out[:, 0] == 1).nonzero()[:, 1:].T
    shift = rows - 6
    assert shift.abs().max() == 4 and set(shift.tolist()) == set(range(-4, 5))
    unflipped = (cols - 9).abs() <= 4
    mirrored = (15 - cols - 9).abs() <= 4
    assert torch.all(unflipped | mirrored) and unflipped.any() and mirrored.any()


def test_augment_is_reproducible_and_leaves_its_input_alone() -> None:
    images = torch.rand(32, 3, 8, 8)
    before = images.clone()
    first = augment(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(8)))
    assert torch.equal(images, before)
