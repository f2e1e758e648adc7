"""ModelConfig and the paper's presets per dataset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, get_origin, get_type_hints

from model_zoo.datasets import INPUT_KINDS, DataError, get_dataset
from model_zoo.errors import ZooError
from model_zoo.limits import MAX_CONFIG_INT


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a SequenceClassifier; stored verbatim in checkpoints."""

    arch: str
    dataset: str
    channels: int
    height: int
    width: int
    classes: int
    n_layers: int
    d_model: int
    d_state: int
    ads: str = "none"
    attention: bool = False
    mixer_options: dict[str, Any] = field(default_factory=dict)
    input_kind: str = "image"  # "sequence": the model takes (N, C, L) raw series (height 1, width L)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape as the model takes it: (C, H, W) for images, (C, L) for sequences."""
        if self.input_kind == "sequence":
            return (self.channels, self.width)
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; input_kind only when it is not "image", so that every image
        config written before sequences existed (zoo.toml, shipped weights) stays the same dict."""
        values = dataclasses.asdict(self)
        if self.input_kind == "image":
            del values["input_kind"]
        return values

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The config from a file's dict, refused unless every field has its declared type.

        Files are written by others: a string d_model or a float n_layers must be one line here,
        not a TypeError deep inside a layer's constructor.
        """
        if not isinstance(data, dict):
            raise ZooError(f"model config must be a table, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(data) - set(fields)
        if unknown:
            raise ZooError(f"unknown model config keys: {', '.join(sorted(unknown))}")
        missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ZooError(f"model config lacks {', '.join(missing)}")
        check_values(data)
        return cls(**data)


def check_values(values: dict[str, Any]) -> None:
    """Each given ModelConfig field has its declared type and a sane size, or a ZooError says which.

    Shared by checkpoints (files from others) and study files (edited by hand), so that a dry run
    refuses what building would fail on.
    """
    types = {name: get_origin(hint) or hint for name, hint in get_type_hints(ModelConfig).items()}  # dict[str, Any] -> dict
    for name, value in values.items():
        kind = types[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ZooError(f"model config {name} must be {kind.__name__}, got {value!r}")
        if kind is int and not 1 <= value <= MAX_CONFIG_INT:
            raise ZooError(f"model config {name} must be in [1, {MAX_CONFIG_INT}], got {value}")
    if values.get("input_kind", "image") not in INPUT_KINDS:
        raise ZooError(f"model config input_kind must be one of {', '.join(INPUT_KINDS)}, got {values['input_kind']!r}")
    if values.get("input_kind") == "sequence" and values.get("height", 1) != 1:
        raise ZooError(f"a sequence model has height 1 (its length is the width), got height {values['height']}")
    for key, value in values.get("mixer_options", {}).items():
        if isinstance(value, (dict, list)) or (isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= MAX_CONFIG_INT):
            raise ZooError(f"model config mixer_options.{key} must be a plain value (integers in [1, {MAX_CONFIG_INT}]), got {value!r}")


def _small(arch: str) -> dict[str, Any]:
    """MNIST-sized preset (also digits and fashion-mnist): 2 layers, d_model 128, d_state 32.

    For Mega, d_state is the EMA dimension (the paper's n_dim 16).
    """
    options = {"mega": {"hidden": 32}}.get(arch, {})
    d_state = {"s5": 128, "mega": 16}.get(arch, 32)
    return {"n_layers": 2, "d_model": 128, "d_state": d_state, "mixer_options": options}


def _large(arch: str) -> dict[str, Any]:
    """CIFAR-10 / Tiny-ImageNet preset: 4 layers, d_model 128, d_state 64 (Mamba 16, S5 128)."""
    d_state = {"mamba": 16, "s5": 128, "mega": 16}.get(arch, 64)
    options = {"mega": {"hidden": 256}}.get(arch, {})
    return {"n_layers": 4, "d_model": 128, "d_state": d_state, "mixer_options": options}


# The paper's presets by the dataset's family (DatasetInfo.preset).
PRESETS = {"small": _small, "large": _large}


def preset(arch: str, dataset: str) -> dict[str, Any]:
    """The paper's hyper-parameters for `arch` on `dataset`, with the dataset's input shape and classes."""
    try:
        info = get_dataset(dataset)
    except DataError as exc:  # building a model: the zoo's error, as for an unknown architecture
        raise ZooError(str(exc)) from None
    shape = {"channels": info.channels, "height": info.height, "width": info.width, "classes": info.classes,
             **({"input_kind": info.input_kind} if info.input_kind != "image" else {})}
    return {**shape, **PRESETS[info.preset](arch)}
