"""The names a reader sees for a model family and a training method, declared once.

The leaderboard's tables, the training curves and the analysis figures all name a model; when they
name it differently ("s4 pgd" on a figure, "s4 + AdS (tanh)" in the table) a reader cannot match a
figure to its row. model_zoo owns the names because training draws figures and must not import
ssmbench; the leaderboard imports them from here.
"""

from __future__ import annotations

from model_zoo.config import ModelConfig
from model_zoo.registry import family_name
from model_zoo.training.methods import METHODS


def family_label(arch: str, ads: str, attention: bool) -> str:
    """'s4d + AdS (relu) + attention': the architecture as the paper names its variants."""
    parts = [arch]
    if ads != "none":
        parts.append(f"AdS ({ads})")
    if attention:
        parts.append("attention")
    return " + ".join(parts)


def method_label(method: str) -> str:
    """'PGD-AT' for 'pgd' (the method registry's display name); an unknown method keeps its name,
    so rows of a method that is no longer registered still print."""
    return METHODS[method].display if method in METHODS else method


def run_title(config: ModelConfig, method: str, seed: int) -> str:
    """'s4 + AdS (tanh), PGD-AT on digits, seed 0': the title of a run's figures."""
    # family_name: 's4 (released)' for a variant, as result rows record the architecture.
    return f"{family_label(family_name(config), config.ads, config.attention)}, {method_label(method)} on {config.dataset}, seed {seed}"
