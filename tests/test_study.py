"""`ssmbench study`: the grid, kill + resume cell by cell, failures, locks, the table, the CLI."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
import torch

from model_zoo.checkpoints import load
from model_zoo.errors import RunError, UsageError
from ssmbench.cli import main
from ssmbench.data import load_split
from ssmbench.evaluate import EvalSettings, evaluate
from ssmbench.leaderboard import read
from ssmbench.study import (
    Cell,
    CellOutcome,
    StudyObserver,
    expand,
    load_study,
    parse_shard,
    plan,
    render_study,
    run_study,
    select,
)

STUDIES = Path(__file__).resolve().parent.parent / "studies"
TINY = """
[study]
name = "tiny"
epochs = 2
batch_size = 32
lr = 5e-3
train_examples = 64
eval_examples = 32
aa_examples = 8
suites = ["pgd10"]
checks = false
out = "{out}"
leaderboard = "{leaderboard}"

[study.model]
n_layers = 1
d_model = 16
d_state = 8

[[grid]]
models = ["s4d"]
methods = ["st", "pgd"]
"""


def write_study(folder: Path, text: str = TINY) -> Path:
    path = folder / "study.toml"
    path.write_text(text.format(out=folder / "runs", leaderboard=folder / "results.parquet"))
    return path


class Stop(Exception):
    """Stands for a kill: raised from an observer hook."""


@dataclass
class Recorder(StudyObserver):
    """Records every hook call; raises Stop at the hook call named in `stop_at`."""

    stop_at: str | None = None
    events: list[tuple[str, object]] = field(default_factory=list)

    def _note(self, hook: str, detail: object) -> None:
        self.events.append((hook, detail))
        if hook == self.stop_at:
            raise Stop(hook)

    def on_cell_start(self, cell: Cell, index: int, total: int, resumed_epochs: int) -> None:
        self._note("cell_start", (cell.name, resumed_epochs))

    def on_epoch_start(self, epoch: int, epochs: int, samples: int) -> None:
        self._note("epoch_start", epoch)

    def on_eval(self, cell: Cell, kind: str, suite: str, done: int, total: int, attack: str) -> None:
        self._note("eval", (cell.name, kind, suite))

    def on_cell_end(self, outcome: CellOutcome) -> None:
        self._note("cell_end", (outcome.cell.name, outcome.status))

    def seen(self, hook: str) -> list[object]:
        return [detail for name, detail in self.events if name == hook]


def fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file: a retrained cell would change both."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir()) if p.is_file()
    }


def dry_run(config: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["study", "--config", str(config), "--dry-run"])
    return code, out.getvalue()


@dataclass
class Killed:
    config_path: Path
    first_files: dict[str, tuple[str, int]]
    dry_run: tuple[int, str]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Killed:
    """The tiny study stopped right after its first cell finished."""
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder)
    config = load_study(path)
    with pytest.raises(Stop):
        run_study(config, Recorder(stop_at="cell_end"), device="cpu")
    return Killed(path, fingerprint(config.out / "s4d-st-none"), dry_run(path))


@pytest.fixture(scope="module")
def resumed(killed: Killed) -> Recorder:
    """The same study run again to the end."""
    recorder = Recorder()
    run_study(load_study(killed.config_path), recorder, device="cpu")
    return recorder


def test_grids_are_unioned_in_order_and_refused_combinations_skipped_with_the_zoo_reason(tmp_path: Path) -> None:
    text = TINY + """
[[grid]]
models = ["s4d", "mega"]
methods = ["pgd"]
ads = ["none", "tanh"]

