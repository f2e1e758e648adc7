"""Name -> model: `build_model("s4", dataset="mnist", ads="tanh", **overrides)`."""

from __future__ import annotations

import dataclasses
from typing import Any

from model_zoo.ads import ADS_CHOICES
from model_zoo.classifier import SequenceClassifier
from model_zoo.config import PRESETS, ModelConfig, preset
from model_zoo.errors import ZooError
from model_zoo.layers import MIXERS, get_mixer


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob pattern, sorted."""
    from fnmatch import fnmatch

    return sorted(name for name in MIXERS if fnmatch(name, pattern))


def list_datasets() -> list[str]:
    return list(PRESETS)


def make_config(
    arch: str, dataset: str = "digits", ads: str = "none", attention: bool = False, **overrides: Any
) -> ModelConfig:
    """The preset config for (arch, dataset) with AdS, attention and any field overridden."""
    spec = get_mixer(arch)
    if ads not in ADS_CHOICES:
        raise ZooError(f"unknown AdS option {ads!r}; choose one of {', '.join(ADS_CHOICES)}")
    if ads != "none" and not spec.supports_ads:
        ads_archs = ", ".join(name for name in list_models() if MIXERS[name].supports_ads)
        raise ZooError(f"{arch} has no AdS (it has its own attention); AdS works with {ads_archs}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ZooError(f"unknown model option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    values = {**preset(arch, dataset), **overrides}
    return ModelConfig(arch=arch, dataset=dataset, ads=ads, attention=attention, **values)


def build_model(arch: str, dataset: str = "digits", ads: str = "none", attention: bool = False, **overrides: Any) -> SequenceClassifier:
    """Build a fresh classifier from the registry and the dataset preset."""
    return SequenceClassifier(make_config(arch, dataset, ads, attention, **overrides))


def build_from_config(config: ModelConfig) -> SequenceClassifier:
    return SequenceClassifier(config)
