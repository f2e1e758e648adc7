"""Numbers you can trust (issue 11): Wilson intervals, the exact paired test, per-example outcomes
on the record, `leaderboard compare`, seeds, and checks recorded as passed / flagged / not checked."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy.stats import binomtest

from model_zoo.errors import UsageError
from ssmbench import leaderboard as lb
from ssmbench import stats
from ssmbench.cli import leaderboard as cli_leaderboard
from ssmbench.cli import main
from ssmbench.compare import CompareError, compare, compare_seeds, pick, pick_seeds
from ssmbench.leaderboard_render import render_markdown
from ssmbench.outcomes import PerExample, first_n, labels_sha256
from ssmbench.study import Cell, StudyConfig, expand, load_study

REPO = Path(__file__).resolve().parents[1]
EPS = 8 / 255
Z = 1.959963984540054  # the 97.5% normal quantile


def wilson_formula(k: int, n: int) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), independent of scipy."""
    p = k / n
    centre = p + Z * Z / (2 * n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return (centre - half) / (1 + Z * Z / n), (centre + half) / (1 + Z * Z / n)


def mcnemar_by_hand(b: int, c: int) -> float:
    """Two-sided exact McNemar: twice the smaller binomial(b + c, 1/2) tail, capped at 1."""
    m = b + c
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2**m
    return min(1.0, 2 * tail)


def row(run_id: str, clean: np.ndarray, robust: np.ndarray, labels: str = "f" * 64, **changes: object) -> lb.ResultRow:
    """A PGD-10 row whose accuracies are those of its per-example outcomes."""
    outcomes = PerExample(np.asarray(clean, bool), {"pgd10": np.asarray(robust, bool)})
    n = len(clean)
    values: dict[str, object] = {
        "run_id": run_id, "time": "2026-03-01T12:00:00+00:00", "model": f"runs/{run_id}/best.safetensors",
        "dataset": "digits", "arch": "s4", "ads": "none", "attention": False, "method": "pgd", "train_eps": EPS,
        "checkpoint_kind": "best", "checkpoint_sha256": run_id.ljust(64, "0"), "threat_model": "Linf", "eps": EPS,
        "suite": "pgd10", "backend": "ssmbench", "backend_version": "0.1.0", "n_examples": n,
        "clean_acc": float(outcomes.clean.mean()), "robust_acc": float(outcomes.robust.mean()),
        "per_attack": {"pgd10": float(outcomes.robust.mean())}, "flags": (), "seed": 0, "device": "cpu",
        "wall_seconds": 1.0, "ssmbench_version": "0.1.0", "torch_version": "2.13.0", "split": "test",
        "examples": first_n(n), "labels_sha256": labels, "outcomes": outcomes.pack(), "outcome_attacks": ("pgd10",),
    }
    values.update(changes)
    return lb.ResultRow(**values)


def flags(n: int, correct: int, offset: int = 0) -> np.ndarray:
    """n flags with `correct` consecutive Trues starting at `offset`."""
    out = np.zeros(n, bool)
    out[offset : offset + correct] = True
    return out


# -- statistics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("k, n", [(0, 32), (26, 32), (32, 32), (267, 360), (1, 7), (1999, 2000)])
def test_wilson_interval_is_the_closed_form(k: int, n: int) -> None:
    assert stats.wilson(k, n) == pytest.approx(wilson_formula(k, n), abs=1e-12)


def test_wilson_of_zero_of_32_is_the_textbook_bound() -> None:
    # k = 0: the upper Wilson limit is z^2 / (n + z^2) = 10.7% for n = 32, which the tables print.
    assert stats.wilson(0, 32) == pytest.approx((0.0, Z * Z / (32 + Z * Z)))
    with pytest.raises(ValueError):
        stats.wilson(33, 32)


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (8, 0), (3, 9), (12, 12), (40, 22)])
def test_mcnemar_on_hand_made_flags_equals_the_exact_binomial_test(b: int, c: int) -> None:
    rng = np.random.default_rng(b * 100 + c)
    both, neither = int(rng.integers(0, 30)), int(rng.integers(0, 30))
    a = np.array([True] * b + [False] * c + [True] * both + [False] * neither)
    other = np.array([False] * b + [True] * c + [True] * both + [False] * neither)
    order = rng.permutation(len(a))
    result = stats.paired(a[order], other[order])
    assert (result.only_a, result.only_b, result.n) == (b, c, len(a))
    assert result.difference == pytest.approx(a.mean() - other.mean())
    assert result.p_value == pytest.approx(mcnemar_by_hand(b, c))
    if b + c:
        assert result.p_value == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def agresti_min_by_weights(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Agresti-Min from the per-example differences: half a pseudo-example in each 2x2 cell, then
    the Wald interval of the weighted mean difference (numpy's weighted moments, not the counts)."""
    d = a.astype(float) - b.astype(float)
    values = np.concatenate([d, [1.0, -1.0, 0.0, 0.0]])  # A only, B only, both, neither
    weights = np.concatenate([np.ones(len(d)), [0.5] * 4])
    mean = np.average(values, weights=weights)
    variance = np.average((values - mean) ** 2, weights=weights)
    half = Z * math.sqrt(variance / weights.sum())
    return mean - half, mean + half


@pytest.mark.parametrize("b, c, n", [(0, 0, 32), (8, 0, 100), (3, 9, 60), (89, 0, 360), (17, 52, 360)])
def test_paired_interval_is_agresti_min(b: int, c: int, n: int) -> None:
    a = np.concatenate([np.ones(b, bool), np.zeros(c, bool), np.ones(n - b - c, bool)])
    other = np.concatenate([np.zeros(b, bool), np.ones(c, bool), np.ones(n - b - c, bool)])
    result = stats.paired(a, other)
    assert (result.low, result.high) == pytest.approx(agresti_min_by_weights(a, other), abs=1e-12)
    assert result.low < result.difference < result.high  # never capped at the observed difference


# -- per-example outcomes on the record -----------------------------------------------------------


def test_outcomes_pack_and_unpack_for_a_length_that_is_not_a_multiple_of_8() -> None:
    rng = np.random.default_rng(0)
    clean = rng.random(37) < 0.8
    after = {"apgd-ce": clean & (rng.random(37) < 0.7)}
    after["square"] = after["apgd-ce"] & (rng.random(37) < 0.9)
    packed = PerExample(clean, after).pack()
    assert len(packed) == 3 * 5  # three vectors of ceil(37 / 8) bytes
    back = PerExample.unpack(packed, ("apgd-ce", "square"), 37)
    assert np.array_equal(back.clean, clean) and np.array_equal(back.robust, after["square"])
    assert back.attacks == ("apgd-ce", "square")
    with pytest.raises(ValueError, match="do not fit"):
        PerExample.unpack(packed, ("apgd-ce",), 37)


def test_a_row_round_trips_its_per_example_flags(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    clean = rng.random(50) < 0.9
    robust = clean & (rng.random(50) < 0.6)
    original = row("r1", clean, robust, checks_run=("gradients", "pgd-steps"), check_examples=50, selection="val", train_seed=2)
    path = tmp_path / "results.parquet"
    lb.append(path, [original])
    (back,) = lb.read(path)
    assert back == original
    assert np.array_equal(back.per_example.clean, clean) and np.array_equal(back.per_example.robust, robust)
    assert (back.check_status, back.check_examples, back.selection, back.train_seed) == ("passed", 50, "val", 2)


def test_outcomes_that_disagree_with_the_accuracies_are_refused() -> None:
    clean, robust = flags(20, 18), flags(20, 10)
    with pytest.raises(UsageError, match="disagree with robust_acc"):
        row("bad", clean, robust, robust_acc=0.9, per_attack={"pgd10": 0.5})
    with pytest.raises(UsageError, match="checks_run"):
        row("bad", clean, robust, checks_run=("gradients",), check_examples=0)


@pytest.mark.parametrize("name", ["results.parquet", "long-training.parquet"])
def test_the_committed_version_1_files_still_read_without_per_example_data(name: str) -> None:
    path = REPO / "leaderboards" / name
    version = int(pq.ParquetFile(path).schema_arrow.metadata[b"ssmbench.schema_version"])
    rows = lb.read(path)
    old = [r for r in rows if r.per_example is None]  # the studies' rows, recorded with schema 1
    assert version == 1 and len(old) == len(rows) or version == lb.SCHEMA_VERSION and old
    assert all(r.labels_sha256 == "" and r.examples == first_n(r.n_examples) for r in old)
    # The studies ran with checks = false: their rows read "not checked", never as passed.
    assert {r.check_status for r in old} == {"not checked"} and {r.selection for r in old} == {"test"}


def test_a_version_1_file_written_here_reads_and_compare_refuses_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.parquet"
    current = lb._to_table([row("old1", flags(32, 30), flags(32, 20)), row("old2", flags(32, 30), flags(32, 25))])
    v2 = ["train_seed", "selection", "split", "examples", "labels_sha256", "outcomes", "outcome_attacks", "checks_run", "check_examples"]
    pq.write_table(current.drop_columns(v2).replace_schema_metadata({b"ssmbench.schema_version": b"1"}), path)
    old1, old2 = lb.read(path)
    assert (old1.robust_acc, old1.per_example, old1.check_status, old1.examples) == (20 / 32, None, "not checked", "first 32")
    with pytest.raises(CompareError, match="no per-example outcomes"):
        compare(old1, old2)


# -- compare --------------------------------------------------------------------------------------


def test_compare_pairs_the_outcomes_and_refuses_other_examples_attacks_or_eps() -> None:
    n = 100
    a = row("a", flags(n, 90), flags(n, 60))
    b = row("b", flags(n, 90), flags(n, 52))  # B's robust examples are a subset of A's: 8 discordant pairs
    result = compare(a, b)
    assert (result.robust.only_a, result.robust.only_b) == (8, 0)
    assert result.robust.p_value == pytest.approx(binomtest(8, 8, 0.5).pvalue) and result.robust.significant
    assert result.clean.difference == 0 and not result.clean.significant
    for other, reason in [
        (row("c", flags(n, 90), flags(n, 52), labels="e" * 64), "different examples"),
        (row("d", flags(50, 45), flags(50, 26)), "different examples"),
        (row("e", flags(n, 90), flags(n, 52), eps=4 / 255), "differ in the attack"),
    ]:
        with pytest.raises(CompareError, match=reason):
            compare(a, other)


def test_cli_compare_prints_the_paired_test_and_refuses_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_leaderboard.console, "width", 100)
    path = tmp_path / "results.parquet"
    n = 360
    lb.append(path, [
        row("a", flags(n, 300), flags(n, 250), arch="s4"),
        row("b", flags(n, 300), flags(n, 230, offset=10), arch="dss"),
        row("c", flags(32, 30), flags(32, 25), arch="s5"),
    ])
    assert main(["leaderboard", "compare", "runs/a/best.safetensors", "dss", "--path", str(path)]) == 0
    out = capsys.readouterr().out
    # A alone is robust on examples 0-9 and 240-249, B alone on none (its 10-239 lie inside A's 0-249).
    expected = binomtest(20, 20, 0.5).pvalue
    robust = next(line for line in out.splitlines() if line.split()[:1] == ["robust"])
    assert robust.split()[-3:] == ["20", "0", f"{expected:.3g}"]
    assert "+5.6" in robust  # (250 - 230) / 360
    assert "significant at the 5% level" in out
    assert "on 360 digits test examples (first 360" in out
    assert main(["leaderboard", "compare", "s4", "s5", "--path", str(path)]) == 2
    err = capsys.readouterr().err
    assert "different examples" in err and len(err.strip().splitlines()) == 1
    assert main(["leaderboard", "compare", "s4", "mamba", "--path", str(path)]) == 2
    assert "no pgd10 result for 'mamba'" in capsys.readouterr().err


def seeded_pair(n: int = 360) -> list[lb.ResultRow]:
    """S4 + AdS against S4 in three seeds: A gains 30, 12 and -5 robust examples (one set inside the other)."""
    rows = []
    for seed, (a_robust, b_robust) in enumerate([(250, 220), (240, 228), (222, 227)]):
        rows.append(row(f"ads{seed}", flags(n, 300), flags(n, a_robust), ads="tanh", train_seed=seed))
        rows.append(row(f"plain{seed}", flags(n, 300), flags(n, b_robust), train_seed=seed))
    return rows


def test_compare_seeds_pairs_each_seed_and_gives_the_t_interval_over_seeds() -> None:
    rows = seeded_pair()
    a, b = pick_seeds(rows, "s4 + AdS (tanh), PGD-AT", "pgd10"), pick_seeds(rows, "s4, PGD-AT", "pgd10")
    assert sorted(a) == sorted(b) == [0, 1, 2]
    result = compare_seeds(a, b)
    assert result.differences == pytest.approx([30 / 360, 12 / 360, -5 / 360])
    for seed, (only_a, only_b) in enumerate([(30, 0), (12, 0), (0, 5)]):
        assert (result.by_seed[seed].robust.only_a, result.by_seed[seed].robust.only_b) == (only_a, only_b)
        assert result.by_seed[seed].robust.p_value == pytest.approx(binomtest(only_a, only_a + only_b, 0.5).pvalue)
    mean, sd = statistics.fmean([30, 12, -5]) / 360, statistics.stdev([30, 12, -5]) / 360
    half = 4.302652729911275 * sd / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert result.mean == pytest.approx(mean) and result.interval() == pytest.approx((mean - half, mean + half))
    assert result.significant_seeds == (2, 0)  # 30 and 12 discordant pairs all one way; 5 are not enough (p = 0.0625)
    with pytest.raises(CompareError, match="share no training seed"):
        compare_seeds({0: a[0]}, {1: b[1]})
    with pytest.raises(CompareError, match="matches 3 models"):
        pick(rows, "s4, PGD-AT", "pgd10")


def test_cli_compare_seeds_prints_one_line_per_seed_and_the_summary(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_leaderboard.console, "width", 120)
    path = tmp_path / "results.parquet"
    lb.append(path, seeded_pair())
    assert main(["leaderboard", "compare", "s4 + AdS (tanh), PGD-AT", "s4, PGD-AT", "--seeds", "--leaderboard", str(path)]) == 0
    out = capsys.readouterr().out
    seed_lines = [line.split() for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert [line[0] for line in seed_lines] == ["0", "1", "2"] and seed_lines[0][-3:-1] == ["30", "0"]
    assert "mean A - B over 3 seeds: +3.4 points (Student-t 95% over the seeds: -8.7 to +15.5)" in " ".join(out.split())
    assert "with A above B in 2 of 3 seeds, with A below B in 0" in " ".join(out.split())


def test_pick_refuses_a_label_that_names_several_models() -> None:
    rows = [row("a", flags(10, 9), flags(10, 5)), row("b", flags(10, 9), flags(10, 6), train_seed=1)]
    with pytest.raises(CompareError, match="matches 2 models"):
        pick(rows, "s4", "pgd10")
    assert pick(rows, "b", "pgd10").run_id == "b"
    rows.append(row("b32", flags(32, 30), flags(32, 20), train_seed=1, checkpoint_sha256="b".ljust(64, "0"), model=rows[1].model))
    assert pick(rows, rows[1].model, "pgd10").run_id == "b32"  # same checkpoint: the newest (ties: larger run id)
    assert pick(rows, rows[1].model, "pgd10", n_examples=10).run_id == "b"
    with pytest.raises(CompareError, match="no pgd10 result on 7 examples"):
        pick(rows, "b", "pgd10", n_examples=7)


def test_compare_dataset_picks_one_of_a_label_recorded_on_several_data_sets(tmp_path: Path, capsys) -> None:
    """A time-series results file holds 's4, PGD-AT' for GunPoint and BasicMotions: without --dataset
    the label is ambiguous and the error says which option resolves it; with it, one pair is compared."""
    gunpoint = [row("g-ads", flags(150, 100), flags(150, 90), dataset="gunpoint", ads="tanh"),
                row("g-plain", flags(150, 100), flags(150, 80), dataset="gunpoint")]
    motions = [row("m-ads", flags(40, 40), flags(40, 40), dataset="basicmotions", ads="tanh", labels="e" * 64),
               row("m-plain", flags(40, 40), flags(40, 30), dataset="basicmotions", labels="e" * 64)]
    rows = gunpoint + motions
    with pytest.raises(CompareError, match=r"matches 2 models .*on basicmotions.*on gunpoint.*add --dataset \(basicmotions or gunpoint\)"):
        pick(rows, "s4, PGD-AT", "pgd10")
    assert pick(rows, "s4, PGD-AT", "pgd10", dataset="gunpoint").run_id == "g-plain"
    assert pick_seeds(rows, "s4 + AdS (tanh), PGD-AT", "pgd10", dataset="basicmotions")[0].run_id == "m-ads"
    with pytest.raises(CompareError, match="no pgd10 result on digits for 's4, PGD-AT'"):
        pick(rows, "s4, PGD-AT", "pgd10", dataset="digits")
    path = tmp_path / "timeseries.parquet"
    lb.append(path, rows)
    assert main(["leaderboard", "compare", "s4 + AdS (tanh), PGD-AT", "s4, PGD-AT", "--dataset", "basicmotions",
                 "--leaderboard", str(path)]) == 0
    robust = next(line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["robust"])
    assert robust.split()[-3:-1] == ["10", "0"]  # 40 vs 30 robust series, one set inside the other


# -- the published tables -------------------------------------------------------------------------


def _line(text: str, label: str) -> list[str]:
    found = next(line for line in text.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in found.strip("|").split("|")]


def test_a_loss_selected_row_is_kept_and_its_caption_says_so(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    lb.append(path, [row("r1", flags(40, 40), flags(40, 30), selection="val-loss")])
    (back,) = lb.read(path)
    assert back.selection == "val-loss"
    assert "Best checkpoint selected by PGD-10 on held-out training images (lowest cross-entropy)." in render_markdown(lb.read(path))
    with pytest.raises(UsageError, match="selection must be one of val, test, val-loss, test-loss"):
        lb.append(path, [row("r2", flags(40, 40), flags(40, 30), selection="margin")])


def test_markdown_shows_wilson_intervals_and_checked_flagged_not_checked() -> None:
    n = 360
    rows = [
        row("a", flags(n, 300), flags(n, 267), arch="s4", checks_run=("gradients", "pgd-steps"), check_examples=128),
        row("b", flags(n, 290), flags(n, 200), arch="dss", checks_run=("gradients",), check_examples=128, flags=("zero-gradients",)),
        row("c", flags(n, 280), flags(n, 100), arch="s5"),
    ]
    text = render_markdown(rows)
    header = [cell.strip() for cell in next(line for line in text.splitlines() if line.startswith("| Model")).strip("|").split("|")]
    s4, dss, s5 = (dict(zip(header, _line(text, label), strict=True)) for label in ("s4", "dss", "s5"))
    low, high = wilson_formula(267, n)
    assert s4["Best PGD-10"] == f"74.2 ({100 * low:.1f}-{100 * high:.1f})"
    low, high = wilson_formula(300, n)
    assert s4["Best CA"] == f"83.3 ({100 * low:.1f}-{100 * high:.1f})"
    assert (s4["Checks"], dss["Checks"], s5["Checks"]) == ("passed", "flagged: zero-gradients", "not checked")
    assert dss["Best PGD-10"].endswith("†") and "95% Wilson interval" in text


def test_markdown_marks_rows_the_paired_test_cannot_tell_apart() -> None:
    n = 100
    # 60% vs 52% of 100 with B's robust examples inside A's: McNemar p = 0.008, Fisher's p = 0.32.
    paired_rows = [row("a", flags(n, 90), flags(n, 60), arch="s4"), row("b", flags(n, 90), flags(n, 52), arch="dss")]
    assert _line(render_markdown(paired_rows), "dss")[4] == ""
    without_outcomes = [lb.ResultRow(**{**r.__dict__, "outcomes": b"", "outcome_attacks": ()}) for r in paired_rows]
    assert _line(render_markdown(without_outcomes), "dss")[4] == "≈"  # unpaired: not significant
    assert _line(render_markdown(paired_rows), "s4")[4] == ""  # the first line has nothing above it


def test_markdown_aggregates_a_family_over_seeds() -> None:
    n = 200
    correct = [150, 160, 170]
    rows = [row(f"s{seed}", flags(n, 190), flags(n, k), train_seed=seed) for seed, k in enumerate(correct)]
    rows.append(row("s1-old", flags(n, 190), flags(n, 10), train_seed=1, time="2026-02-01T00:00:00+00:00"))  # replaced
    line = _line(render_markdown(rows), "s4")
    std = statistics.stdev(k / n for k in correct)
    low, high = wilson_formula(sum(correct), 3 * n)
    assert line[3] == "3"
    assert line[6] == f"80.0 ±{100 * std:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def test_show_marks_checked_flagged_and_not_checked_within_80_columns(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_leaderboard.console, "width", 80)
    path = tmp_path / "results.parquet"
    lb.append(path, [
        row("a", flags(360, 300), flags(360, 267), arch="s4", checks_run=("gradients",), check_examples=128),
        row("b", flags(360, 300), flags(360, 200), arch="dss", checks_run=("gradients",), check_examples=128, flags=("zero-gradients",)),
        row("c", flags(360, 300), flags(360, 100), arch="s5", ads="tanh", attention=True, train_seed=2),
    ])
    assert main(["leaderboard", "show", "--path", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    low, high = wilson_formula(267, 360)
    s4 = next(i for i, line in enumerate(lines) if line.startswith(" s4 "))
    assert lines[s4].split()[-2:] == ["74.2", "ok"] and f"({100 * low:.1f}-{100 * high:.1f})" in lines[s4 + 1]
    assert next(line for line in lines if line.startswith(" dss ")).split()[-2:] == ["55.6†", "flag"]
    s5 = next(line for line in lines if line.startswith(" s5 "))
    assert s5.split()[-1] == "-" and " 2 " in s5  # not checked; its training seed
    assert any("(b): zero-gradients" in line for line in lines)


# -- recording checks and examples in a real evaluation -------------------------------------------


def test_a_real_evaluation_records_its_outcomes_examples_and_checks(tmp_path: Path) -> None:
    from model_zoo import build_model
    from model_zoo.checkpoints import CheckpointMeta
    from ssmbench.checks import CheckConfig
    from ssmbench.data import load_split
    from ssmbench.evaluate import EvalSettings, evaluate
    from ssmbench.records import result_row

    torch.manual_seed(0)
    model = build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1)
    x, y = load_split("digits", "test")
    checked = evaluate(model, (x, y), "pgd10", EvalSettings(eps=EPS, n_examples=24, device="cpu", checks=CheckConfig(n_examples=8)))
    unchecked = evaluate(model, (x, y), "pgd10", EvalSettings(eps=EPS, n_examples=24, device="cpu", checks=None))
    meta = CheckpointMeta(model.config, training={"method": "pgd", "eps": EPS, "selection": "val"}, kind="best", seed=3)
    first = result_row("r", "m", meta, checked, "0" * 64)
    assert first.checks_run == tuple(o.name for o in checked.checks) and first.check_examples == 8
    assert first.check_status in ("passed", "flagged") and first.check_status == ("flagged" if checked.flags else "passed")
    assert np.array_equal(first.per_example.clean, checked.per_example.clean.numpy())
    assert np.array_equal(first.per_example.robust, checked.per_example.robust.numpy())
    assert (first.labels_sha256, first.examples, first.split) == (labels_sha256(y[:24]), "first 24", "test")
    assert (first.selection, first.train_seed) == ("val", 3)
    second = result_row("r", "m", CheckpointMeta(model.config, training={"method": "pgd"}), unchecked, "0" * 64)
    assert (second.check_status, second.check_examples, second.selection) == ("not checked", 0, "test")
    assert compare(first, second).robust.difference == 0  # same model, same seed: the same outcomes


# -- seeds ------------------------------------------------------------------------------------------


def test_seeds_expand_to_separate_cells_and_run_dirs(tmp_path: Path) -> None:
    study = tmp_path / "study.toml"
    study.write_text(f'[study]\nseeds = [0, 1, 2]\ncecks = 1\nout = "{tmp_path}"\n[[grid]]\nmodels = ["s4"]\nmethods = ["pgd"]\n')
    with pytest.raises(UsageError, match="cecks"):
        load_study(study)
    study.write_text(study.read_text().replace("cecks = 1\n", "checks = false\n"))
    config = load_study(study)
    cells, _ = expand(config)
    assert [c.name for c in cells] == ["s4-pgd-none", "s4-pgd-none-seed1", "s4-pgd-none-seed2"]
    assert len({config.run_dir(c) for c in cells}) == 3 and [c.seed for c in cells] == [0, 1, 2]
    # Seed 0 keeps the run directory that studies had before seeds, so committed studies stay done.
    assert Cell("s4", "pgd", "none", False).name == "s4-pgd-none"
    assert config.train_config("pgd", 2).seed == 2 and not config.checks
    default = load_study(REPO / "studies" / "digits.toml")
    assert default.seeds == (0,) and all(c.seed == 0 for c in expand(default)[0])
    for bad in ("[]", "[1, 1]", "[-1]", "3"):
        study.write_text(study.read_text().replace("seeds = [0, 1, 2]", f"seeds = {bad}"))
        with pytest.raises(UsageError, match="seeds"):
            load_study(study)
        study.write_text(study.read_text().replace(f"seeds = {bad}", "seeds = [0, 1, 2]"))


def test_committed_studies_that_turn_checks_off_say_so() -> None:
    for path in sorted((REPO / "studies").glob("*.toml")):
        config = load_study(path)
        text = path.read_text()
        assert config.checks == ("checks = false" not in text), path.name
    assert StudyConfig.__dataclass_fields__["checks"].default is True