[[grid]]
models = ["s4d"]
methods = ["pgd"]
attention = [true]
"""
    config = load_study(write_study(tmp_path, text))
    cells, skipped = expand(config)
    assert [c.name for c in cells] == [
        "s4d-st-none", "s4d-pgd-none", "s4d-pgd-tanh", "mega-pgd-none", "s4d-pgd-none-attn",
    ]
    assert [s.cell.name for s in skipped] == ["mega-pgd-tanh"]
    assert "mega has no AdS" in skipped[0].reason


def test_the_shipped_digits_study_is_the_papers_grid() -> None:
    config = load_study(STUDIES / "digits.toml")
    cells, skipped = expand(config)
    archs, ssms = ["s4", "dss", "s5", "mamba", "mega"], ["s4", "dss", "s5", "mamba"]
    expected = {Cell(a, m, "none", False) for a, m in itertools.product(archs, ["st", "pgd", "trades", "freeat", "yopo"])}
    expected |= {Cell(a, "pgd", ads, False) for a, ads in itertools.product(ssms, ["relu", "sigmoid", "tanh"])}
    expected |= {Cell(a, "pgd", "none", True) for a in ["s4", "dss"]}
    assert set(cells) == expected and len(cells) == len(expected) == 39
    assert [s.cell.name for s in skipped] == []
    for other in ("fashion-mnist.toml", "smoke.toml"):
        assert expand(load_study(STUDIES / other))[0]


def test_the_full_protocol_digits_study_has_three_seeds_where_issue_13_asks() -> None:
    """Every architecture under ST and PGD-AT, every SSM + AdS tanh under PGD-AT and S4 / DSS +
    attention under PGD-AT with seeds 0-2; AutoAttack on the whole test split; checks on; val selection."""
    config = load_study(STUDIES / "digits-full.toml")
    cells, skipped = expand(config)
    seeds: dict[tuple[str, str, str, bool], set[int]] = {}
    for cell in cells:
        seeds.setdefault((cell.arch, cell.method, cell.ads, cell.attention), set()).add(cell.seed)
    headline = {(a, m, "none", False) for a in ["s4", "dss", "s5", "mamba", "mega"] for m in ["st", "pgd"]}
    headline |= {(a, "pgd", "tanh", False) for a in ["s4", "dss", "s5", "mamba"]}
    headline |= {(a, "pgd", "none", True) for a in ["s4", "dss"]}
    assert {key for key, found in seeds.items() if found == {0, 1, 2}} == headline
    assert all(found == {0} for key, found in seeds.items() if key not in headline)
    assert {(m, ads) for (_, m, ads, _) in seeds} >= {("trades", "none"), ("freeat", "none"), ("yopo", "none"), ("pgd", "relu"), ("pgd", "sigmoid")}
    assert skipped == [] and len(cells) == 71
    assert config.aa_examples >= 360 and config.train.eval_examples == 360 and config.checks and config.train.val_examples > 0
    assert config.train.epochs == load_study(STUDIES / "digits-convergence.toml").train.epochs == 40
    fashion = load_study(STUDIES / "fashion-mnist-full.toml")
    fashion_seeds: dict[tuple[str, str, str], set[int]] = {}
    for cell in expand(fashion)[0]:
        fashion_seeds.setdefault((cell.arch, cell.method, cell.ads), set()).add(cell.seed)
    assert {key for key, found in fashion_seeds.items() if found == {0, 1, 2}} == {
        (a, m, ads) for a in ["s4", "dss"] for m, ads in [("st", "none"), ("pgd", "none"), ("pgd", "tanh")]}
    assert fashion.aa_examples >= 200 and fashion.checks and fashion.train.val_examples > 0


def test_a_grid_can_set_its_own_seeds(tmp_path: Path) -> None:
    """Headline cells with three seeds, the rest of the grid with the study's one, in one file."""
    text = TINY + """
[[grid]]
models = ["s4d"]
methods = ["pgd"]
ads = ["tanh"]
seeds = [0, 1, 2]
"""
    cells, _ = expand(load_study(write_study(tmp_path, text)))
    assert [c.name for c in cells] == ["s4d-st-none", "s4d-pgd-none", "s4d-pgd-tanh", "s4d-pgd-tanh-seed1", "s4d-pgd-tanh-seed2"]
    with pytest.raises(UsageError, match=re.escape("grid seeds must list distinct integers")):
        load_study(write_study(tmp_path, text.replace("seeds = [0, 1, 2]", "seeds = [1, 1]")))


