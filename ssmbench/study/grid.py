"""The cells of a study: its grids expanded into cells (once per seed), the ones the zoo refuses, and shards."""



from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from model_zoo import make_config
from model_zoo.errors import UsageError, ZooError
from ssmbench.study.config import StudyConfig


@dataclass(frozen=True)
class Cell:
    """One model to train and evaluate; the seed fixes its weights, data order and attacks."""

    arch: str
    method: str
    ads: str
    attention: bool
    seed: int = 0
    suites: tuple[str, ...] = field(default=(), compare=False)  # its grid's; () = the study's (the grid left it out)

    def suites_in(self, config: StudyConfig) -> tuple[str, ...]:
        """The attack suites this cell is evaluated with."""
        return self.suites or config.suites

    @property
    def name(self) -> str:
        """The run directory's name: `<arch>-<method>-<ads>[-attn]`, then `-seed<N>` unless N = 0."""
        return f"{self.arch}-{self.method}-{self.ads}{'-attn' if self.attention else ''}{f'-seed{self.seed}' if self.seed else ''}"


@dataclass(frozen=True)
class Skipped:
    """A combination of the grid that cannot be built, and why."""

    cell: Cell
    reason: str


# -- the grid ---------------------------------------------------------------------------------------


def expand(config: StudyConfig) -> tuple[list[Cell], list[Skipped]]:
    """The union of the grids' products (each combination once per seed: the grid's seeds, else
    the study's) in first-seen order, and the combinations the zoo refuses. A combination in two
    grids that set different suites is refused: which of them it runs would be an accident."""
    seen: dict[Cell, Cell] = {}
    for grid in config.grids:
        for arch, method, ads, attention, seed in itertools.product(
            grid.models, grid.methods, grid.ads, grid.attention, grid.seeds or config.seeds
        ):
            cell = Cell(arch, method, ads, attention, seed, grid.suites)
            first = seen.setdefault(cell, cell)  # Cell equality ignores suites: this is the grid that listed it first
            if first.suites != cell.suites:
                raise UsageError(f"cell {cell.name} is in two grids with different suites "
                                 f"({list(first.suites_in(config))} and {list(cell.suites_in(config))}); list it once")
    cells, skipped = [], []
    for cell in seen:
        try:
            make_config(cell.arch, config.dataset, cell.ads, cell.attention, **config.model_overrides(cell.arch))
        except ZooError as exc:
            skipped.append(Skipped(cell, str(exc)))
        else:
            cells.append(cell)
    return cells, skipped


def parse_shard(text: str) -> tuple[int, int]:
    """'2/3' -> (2, 3): the second of three shards (1-based)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"shard must look like i/k (e.g. 1/2), got {text!r}") from None
    if not 1 <= index <= count:
        raise UsageError(f"shard i/k needs 1 <= i <= k, got {text!r}")
    return index, count


def select(cells: Sequence[Cell], shard: tuple[int, int] | None) -> list[Cell]:
    """Shard i/k takes cells i, i+k, i+2k, ... of the whole grid (1-based).

    Sharding the grid, not the cells still pending, keeps the shards disjoint and complete
    however the runners' start times interleave with cells finishing.
    """
    if shard is None:
        return list(cells)
    index, count = shard
    return list(cells[index - 1 :: count])
