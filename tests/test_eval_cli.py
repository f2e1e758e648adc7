"""`ssmbench eval`: leaderboard rows with the right fields, Diff for a run directory, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ssmbench
from model_zoo import build_model, checkpoints
from model_zoo.devices import resolve_device
from ssmbench.attacks import predict
from ssmbench.cli import main
from ssmbench.cli.eval import default_examples
from ssmbench.data import load_split
from ssmbench.evaluate import EvalSettings, evaluate
from ssmbench.leaderboard import read

EPS = 8 / 255


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the trainer writes it: a tiny model after 3 epochs (best) and after 8 (last)."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    x, y = load_split("digits", "train")
    model = build_model("s4d", "digits", d_model=32, d_state=16, n_layers=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(1, 9):
        for idx in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        if epoch in (3, 8):
            kind = "best" if epoch == 3 else "last"
            meta = checkpoints.CheckpointMeta(config=model.config, training={"method": "pgd", "eps": EPS}, epoch=epoch, kind=kind)
            checkpoints.save(model, folder / f"{kind}.safetensors", meta)
    return folder


def test_eval_of_a_checkpoint_appends_one_row_with_the_right_fields(run_dir, tmp_path, capsys) -> None:
    checkpoint, results = run_dir / "best.safetensors", tmp_path / "results.parquet"
    code = main(["eval", str(checkpoint), "--n-examples", "64", "--leaderboard", str(results)])
    assert code == 0, capsys.readouterr().err
    (row,) = read(results)
    model = ssmbench.load(checkpoint)
    x, y = load_split("digits", "test")
    reference = evaluate(model, (x, y), "pgd10", EvalSettings(eps=EPS, n_examples=64, checks=None))
    assert (row.model, row.dataset, row.arch, row.ads, row.attention) == (str(checkpoint), "digits", "s4d", "none", False)
    assert (row.method, row.train_eps, row.checkpoint_kind) == ("pgd", pytest.approx(EPS), "best")
    assert row.checkpoint_sha256 == checkpoints.file_sha256(checkpoint)
    assert (row.threat_model, row.eps, row.suite, row.n_examples) == ("Linf", pytest.approx(EPS), "pgd10", 64)
    assert row.clean_acc == pytest.approx((predict(model, x[:64]) == y[:64]).float().mean().item())
    assert row.robust_acc == pytest.approx(reference.robust_acc)
    assert row.per_attack == pytest.approx({"pgd10": reference.robust_acc})
    assert (row.backend, row.backend_version, row.seed, row.device) == ("ssmbench", ssmbench.__version__, 0, str(resolve_device()))
    assert (row.ssmbench_version, row.torch_version) == (ssmbench.__version__, torch.__version__)
    assert isinstance(row.flags, tuple) and row.wall_seconds > 0


def test_eval_of_a_run_directory_reports_best_last_and_diff(run_dir, tmp_path, capsys) -> None:
    results = tmp_path / "results.parquet"
    assert main(["eval", str(run_dir), "--no-checks", "--leaderboard", str(results)]) == 0
    out = capsys.readouterr().out
    best, last = read(results)
    assert (best.checkpoint_kind, last.checkpoint_kind) == ("best", "last") and best.run_id == last.run_id
    assert best.n_examples == last.n_examples == 360  # PGD-10 defaults to the whole test set
    assert "Diff" in out
    assert f"{100 * (best.clean_acc - last.clean_acc):+.2f}" in out
    assert f"{100 * (best.robust_acc - last.robust_acc):+.2f}" in out


def test_all_suite_table_fits_80_columns_with_every_number(run_dir, tmp_path, capsys, monkeypatch) -> None:
    """PGD-10 and AutoAttack's four parts for best, last and Diff, uncut in an 80-column terminal."""
    from ssmbench.cli import _common

    monkeypatch.setattr(_common.console, "width", 80)
    results = tmp_path / "results.parquet"
    args = ["eval", str(run_dir), "--attack", "all", "--n-examples", "8", "--no-checks", "--leaderboard", str(results)]
    assert main(args) == 0
    # The closing 'appended ... to PATH' line keeps the path whole, so it can be copied.
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("appended ")]
    assert max(len(line.rstrip()) for line in lines) <= 80
    best, last = read(results)
    for row in (best, last):
        line = next((line for line in lines if line.strip().startswith(row.checkpoint_kind + " ")), "")
        assert line, "\n".join(lines)
        assert all(f"{100 * value:.2f}" in line for value in (row.clean_acc, *row.per_attack.values(), row.robust_acc))
    assert any(line.strip().startswith("Diff ") for line in lines)


def test_no_leaderboard_writes_nothing_and_a_finished_run_leaves_no_state(run_dir, tmp_path) -> None:
    results, state_dir = tmp_path / "results.parquet", tmp_path / "state"
    argv = ["eval", str(run_dir / "last.safetensors"), "--n-examples", "8", "--batch-size", "4", "--no-checks",
            "--no-leaderboard", "--leaderboard", str(results), "--state-dir", str(state_dir)]
    assert main(argv) == 0
    assert not results.exists()
    assert state_dir.is_dir() and not any(state_dir.iterdir())


def test_default_example_counts_follow_the_paper() -> None:
    assert default_examples("autoattack", 10_000) == 2000
    assert default_examples("all", 360) == 360
    assert default_examples("pgd10", 10_000) == 10_000


@pytest.mark.parametrize(
    "arguments",
    [
        ["--eps", "eight"],
        ["--attack", "pgd7"],
        ["--backend", "foolbox"],
        ["--version", "fast"],
        ["--n-examples", "0"],
        ["--n-examples", "361"],
        ["--batch-size", "-1"],
        ["--device", "tpu"],
    ],
)
def test_bad_options_exit_2_with_one_line(run_dir, tmp_path, capsys, arguments) -> None:
    code = main(["eval", str(run_dir / "best.safetensors"), "--leaderboard", str(tmp_path / "r.parquet"), *arguments])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error:") and err.count("\n") == 1


def test_bad_targets_exit_2(tmp_path, capsys) -> None:
    half_run = tmp_path / "half-run"
    half_run.mkdir()
    (half_run / "best.safetensors").write_bytes(b"not a checkpoint")
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    assert main(["eval", str(half_run)]) == 2
    assert "last.safetensors" in capsys.readouterr().err


def test_a_failing_attack_exits_1(run_dir, tmp_path, capsys, monkeypatch) -> None:
    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setattr("ssmbench.cli.eval.evaluate", out_of_memory)
    assert main(["eval", str(run_dir / "best.safetensors"), "--no-leaderboard"]) == 1
    assert "CUDA out of memory" in capsys.readouterr().err


def test_help_shows_an_example_and_the_protocol(capsys) -> None:
    assert main(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Example:" in out and "2000" in out