def test_a_grid_can_set_its_own_suites(tmp_path: Path) -> None:
    """AutoAttack on the headline cell only: its rows have both suites, the others the study's
    pgd10; a cell listed in two grids with different suites is refused; the caption says where."""
    text = TINY.replace('methods = ["st", "pgd"]', 'methods = ["st"]') + """
[[grid]]
models = ["s4d"]
methods = ["pgd"]
suites = ["pgd10", "autoattack"]
"""
    config = load_study(write_study(tmp_path, text.replace("epochs = 2", "epochs = 1")))
    cells, _ = expand(config)
    assert [(c.name, c.suites_in(config)) for c in cells] == [("s4d-st-none", ("pgd10",)), ("s4d-pgd-none", ("pgd10", "autoattack"))]
    assert "autoattack (standard, official code) on the first 8 test images (in the cells whose grid lists it)" in render_study(config)
    run_study(config, Recorder(), device="cpu")
    suites = {(row.arch, row.method, row.suite) for row in read(config.leaderboard)}
    assert suites == {("s4d", "st", "pgd10"), ("s4d", "pgd", "pgd10"), ("s4d", "pgd", "autoattack")}
    twice = text + '\n[[grid]]\nmodels = ["s4d"]\nmethods = ["pgd"]\n'
    with pytest.raises(UsageError, match="cell s4d-pgd-none is in two grids with different suites"):
        expand(load_study(write_study(tmp_path, twice)))
    with pytest.raises(UsageError, match="unknown attack suite 'squares'"):
        load_study(write_study(tmp_path, text.replace('suites = ["pgd10", "autoattack"]', 'suites = ["squares"]')))
    for key in ("suites", "seeds"):  # an empty list is refused rather than read as "the study's"
        with pytest.raises(UsageError, match=re.escape(f"[[grid]] {key} = [] lists nothing; leave {key} out")):
            load_study(write_study(tmp_path, text.replace('suites = ["pgd10", "autoattack"]', f"{key} = []")))


def test_an_l2_study_trains_and_evaluates_in_l2(tmp_path: Path) -> None:
    """norm = "l2" in [study] reaches training (the checkpoint says L2) and every evaluation (rows say L2)."""
    text = TINY.replace("epochs = 2", 'epochs = 1\nnorm = "l2"\neps = 0.5').replace('methods = ["st", "pgd"]', 'methods = ["pgd"]')
    config = load_study(write_study(tmp_path, text))
    run_study(config, Recorder(), device="cpu")
    rows = read(config.leaderboard)
    assert rows and {row.threat_model for row in rows} == {"L2"}
    assert load(rows[0].model)[1].training["threat_model"] == "L2"


def test_val_examples_reach_the_trainer_and_the_caption(tmp_path: Path) -> None:
    config = load_study(write_study(tmp_path, TINY.replace("eval_examples = 32", "eval_examples = 32\nval_examples = 16")))
    assert config.train_config("pgd", 0).val_examples == 16 and config.train_config("pgd", 0).selection == "val"
    assert "highest PGD-10 accuracy on 16 held-out training images" in render_study(config)
    assert load_study(write_study(tmp_path, TINY)).train_config("pgd", 0).selection == "test"
    by_loss = load_study(write_study(tmp_path, TINY.replace("eval_examples = 32", "eval_examples = 32\nval_examples = 16\nselect_by = \"loss\"")))
    assert by_loss.train_config("pgd", 0).selection == "val-loss"
    assert "lowest PGD-10 cross-entropy on 16 held-out training images" in render_study(by_loss)
    for study in ("digits.toml", "digits-long.toml", "digits-full.toml", "digits-convergence.toml", "fashion-mnist.toml", "fashion-mnist-full.toml", "smoke.toml"):
        assert load_study(STUDIES / study).train.val_examples > 0, study


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[study.unknown]\nx = 1\n", "unknown [study] key(s) unknown"),
        ("[[grid]]\nmodels = ['s9']\nmethods = ['pgd']\n", "unknown or missing s9"),
        ("[[grid]]\nmodels = ['s4d']\nmethods = ['pgd']\nadds = ['tanh']\n", "unknown [[grid]] key(s) adds"),
        ("[study.model.s4d]\nwidth = 3\n", "not width"),
    ],
)
def test_bad_study_files_are_refused_with_the_file_and_the_key(tmp_path: Path, extra: str, message: str) -> None:
    path = write_study(tmp_path, TINY + extra)
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        load_study(path)
    assert str(path) in str(info.value)


def test_a_killed_study_resumes_with_only_the_cells_it_had_not_finished(killed: Killed, resumed: Recorder) -> None:
    config = load_study(killed.config_path)
    assert resumed.seen("cell_start") == [("s4d-pgd-none", 0)]
    assert resumed.seen("epoch_start") == [1, 2]  # cell 2's epochs; cell 1 was not retrained
    assert resumed.seen("cell_end") == [("s4d-st-none", "skipped: done before"), ("s4d-pgd-none", "done")]
    assert fingerprint(config.out / "s4d-st-none") == killed.first_files
    rows = read(config.leaderboard)
    assert sorted((r.arch, r.method, r.checkpoint_kind) for r in rows) == sorted(
        itertools.product(["s4d"], ["pgd", "st"], ["best", "last"])
    )
    x, y = load_split("digits", "test")
    for row in rows:  # each recorded number against an evaluation of the checkpoint file itself
        model, _ = load(row.model)
        reference = evaluate(model, (x, y), "pgd10", EvalSettings(eps=8 / 255, n_examples=32, device="cpu", checks=None))
        assert (row.n_examples, row.robust_acc) == (32, reference.robust_acc)
        with torch.no_grad():
            assert row.clean_acc == (model(x[:32]).argmax(1) == y[:32]).float().mean().item()


