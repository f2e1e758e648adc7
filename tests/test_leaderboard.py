"""The results file and its views: atomic concurrent appends, schema migration, the published
markdown against a golden string, exports, and the CLI (`ssmbench leaderboard ...`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model_zoo.errors import UsageError
from ssmbench import leaderboard as lb
from ssmbench.cli import leaderboard as cli_leaderboard
from ssmbench.cli import main
from ssmbench.leaderboard_render import PREAMBLE, robustbench_entries
from ssmbench.protocol import below_publication_standard

REPO = Path(__file__).resolve().parents[1]
# Columns that results schema 2 added; a file without them is a version-1 file.
V2_COLUMNS = ["train_seed", "selection", "split", "examples", "labels_sha256", "outcomes", "outcome_attacks",
              "checks_run", "check_examples"]
EPS = 8 / 255


def make_row(run_id: str = "r0", **changes: object) -> lb.ResultRow:
    values: dict[str, object] = dict(
        run_id=run_id, time="2026-03-01T12:00:00+00:00", model="s4d-pgd-digits", dataset="digits",
        arch="s4d", ads="relu", attention=False, method="pgd", train_eps=EPS, checkpoint_kind="best",
        checkpoint_sha256="a" * 64, threat_model="Linf", eps=EPS, suite="pgd10", backend="ssmbench",
        backend_version="0.1.0", n_examples=360, clean_acc=0.9, robust_acc=0.5,
        per_attack={"pgd10": 0.5}, flags=(), seed=0, device="cpu", wall_seconds=1.5,
        ssmbench_version="0.1.0", torch_version="2.13.0",
    )
    values.update(changes)
    return lb.ResultRow(**values)


# Three model families on digits and one on mnist; see test_markdown_matches_golden for the arithmetic.
A = dict(arch="s4d", ads="relu", attention=False, method="pgd", train_eps=EPS)
B = dict(arch="s4d", ads="none", attention=True, method="trades", train_eps=EPS)
C = dict(arch="s4d", ads="none", attention=False, method="st", train_eps=0.0)
AA = dict(suite="autoattack", n_examples=200)
LATER = "2026-03-02T08:00:00+00:00"


def known_rows() -> list[lb.ResultRow]:
    return [
        make_row("a1", **A, clean_acc=0.9125, robust_acc=0.5150),
        # Two AutoAttack runs of the same cell, newest first: a3 (48.25) must win over a2.
        make_row("a3", **A, **AA, clean_acc=0.91, robust_acc=0.4825, time=LATER),
        make_row("a2", **A, **AA, clean_acc=0.91, robust_acc=0.10),
        make_row("a4", **A, checkpoint_kind="last", clean_acc=0.93, robust_acc=0.46),
        make_row("a5", **A, **AA, checkpoint_kind="last", clean_acc=0.93, robust_acc=0.44),
        # Not in the paper's table: another suite, and a checkpoint that is neither best nor last.
        make_row("a6", **A, suite="square", robust_acc=0.01),
        make_row("a7", **A, checkpoint_kind="", robust_acc=0.02),
        make_row("b1", **B, clean_acc=0.88, robust_acc=0.55),
        make_row("b2", **B, **AA, clean_acc=0.88, robust_acc=0.465, flags=("zero-gradients",)),
        make_row("b3", **B, checkpoint_kind="last", clean_acc=0.8712, robust_acc=0.5301),
        make_row("c1", **C, clean_acc=0.99, robust_acc=0.0),
        make_row("c2", **C, checkpoint_kind="last", clean_acc=0.985, robust_acc=0.0),
        make_row("m1", dataset="mnist", arch="s5", ads="none", method="pgd", suite="autoattack",
                 n_examples=2000, clean_acc=0.97, robust_acc=0.9),
    ]


GOLDEN_TABLES = """\
## digits, Linf, ε = 8/255

Test examples: PGD-10 on 360; AutoAttack on 200. Best checkpoint selected by PGD-10 on the test images.

| Model | Method | Train ε | Seeds | ≈ | Best CA | Best PGD-10 | Best AA | Last CA | Last PGD-10 | Last AA | Diff CA | Diff PGD-10 | Diff AA | Checks |
| --- | --- | --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
| s4d + AdS (relu) | PGD-AT | 8/255 | 1 |  | 91.3 (87.7-93.6) | 51.5 (46.2-56.5) | 48.3 (41.2-54.9) | 93.0 (89.9-95.3) | 46.0 (41.0-51.3) | 44.0 (37.3-50.9) | -1.7 | +5.5 | +4.3 | not checked |
| s4d + attention | TRADES | 8/255 | 1 | ≈ | 88.0 (84.3-91.0) | 55.0 (49.8-60.1) | 46.5 (39.7-53.4)† | 87.1 (83.4-90.3) | 53.0 (47.9-58.2) | - | +0.9 | +2.0 | - | flagged: zero-gradients |
| s4d | ST | 0 | 1 |  | 99.0 (97.2-99.6) | 0.0 (0.0-1.1) | - | 98.5 (96.8-99.4) | 0.0 (0.0-1.1) | - | +0.5 | +0.0 | - | not checked |

