"""A training run's resume state: everything needed to continue bit-for-bit, in one safetensors file.

state.safetensors holds the weights, the optimizer, the scheduler, every RNG and the AT method's
per-example state (FreeAT's perturbation). Tensors are safetensors entries, the rest is JSON in the
same file's metadata, so one atomic rename commits all of it and nothing is ever unpickled.
Complex tensors are stored as real views (safetensors has no complex dtype). A state that was
edited, damaged, or saved with other settings or another model is refused with its path.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from model_zoo import files
from model_zoo.classifier import SequenceClassifier
from model_zoo.errors import UsageError
from model_zoo.training import distributed
from model_zoo.training.distributed import Workers
from model_zoo.training.history import EpochRecord

if TYPE_CHECKING:
    from model_zoo.training.config import TrainConfig

STATE_FORMAT = 1
STATE_KEY = "ssmbench_train_state"


@dataclass
class RunState:
    """The mutable state of a run: exactly what state.safetensors stores.

    Under torchrun `method_state` holds this rank's rows of per-example state (FreeAT's
    perturbation); the state file holds the whole batch's rows.
    """

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generators: dict[str, torch.Generator]
    method_state: dict[str, torch.Tensor]
    history: list[EpochRecord]
    best_epoch: int = 0

    @property
    def best(self) -> EpochRecord | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else None


def _flatten(
    prefix: str, tensors: dict[str, torch.Tensor], out: dict[str, torch.Tensor], complex_names: list[str]
) -> None:
    """Add tensors under prefix; complex ones as real views (safetensors has no complex dtype)."""
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        if tensor.is_complex():
            complex_names.append(f"{prefix}{name}")
            tensor = torch.view_as_real(tensor)
        out[f"{prefix}{name}"] = tensor.contiguous().clone()


def save_state(
    path: Path, model: SequenceClassifier, run: RunState, method_state: dict[str, torch.Tensor], config: TrainConfig
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    complex_names: list[str] = []
    _flatten("model.", model.state_dict(), tensors, complex_names)
    _flatten("method.", method_state, tensors, complex_names)
    optimizer_state = run.optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in optimizer_state["state"].items():
        _flatten(f"optim.{pid}.", {k: v for k, v in entries.items() if torch.is_tensor(v)}, tensors, complex_names)
        scalars[str(pid)] = {k: v for k, v in entries.items() if not torch.is_tensor(v)}
    generator_states = {name: g.get_state() for name, g in run.generators.items()}
    generator_states["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        generator_states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    _flatten("rng.", generator_states, tensors, complex_names)
    numpy_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))  # legacy=True: the tuple form
    document = {
        "format": STATE_FORMAT,
        "config": config.to_dict(),
        "model_config": model.config.to_dict(),
        "history": [r.to_dict() for r in run.history],
        "best_epoch": run.best_epoch,
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": run.scheduler.state_dict(),
        "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python_rng": random.getstate(),
        "complex": complex_names,
    }
    files.atomic_write_bytes(path, safetensors_bytes(tensors, metadata={STATE_KEY: json.dumps(document)}))


# The JSON type of each part of a state document; an edited state is refused before it is used.
_STATE_TYPES: dict[str, type] = {
    "config": dict, "model_config": dict, "history": list, "best_epoch": int, "optimizer_param_groups": list,
    "optimizer_scalars": dict, "scheduler": dict, "numpy_rng": list, "python_rng": list, "complex": list,
}


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            document = json.loads((handle.metadata() or {})[STATE_KEY])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: not a readable ssmbench training state ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        found = document.get("format") if isinstance(document, dict) else document
        raise UsageError(f"{path}: training state format {found} is not {STATE_FORMAT}")
    wrong = [key for key, kind in _STATE_TYPES.items() if not isinstance(document.get(key), kind) or isinstance(document.get(key), bool)]
    if wrong:
        raise UsageError(f"{path}: a damaged or edited training state ({wrong[0]} is not a {_STATE_TYPES[wrong[0]].__name__}); "
                         "restart the run without --resume")
    for name in document["complex"]:
        tensors[name] = torch.view_as_complex(tensors[name])
    return document, tensors


def _section(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}


def load_state(
    path: Path, document: dict[str, Any], tensors: dict[str, torch.Tensor], model: SequenceClassifier, run: RunState,
    config: TrainConfig, workers: Workers,
) -> None:
    """Restore `run` and the model's weights from a state read by `read_state` (on rank 0, then
    shared: other nodes need not see the file); refuse a state saved with other settings.

    A setting that the saved run predates counts as its default (read through the config's flat
    form, so a state written before the settings were composed reads the same). The per-example
    method state is stored for the whole batch, so a run can resume with another number of processes."""
    saved = type(config).from_metadata(document["config"]).to_dict()
    # effective_epochs follows from epochs and the method parameters, which are compared themselves.
    changed = sorted(k for k, v in config.to_dict().items() if k != "effective_epochs" and saved[k] != v)
    if changed:
        raise UsageError(f"{path}: resume with the settings of the saved run; these differ: {', '.join(changed)}")
    if document["model_config"] != json.loads(json.dumps(model.config.to_dict())):
        saved = document["model_config"]["arch"]
        raise UsageError(f"{path}: the saved run trained a different model ({saved} with other settings)")
    device = next(model.parameters()).device
    model.load_state_dict(_section(tensors, "model."), strict=True)
    method_state = distributed.split_rows(_section(tensors, "method."), workers)
    run.method_state.update({k: v.to(device) for k, v in method_state.items()})
    _load_optimizer(run.optimizer, document, tensors)
    run.scheduler.load_state_dict(document["scheduler"])
    rng = _section(tensors, "rng.")  # a state from before per-batch attack noise also holds "attack": unused
    for name, generator in run.generators.items():
        generator.set_state(rng[name])
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    kind, keys, *rest = document["numpy_rng"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = document["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    run.history[:] = [EpochRecord(**row) for row in document["history"]]
    run.best_epoch = document["best_epoch"]


def _load_optimizer(
    optimizer: torch.optim.Optimizer, document: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for pid, scalars in document["optimizer_scalars"].items():
        state[int(pid)] = {**scalars, **_section(tensors, f"optim.{pid}.")}
    groups = []
    for current, saved in zip(optimizer.param_groups, document["optimizer_param_groups"]):
        # JSON turned tuples (AdamW's betas) into lists; give them their type back.
        groups.append({k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
