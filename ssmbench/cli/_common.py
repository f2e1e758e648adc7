"""Helpers shared by the command modules: the console, the progress bar, value parsers and the
results file that `--leaderboard` names.

The parsers are where every number and name from the command line is checked once, so that a
value no run could use (an eps of 1e400, a seed numpy cannot take, a device that does not exist)
is one line and exit 2 before anything is loaded.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from model_zoo.errors import UsageError
from model_zoo.limits import MAX_EPS, SEED_RANGE
from ssmbench.home import HOME_ENV, user_results

console = Console(highlight=False)

LEADERBOARD_HELP = (f"Results file (Parquet). Default: your own, ${HOME_ENV}/results.parquet (else ~/.local/share/ssmbench/); "
                    "the published one is leaderboards/results.parquet in a checkout.")


def leaderboard_path(given: Path | None) -> Path:
    """The results file a command reads or appends to: the one given, else the user's own."""
    return given if given is not None else user_results()


class SpeedColumn(ProgressColumn):
    """Items per second over rich's recent window (blank until it has two updates)."""

    def __init__(self, unit: str, decimals: int) -> None:
        super().__init__()
        self.unit = unit
        self.decimals = decimals

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:,.{self.decimals}f} {self.unit}/s")


def progress_bar(out: Console = console, unit: str | None = "samples", decimals: int = 0, disable: bool = False) -> Progress:
    """The bar every long command shows: description, bar, done/total, throughput, elapsed, ETA.

    Transient, so a finished bar leaves only what the command printed; `disable` for the ranks of a
    distributed run that are not rank 0. `unit=None` drops the throughput column.
    """
    columns: list[ProgressColumn] = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit is not None:
        columns.append(SpeedColumn(unit, decimals))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=out, transient=True, disable=disable)




def parse_fraction(text: str, name: str = "value", maximum: float | None = MAX_EPS) -> float:
    """'8/255' -> 0.03137..., '0.03' -> 0.03; negative, huge, infinite or malformed values are a UsageError."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError, OverflowError):
        raise UsageError(f"{name} must be a number or a fraction like 8/255, got {text!r}") from None
    if value < 0:
        raise UsageError(f"{name} must be >= 0, got {text}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{name} must be <= {maximum:g} (images are in [0, 1]), got {text}")
    return value


def check_seed(seed: int | None, option: str = "--seed") -> None:
    low, high = SEED_RANGE
    if seed is not None and not low <= seed <= high:
        raise UsageError(f"{option} must be an integer in [{low}, {high}], got {seed}")


def check_at_least(minimum: int, **values: int | None) -> None:
    """Each given option (name=value, '_' for '-') must be >= minimum; None means unset."""
    for name, value in values.items():
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
