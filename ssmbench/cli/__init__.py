"""The `ssmbench` command: a thin Typer app over the library.

Each public module in this package contributes its commands through `register(app)`, so
adding a command never touches this file; `_`-prefixed modules hold shared helpers. Library
errors become one line on stderr: exit code 2 for input the user can fix (UsageError), 1 for a run
that failed (RunError). Under torchrun every process gets the same arguments, so a usage error is
printed by rank 0 only; a run error may be one rank's own and is printed with its rank.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer
from rich.console import Console

from model_zoo.errors import RunError, UsageError

app = typer.Typer(
    name="ssmbench",
    help="Adversarial robustness of deep state space models: train, attack, rank.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name.startswith("_"):
        continue  # shared helpers, not command modules
    importlib.import_module(f"{__name__}.{_module.name}").register(app)

EXIT_CODES: dict[type[Exception], int] = {UsageError: 2, RunError: 1}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the process exit code.

    Typer handles its own usage errors (exit 2) in standalone mode and always ends in
    SystemExit; our library errors pass through it and become one line here.
    """
    err = Console(stderr=True, highlight=False)
    try:
        app(args=argv, prog_name="ssmbench")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (UsageError, RunError) as exc:
        code = next(c for kind, c in EXIT_CODES.items() if isinstance(exc, kind))
        rank = _launcher_rank()
        if rank is None:
            err.print(f"error: {exc}", markup=False, soft_wrap=True)
        elif rank == 0 or isinstance(exc, RunError):
            err.print(f"error (rank {rank}): {exc}", markup=False, soft_wrap=True)
    except KeyboardInterrupt:
        err.print("error: interrupted; rerun the same command with --resume where it supports it")
        code = 130
    if argv is None:
        sys.exit(code)
    return code


def _launcher_rank() -> int | None:
    """This process's rank when torchrun started several (RANK and WORLD_SIZE > 1), else None."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return rank if world > 1 else None
