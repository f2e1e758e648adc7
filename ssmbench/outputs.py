"""Result files of the analysis commands (curve, transfer, bound): Parquet tables and PNG figures.

Each is rendered into memory first and then written atomically (temp file, fsync, rename), so an
interrupted run leaves either the previous file or the new one, never a torn one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from model_zoo.files import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_parquet(rows: list[dict[str, object]], path: Path) -> None:
    """One row per dict, columns in the first dict's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def save_figure(figure: Figure, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def pyplot():  # noqa: ANN201 - returns the matplotlib.pyplot module
    """matplotlib.pyplot on the non-interactive Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
