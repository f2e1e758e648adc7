"""What a study has cost so far and what its pending cells will cost, from the cells' own timings.

A multi-hour study is planned and reported by its measured cost, not a guess: every finished cell's
done.json holds its wall seconds in the process that ran it (one thread per process is the
documented way to run a study on a CPU, so that is also its CPU time). A pending cell is estimated
by the median of the finished cells of the same kind (architecture, method, AdS, attention and the
attack suites its grid runs), which differ only by seed; a kind with no finished cell yet is counted as not estimated rather than
extrapolated from another architecture, whose cost can differ by 5x (Mamba against S4).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ssmbench.study.grid import Cell
from ssmbench.study.runner import DONE, CellStatus


@dataclass(frozen=True)
class StudyCost:
    done_cells: int
    done_seconds: float
    estimated_cells: int  # cells not done whose kind has a finished cell
    estimated_seconds: float
    unestimated_cells: int  # cells not done with no finished cell of their kind
    untimed_cells: int = 0  # done cells without a timing (known from the leaderboard alone, their done.json gone)

    def describe(self) -> str:
        """'12 cells done in 3.4 h; 20 to go: ~5.1 h for 15 of them, 5 not estimated (no finished cell of their kind)'."""
        text = f"{self.done_cells} cell{'' if self.done_cells == 1 else 's'} done in {self.done_seconds / 3600:.1f} h of runner time"
        if self.untimed_cells:
            text += f" ({self.untimed_cells} of them untimed: known from the leaderboard, their done.json gone)"
        pending = self.estimated_cells + self.unestimated_cells
        if not pending:
            return text
        parts = []
        if self.estimated_cells:
            parts.append(f"~{self.estimated_seconds / 3600:.1f} h for {self.estimated_cells} of them")
        if self.unestimated_cells:
            parts.append(f"{self.unestimated_cells} not estimated (no finished cell of their kind yet)")
        text += f"; {pending} to go: {', '.join(parts)}"
        return text


Kind = tuple[str, str, str, bool, tuple[str, ...]]


def kind(cell: Cell) -> Kind:
    """A cell without its seed: cells of one kind cost the same up to training noise. The suites
    are part of it because AutoAttack can cost ten times the rest of a cell (a seed-0 headline cell
    with AutoAttack says nothing about its PGD-10-only seeds 1 and 2)."""
    return cell.arch, cell.method, cell.ads, cell.attention, cell.suites


def study_cost(statuses: Sequence[CellStatus]) -> StudyCost:
    """Finished cells' measured seconds, and the pending (or running, failed) cells' median-of-kind estimate."""
    measured: dict[Kind, list[float]] = {}
    for item in statuses:
        if item.status == DONE and item.seconds is not None:
            measured.setdefault(kind(item.cell), []).append(item.seconds)
    done = [item for item in statuses if item.status == DONE]
    todo = [item for item in statuses if item.status != DONE]
    estimates = [statistics.median(measured[kind(item.cell)]) for item in todo if kind(item.cell) in measured]
    return StudyCost(
        done_cells=len(done), done_seconds=sum(item.seconds or 0.0 for item in done),
        estimated_cells=len(estimates), estimated_seconds=sum(estimates), unestimated_cells=len(todo) - len(estimates),
        untimed_cells=sum(item.seconds is None for item in done),
    )
