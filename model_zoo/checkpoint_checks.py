"""What a checkpoint's metadata claims, checked against its tensor header before anything is built.

A checkpoint comes from a stranger as often as from our trainer. Its metadata decides what gets
built (and so how much memory is allocated), so every size in it is held against what the file
itself holds: the header's tensor names and shapes (read without loading a weight). Only then is
the model built, on the meta device, where building costs no memory, and its parameter names and
shapes must equal the file's exactly. A file that claims 1,000,000 layers while storing two is
refused after reading its header, not after allocating 24 GB.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from model_zoo.config import ModelConfig
from model_zoo.datasets import DATASETS
from model_zoo.limits import DIM_SQUARED_PER_ELEMENT
from model_zoo.registry import build_from_config

Shapes = dict[str, tuple[int, ...]]
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def check_claims(config: ModelConfig, raw: dict[str, Any], shapes: Shapes) -> None:
    """Raise ValueError naming the first claim that the header contradicts; cheap checks first."""
    _check_summary(config, raw)
    _check_sizes(config, shapes)
    _check_complex(raw.get("complex", []), shapes)
    _check_built_shapes(config, raw.get("complex", []), shapes)


def _check_summary(config: ModelConfig, raw: dict[str, Any]) -> None:
    """The top-level arch/dataset/input_shape/classes repeat the config; a known dataset fixes them."""
    claimed = {"arch": config.arch, "dataset": config.dataset, "input_kind": config.input_kind,
               "input_shape": list(config.input_shape), "classes": config.classes}
    for key, value in claimed.items():
        if key in raw and raw[key] != value:
            raise ValueError(f"metadata {key} {raw[key]!r} contradicts its config ({value!r})")
    shape = DATASETS[config.dataset] if config.dataset in DATASETS else None
    if shape is not None and shape.input_kind != config.input_kind:
        raise ValueError(f"config input kind {config.input_kind} does not fit dataset {config.dataset} ({shape.input_kind})")
    if shape is not None and (shape.channels, shape.height, shape.width, shape.classes) != (
            config.channels, config.height, config.width, config.classes):
        raise ValueError(f"config input {config.channels}x{config.height}x{config.width} with {config.classes} classes does "
                         f"not fit dataset {config.dataset} ({shape.channels}x{shape.height}x{shape.width}, {shape.classes} classes)")


def _check_sizes(config: ModelConfig, shapes: Shapes) -> None:
    """Every size the build would allocate by, bounded by what the file stores."""
    blocks = {int(match.group(1)) for name in shapes if (match := _BLOCK.match(name))}
    if blocks != set(range(config.n_layers)):
        raise ValueError(f"config says n_layers = {config.n_layers}, the file stores {len(blocks)} block(s)")
    for name, expected in (("encoder.weight", (config.d_model, config.channels)), ("head.weight", (config.classes, config.d_model))):
        if shapes.get(name) != expected:
            raise ValueError(f"config implies {name} of shape {list(expected)}, the file stores {list(shapes.get(name, ()))}")
    elements = sum(math.prod(shape) for shape in shapes.values())
    dims = {"d_state": config.d_state, **{f"mixer_options.{k}": v for k, v in config.mixer_options.items()
                                          if isinstance(v, int) and not isinstance(v, bool)}}
    for name, value in dims.items():
        if value * value > DIM_SQUARED_PER_ELEMENT * elements:
            raise ValueError(f"config {name} = {value} is too large for a file of {elements:,} stored values")


def _check_complex(names: object, shapes: Shapes) -> None:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"metadata complex must be a list of tensor names, got {names!r}")
    for name in names:
        if name not in shapes or not shapes[name] or shapes[name][-1] != 2:
            raise ValueError(f"metadata lists {name!r} as complex, but the file has no real view (..., 2) of that name")


def _check_built_shapes(config: ModelConfig, complex_names: list[str], shapes: Shapes) -> None:
    """Build on the meta device (no memory) and compare every stored name and shape."""
    with torch.device("meta"):
        model = build_from_config(config)
    expected = {name: tuple(t.shape) + ((2,) if t.is_complex() else ()) for name, t in model.state_dict().items()}
    if set(expected) != set(shapes):
        missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
        raise ValueError(f"tensors do not fit the {config.arch} config (missing {missing[:3]}, unexpected {extra[:3]})")
    wrong = [name for name in expected if expected[name] != shapes[name]]
    if wrong:
        raise ValueError(f"tensor {wrong[0]} has shape {list(shapes[wrong[0]])}, the config implies {list(expected[wrong[0]])}")
    stored_complex = {name for name, t in model.state_dict().items() if t.is_complex()}
    if stored_complex != set(complex_names):
        raise ValueError(f"metadata complex {sorted(complex_names)} differs from the config's complex tensors {sorted(stored_complex)}")
