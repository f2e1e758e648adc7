"""Helpers shared by the command modules: the console and value parsers."""

from __future__ import annotations

from fractions import Fraction

from rich.console import Console

from model_zoo.errors import UsageError

console = Console(highlight=False)


def parse_fraction(text: str, name: str = "value") -> float:
    """'8/255' -> 0.03137..., '0.03' -> 0.03; negative or malformed values are a UsageError."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{name} must be a number or a fraction like 8/255, got {text!r}") from None
    if value < 0:
        raise UsageError(f"{name} must be >= 0, got {text}")
    return value

