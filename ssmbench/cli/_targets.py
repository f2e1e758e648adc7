"""Loading several targets for the commands that compare models on the same examples
(curve, transfer): every target must be a classifier of the same dataset."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model_zoo.checkpoints import CheckpointMeta
from model_zoo.errors import UsageError
from ssmbench.data import load_split
from ssmbench.loading import load_with_meta


def target_name(target: str) -> str:
    """A zoo name as given; a checkpoint by its run folder and file stem (runs/x/best -> x/best)."""
    path = Path(target)
    if path.suffix != ".safetensors":
        return target
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def load_targets(targets: list[str], device: torch.device) -> list[tuple[str, nn.Module, CheckpointMeta]]:
    """(name, model in eval mode on device, metadata) per target, all of one dataset."""
    if len(set(targets)) != len(targets):
        raise UsageError(f"each target once, please: got {', '.join(targets)}")
    loaded = []
    for target in targets:
        model, meta = load_with_meta(target, device=device)
        loaded.append((target_name(target), model, meta))
    datasets = {meta.config.dataset for _, _, meta in loaded}
    if len(datasets) > 1:
        raise UsageError(f"the targets are models of different datasets ({', '.join(sorted(datasets))}); compare models of one dataset")
    return loaded


def first_test_examples(dataset: str, n_examples: int | None, data_dir: Path | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first N test images in their fixed order (all when N is None), on device."""
    images, labels = load_split(dataset, "test", data_dir)
    if n_examples is not None:
        if n_examples < 1:
            raise UsageError(f"--n-examples must be >= 1, got {n_examples}")
        images, labels = images[:n_examples], labels[:n_examples]
    return images.to(device), labels.to(device)
