"""Training curves as inline SVG geometry: numbers in, coordinates out (the template draws them).

Accuracies (fractions) against epochs on fixed axes, so two families' plots can be compared by eye.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_zoo.training.history import EpochRecord

WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 30
# (EpochRecord field, legend label, colour): the paper's accuracy curves.
SERIES = (
    ("train_clean_acc", "train clean", "#1f77b4"),
    ("train_adv_acc", "train adversarial", "#aec7e8"),
    ("test_clean_acc", "test clean", "#d62728"),
    ("test_adv_acc", "test PGD-10", "#ff9896"),
)


@dataclass(frozen=True)
class Line:
    label: str
    colour: str
    points: str  # "x1,y1 x2,y2 ..." for <polyline points=...>
    last: str  # the final value in %, for the legend


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True)
class Plot:
    title: str
    width: int
    height: int
    left: int
    top: int
    right_edge: int
    bottom_edge: int
    lines: tuple[Line, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


def plot(title: str, records: list[EpochRecord]) -> Plot:
    """The accuracy curves of one training run (one point per epoch)."""
    epochs = [r.epoch for r in records]
    first, last = min(epochs), max(epochs)
    span = max(last - first, 1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(epoch: int) -> float:
        return LEFT + inner_w * (epoch - first) / span

    def y(fraction: float) -> float:
        return TOP + inner_h * (1 - fraction)

    lines = tuple(
        Line(label, colour, " ".join(f"{x(r.epoch):.1f},{y(getattr(r, name)):.1f}" for r in records),
             f"{100 * getattr(records[-1], name):.1f}")
        for name, label, colour in SERIES
    )
    shown = sorted({first, last, first + span // 2}) if last > first else [first]
    return Plot(title, WIDTH, HEIGHT, LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM, lines,
                tuple(Tick(x(e), str(e)) for e in shown),
                tuple(Tick(y(v / 100), f"{v}%") for v in (0, 25, 50, 75, 100)))
