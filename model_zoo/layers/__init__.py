"""Sequence mixers, one module each; importing this package registers all of them."""

from __future__ import annotations

import importlib
import pkgutil

from model_zoo.layers.base import MIXERS, MixerSpec, get_mixer, register_mixer

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MIXERS", "MixerSpec", "get_mixer", "register_mixer"]
