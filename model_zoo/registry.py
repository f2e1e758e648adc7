"""Name -> model: `build_model("s4", dataset="mnist", ads="tanh", **overrides)`."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from model_zoo import plugins
from model_zoo.ads import ADS_CHOICES
from model_zoo.classifier import SequenceClassifier
from model_zoo.config import ModelConfig, preset
from model_zoo.datasets import DEFAULT_DATASET
from model_zoo.errors import ZooError
from model_zoo.layers import MIXERS, get_mixer


def list_models(pattern: str = "*") -> list[str]:
    """Architecture names matching a glob pattern, sorted: the registered ones and those that
    installed plugins declare (not imported until one is built)."""
    from fnmatch import fnmatch

    return sorted(name for name in {*MIXERS, *plugins.available()} if fnmatch(name, pattern))


def make_config(
    arch: str, dataset: str = DEFAULT_DATASET, ads: str = "none", attention: bool = False, **overrides: Any
) -> ModelConfig:
    """The preset config for (arch, dataset) with AdS, attention and any field overridden."""
    spec = get_mixer(arch)
    if ads not in ADS_CHOICES:
        raise ZooError(f"unknown AdS option {ads!r}; choose one of {', '.join(ADS_CHOICES)}")
    if ads != "none" and not spec.supports_ads:
        ads_archs = ", ".join(name for name in sorted(MIXERS) if MIXERS[name].supports_ads)
        raise ZooError(f"{arch} has no AdS (it has its own attention); AdS works with {ads_archs}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ZooError(f"unknown model option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(fields))}")
    values = {**preset(arch, dataset), **overrides}
    _check_mixer_options(arch, values.get("mixer_options", {}))
    return ModelConfig(arch=arch, dataset=dataset, ads=ads, attention=attention, **values)


def _check_mixer_options(arch: str, options: Any) -> None:
    """Refuse options the mixer does not take, before a constructor's TypeError can escape."""
    if not isinstance(options, dict):
        raise ZooError(f"mixer_options must be a table of option = value, got {options!r}")
    parameters = inspect.signature(get_mixer(arch).cls.__init__).parameters
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    # d_model, d_state and ads come from the config's own fields.
    valid = sorted(n for n, p in parameters.items() if p.kind in named and n not in ("self", "d_model", "d_state", "ads"))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ZooError(f"{arch} has no mixer option(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}")


def family_name(config: ModelConfig) -> str:
    """The architecture as results name it: 's4', or 's4 (released)' for a variant of it.

    Mixers with variants say which through a static `variant_name(mixer_options)`; a config without
    options (every checkpoint written before the variants existed) is the plain architecture, so
    old rows keep their names.
    """
    describe = getattr(get_mixer(config.arch).cls, "variant_name", None)
    variant = describe(config.mixer_options) if describe else ""
    return f"{config.arch} ({variant})" if variant else config.arch


def build_model(arch: str, dataset: str = DEFAULT_DATASET, ads: str = "none", attention: bool = False, **overrides: Any) -> SequenceClassifier:
    """Build a fresh classifier from the registry and the dataset preset."""
    return SequenceClassifier(make_config(arch, dataset, ads, attention, **overrides))


def build_from_config(config: ModelConfig) -> SequenceClassifier:
    return SequenceClassifier(config)
