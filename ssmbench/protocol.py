"""Which test examples an evaluation uses by default: the paper's protocol, declared once."""

from __future__ import annotations

from ssmbench.attacks import get_suite_spec

AUTOATTACK_EXAMPLES = 2000  # the paper (and RobustBench): AutoAttack on the first 2000 test images


def default_examples(suite: str, available: int) -> int:
    """AutoAttack suites on the first 2000 test images (or all, if fewer), PGD-10 on the whole test set."""
    return min(AUTOATTACK_EXAMPLES, available) if get_suite_spec(suite).uses_autoattack else available
