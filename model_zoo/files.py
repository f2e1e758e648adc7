"""Atomic writes and exclusive locks: the two ways every results file, checkpoint and marker is written.

Results depend on these files, so a crash must never leave one half-written: `atomic_writer`
writes a temp file beside the target, fsyncs it, renames it over the target and fsyncs the folder,
so a reader sees the old file or the new one, never a torn one (the rename is atomic within one
file system, and the folder's fsync makes the rename itself survive a power cut). Files that
several processes share (a leaderboard, a study cell) are changed under `file_lock`, an exclusive
`flock` that the kernel drops when its holder dies, so a killed writer never leaves a stale lock.

Both live in model_zoo because checkpoints and training histories are written here and model_zoo
never imports ssmbench; ssmbench's leaderboard, study and evaluation state use the same two.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

NEW_FILE_MODE = 0o644  # results and weights are meant to be shared; an existing file keeps its own mode
TEMP_SUFFIX = ".tmp"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle to a temp file beside `path` that replaces `path` when the block ends.

    An exception in the block (or a crash anywhere) leaves `path` as it was and removes the temp
    file. A symlink is followed, so the file it points to is replaced rather than the link; the new
    file gets the old one's mode, or NEW_FILE_MODE (mkstemp's 0600 would lock others out).
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else NEW_FILE_MODE
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=TEMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (see `atomic_writer`)."""
    with atomic_writer(path) as handle:
        handle.write(data)


def remove_stale_temps(path: str | Path) -> None:
    """Delete the temp files that writers of `path` left when they died mid-write.

    Only safe while holding the file's lock: another writer's temp file is not stale.
    """
    path = Path(os.path.realpath(path))
    for stale in path.parent.glob(f"{_temp_prefix(path)}*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str | Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` (created if missing) for the block; yields
    whether it is held. wait=True blocks until it is ours (and so always yields True);
    wait=False yields False at once while another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, NEW_FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
