"""Per-epoch training history: the record, its Parquet file and the paper's eight curves.

Both files are rewritten whole and atomically after every epoch, so a reader (or a killed run)
never sees a torn file; at one row per epoch they stay tiny.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from model_zoo import files


@dataclass(frozen=True)
class EpochRecord:
    """One epoch's numbers (accuracies in [0, 1], losses are mean cross-entropy).

    train_*: measured on the training batches with the weights before each batch's update;
    "adv" is the input the method trained on (x itself for standard training).
    test_*: the first eval_examples test images after the epoch, in eval mode; "adv" is PGD-10.
    val_*: the same on the held-out training images that select the best checkpoint; None when
    the run selects on the test images (val_examples = 0, or a history from before val selection).
    train_objective: the mean of the method's own loss (e.g. CE + beta KL for TRADES).
    """

    epoch: int
    lr: float
    train_objective: float
    train_clean_loss: float
    train_clean_acc: float
    train_adv_loss: float
    train_adv_acc: float
    test_clean_loss: float
    test_clean_acc: float
    test_adv_loss: float
    test_adv_acc: float
    seconds: float
    samples_per_s: float
    val_clean_loss: float | None = None
    val_clean_acc: float | None = None
    val_adv_loss: float | None = None
    val_adv_acc: float | None = None

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


HISTORY_SCHEMA = pa.schema(
    [pa.field("epoch", pa.int64())]
    + [pa.field(f.name, pa.float64()) for f in dataclasses.fields(EpochRecord) if f.name != "epoch"]
)


def write_history(records: list[EpochRecord], path: Path) -> None:
    """Write all records as one Parquet table (one row per epoch), atomically."""
    columns = {field.name: [getattr(r, field.name) for r in records] for field in HISTORY_SCHEMA}
    table = pa.Table.from_pydict(columns, schema=HISTORY_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    files.atomic_write_bytes(path, buffer.getvalue())


def read_history(path: Path) -> list[EpochRecord]:
    rows = pq.read_table(path).to_pylist()
    return [EpochRecord(**row) for row in rows]  # a file from before val selection lacks the val_* columns


_PANELS = (("train", "loss"), ("train", "acc"), ("test", "loss"), ("test", "acc"))


def plot_curves(records: list[EpochRecord], path: Path, title: str = "") -> None:
    """The eight curves (train/test x clean/adversarial x loss/accuracy) as a 2x2 PNG, atomically."""
    # Imported here: matplotlib costs seconds to import and only this function needs it. The Agg
    # canvas directly, not pyplot: no global backend or figure registry, and it works headless.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 7))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.9, hspace=0.35, wspace=0.2)
    FigureCanvasAgg(figure)
    epochs = [r.epoch for r in records]
    for index, (split, quantity) in enumerate(_PANELS):
        axes = figure.add_subplot(2, 2, index + 1)
        for kind, style in (("clean", "-o"), ("adv", "--s")):
            values = [getattr(r, f"{split}_{kind}_{quantity}") for r in records]
            if quantity == "acc":
                values = [100 * v for v in values]
            label = "clean" if kind == "clean" else ("PGD-10" if split == "test" else "adversarial (trained on)")
            axes.plot(epochs, values, style, markersize=3, label=label)
        axes.set_title(f"{split} {'accuracy (%)' if quantity == 'acc' else 'loss (CE)'}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right" if quantity == "acc" else "upper right", fontsize="small")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    files.atomic_write_bytes(path, buffer.getvalue())
