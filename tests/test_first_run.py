"""A newcomer's first ten minutes (issue 17): README command 1 leaves the checkout as it was, its
results go to the user's own leaderboard, a run whose best is its last is attacked once, and the
figures name the model as the leaderboard does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from model_zoo import build_model, checkpoints
from model_zoo.labels import family_label, run_title
from model_zoo.training import TrainConfig, train
from ssmbench import analysis, home
from ssmbench.cli import eval as eval_cli
from ssmbench.cli import main
from ssmbench.data import load_split
from ssmbench.leaderboard import read
from ssmbench.leaderboard_render import Family

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of this repository, as a newcomer has it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of ssmbench")
    target = tmp_path / "clone"
    _git("clone", "--quiet", str(REPO), str(target), cwd=tmp_path)
    return target


def test_readme_command_1_leaves_the_clone_clean_and_records_in_the_user_home(clone, user_home, monkeypatch, capsys) -> None:
    """Command 1's two steps, shrunk (1 epoch, 32 training images, 4 attacked), run inside a clone."""
    monkeypatch.chdir(clone)
    train_args = ["train", "s4", "--at", "pgd", "--ads", "tanh", "--dataset", "digits", "--epochs", "1", "--lr", "3e-3",
                  "--batch-size", "16", "--train-examples", "32", "--eval-examples", "16"]
    assert main(train_args) == 0, capsys.readouterr().err
    assert main(["eval", "runs/s4-pgd-tanh-digits", "--attack", "all", "--n-examples", "4", "--check-examples", "4"]) == 0
    out = capsys.readouterr().out
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
    results = user_home / "results.parquet"
    assert f"to {results} (run " in out  # said where the rows went, on one line
    assert [row.checkpoint_kind for row in read(results)] == ["best", "last"]