† A sanity check flagged this result (e.g. signs of gradient masking); `ssmbench leaderboard show` lists the flags.

## mnist, Linf, ε = 8/255

Test examples: AutoAttack on 2000. Best checkpoint selected by PGD-10 on the test images.

| Model | Method | Train ε | Seeds | ≈ | Best CA | Best PGD-10 | Best AA | Last CA | Last PGD-10 | Last AA | Diff CA | Diff PGD-10 | Diff AA | Checks |
| --- | --- | --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
| s5 | PGD-AT | 8/255 | 1 |  | 97.0 (96.2-97.7) | - | 90.0 (88.6-91.2) | - | - | - | - | - | - | not checked |
"""


def _append_many(path: str, prefix: str, count: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()  # both writers start together, so their read-modify-writes overlap
    for i in range(count):
        lb.append(path, [make_row(f"{prefix}{i}")])


def _die_mid_write(path: str) -> None:
    """Append, but SIGKILL this process after half of the new file reached the disk."""
    real_write = pq.write_table

    def half_then_die(table: pa.Table, where: io.BufferedWriter, **options: object) -> None:
        buffer = io.BytesIO()
        real_write(table, buffer)
        where.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        where.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pq.write_table = half_then_die
    lb.append(path, [make_row("doomed")])


def _spawn(target: object, *args: object) -> multiprocessing.Process:
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    return process


# -- storage ------------------------------------------------------------------------------------


def test_schema_columns_follow_result_row() -> None:
    assert lb.SCHEMA.names == [f.name for f in dataclasses.fields(lb.ResultRow)]


def test_append_then_read_round_trips_every_field(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "results.parquet"
    rows = known_rows()
    lb.append(path, rows[:5])
    lb.append(path, rows[5:])
    assert lb.read(path) == rows
    assert pq.ParquetFile(path).schema_arrow.metadata[b"ssmbench.schema_version"] == str(lb.SCHEMA_VERSION).encode()
    assert lb.read(path)[8].flags == ("zero-gradients",)


def test_query_filters_by_dataset_arch_method(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    lb.append(path, known_rows())
    assert [r.run_id for r in lb.query(path, dataset="mnist")] == ["m1"]
    assert {r.run_id for r in lb.query(path, method="trades")} == {"b1", "b2", "b3"}
    assert [r.run_id for r in lb.query(path, dataset="digits", arch="s5")] == []
    assert len(lb.query(path, arch="s4d")) == 12


def test_two_processes_appending_at_once_lose_no_row(tmp_path: Path) -> None:
    path = str(tmp_path / "results.parquet")
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    writers = [_spawn(_append_many, path, prefix, 50, barrier) for prefix in ("x", "y")]
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    ids = [row.run_id for row in lb.read(path)]
    assert sorted(ids) == sorted([f"x{i}" for i in range(50)] + [f"y{i}" for i in range(50)])
    # Each writer's rows stay in its own order: appends are serialized, never interleaved inside one.
    assert [i for i in ids if i[0] == "x"] == [f"x{i}" for i in range(50)]


def test_append_failing_after_temp_write_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "results.parquet"
    lb.append(path, [make_row("kept")])
    before = path.read_bytes()

    def partial_then_fail(table: pa.Table, where: io.BufferedWriter, **options: object) -> None:
        where.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", partial_then_fail)
    with pytest.raises(OSError, match="No space"):
        lb.append(path, [make_row("lost")])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [r.run_id for r in lb.read(path)] == ["kept"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.parquet", "results.parquet.lock"]


def test_append_killed_mid_write_leaves_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    lb.append(path, [make_row("early1"), make_row("early2")])
    victim = _spawn(_die_mid_write, str(path))
    victim.join(timeout=120)
    assert victim.exitcode == -signal.SIGKILL
    strays = list(tmp_path.glob(".results.parquet.*.tmp"))
    assert len(strays) == 1 and strays[0].stat().st_size > 0  # the killed writer's half file
    assert [r.run_id for r in lb.read(path)] == ["early1", "early2"]
    # The dead writer's lock went with it, and the next append clears its leftover.
    lb.append(path, [make_row("later")])
    assert [r.run_id for r in lb.read(path)] == ["early1", "early2", "later"]
    assert not list(tmp_path.glob("*.tmp"))


def test_version_0_file_without_model_and_flags_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    current = lb._to_table([make_row("old1", robust_acc=0.4), make_row("old2", suite="autoattack")])
    old = current.drop_columns(["model", "flags", *V2_COLUMNS])
    pq.write_table(old.replace_schema_metadata({b"ssmbench.schema_version": b"0"}), path)
    rows = lb.read(path)
    assert [(r.run_id, r.model, r.flags, r.robust_acc, r.suite) for r in rows] == [
        ("old1", "", (), 0.4, "pgd10"),
        ("old2", "", (), 0.5, "autoattack"),
    ]
    lb.append(path, [make_row("new")])  # rewrites the file in the current schema
    assert pq.ParquetFile(path).schema_arrow.metadata[b"ssmbench.schema_version"] == str(lb.SCHEMA_VERSION).encode()
    assert [r.model for r in lb.read(path)] == ["", "", "s4d-pgd-digits"]


def test_file_from_a_newer_ssmbench_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    table = lb._to_table([make_row()])
    pq.write_table(table.replace_schema_metadata({b"ssmbench.schema_version": b"7"}), path)
    with pytest.raises(UsageError, match="version 7.*upgrade ssmbench"):
        lb.read(path)


@pytest.mark.parametrize("content", [b"", b"not a parquet file at all", b"foreign"])
def test_corrupt_or_foreign_file_is_refused_and_never_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.parquet"
    if content == b"foreign":
        pq.write_table(pa.table({"accuracy": [0.5]}), path)
        content = path.read_bytes()
    else:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=str(path)):
        lb.read(path)
    with pytest.raises(UsageError, match=str(path)):
        lb.append(path, [make_row()])
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"robust_acc": 48.25}, "fraction"),  # a percentage where a fraction belongs
        ({"per_attack": {"apgd-ce": 1.5}}, "per_attack"),
        ({"ads": "gelu"}, "ads"),
        ({"checkpoint_kind": "final"}, "checkpoint_kind"),
        ({"time": "2026-03-01T12:00:00"}, "UTC offset"),
        ({"n_examples": 0}, "n_examples"),
    ],
)
def test_invalid_rows_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_row(**changes)


# -- markdown -----------------------------------------------------------------------------------


def test_markdown_matches_golden() -> None:
    # Diff = Best - Last of the printed numbers: 91.3 - 93.0 = -1.7, 51.5 - 46.0 = +5.5,
    # 48.3 - 44.0 = +4.3 (the older AA run a2 at 10.00 is replaced by a3). Sorted by Best AA:
    # 48.25 > 46.50 (flagged) > none, which is not the order of the family names. CA comes from the PGD-10 row (mnist: only AA, so from it).
    # The intervals are Wilson's (tests/test_trust.py checks them against the formula); 48.25% vs
    # 46.5% of 200 is no significant difference (≈), 55.0% vs 0.0% of 360 is.
    assert lb.render_markdown(known_rows()) == PREAMBLE + "\n" + GOLDEN_TABLES


def test_markdown_of_no_rows_says_so() -> None:
    assert lb.render_markdown([]) == PREAMBLE + "\nNo results yet.\n"


def test_publish_is_deterministic_whatever_the_row_order(tmp_path: Path) -> None:
    rows = known_rows()
    outputs = []
    for seed in range(3):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        results = tmp_path / f"results{seed}.parquet"
        lb.append(results, shuffled)
        markdown = tmp_path / f"out{seed}" / "README.md"
        text = lb.publish(results, markdown)
        assert markdown.read_text(encoding="utf-8") == text
        outputs.append(text)
    assert outputs == [PREAMBLE + "\n" + GOLDEN_TABLES] * 3


# -- exports ------------------------------------------------------------------------------------

# Every field of RobustBench's model_info files (e.g. model_info/cifar10/Linf/Xiao2020Enhancing.json:
# "external", "unreliable") and the "flags" that robustbench/leaderboard/leaderboard.html.j2 reads.
ROBUSTBENCH_KEYS = {
    "link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
    "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote", "flags", "unreliable",
}


def test_robustbench_export_has_one_model_info_per_model(tmp_path: Path) -> None:
    written = lb.export(known_rows(), "robustbench", tmp_path / "rb")
    infos = {p.relative_to(tmp_path / "rb").as_posix(): json.loads(p.read_text()) for p in written}
    # Models with an AutoAttack result: A best, A last, B best, the mnist s5.
    assert len(infos) == 4
    assert all(set(info) == ROBUSTBENCH_KEYS for info in infos.values())
    a_best = infos["digits/Linf/s4d_ads-relu_noattn_pgd_train-8-255_best_eps-8-255.json"]
    assert (a_best["clean_acc"], a_best["reported"], a_best["autoattack_acc"]) == ("91.25", "51.50", "48.25")
    assert (a_best["eps"], a_best["dataset"], a_best["unreliable"]) == ("8/255", "digits", False)
    assert (a_best["flags"], a_best["external"]) == ([], "")  # no flag; no "all" suite run: N/A
    b_best = infos["digits/Linf/s4d_ads-none_attn_trades_train-8-255_best_eps-8-255.json"]
    assert b_best["unreliable"] is True and "zero-gradients" in b_best["footnote"] and "zero-gradients" in b_best["flags"]


def test_robustbench_external_is_the_all_suite_on_the_same_examples(tmp_path: Path) -> None:
    aa = make_row(run_id="aa", suite="autoattack", robust_acc=0.5, per_attack={"apgd-ce": 0.5}, n_examples=40)
    combined = make_row(run_id="all", suite="all", robust_acc=0.45, per_attack={"pgd10": 0.6, "apgd-ce": 0.45}, n_examples=40)
    (info,) = robustbench_entries([aa, combined]).values()
    assert (info["autoattack_acc"], info["external"]) == ("50.00", "45.00")
    other = make_row(run_id="all2", suite="all", robust_acc=0.45, per_attack={"pgd10": 0.6, "apgd-ce": 0.45}, n_examples=20)
    (info,) = robustbench_entries([aa, other]).values()
    assert info["external"] == ""  # other examples: not comparable


def test_robustbench_export_without_autoattack_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="AutoAttack"):
        lb.export([make_row()], "robustbench", tmp_path / "rb")


# -- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "leaderboards" / "results.parquet"
    lb.append(path, known_rows())
    return path


def test_cli_show_filters_and_prints_percentages(results: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_leaderboard.console, "width", 300)  # no wrapping inside cells
    assert main(["leaderboard", "show", "--path", str(results), "--dataset", "digits"]) == 0
    out = capsys.readouterr().out
    assert "48.3" in out and "10.0" in out  # every result, the replaced a2 too
    assert "zero-gradients" in out
    assert "97.0" not in out and "mnist" not in out  # the mnist row is filtered out
    assert f"{results}: 12 results" in out


def test_cli_show_fits_80_columns_without_cutting_numbers(results: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_leaderboard.console, "width", 80)
    assert main(["leaderboard", "show", "--path", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80
    text = "\n".join(lines)
    for number in ("91.3", "48.3", "10.0", "87.1", "53.0", "97.0", "90.0", "(88.6-91.2)", "(41.2-54.9)"):
        assert number in text  # no percentage or interval squeezed into an ellipsis
    assert "digits, Linf eps 8/255" in text and "mnist, Linf eps 8/255" in text  # one table per dataset and eps
    assert "46.5\u2020" in text and "(b2): zero-gradients" in text  # flagged: marked, its flags listed below


def test_cli_show_wide_lists_provenance(results: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli_leaderboard.console, "width", 400)
    assert main(["leaderboard", "show", "--wide", "--path", str(results), "--arch", "s5"]) == 0
    out = capsys.readouterr().out
    assert "m1" in out and "torch" in out and "cpu" in out


def test_cli_export_csv(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "export" / "results.csv"
    assert main(["leaderboard", "export", "--format", "csv", "--out", str(out), "--path", str(results)]) == 0
    with out.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [r["run_id"] for r in records] == [r.run_id for r in known_rows()]
    b2 = next(r for r in records if r["run_id"] == "b2")
    assert float(b2["robust_acc"]) == 0.465 and b2["flags"] == "zero-gradients"
    assert json.loads(b2["per_attack"]) == {"pgd10": 0.5}


def test_cli_export_robustbench(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "rb"
    argv = ["leaderboard", "export", "--format", "robustbench", "--out", str(out), "--path", str(results)]
    assert main([*argv, "--dataset", "mnist"]) == 0
    [info] = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert (info["clean_acc"], info["autoattack_acc"], info["architecture"]) == ("97.00", "90.00", "s5")


def test_cli_publish_check_detects_stale_and_passes_fresh(results: Path, capsys) -> None:
    markdown = results.parent / "README.md"
    check = ["leaderboard", "publish", "--path", str(results), "--out", str(markdown), "--check"]
    assert main(check) == 1  # nothing published yet
    assert not markdown.exists()
    assert main(check[:-1]) == 0
    assert markdown.read_text(encoding="utf-8") == PREAMBLE + "\n" + GOLDEN_TABLES
    capsys.readouterr()
    assert main(check) == 0
    lb.append(results, [make_row("new", **C, **AA, robust_acc=0.0, time=LATER)])
    assert main(check) == 1
    err = capsys.readouterr().err
    assert "stale" in err and len(err.strip().splitlines()) == 1
    assert markdown.read_text(encoding="utf-8") == PREAMBLE + "\n" + GOLDEN_TABLES  # --check wrote nothing


def test_cli_missing_results_file_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert main(["leaderboard", "show", "--path", str(tmp_path / "none.parquet")]) == 2
    assert "none.parquet" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["show", "publish", "export", "compare"])
def test_cli_help_has_an_example(command: str, capsys) -> None:
    assert main(["leaderboard", command, "--help"]) == 0
    assert f"Example: ssmbench leaderboard {command}" in capsys.readouterr().out


# -- CI script ----------------------------------------------------------------------------------


def test_ci_check_script_skips_without_results_then_checks(tmp_path: Path, results: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "ci").mkdir(parents=True)
    shutil.copy(REPO / "ci" / "check_leaderboard.sh", checkout / "ci")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "ci/check_leaderboard.sh"], cwd=checkout, env=env,
                              capture_output=True, text=True, timeout=120)

    skipped = run()
    assert skipped.returncode == 0 and "nothing to check" in skipped.stdout
    shutil.copytree(results.parent, checkout / "leaderboards")
    (checkout / "leaderboards" / "README.md").write_text("# an old leaderboard\n", encoding="utf-8")
    stale = run()
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert main(["leaderboard", "publish", "--path", str(checkout / "leaderboards" / "results.parquet"),
                 "--out", str(checkout / "leaderboards" / "README.md")]) == 0
    assert run().returncode == 0

    # A study kept in its own file (NAME.parquet -> NAME.md) is checked too.
    shutil.copy(results, checkout / "leaderboards" / "long-training.parquet")
    (checkout / "leaderboards" / "long-training.md").write_text("# stale\n", encoding="utf-8")
    stale_study = run()
    assert stale_study.returncode == 1 and "long-training.md" in stale_study.stderr
    shutil.copy(checkout / "leaderboards" / "README.md", checkout / "leaderboards" / "long-training.md")
    assert run().returncode == 0


# -- the publication standard: `ssmbench leaderboard audit` -------------------------------------


@pytest.mark.parametrize(("suite", "n", "dataset", "thin"), [
    ("autoattack", 32, "digits", True),  # the old 5-epoch grid's figure
    ("autoattack", 199, "digits", True),
    ("autoattack", 200, "digits", False),
    ("autoattack", 10, "fashion-mnist", True),
    ("autoattack", 40, "basicmotions", False),  # the whole test split of a smaller set
    ("autoattack", 39, "basicmotions", True),
    ("autoattack", 150, "a-set-of-my-own", True),  # unknown split: the plain minimum
    ("pgd10", 32, "digits", False),  # the standard is AutoAttack's
])
def test_publication_standard(suite: str, n: int, dataset: str, thin: bool) -> None:
    assert (below_publication_standard(suite, n, dataset) is not None) == thin


def test_cli_audit_fails_on_thin_rows_and_drop_removes_only_them(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.parquet"
    kept = [make_row("p", n_examples=32), make_row("a", suite="autoattack", n_examples=360)]
    lb.append(path, [*kept, make_row("t", suite="autoattack", n_examples=32)])
    assert main(["leaderboard", "audit", "--leaderboard", str(path)]) == 1
    out = capsys.readouterr()
    assert "(t): AutoAttack on 32 examples; a published figure needs at least 200" in out.out
    assert "1 rows are below the publication standard" in out.err and len(lb.read(path)) == 3  # nothing removed
    assert main(["leaderboard", "audit", "--leaderboard", str(path), "--drop"]) == 0
    assert lb.read(path) == kept
    assert main(["leaderboard", "audit", "--leaderboard", str(path)]) == 0
    assert "every row meets the publication standard" in capsys.readouterr().out


def test_every_committed_leaderboard_meets_the_publication_standard() -> None:
    committed = sorted((Path(__file__).resolve().parents[1] / "leaderboards").glob("*.parquet"))
    assert committed
    for path in committed:
        assert main(["leaderboard", "audit", "--leaderboard", str(path)]) == 0, path
