"""Named checkpoints: `model_zoo/zoo.toml` maps a name to a shipped file or a URL + sha256.

Shipped weights live in model_zoo/weights/ (inside the package, so they work offline on a
fresh install); remote ones are downloaded by `fetch` into a cache dir, verified, and only
then used. Every resolution checks the sha256 recorded in zoo.toml.

zoo.toml is validated as a whole when read (valid TOML, known keys of the right types, names
from a fixed character set), and no string from it can make a path outside the zoo's own folder
or the download cache: a `file` is relative and must resolve inside the folder of the zoo.toml
(the package's, or one given on the command line), a cached download is named by the validated
entry name. Downloads stream to a temp file with a size cap and a deadline, hashed on the way.

`add_entry` puts a trained checkpoint into the zoo: it copies the file into weights/ and appends a
hand-formatted `[models.NAME]` block to zoo.toml (the standard library reads TOML but cannot write
it), leaving the file's other entries and comments as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_zoo import files
from model_zoo.checkpoints import CheckpointMeta, file_sha256, load
from model_zoo.errors import RunError, UsageError
from model_zoo.limits import DOWNLOAD_TIMEOUT_S, MAX_DOWNLOAD_BYTES
from model_zoo.registry import family_name

ZOO_FILE = Path(__file__).with_name("zoo.toml")
WEIGHTS_DIR = "weights"
# A name is a bare TOML key and a file name at once: no quoting, no path separators.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
URL_SCHEMES = ("https", "http")
# The training settings worth reading in `zoo list`/`show`; the checkpoint itself keeps them all.
TRAINING_SUMMARY = ("method", "epochs", "effective_epochs", "batch_size", "lr", "weight_decay", "eps", "alpha",
                    "steps", "train_examples", "eval_examples", "seed", "augment")
METHOD_SETTINGS = {"trades": ("trades_beta",), "mart": ("mart_beta",), "freeat": ("freeat_m",), "yopo": ("yopo_m", "yopo_n")}


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
    """Every entry of zoo_file, or a UsageError naming the file and the first problem in it."""
    if not zoo_file.is_file():
        return {}
    try:
        with open(zoo_file, "rb") as handle:
            data = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{zoo_file}: not valid TOML ({exc}); fix or restore the file") from None
    except OSError as exc:
        raise UsageError(f"{zoo_file}: cannot read the zoo file ({exc.strerror})") from None
    models = data.get("models", {})
    if set(data) - {"models"} or not isinstance(models, dict):
        raise UsageError(f"{zoo_file}: a zoo file holds [models.NAME] tables only")
    return {name: _entry(name, fields, zoo_file) for name, fields in models.items()}


_ENTRY_TYPES = {f.name: (dict if f.name in ("config", "training", "metrics") else str) for f in dataclasses.fields(ZooEntry)}


def _entry(name: str, fields: object, zoo_file: Path) -> ZooEntry:
    """One validated entry: a safe name, known keys of the right types, a sha256, a safe file or url."""
    where = f"{zoo_file}: [models.{name}]"
    if not NAME_PATTERN.match(name):
        raise UsageError(f"{zoo_file}: zoo name {name!r} may only use letters, digits, '-' and '_'")
    if not isinstance(fields, dict):
        raise UsageError(f"{where} must be a table")
    allowed = set(_ENTRY_TYPES) - {"name"}  # the name is the table's key
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}")
    wrong = [key for key, value in fields.items() if not isinstance(value, _ENTRY_TYPES[key])]
    if wrong:
        raise UsageError(f"{where}: {wrong[0]} must be a {_ENTRY_TYPES[wrong[0]].__name__}")
    entry = ZooEntry(name=name, **fields)
    if not SHA256_PATTERN.match(entry.sha256):
        raise UsageError(f"{where}: sha256 must be 64 lowercase hex digits")
    if bool(entry.file) == bool(entry.url):
        raise UsageError(f"{where}: give exactly one of file (shipped) and url (downloaded)")
    if entry.file:
        _shipped_path(entry, zoo_file)
    elif urllib.parse.urlsplit(entry.url).scheme not in URL_SCHEMES:
        raise UsageError(f"{where}: url must start with {' or '.join(s + '://' for s in URL_SCHEMES)}, got {entry.url!r}")
    return entry


def _shipped_path(entry: ZooEntry, zoo_file: Path) -> Path:
    """entry.file inside the zoo file's folder (links resolved), or a UsageError: no absolute path, no '..' out."""
    root = Path(os.path.realpath(zoo_file.parent))
    path = Path(os.path.realpath(root / entry.file))
    if Path(entry.file).is_absolute() or not path.is_relative_to(root):
        raise UsageError(f"{zoo_file}: [models.{entry.name}] file {entry.file!r} is outside {root}; shipped weights live beside zoo.toml")
    return path