def test_user_home_follows_ssmbench_home_then_xdg(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSMBENCH_HOME", str(tmp_path / "mine"))
    assert home.user_results() == tmp_path / "mine" / "results.parquet"
    monkeypatch.delenv("SSMBENCH_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert home.user_results() == tmp_path / "xdg" / "ssmbench" / "results.parquet"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/data")  # the XDG spec: relative paths are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home.user_results() == tmp_path / "user" / ".local" / "share" / "ssmbench" / "results.parquet"


# -- eval of a run whose best is its last -------------------------------------------------------


def _tiny(seed: int, ads: str = "none") -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("s4d", "digits", ads=ads, d_model=16, d_state=8, n_layers=1)


def _save_run(folder: Path, best: torch.nn.Module, last: torch.nn.Module, epochs: tuple[int, int]) -> Path:
    folder.mkdir(parents=True)
    for kind, model, epoch in (("best", best, epochs[0]), ("last", last, epochs[1])):
        meta = checkpoints.CheckpointMeta(config=model.config, training={"method": "pgd", "eps": 8 / 255}, epoch=epoch, kind=kind)
        checkpoints.save(model, folder / f"{kind}.safetensors", meta)
    return folder


@pytest.fixture
def evaluate_calls(monkeypatch) -> list[str]:
    """Counts the suite runs of `ssmbench eval` (each call attacks every example once)."""
    calls: list[str] = []
    real = eval_cli.evaluate

    def counted(*args, **kwargs):
        calls.append(args[2])  # the suite
        return real(*args, **kwargs)

    monkeypatch.setattr(eval_cli, "evaluate", counted)
    return calls


def test_eval_runs_the_suite_once_when_best_is_last(tmp_path: Path, evaluate_calls, capsys) -> None:
    model = _tiny(0)
    run = _save_run(tmp_path / "run", model, model, (5, 5))
    results = tmp_path / "results.parquet"
    args = ["eval", str(run), "--attack", "all", "--n-examples", "6", "--no-checks", "--leaderboard", str(results)]
    assert main(args) == 0
    assert evaluate_calls == ["all"]
    best, last = read(results)
    assert (best.checkpoint_kind, last.checkpoint_kind) == ("best", "last")
    assert best.checkpoint_sha256 != last.checkpoint_sha256  # two files, whose metadata differ
    for field in ("clean_acc", "robust_acc", "per_attack", "n_examples", "run_id"):
        assert getattr(best, field) == getattr(last, field), field
    out = capsys.readouterr().out
    assert "last holds the same weights as best" in " ".join(out.split()) and "evaluated once" in out


def test_eval_runs_the_suite_for_each_checkpoint_when_they_differ(tmp_path: Path, evaluate_calls) -> None:
    run = _save_run(tmp_path / "run", _tiny(0), _tiny(1), (3, 5))
    results = tmp_path / "results.parquet"
    assert main(["eval", str(run), "--n-examples", "6", "--no-checks", "--leaderboard", str(results)]) == 0
    assert evaluate_calls == ["pgd10", "pgd10"]
    assert len(read(results)) == 2


# -- the model's name on figures ---------------------------------------------------------------


def test_training_curves_are_titled_with_the_leaderboard_label_and_seed(tmp_path: Path, monkeypatch) -> None:
    titles: list[str] = []
    monkeypatch.setattr("model_zoo.training.trainer.plot_curves", lambda records, path, title="": titles.append(title))
    x, y = load_split("digits", "train")
    test = load_split("digits", "test")
    config = TrainConfig.from_settings(method="pgd", epochs=1, batch_size=16, train_examples=16, eval_examples=8, seed=3)
    train(_tiny(3, ads="tanh"), (x, y), (test[0][:8], test[1][:8]), config, tmp_path / "run")
    label = Family("s4d", "tanh", False, "pgd", 8 / 255).label  # what the leaderboard calls this model
    assert titles and titles[-1] == f"{label}, PGD-AT on digits, seed 3"
    assert label == "s4d + AdS (tanh)"


def test_analysis_figure_is_titled_with_the_leaderboard_label(tmp_path: Path, monkeypatch) -> None:
    titles: list[str] = []
    monkeypatch.setattr(analysis, "plot_change_rates", lambda changes, path, title="": titles.append(title))
    model = _tiny(0, ads="sigmoid")
    meta = checkpoints.CheckpointMeta(config=model.config, training={"method": "trades"}, kind="best", seed=7)
    checkpoints.save(model, tmp_path / "best.safetensors", meta)
    assert main(["analyze", str(tmp_path / "best.safetensors"), "--n-examples", "4", "--splits", "test", "--steps", "2"]) == 0
    assert titles == [f"{run_title(model.config, 'trades', 7)}, best"]
    assert titles[0].startswith(family_label("s4d", "sigmoid", False) + ", TRADES on digits, seed 7")


# -- which results file each command reads and writes --------------------------------------------

PUBLISHED = REPO / "leaderboards" / "results.parquet"


def test_leaderboard_commands_read_the_user_file_by_default_and_say_so(user_home, capsys) -> None:
    user_home.mkdir()
    shutil.copy(PUBLISHED, user_home / "results.parquet")
    assert main(["leaderboard", "show", "--dataset", "digits"]) == 0
    assert "".join(capsys.readouterr().out.split()).startswith(f"{user_home / 'results.parquet'}:")  # rich may wrap it
    assert main(["leaderboard", "publish"]) == 0  # renders beside the file it read
    assert f"wrote {user_home / 'README.md'} from {user_home / 'results.parquet'}" in capsys.readouterr().out
    assert (user_home / "README.md").read_text(encoding="utf-8") == (REPO / "leaderboards" / "README.md").read_text(encoding="utf-8")


def test_a_newcomer_without_results_gets_one_line_naming_both_files(user_home, capsys) -> None:
    assert main(["leaderboard", "show"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert str(user_home / "results.parquet") in err and "--leaderboard leaderboards/results.parquet" in err


def test_path_is_a_hidden_alias_of_leaderboard(tmp_path: Path, capsys) -> None:
    markdown = tmp_path / "README.md"
    for option in ("--leaderboard", "--path"):
        markdown.unlink(missing_ok=True)
        assert main(["leaderboard", "publish", option, str(PUBLISHED), "--out", str(markdown)]) == 0
        assert markdown.read_text(encoding="utf-8") == (REPO / "leaderboards" / "README.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["leaderboard", "publish", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--leaderboard" in help_text and "--path" not in help_text
    assert main(["leaderboard", "show", "--path", str(PUBLISHED), "--leaderboard", str(tmp_path / "other.parquet")]) == 2


def test_studies_that_own_a_published_file_name_it_and_others_default_to_the_user_file(user_home) -> None:
    from ssmbench.study import Grid, StudyConfig, load_study

    assert StudyConfig(grids=(Grid(models=("s4d",), methods=("st",)),)).leaderboard == user_home / "results.parquet"
    owned = {path.name: load_study(path).leaderboard for path in sorted((REPO / "studies").glob("*.toml"))}
    assert owned == {
        "digits-convergence.toml": Path("leaderboards/digits-convergence.parquet"),
        "digits-full.toml": Path("leaderboards/digits-full.parquet"),
        "digits-long.toml": Path("leaderboards/long-training.parquet"),
        "digits.toml": Path("leaderboards/results.parquet"),
        "fashion-mnist-full.toml": Path("leaderboards/fashion-mnist-full.parquet"),
        "fashion-mnist.toml": Path("leaderboards/results.parquet"),
        "smoke.toml": Path("runs/study-smoke/results.parquet"),
        "timeseries-acsf1.toml": Path("leaderboards/timeseries.parquet"),
        "timeseries-basicmotions-checks.toml": Path("leaderboards/timeseries-checks.parquet"),
        "timeseries-basicmotions.toml": Path("leaderboards/timeseries.parquet"),
        "timeseries-gunpoint.toml": Path("leaderboards/timeseries.parquet"),
    }
