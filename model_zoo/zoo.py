"""Named checkpoints: `model_zoo/zoo.toml` maps a name to a shipped file or a URL + sha256.

Shipped weights live in model_zoo/weights/ (inside the package, so they work offline on a
fresh install); remote ones are downloaded by `fetch` into a cache dir, verified, and only
then used. Every resolution checks the sha256 recorded in zoo.toml.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_zoo.checkpoints import atomic_write_bytes, file_sha256
from model_zoo.errors import RunError, UsageError

ZOO_FILE = Path(__file__).with_name("zoo.toml")


@dataclass(frozen=True)
class ZooEntry:
    """One named checkpoint and what was measured on it."""

    name: str
    sha256: str
    file: str = ""
    url: str = ""
    description: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def cache_dir() -> Path:
    """Where fetched checkpoints go: $SSMBENCH_CACHE or ~/.cache/ssmbench/zoo."""
    return Path(os.environ.get("SSMBENCH_CACHE", Path.home() / ".cache" / "ssmbench")) / "zoo"


def load_zoo(zoo_file: Path = ZOO_FILE) -> dict[str, ZooEntry]:
    if not zoo_file.is_file():
        return {}
    with open(zoo_file, "rb") as handle:
        data = tomllib.load(handle)
    return {name: ZooEntry(name=name, **fields) for name, fields in data.get("models", {}).items()}


def get_entry(name: str, zoo_file: Path = ZOO_FILE) -> ZooEntry:
    zoo = load_zoo(zoo_file)
    if name not in zoo:
        known = ", ".join(sorted(zoo)) or "none"
        raise UsageError(f"{name!r} is neither a checkpoint file nor a zoo model; zoo models: {known}")
    return zoo[name]


def local_path(entry: ZooEntry, zoo_file: Path = ZOO_FILE) -> Path:
    """The shipped file, or the cached download, whichever the entry uses."""
    if entry.file:
        return zoo_file.parent / entry.file
    return cache_dir() / f"{entry.name}.safetensors"


def resolve(name: str, zoo_file: Path = ZOO_FILE) -> Path:
    """Path of a verified local copy of zoo model `name`."""
    entry = get_entry(name, zoo_file)
    path = local_path(entry, zoo_file)
    if not path.is_file():
        raise UsageError(f"zoo model {name} is not downloaded yet; run: ssmbench zoo fetch {name}")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise UsageError(f"{path}: sha256 {actual[:12]}... does not match zoo.toml ({entry.sha256[:12]}...); delete it and fetch again")
    return path


def fetch(name: str, zoo_file: Path = ZOO_FILE, timeout: float = 60.0) -> Path:
    """Download a remote entry, verify its sha256 before it is used, write it atomically."""
    entry = get_entry(name, zoo_file)
    if entry.file:
        return resolve(name, zoo_file)
    if not entry.url:
        raise UsageError(f"zoo model {name} has neither a file nor a url in {zoo_file}")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise RunError(f"could not download {entry.url} ({exc}); put the file at {local_path(entry, zoo_file)} by hand") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise RunError(f"download of {name} has sha256 {actual[:12]}..., zoo.toml says {entry.sha256[:12]}...; not saved")
    path = local_path(entry, zoo_file)
    atomic_write_bytes(path, data)
    return path