def get_entry(name: str, zoo_file: Path = ZOO_FILE) -> ZooEntry:
    zoo = load_zoo(zoo_file)
    if name not in zoo:
        known = ", ".join(sorted(zoo)) or "none"
        raise UsageError(f"{name!r} is neither a checkpoint file nor a zoo model; zoo models: {known}")
    return zoo[name]


def local_path(entry: ZooEntry, zoo_file: Path = ZOO_FILE) -> Path:
    """The shipped file, or the cached download, whichever the entry uses."""
    if entry.file:
        return _shipped_path(entry, zoo_file)
    return cache_dir() / f"{entry.name}.safetensors"  # the name is validated: no separators


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


def fetch(name: str, zoo_file: Path = ZOO_FILE, timeout: float = 60.0, max_bytes: int = MAX_DOWNLOAD_BYTES,
          deadline_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download a remote entry, verify its sha256 before it is used, write it atomically.

    The body streams to a temp file in the cache, hashed on the way; more than max_bytes (by the
    declared length or by what arrives) or more than deadline_s in all is given up, so a hostile
    server cannot fill the disk or hold the command forever. `timeout` bounds each network wait.
    """
    entry = get_entry(name, zoo_file)
    if entry.file:
        return resolve(name, zoo_file)
    path = local_path(entry, zoo_file)
    with files.atomic_writer(path) as out:  # a refused download raises inside: nothing is saved
        actual = _download(entry.url, out, timeout, max_bytes, deadline_s, path)
        if actual != entry.sha256:
            raise RunError(f"download of {name} has sha256 {actual[:12]}..., zoo.toml says {entry.sha256[:12]}...; not saved")
    return path


def _download(url: str, out: Any, timeout: float, max_bytes: int, deadline_s: float, target: Path) -> str:
    """Stream url into `out` within the limits; returns the body's sha256."""
    digest, size, start = hashlib.sha256(), 0, time.monotonic()
    by_hand = f"put the file at {target} by hand"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise RunError(f"{url} is {int(declared):,} bytes, more than the {max_bytes:,} a checkpoint may be; not downloaded")
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise RunError(f"{url} sent more than {max_bytes:,} bytes, more than a checkpoint may be; stopped")
                if time.monotonic() - start > deadline_s:
                    raise RunError(f"{url} took more than {deadline_s:g} s; stopped ({by_hand})")
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RunError(f"could not download {url} ({exc}); {by_hand}") from None
    return digest.hexdigest()


# -- adding entries ---------------------------------------------------------------------------------


def training_summary(meta: CheckpointMeta) -> dict[str, Any]:
    """The run's main settings plus which checkpoint of it this is (kind, epoch)."""
    training = meta.training
    keys = TRAINING_SUMMARY + METHOD_SETTINGS.get(str(training.get("method")), ())
    summary = {key: training[key] for key in keys if training.get(key) is not None}
    return {**summary, "checkpoint": meta.kind, "epoch": meta.epoch}


def add_entry(
    checkpoint: str | Path,
    name: str,
    metrics: dict[str, float],
    description: str = "",
    zoo_file: Path = ZOO_FILE,
    replace: bool = False,
) -> ZooEntry:
    """Copy `checkpoint` to weights/NAME.safetensors beside zoo_file and record it there.

    The checkpoint is loaded (so a tampered or foreign file is refused) before anything is
    written; the copy is atomic and verified against the source's sha256; the new zoo.toml is
    parsed back and must give exactly this entry before it atomically replaces the old one.
    """
    if not NAME_PATTERN.match(name):
        raise UsageError(f"zoo name {name!r} may only use letters, digits, '-' and '_' (and not start with '-' or '_')")
    if name in load_zoo(zoo_file) and not replace:
        raise UsageError(f"{zoo_file} already has a model {name!r}; choose another name or replace it")
    source = Path(checkpoint)
    _, meta = load(source)
    payload = source.read_bytes()
    sha256 = hashlib.sha256(payload).hexdigest()
    entry = ZooEntry(
        name=name, sha256=sha256, file=f"{WEIGHTS_DIR}/{name}.safetensors",
        description=description or _default_description(meta), config=meta.config.to_dict(),
        training=training_summary(meta), metrics=dict(metrics),
    )
    old = zoo_file.read_text(encoding="utf-8") if zoo_file.is_file() else ""
    text = _without_entry(old, name, zoo_file) if name in load_zoo(zoo_file) else old
    text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + format_entry(entry)
    _check_round_trip(old, text, entry, zoo_file)  # before any write: a refused entry changes nothing
    target = zoo_file.parent / entry.file
    files.atomic_write_bytes(target, payload)
    if file_sha256(target) != sha256:
        raise RunError(f"{target}: the copy does not match {source} (sha256); the disk may be failing")
    files.atomic_write_bytes(zoo_file, text.encode("utf-8"))
    return entry


def _default_description(meta: CheckpointMeta) -> str:
    config = meta.config
    variant = "".join([f" + AdS ({config.ads})" if config.ads != "none" else "", " + attention" if config.attention else ""])
    method = meta.training.get("method", "unknown method")
    return f"{family_name(config)}{variant}, {method} on {config.dataset}, {meta.kind or 'a'} checkpoint (epoch {meta.epoch})"


def format_entry(entry: ZooEntry) -> str:
    """The entry as TOML: a [models.NAME] table and its config/training/metrics sub-tables."""
    head = {"file": entry.file, "url": entry.url, "sha256": entry.sha256, "description": entry.description}
    lines = [f"[models.{entry.name}]", *_assignments({k: v for k, v in head.items() if v})]
    for section in ("config", "training", "metrics"):
        lines += ["", f"[models.{entry.name}.{section}]", *_assignments(getattr(entry, section))]
    return "\n".join(lines) + "\n"


def _assignments(values: dict[str, Any]) -> list[str]:
    # TOML has no null: an unset value is simply left out.
    return [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in values.items() if value is not None]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """One TOML value. JSON's string escapes are all valid TOML basic-string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")  # repr round-trips exactly
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    raise UsageError(f"cannot write {type(value).__name__} value {value!r} to zoo.toml")


def _without_entry(text: str, name: str, zoo_file: Path) -> str:
    """The text without the [models.NAME] block (its header up to the next table of another entry)."""
    lines = text.splitlines()
    own = (f"[models.{name}]", f"[models.{name}.")
    starts = [i for i, line in enumerate(lines) if line.strip() == own[0]]
    if len(starts) != 1:
        raise UsageError(f"{zoo_file}: cannot find the [models.{name}] table as `zoo add` writes it; remove it by hand")
    end = starts[0] + 1
    # `zoo add` writes no comments inside a block, so a comment starts whatever comes next.
    while end < len(lines) and not lines[end].lstrip().startswith("#") and not (
        lines[end].lstrip().startswith("[") and not lines[end].strip().startswith(own[1])
    ):
        end += 1
    kept = lines[: starts[0]] + lines[end:]
    return "\n".join(kept) + ("\n" if kept else "")


def _check_round_trip(old: str, new: str, entry: ZooEntry, zoo_file: Path) -> None:
    """Refuse to write a zoo.toml that does not parse back to the other entries unchanged plus this one."""
    try:
        before = tomllib.loads(old).get("models", {})
        after = tomllib.loads(new).get("models", {})
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{zoo_file}: not valid TOML, or adding {entry.name} would make it so ({exc}); it was left as it is") from None
    fields = {key: value for key, value in json.loads(json.dumps(entry.__dict__)).items() if key != "name" and value != ""}
    expected = {**{k: v for k, v in before.items() if k != entry.name}, entry.name: fields}
    if after != expected:
        raise UsageError(f"{zoo_file}: the entry for {entry.name} would not read back as written; it was left as it is")
