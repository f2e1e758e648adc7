"""`ssmbench study --commit`: commit the results file to git after every finished cell.

A long study (hours of CPU) lives in its results file, and a file that only exists in a working
tree is lost with the machine. Committing the file alone after each cell (`git commit -- PATH`)
leaves whatever else is staged or modified in the checkout untouched, so a person can keep working
in the same tree, and two runners of one study can share it: git's index lock makes one of them
wait, which is why a commit is retried a few times before it is reported as failed. A failed commit
never stops the study: the rows are already in the file, and the next cell's commit takes them too.

The markdown the file renders to (`leaderboard.markdown_for`: NAME.parquet -> NAME.md) is
re-rendered and committed with it, so that every commit passes ci/check_leaderboard.sh, which
refuses a results file whose markdown is stale. A markdown file that `publish` did not write (a
README.md beside a results.parquet that is someone's own page) is never overwritten. A study also
commits its cost ledger (NAME.cells.json, ssmbench/study/ledger.py) with them, so that a fresh
clone knows what each finished cell cost.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from model_zoo.errors import UsageError
from ssmbench import leaderboard
from ssmbench.leaderboard_render import PREAMBLE

ATTEMPTS = 5  # index-lock contention between two runners clears in well under a second
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class GitCommitter:
    """Commits one results file in the git work tree that holds it."""

    path: Path
    root: Path
    companions: tuple[Path, ...] = ()  # committed with the results file whenever they exist (a study's cost ledger)

    @classmethod
    def for_file(cls, path: Path, companions: tuple[Path, ...] = ()) -> GitCommitter:
        """Refuses, before any training, a results file outside a git work tree or a machine without git."""
        folder = path.resolve().parent
        while not folder.is_dir():  # the leaderboard's folder may not exist yet
            folder = folder.parent
        try:
            found = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"],
                                   capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise UsageError("--commit needs git on PATH; install git or drop --commit") from None
        if found.returncode != 0:
            raise UsageError(f"--commit: {path} is not inside a git work tree; point --leaderboard into one or drop --commit")
        return cls(path.resolve(), Path(found.stdout.strip()), tuple(companion.resolve() for companion in companions))

    def commit(self, message: str) -> str:
        """Render the markdown, stage and commit those files (and the companions that exist) alone;
        returns the new commit's short hash, '' when nothing changed.

        Raises RuntimeError with git's own first line when every attempt failed."""
        present = tuple(companion for companion in self.companions if companion.is_file())
        paths = [str(path.relative_to(self.root)) for path in (self.path, *self._render_markdown(), *present)]
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_SECONDS)
            added = self._git("add", "--", *paths)
            if added.returncode != 0:
                error = added.stderr
                continue
            if self._git("diff", "--cached", "--quiet", "--", *paths).returncode == 0:
                return ""
            committed = self._git("commit", "--quiet", "-m", message, "--", *paths)
            if committed.returncode == 0:
                return self._git("rev-parse", "--short", "HEAD").stdout.strip()
            error = committed.stderr or committed.stdout
        first_line = next((line for line in error.splitlines() if line.strip()), "git failed")
        raise RuntimeError(f"could not commit {paths[0]}: {first_line}")

    def _render_markdown(self) -> list[Path]:
        """[the markdown beside the results file, freshly rendered], or [] when that file is not ours to write."""
        markdown = leaderboard.markdown_for(self.path)
        if markdown.is_file() and not markdown.read_text(encoding="utf-8").startswith(PREAMBLE):
            return []
        leaderboard.publish(self.path, markdown)
        return [markdown]

    def _git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(self.root), *args], capture_output=True, text=True, check=False)
