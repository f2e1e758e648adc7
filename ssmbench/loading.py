"""`ssmbench.load(path_or_zoo_name)`: the one way users get a model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model_zoo import checkpoints, zoo
from model_zoo.errors import CheckpointError
from ssmbench import data


def resolve_target(target: str | Path) -> Path:
    """A checkpoint path as given, or the verified local file of a zoo name."""
    path = Path(target)
    if path.suffix == ".safetensors" or path.exists():
        return path
    return zoo.resolve(str(target))


def load_with_meta(
    target: str | Path, device: str | torch.device = "cpu", dataset: str | None = None
) -> tuple[nn.Module, checkpoints.CheckpointMeta]:
    path = resolve_target(target)
    model, meta = checkpoints.load(path, device=device)
    if dataset is not None:
        check_fits(path, meta, dataset)
    return model, meta


def check_fits(path: Path, meta: checkpoints.CheckpointMeta, dataset: str) -> None:
    """Refuse a model for a data set of another input kind or shape (a sequence model on images, ...)."""
    info = data.get_dataset(dataset)
    config = meta.config
    if config.input_kind != info.input_kind or config.input_shape != info.input_shape or config.classes != info.classes:
        raise CheckpointError(path, f"the model ({config.dataset}: {config.input_kind} {config.input_shape}, {config.classes} classes) "
                              f"does not fit data set {dataset} ({info.input_kind} {info.input_shape}, {info.classes} classes)")


def load(target: str | Path, device: str | torch.device = "cpu", dataset: str | None = None) -> nn.Module:
    """Rebuild a model from a checkpoint file or zoo name, in eval mode, on `device`.

    With `dataset`, a model whose input kind, shape or class count does not fit it is refused.
    """
    return load_with_meta(target, device, dataset)[0]
