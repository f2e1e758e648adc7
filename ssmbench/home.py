"""Where a user's own results are recorded: $SSMBENCH_HOME, else the XDG data directory.

A checkout's `leaderboards/*.parquet` are the published record; a newcomer's first run must not
land in them (the committed markdown would go stale, and the next commit would publish a
throwaway run), and an installed ssmbench must not create `leaderboards/` in whatever directory
the user stands in. So every command that records results writes to the user's leaderboard unless
it is given a file (`--leaderboard`), and the studies that own a published file name it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "SSMBENCH_HOME"
RESULTS_NAME = "results.parquet"


def ssmbench_home() -> Path:
    """$SSMBENCH_HOME if set, else $XDG_DATA_HOME/ssmbench, else ~/.local/share/ssmbench.

    Read at call time, not import time, so a test or a shell can point it elsewhere. A relative
    XDG_DATA_HOME is ignored, as the XDG base-directory specification says.
    """
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "ssmbench"


def user_results() -> Path:
    """The user's leaderboard, where results go when no file is named."""
    return ssmbench_home() / RESULTS_NAME
