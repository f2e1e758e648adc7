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


class DataError(UsageError):
    """Dataset files that are missing, incomplete or corrupt, or a bad dataset name or split.

    The message is one line that says what to do: which files are expected in which directory and
    where to get them. (ssmbench.datasets re-exports it for the readers.)
    """


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's facts. `augment`: training applies RandomCrop(pad 4) + flip (the paper's CIFAR
    and Tiny-ImageNet runs). `paper_epochs`: how long the paper trained on it (DESIGN.md: 180,
    MNIST-like data 100); train and study both default to it. `preset`: the model size family."""

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

    def __post_init__(self) -> None:
        if self.preset not in PRESET_FAMILIES:
            raise DataError(f"dataset {self.name}: preset must be one of {', '.join(PRESET_FAMILIES)}, got {self.preset!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
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
):
    add_dataset(_info)
