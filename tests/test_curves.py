"""Robustness curves: the bisection against independent PGD-10 runs, monotonicity, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import ssmbench
from ssmbench.attacks import PGD, predict
from ssmbench.cli import main
from ssmbench.curves import Curve, minimal_eps_indices, robustness_curve, rounds_needed

N = 120
GRID = tuple(i * 2 / 255 for i in range(9))  # 0, 2/255, ..., 16/255


@pytest.fixture(scope="module")
def weak_model():
    """The shipped standard-trained S4: its robust accuracy falls from ~89% to ~30% over the grid."""
    return ssmbench.load("s4-st-none-digits")


@pytest.fixture(scope="module")
def examples(test_set):
    images, labels = test_set
    return images[:N], labels[:N]


@pytest.fixture(scope="module")
def curve(weak_model, examples) -> Curve:
    return robustness_curve("s4-st", weak_model, *examples, GRID, seed=0)


def test_single_eps_curve_is_exactly_pgd10(weak_model, examples):
    """With a one-point grid the search is one PGD-10 run on the clean-correct examples, seeded
    like the attack: the flags must be identical, example by example."""
    images, labels = examples
    eps = 8 / 255
    one = robustness_curve("s4-st", weak_model, images, labels, (eps,), seed=3)
    clean = predict(weak_model, images) == labels
    attacked = PGD(eps, steps=10, seed=3)(weak_model, images[clean], labels[clean])
    expected = clean.clone()
    expected[clean.nonzero().flatten()[attacked.success]] = False
    assert torch.equal(one.robust_at(eps), expected)


@pytest.mark.parametrize("eps", [4 / 255, 8 / 255, 12 / 255])
def test_curve_agrees_with_independent_pgd_runs(curve, weak_model, examples, eps):
    """At three eps the curve's robust count is within the attack's noise of a fresh PGD-10 run.

    Tolerance: two PGD-10 runs with different random starts disagree on d examples; a third
    draw (the curve's) may differ from either by about as much, and the curve infers the outcome
    at grid points it did not test from monotonicity, which a random start can break on an
    example or two. So |curve - PGD| <= d + 2 examples (of 120); a bisection that were off by
    one grid step (2/255) would move the count by 5-15 examples on this model and fail.
    """
    images, labels = examples
    clean = predict(weak_model, images) == labels
    runs = [clean & ~PGD(eps, steps=10, seed=seed)(weak_model, images, labels).success for seed in (11, 12)]
    noise = int((runs[0] ^ runs[1]).sum())
    measured = int(curve.robust_at(eps).sum())
    assert abs(measured - int(runs[0].sum())) <= noise + 2, (measured, int(runs[0].sum()), noise)


def test_curve_is_monotone_and_consistent(curve, weak_model, examples):
    counts = curve.robust_counts()
    assert all(b <= a for a, b in zip(counts, counts[1:])), counts
    assert counts[0] == int((predict(weak_model, examples[0]) == examples[1]).sum())  # eps 0 = clean accuracy
    assert counts[-1] < counts[0] - 20  # the grid reaches eps where this model breaks
    assert set(curve.min_eps[curve.clean].tolist()) <= {*GRID, math.inf}
    assert (curve.min_eps[~curve.clean] == 0).all()
    assert curve.median_min_eps() in {*GRID, math.inf}


def test_bisection_finds_the_first_fooling_eps_of_a_threshold_model():
    """A model that is wrong exactly when some pixel moved by more than t: the search must return
    the first grid eps above t for every example (10 signed steps of eps/4 from a random start
    push the moved pixel to the ball's edge)."""

    class Threshold(torch.nn.Module):
        def __init__(self, threshold: float) -> None:
            super().__init__()
            self.threshold = threshold

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            moved = (x - 0.5).abs().flatten(1).max(dim=1).values
            return torch.stack([self.threshold - moved, moved - self.threshold], dim=1) * 100

    x = torch.full((5, 1, 2, 2), 0.5)
    y = torch.zeros(5, dtype=torch.long)
    grid = tuple(i / 100 for i in range(1, 11))
    for threshold, first in ((0.035, 3), (0.001, 0), (0.5, len(grid))):
        index = minimal_eps_indices(Threshold(threshold), x, y, grid)
        assert (index == first).all(), (threshold, index)
    assert rounds_needed(len(grid)) == 4


def test_curve_cli_writes_parquet_png_and_rejects_bad_grids(tmp_path: Path, capsys):
    out = tmp_path / "curve"
    code = main(["curve", "s4-st-none-digits", "s4-pgd-none-digits", "--eps", "0,4/255,8/255", "--n-examples", "24", "--out", str(out)])
    assert code == 0
    table = pq.read_table(out / "curve.parquet").to_pylist()
    assert len(table) == 6 and {row["n_examples"] for row in table} == {24}
    assert all(row["ci_low"] <= row["robust_acc"] <= row["ci_high"] for row in table)
    assert len(pq.read_table(out / "min_eps.parquet")) == 48
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "median min eps" in capsys.readouterr().out
    for bad in (["--eps", "8/255,4/255"], ["--eps", "0:1/255:1"], ["--eps", "a,b"], ["--eps", "0:1:2:3"]):
        assert main(["curve", "s4-st-none-digits", *bad, "--n-examples", "4", "--out", str(out)]) == 2
    assert main(["curve", "s4-st-none-digits", "s4-st-none-digits", "--out", str(out)]) == 2
