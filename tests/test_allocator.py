"""ssmbench.allocator: freed activations stay mapped instead of being faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ssmbench import allocator

# One process per measurement: mallopt changes the whole process and cannot be undone.
# The script reports (a) whether an 8 MiB tensor (above glibc's initial mmap threshold of 128 KiB)
# lives in the [heap] mapping rather than in an mmap of its own, and (b) the page faults per step
# of a pass-like pattern after warm-up: 24 blocks of 2 MiB (a digits activation at batch 64)
# allocated and freed together. Default glibc serves (a) with a fresh mmap, deterministically;
# whether it trims the freed heap top after (b) depends on what else sits at the top, so (b) is
# checked on the retained side only.
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from ssmbench.allocator import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    def heap() -> tuple[int, int]:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[heap]"):
                    low, high = line.split()[0].split("-")
                    return int(low, 16), int(high, 16)
        return 0, 0
    block = torch.ones(1 << 21)
    low, high = heap()
    in_heap = low <= block.data_ptr() < high
    del block
    def step():
        blocks = [torch.ones(1 << 19) for _ in range(24)]
        del blocks
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print(int(in_heap), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")
PAGES_PER_STEP = 24 * (2 << 20) // 4096


def probe(mode: str) -> tuple[bool, float]:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # no MALLOC_* variables from the caller
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
                          check=True, timeout=120)
    in_heap, faults = done.stdout.split()[-2:]
    return in_heap == "1", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_stay_mapped() -> None:
    assert not probe("default")[0]  # default glibc: a block this size gets an mmap of its own
    in_heap, faults = probe("retain")
    assert in_heap
    assert faults < 0.05 * PAGES_PER_STEP  # the freed blocks are reused, not faulted in again


def test_user_malloc_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert allocator.retain_freed_memory() is False
