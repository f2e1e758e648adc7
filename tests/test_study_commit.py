"""`ssmbench study --commit`: one commit of the results file per finished cell, nothing else committed."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from ssmbench import leaderboard
from ssmbench.cli import main
from ssmbench.study.commit import GitCommitter
from tests.test_leaderboard import make_row
from tests.test_study import write_study


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}.items():
        monkeypatch.setenv(key, value)
    git(tmp_path, "init", "--quiet")
    (tmp_path / "notes.txt").write_text("before\n")
    git(tmp_path, "add", "notes.txt")
    git(tmp_path, "commit", "--quiet", "-m", "start")
    return tmp_path


def test_every_finished_cell_commits_the_results_file_its_markdown_and_the_cost_ledger_alone(repo: Path) -> None:
    config = write_study(repo)
    (repo / "notes.txt").write_text("edited while the study runs\n")
    git(repo, "add", "notes.txt")  # staged, but not the study's to commit
    assert main(["study", "--config", str(config), "--commit"]) == 0
    subjects = git(repo, "log", "--format=%s").splitlines()
    assert [s.split(" (")[0] for s in subjects[:2]] == ["Study rows: tiny, cell s4d-pgd-none", "Study rows: tiny, cell s4d-st-none"]
    assert subjects[2] == "start"
    for commit in ("HEAD", "HEAD~1"):  # results.parquet renders to README.md (ci/check_leaderboard.sh's pairing)
        assert git(repo, "show", "--name-only", "--format=", commit).split() == ["README.md", "results.cells.json", "results.parquet"]
    committed = subprocess.run(["git", "-C", str(repo), "show", "HEAD:results.parquet"], capture_output=True, check=True).stdout
    assert committed == (repo / "results.parquet").read_bytes()
    assert leaderboard.markdown_is_fresh(repo / "results.parquet", repo / "README.md")
    assert git(repo, "show", "HEAD:README.md") == (repo / "README.md").read_text()
    assert git(repo, "diff", "--cached", "--name-only").split() == ["notes.txt"]


def test_a_results_file_outside_git_is_refused_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_study(tmp_path)
    assert main(["study", "--config", str(config), "--commit"]) == 2
    assert "not inside a git work tree" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_markdown_that_publish_did_not_write_is_left_alone(repo: Path) -> None:
    (repo / "README.md").write_text("# my project\n")
    results = repo / "results.parquet"
    leaderboard.append(results, [make_row()])
    assert GitCommitter.for_file(results).commit("Study rows: one cell")
    assert (repo / "README.md").read_text() == "# my project\n"
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["results.parquet"]


def test_a_held_index_lock_is_waited_for_and_an_unchanged_file_makes_no_commit(repo: Path) -> None:
    results = repo / "study.parquet"
    leaderboard.append(results, [make_row()])
    committer = GitCommitter.for_file(results)
    lock = repo / ".git" / "index.lock"
    lock.touch()  # another runner's commit in progress
    threading.Thread(target=lambda: (time.sleep(1.5), lock.unlink())).start()
    assert committer.commit("Study rows: one cell")
    assert git(repo, "log", "-1", "--format=%s").strip() == "Study rows: one cell"
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == ["study.md", "study.parquet"]
    assert committer.commit("Study rows: nothing new") == ""
    assert git(repo, "rev-list", "--count", "HEAD").strip() == "2"


def test_a_lock_that_never_clears_is_reported_with_gits_reason(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ssmbench.study.commit.RETRY_SECONDS", 0.01)
    results = repo / "results.parquet"
    leaderboard.append(results, [make_row()])
    (repo / ".git" / "index.lock").touch()
    with pytest.raises(RuntimeError, match="could not commit results.parquet: .*index.lock"):
        GitCommitter.for_file(results).commit("never")
