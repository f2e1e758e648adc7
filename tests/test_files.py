"""model_zoo.files: a write killed halfway leaves the old file; a held lock refuses or makes wait."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from model_zoo.files import atomic_write_bytes, atomic_writer, file_lock, remove_stale_temps

REPO = Path(__file__).resolve().parent.parent

# Writes half of the new content through atomic_writer, then dies without cleaning up (os._exit
# skips every finally block, as a kill or a power cut would).
_DIE_MID_WRITE = """
import os, sys
from model_zoo.files import atomic_writer
with atomic_writer(sys.argv[1]) as handle:
    handle.write(b"new content, first half")
    handle.flush()
    os._exit(9)
"""

# Holds the lock until its stdin closes.
_HOLD_LOCK = """
import sys
from model_zoo.files import file_lock
with file_lock(sys.argv[1]) as held:
    print("held" if held else "refused", flush=True)
    sys.stdin.read()
"""


def _python(script: str, *args: str, **pipes: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", script, *args], env=env, text=True, **pipes)


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_temp_that_is_cleaned_up(tmp_path: Path) -> None:
    path = tmp_path / "results.parquet"
    path.write_bytes(b"old content")
    assert _python(_DIE_MID_WRITE, str(path)).wait() == 9
    assert path.read_bytes() == b"old content"
    stale = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(stale) == 1 and stale[0].startswith(".results.parquet.")  # the dead writer's half file
    remove_stale_temps(path)
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]


def test_an_exception_mid_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "marker.json"
    atomic_write_bytes(path, b"old")
    with pytest.raises(KeyboardInterrupt), atomic_writer(path) as handle:
        handle.write(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["marker.json"]
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_a_new_file_is_shared_an_old_one_keeps_its_mode_and_a_symlink_its_target(tmp_path: Path) -> None:
    fresh = tmp_path / "sub" / "fresh.bin"
    atomic_write_bytes(fresh, b"x")  # the folder is created
    assert fresh.stat().st_mode & 0o777 == 0o644
    private = tmp_path / "private.bin"
    private.write_bytes(b"old")
    private.chmod(0o600)
    atomic_write_bytes(private, b"new")
    assert private.stat().st_mode & 0o777 == 0o600 and private.read_bytes() == b"new"
    link = tmp_path / "link.bin"
    link.symlink_to(private)
    atomic_write_bytes(link, b"through the link")
    assert link.is_symlink() and private.read_bytes() == b"through the link"


def test_a_held_lock_refuses_a_second_holder_that_does_not_wait_and_blocks_one_that_does(tmp_path: Path) -> None:
    lock = tmp_path / "cell" / ".lock"
    lock.parent.mkdir()
    holder = _python(_HOLD_LOCK, str(lock), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    with file_lock(lock, wait=False) as acquired:
        assert not acquired
    got: list[bool] = []

    def wait_for_it() -> None:
        with file_lock(lock) as held:
            got.append(held)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not got  # still waiting while the other process holds it
    holder.stdin.close()  # the holder leaves its block and exits
    assert holder.wait(timeout=60) == 0
    waiter.join(timeout=60)
    assert got == [True]


def test_the_kernel_drops_the_lock_of_a_killed_holder(tmp_path: Path) -> None:
    lock = tmp_path / "results.parquet.lock"
    holder = _python(_HOLD_LOCK, str(lock), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=60)
    with file_lock(lock, wait=False) as acquired:
        assert acquired
