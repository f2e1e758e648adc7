"""The `ssmbench` command: a thin Typer app over the library.

Each public module in this package contributes its commands through `register(app)`, so
adding a command never touches this file; `_`-prefixed modules hold shared helpers. Library
errors become one line on stderr: exit code 2 for input the user can fix (UsageError), 1 for a run
that failed (RunError). Typer's own parse errors (`--lr abc`) go through the same one-line
renderer instead of rich's box, and any other exception is a one-line internal error (exit 1) whose
traceback `SSMBENCH_DEBUG=1` shows: no input makes the command print a traceback. Under torchrun every process gets the same arguments, so a usage error is
printed by rank 0 only; a run error may be one rank's own and is printed with its rank.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

import typer
from rich.console import Console
from typer import Abort
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # Typer vendors Click; no public alias

from model_zoo.errors import RunError, UsageError
from ssmbench.allocator import retain_freed_memory

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

    Typer runs in non-standalone mode so that its parse errors reach us: each becomes one line
    (exit 2) like our own UsageError.
    """
    err = Console(stderr=True, highlight=False)
    retain_freed_memory()  # every command runs passes that allocate and free the same buffers
    try:
        result = app(args=argv, prog_name="ssmbench", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except NoArgsIsHelpError as exc:  # `ssmbench` alone: the help is the answer, as before
        err.print(exc.format_message(), markup=False, soft_wrap=True)
        code = exc.exit_code
    except ClickException as exc:
        err.print(f"error: {_one_line(exc.format_message())}", markup=False, soft_wrap=True)
        code = exc.exit_code
    except (UsageError, RunError) as exc:
        code = next(c for kind, c in EXIT_CODES.items() if isinstance(exc, kind))
        rank = _launcher_rank()
        if rank is None:
            err.print(f"error: {_one_line(str(exc))}", markup=False, soft_wrap=True)
        elif rank == 0 or isinstance(exc, RunError):
            err.print(f"error (rank {rank}): {_one_line(str(exc))}", markup=False, soft_wrap=True)
    except (KeyboardInterrupt, Abort):
        err.print("error: interrupted; rerun the same command with --resume where it supports it")
        code = 130
    except Exception as exc:  # a bug or an input we did not foresee: still one line, never a traceback
        if os.environ.get("SSMBENCH_DEBUG"):
            raise
        err.print(f"error: internal error {type(exc).__name__}: {_one_line(str(exc))} (SSMBENCH_DEBUG=1 shows the "
                  "traceback; please report it)", markup=False, soft_wrap=True)
        code = 1
    if argv is None:
        sys.exit(code)
    return code


def _one_line(message: str) -> str:
    """Messages that quote a file or an exception may hold newlines; an error is one line."""
    return " ".join(message.split())


def _launcher_rank() -> int | None:
    """This process's rank when torchrun started several (RANK and WORLD_SIZE > 1), else None."""
    try:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    return rank if world > 1 else None
