"""CLI options whose default and help text are a settings dataclass field's, so that no default
is written twice: `lr: float = setting(Optimization, "lr")`.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import typer

from model_zoo.training.settings import help_text

# eps and alpha are shown and typed as fractions of the pixel range ("8/255"); 255ths and finer.
FRACTION_DENOMINATOR = 10_000


def default(cls: type, name: str) -> Any:
    """The field's declared default."""
    for item in dataclasses.fields(cls):
        if item.name == name:
            return item.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def setting(cls: type, name: str, *declarations: str, **options: Any) -> Any:
    """typer.Option(<field default>, help=<field help>); declarations/options as typer.Option's."""
    return typer.Option(default(cls, name), *declarations, help=help_text(cls, name), **options)


def fraction_setting(cls: type, name: str) -> Any:
    """A float field typed as a fraction: its default shown as e.g. '8/255' (parse with parse_fraction);
    a field whose default is None (resolved by its dataclass, e.g. alpha from the norm) stays None."""
    return typer.Option(fraction_default(cls, name), help=help_text(cls, name))


def fraction_default(cls: type, name: str) -> str | None:
    """The field's default as the fraction the CLI shows and parses ('8/255'); None stays None."""
    value = default(cls, name)
    return None if value is None else str(Fraction(value).limit_denominator(FRACTION_DENOMINATOR))
