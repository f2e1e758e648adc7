"""`ssmbench study --commit`: commit the results file to git after every finished cell.

A long study (hours of CPU) lives in its results file, and a file that only exists in a working
tree is lost with the machine. Committing the file alone after each cell (`git commit -- PATH`)
leaves whatever else is staged or modified in the checkout untouched, so a person can keep working
in the same tree, and two runners of one study can share it: git's index lock makes one of them
wait, which is why a commit is retried a few times before it is reported as failed. A failed commit
never stops the study: the rows are already in the file, and the next cell's commit takes them too.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from model_zoo.errors import UsageError

ATTEMPTS = 5  # index-lock contention between two runners clears in well under a second
RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class GitCommitter:
    """Commits one results file in the git work tree that holds it."""

    path: Path
    root: Path

    @classmethod
    def for_file(cls, path: Path) -> GitCommitter:
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
        return cls(path.resolve(), Path(found.stdout.strip()))

    def commit(self, message: str) -> str:
        """Stage and commit the file alone; returns the new commit's short hash, '' when nothing changed.

        Raises RuntimeError with git's own first line when every attempt failed."""
        relative = str(self.path.relative_to(self.root))
        error = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(RETRY_SECONDS)
            added = self._git("add", "--", relative)
            if added.returncode != 0:
                error = added.stderr
                continue
            if self._git("diff", "--cached", "--quiet", "--", relative).returncode == 0:
                return ""
            committed = self._git("commit", "--quiet", "-m", message, "--", relative)
            if committed.returncode == 0:
                return self._git("rev-parse", "--short", "HEAD").stdout.strip()
            error = committed.stderr or committed.stdout
        first_line = next((line for line in error.splitlines() if line.strip()), "git failed")
        raise RuntimeError(f"could not commit {relative}: {first_line}")

    def _git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(self.root), *args], capture_output=True, text=True, check=False)
