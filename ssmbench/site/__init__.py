"""`ssmbench leaderboard publish --html DIR`: the leaderboard as a static site, browsable offline.

    >>> from ssmbench.site import build_site
    >>> build_site(rows, Path("site"), history_root=Path("."))

One page per dataset x threat model x eps with a sortable, filterable table (the markdown's tables:
the same lines, numbers and intervals, from `leaderboard_render.leaderboard_lines`), and one page
per model family with its training curves (the `history.parquet` next to each checkpoint, when it
is found under `history_root`), its robust-overfitting gap (best - last, paired on the
per-example outcomes) and its checkpoints' metadata. Pages are Jinja2 templates
(`templates/`); the one script and stylesheet (`assets/`) are copied into DIR, so the site needs
no network. The output depends on the rows (and histories) alone: no clock, no absolute paths.
"""

from ssmbench.site.build import build_site

__all__ = ["build_site"]
