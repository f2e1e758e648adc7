"""Checkpoints: one .safetensors file per model, rebuildable from its own metadata.

The header's metadata key "ssmbench" holds JSON with the format version, the full model
config, the training method and threat model, epoch, kind (best/last), seed, metrics, and a
sha256 over the tensors so that a tampered file is refused even when it still parses.

Format 2 adds `metadata_sha256`, a sha256 over the canonical JSON of everything else in that
metadata (which includes the tensors' sha256): editing config.ads or training.method is then as
refused as editing a weight. Format 1 files (the weights shipped before format 2) are still read
as they are: their metadata is not covered, but a zoo name is, because zoo.toml pins the whole
file's sha256. Before any tensor is read or any model built, `model_zoo.checkpoint_checks` holds
the metadata against the header's tensor shapes, so a hostile size is refused at header cost.
Complex tensors are stored as real views (..., 2) and named in the metadata. Nothing here
unpickles: safetensors cannot execute code, which is why it is the only model format.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from model_zoo import files, plugins
from model_zoo.checkpoint_checks import Shapes, check_claims
from model_zoo.config import ModelConfig
from model_zoo.errors import CheckpointError, UsageError, ZooError
from model_zoo.layers import get_mixer
from model_zoo.registry import build_from_config

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: tensors' sha256 only; 2: metadata_sha256 over the metadata as well
METADATA_KEY = "ssmbench"
CHECKPOINT_KINDS = ("best", "last", "")


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (DESIGN.md contract 3)."""

    config: ModelConfig
    training: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    kind: str = ""
    seed: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self, tensors_sha256: str, complex_names: list[str]) -> str:
        document: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "arch": self.config.arch,
            "dataset": self.config.dataset,
            "input_kind": self.config.input_kind,
            "input_shape": list(self.config.input_shape),
            "classes": self.config.classes,
            "config": self.config.to_dict(),
            "training": self.training,
            "epoch": self.epoch,
            "kind": self.kind,
            "seed": self.seed,
            "metrics": self.metrics,
            "complex": complex_names,
            "tensors_sha256": tensors_sha256,
        }
        plugin = plugins.plugin_of(self.config.arch)
        if plugin is not None:  # loading it elsewhere needs that package: say which
            document["plugin"] = plugin.to_dict()
        document = json.loads(json.dumps(document))  # hash exactly what a reader will parse (tuples, int keys)
        document["metadata_sha256"] = metadata_sha256(document)
        return json.dumps(document, sort_keys=True)


def metadata_sha256(document: dict[str, Any]) -> str:
    """sha256 over the canonical JSON (sorted keys) of the metadata without its own hash."""
    body = {key: value for key, value in document.items() if key != "metadata_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and bytes, in name order: changes if any weight changes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape(-1): a 0-dim tensor (a scalar buffer) cannot be viewed as bytes; the bytes of any other are unchanged.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(model: nn.Module, path: str | Path, meta: CheckpointMeta) -> str:
    """Write `model` with `meta` atomically; returns the file's sha256."""
    if meta.kind not in CHECKPOINT_KINDS:
        raise UsageError(f"checkpoint kind must be best, last or empty, got {meta.kind!r}")
    tensors: dict[str, torch.Tensor] = {}
    complex_names: list[str] = []
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        if tensor.is_complex():
            complex_names.append(name)
            tensor = torch.view_as_real(tensor)
        tensors[name] = tensor.contiguous().clone()
    metadata = {METADATA_KEY: meta.to_json(tensors_sha256(tensors), complex_names)}
    path = Path(path)
    files.atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
    return file_sha256(path)


def read_meta(path: str | Path) -> tuple[CheckpointMeta, dict[str, Any]]:
    """Parse and validate the header only (cheap): (meta, raw JSON dict).

    Every claim of the metadata is checked against the header's tensor shapes here, so whatever
    reads a checkpoint (show, load) is refused a hostile or inconsistent file before building.
    """
    meta, raw, _ = _read_header(Path(path))
    return meta, raw


def stored_values(path: str | Path) -> int:
    """How many real values the file stores (complex parameters count twice), from its header."""
    _, _, shapes = _read_header(Path(path))
    return sum(math.prod(shape) for shape in shapes.values())


def _read_header(path: Path) -> tuple[CheckpointMeta, dict[str, Any], Shapes]:
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"not a readable safetensors file ({_first_line(exc)})") from None
    if METADATA_KEY not in header:
        raise CheckpointError(path, "not an ssmbench checkpoint (no 'ssmbench' metadata); save it with model_zoo.checkpoints.save")
    try:
        raw = json.loads(header[METADATA_KEY])
        if not isinstance(raw, dict):
            raise ValueError("the metadata is not a JSON object")
        version = raw["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise CheckpointError(path, f"format version {version} is newer than this ssmbench ({FORMAT_VERSION}); upgrade ssmbench")
        if version >= 2 and raw.get("metadata_sha256") != metadata_sha256(raw):
            raise CheckpointError(path, "metadata checksum mismatch: the metadata (config, training, metrics...) was modified after saving")
        _require_plugin(path, raw)
        for key, kind in (("training", dict), ("metrics", dict), ("kind", str), ("epoch", int), ("seed", int), ("tensors_sha256", str)):
            if key in raw and (not isinstance(raw[key], kind) or isinstance(raw[key], bool)):
                raise ValueError(f"{key} must be {kind.__name__}, got {raw[key]!r}")
        meta = CheckpointMeta(
            config=ModelConfig.from_dict(raw["config"]),
            training=raw.get("training", {}),
            epoch=raw.get("epoch", 0),
            kind=raw.get("kind", ""),
            seed=raw.get("seed", 0),
            metrics=raw.get("metrics", {}),
            format_version=version,
        )
        check_claims(meta.config, raw, shapes)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, UsageError) as exc:  # UsageError: an unknown arch, a bad AdS option...
        raise CheckpointError(path, f"malformed ssmbench metadata ({_first_line(exc)})") from None
    return meta, raw, shapes


def _require_plugin(path: Path, raw: dict[str, Any]) -> None:
    """A checkpoint of a plugin's mixer, read where that plugin is not installed: name the plugin."""
    plugin, arch = raw.get("plugin"), raw.get("arch")
    if not isinstance(plugin, dict) or not isinstance(arch, str):
        return
    try:
        get_mixer(arch)
    except ZooError:
        name, version = plugin.get("distribution", "?"), plugin.get("version", "?")
        raise CheckpointError(path, f"architecture {arch!r} comes from the mixer plugin {name} (version {version} wrote "
                                    f"this file), which is not installed: pip install {name}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from the file alone, verify its weights, return (model in eval mode, meta)."""
    path = Path(path)
    meta, raw = read_meta(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(path, f"truncated or corrupt tensor data ({_first_line(exc)})") from None
    if tensors_sha256(tensors) != raw.get("tensors_sha256"):
        raise CheckpointError(path, "tensor checksum mismatch: the weights were modified after saving")
    for name in raw.get("complex", []):
        tensors[name] = torch.view_as_complex(tensors[name])
    try:
        model = build_from_config(meta.config)
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, UsageError) as exc:
        raise CheckpointError(path, f"weights do not fit the {meta.config.arch} architecture ({_first_line(exc)})") from None
    return model.to(device).eval(), meta
