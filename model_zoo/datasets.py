"""What each dataset is, declared once: image shape, classes, split sizes, the paper's epochs,
augmentation, and which model preset it takes.

The facts live in model_zoo because building a model (its input shape and class count) and
training it (the paper's epochs) need them and model_zoo never imports ssmbench; `ssmbench.data`
attaches a loader to each name and re-exports this registry as the dataset registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_zoo.errors import UsageError
from model_zoo.registries import Registry

# The embedded dataset that needs no download: what every command uses unless told otherwise.
DEFAULT_DATASET = "digits"
# The paper's presets by dataset family (config.py): MNIST-sized and CIFAR-sized models.
PRESET_FAMILIES = ("small", "large")
# Images in [0, 1] (N, C, H, W), or raw series (N, C, L) stored as height 1 and width L.
INPUT_KINDS = ("image", "sequence")


class DataError(UsageError):
    """Dataset files that are missing, incomplete or corrupt, or a bad dataset name or split.

    The message is one line that says what to do: which files are expected in which directory and
    where to get them. (ssmbench.datasets re-exports it for the readers.)
    """


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's facts. `augment`: training applies RandomCrop(pad 4) + flip (the paper's CIFAR
    and Tiny-ImageNet runs). `paper_epochs`: how long the paper trained on it (DESIGN.md: 180,
    MNIST-like data 100); train and study both default to it. `preset`: the model size family.
    `input_kind` "sequence": (C, L) series in raw units (height 1, width L; ssmbench.timeseries)."""

    name: str
    channels: int
    height: int
    width: int
    classes: int
    train_size: int
    test_size: int
    paper_epochs: int
    augment: bool
    preset: str
    description: str
    input_kind: str = "image"

    def __post_init__(self) -> None:
        if self.preset not in PRESET_FAMILIES:
            raise DataError(f"dataset {self.name}: preset must be one of {', '.join(PRESET_FAMILIES)}, got {self.preset!r}")
        if self.input_kind not in INPUT_KINDS or (self.input_kind == "sequence" and self.height != 1):
            raise DataError(f"dataset {self.name}: input_kind must be one of {', '.join(INPUT_KINDS)} (sequences have height 1)")

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.input_kind == "sequence":
            return (self.channels, self.width)
        return (self.channels, self.height, self.width)


DATASETS: Registry[DatasetInfo] = Registry("dataset", DataError)


def add_dataset(info: DatasetInfo) -> DatasetInfo:
    return DATASETS.add(info.name, info)


def get_dataset(name: str) -> DatasetInfo:
    return DATASETS.get(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def paper_epochs(dataset: str) -> int:
    """The epochs the paper trained on `dataset`: what train and study run unless told otherwise."""
    return get_dataset(dataset).paper_epochs


for _info in (
    DatasetInfo("digits", 1, 8, 8, 10, 1437, 360, 100, False, "small",
                "scikit-learn's bundled 8x8 handwritten digits, 1437 train / 360 test; no download"),
    DatasetInfo("mnist", 1, 28, 28, 10, 60000, 10000, 100, False, "small",
                "MNIST handwritten digits, 60000 train / 10000 test (IDX .gz files in data_dir/mnist)"),
    DatasetInfo("fashion-mnist", 1, 28, 28, 10, 60000, 10000, 100, False, "small",
                "Zalando's Fashion-MNIST, 60000 train / 10000 test (Debian's dataset-fashion-mnist, else data_dir)"),
    DatasetInfo("cifar10", 3, 32, 32, 10, 50000, 10000, 180, True, "large",
                "CIFAR-10, 50000 train / 10000 test (python batches in data_dir/cifar10)"),
    # The paper's Tiny-ImageNet run used the first 50 classes: 500 train and 50 val images each.
    DatasetInfo("tiny-imagenet", 3, 64, 64, 50, 25000, 2500, 180, True, "large",
                "Tiny-ImageNet, first 50 classes (sorted ids): 25000 train / 2500 val as test (data_dir/tiny-imagenet)"),
    # UCR/UEA time series, shipped (ssmbench.timeseries reads them and checks these sizes): the
    # archives' published sizes. The paper has no sequence data: they take MNIST's epochs and preset.
    DatasetInfo("gunpoint", 1, 1, 150, 2, 50, 150, 100, False, "small",
                "UCR GunPoint: hand x-position, gun-draw vs point; 50 train / 150 test, shipped", "sequence"),
    DatasetInfo("italypowerdemand", 1, 1, 24, 2, 67, 1029, 100, False, "small",
                "UCR ItalyPowerDemand: a day of Italian power demand, winter vs summer; 67 train / 1029 test, shipped", "sequence"),
    DatasetInfo("acsf1", 1, 1, 1460, 10, 100, 100, 100, False, "small",
                "UCR ACSF1: appliance power consumption, 10 appliance types; 100 train / 100 test, shipped", "sequence"),
    DatasetInfo("basicmotions", 6, 1, 100, 4, 40, 40, 100, False, "small",
                "UEA BasicMotions: smart-watch accelerometer + gyroscope, 4 activities; 40 train / 40 test, shipped", "sequence"),
    DatasetInfo("japanesevowels", 12, 1, 29, 9, 270, 370, 100, False, "small",
                "UEA JapaneseVowels: 12 LPC cepstra, 9 speakers, 7-29 steps resampled to 29; 270 train / 370 test, shipped", "sequence"),
):
    add_dataset(_info)