def test_a_cell_killed_during_evaluation_is_not_trained_again(tmp_path: Path) -> None:
    config = load_study(write_study(tmp_path))
    with pytest.raises(Stop):
        run_study(config, Recorder(stop_at="eval"), device="cpu")
    run_dir = config.out / "s4d-st-none"
    trained = fingerprint(run_dir)
    assert not (run_dir / "done.json").exists()
    recorder = Recorder()
    run_study(config, recorder, device="cpu")
    assert recorder.seen("cell_start") == [("s4d-st-none", 2), ("s4d-pgd-none", 0)]
    assert recorder.seen("epoch_start") == [1, 2]  # only the second cell's
    after = fingerprint(run_dir)
    assert {name: after[name] for name in ("best.safetensors", "last.safetensors", "state.safetensors")} == {
        name: trained[name] for name in ("best.safetensors", "last.safetensors", "state.safetensors")
    }
    assert len(read(config.leaderboard)) == 4


def test_a_fresh_clone_counts_the_cells_its_committed_leaderboard_holds_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run folders are scratch; the committed leaderboard is the record a new machine resumes from."""
    monkeypatch.chdir(tmp_path)
    Path("study.toml").write_text(TINY.format(out="runs", leaderboard="results.parquet").replace('"st", "pgd"', '"st"'))
    config = load_study(Path("study.toml"))
    run_study(config, Recorder(), device="cpu")
    # A later evaluation of the cell's checkpoint appends rows of another run to the same leaderboard.
    assert main(["eval", "runs/s4d-st-none/last.safetensors", "--attack", "pgd10", "--n-examples", "8",
                 "--no-checks", "--leaderboard", "results.parquet"]) == 0
    recorded = read(config.leaderboard)
    assert len({row.run_id for row in recorded}) == 2
    timed = json.loads(Path("runs/s4d-st-none/done.json").read_text())["seconds"]
    shutil.rmtree("runs")  # what a fresh clone has: the leaderboard and its cost ledger, no run folders
    recorder = Recorder()
    run_study(config, recorder, device="cpu")
    assert recorder.seen("cell_start") == []
    assert recorder.seen("cell_end") == [("s4d-st-none", "skipped: done before")]
    assert read(config.leaderboard) == recorded
    code, out = dry_run(Path("study.toml"))
    assert code == 0 and "1 done, 0 failed, 0 running, 0 pending" in out
    assert "untimed" not in out and f"{timed:.0f}" in out  # the ledger kept the cell's seconds
    Path("results.cells.json").unlink()
    code, out = dry_run(Path("study.toml"))
    assert code == 0 and "1 of them untimed" in out
    table = render_study(config)
    assert "| s4d | ST | 0 | 1 | " in table and "Not finished" not in table
    assert "PGD-10 on 32" in table and "PGD-10 on 8" not in table  # the study's own rows, not the later eval's


def test_dry_run_lists_done_and_pending_cells(killed: Killed) -> None:
    code, out = killed.dry_run
    assert code == 0
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if "s4d-" in line and "│" in line}
    assert "done" in lines["s4d-st-none"] and "pending" in lines["s4d-pgd-none"]
    assert "1 done, 0 failed, 0 running, 1 pending" in out


def percent1(fraction: float) -> Decimal:
    return (Decimal(repr(fraction)) * 100).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def cell(fraction: float, n: int) -> str:
    """'86.1 (82.2-89.3)' with the Wilson interval from its closed form (z = 1.959964)."""
    k, z = round(fraction * n), 1.959963984540054
    p = k / n
    centre, half = p + z * z / (2 * n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    low, high = ((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n))
    return f"{percent1(fraction)} ({percent1(low)}-{percent1(high)})"


def test_the_study_table_shows_both_cells_with_best_last_and_diff(killed: Killed, resumed: Recorder) -> None:
    config = load_study(killed.config_path)
    text = render_study(config)
    assert "Trained 2 epochs" in text and "first 64 training images" in text and "pgd10 on the first 32 test images" in text
    assert "d_model = 16" in text and "Not finished" not in text
    assert "Sanity checks off (checks = false)" in text and "1 seed (0)" in text
    by_method = {}
    for row in read(config.leaderboard):
        by_method.setdefault(row.method, {})[row.checkpoint_kind] = row
    for method, label in (("st", "ST"), ("pgd", "PGD-AT")):
        best, last = by_method[method]["best"], by_method[method]["last"]
        cells = [cell(best.clean_acc, 32), cell(best.robust_acc, 32), "-",
                 cell(last.clean_acc, 32), cell(last.robust_acc, 32), "-",
                 f"{percent1(best.clean_acc) - percent1(last.clean_acc):+.1f}",
                 f"{percent1(best.robust_acc) - percent1(last.robust_acc):+.1f}", "-"]
        eps = "0" if method == "st" else "8/255"
        line = next(line for line in text.splitlines() if line.startswith(f"| s4d | {label} | {eps} | 1 | "))
        # The study ran with checks = false: its rows say so rather than passing as checked.
        assert line.endswith(" | ".join(cells) + " | not checked |"), line


def test_a_failed_cell_is_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    class FailFirst(Recorder):
        def on_epoch_start(self, epoch: int, epochs: int, samples: int) -> None:
            super().on_epoch_start(epoch, epochs, samples)
            if len(self.seen("cell_start")) == 1:
                raise RunError("training diverged: non-finite loss nan at epoch 1")

    config = load_study(write_study(tmp_path, TINY.replace("epochs = 2", "epochs = 1")))
    report = run_study(config, FailFirst(), device="cpu")
    assert [(o.cell.name, o.status) for o in report.outcomes] == [("s4d-st-none", "failed"), ("s4d-pgd-none", "done")]
    assert "non-finite loss" in report.failed[0].message
    marker = json.loads((config.out / "s4d-st-none" / "done.json").read_text())
    assert marker["status"] == "failed" and "non-finite loss" in marker["message"]
    assert [(s.cell.name, s.status) for s in plan(config)] == [("s4d-st-none", "failed"), ("s4d-pgd-none", "done")]
    assert "s4d-st-none: failed (training diverged" in render_study(config)
    best, last = sorted(read(config.leaderboard), key=lambda r: r.checkpoint_kind)
    assert (best.method, best.checkpoint_kind, last.checkpoint_kind) == ("pgd", "best", "last")
    # One epoch: best is last, evaluated once; the rows still name each file.
    assert best.checkpoint_sha256 != last.checkpoint_sha256 and best.model != last.model
    model, _ = load(last.model)
    x, y = load_split("digits", "test")
    reference = evaluate(model, (x, y), "pgd10", EvalSettings(eps=8 / 255, n_examples=32, device="cpu", checks=None))
    assert best.robust_acc == last.robust_acc == reference.robust_acc
    assert best.wall_seconds == last.wall_seconds  # the same evaluation, not a second one


def test_a_cell_held_by_another_process_is_skipped(tmp_path: Path) -> None:
    config = load_study(write_study(tmp_path))
    first, second = (config.out / name for name in ("s4d-st-none", "s4d-pgd-none"))
    second.mkdir(parents=True)
    (second / "done.json").write_text(json.dumps({"status": "done", "run_id": "x"}))
    first.mkdir(parents=True)
    fd = os.open(first / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a runner in another process holds while it trains the cell
        assert [s.status for s in plan(config)] == ["running", "done"]
        report = run_study(config, device="cpu")
    finally:
        os.close(fd)
    assert [o.status for o in report.outcomes] == ["skipped: running in another process", "skipped: done before"]
    assert not (first / "state.safetensors").exists()
    assert [s.status for s in plan(config)] == ["pending", "done"]


def test_shards_split_the_grid_into_disjoint_complete_parts() -> None:
    cells = [Cell(f"a{i}", "pgd", "none", False) for i in range(7)]
    parts = [select(cells, parse_shard(f"{i}/3")) for i in (1, 2, 3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert sorted(itertools.chain(*parts), key=cells.index) == cells
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_flag_form_dry_run_and_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["study", "--models", "s4d,mega", "--at", "st", "--ads", "none,relu", "--out", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "s4d-st-none" in out and "s4d-st-relu" in out and "mega-st-none" in out and "mega-st-relu" not in out
    assert "0 done, 0 failed, 0 running, 3 pending" in out
    assert main(["study", "--config", str(STUDIES / "smoke.toml"), "--models", "s4", "--dry-run"]) == 2
    assert "the grid comes from" in capsys.readouterr().err
    assert main(["study", "--dry-run"]) == 2
