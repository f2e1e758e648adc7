"""`ssmbench.load(path_or_zoo_name)`: the one way users get a model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model_zoo import checkpoints, zoo


def resolve_target(target: str | Path) -> Path:
    """A checkpoint path as given, or the verified local file of a zoo name."""
    path = Path(target)
    if path.suffix == ".safetensors" or path.exists():
        return path
    return zoo.resolve(str(target))


def load_with_meta(target: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, checkpoints.CheckpointMeta]:
    return checkpoints.load(resolve_target(target), device=device)


def load(target: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model from a checkpoint file or zoo name, in eval mode, on `device`."""
    return load_with_meta(target, device)[0]
