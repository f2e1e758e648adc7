"""Keep freed memory in the process: glibc's malloc otherwise hands it back and faults it in again.

Why: every pass of an attack or a training step allocates the same activations (2 MB each on
digits at batch 64, 25 MB at MNIST's L = 784) and frees them a moment later. glibc serves blocks
above its mmap threshold (128 KiB, raised dynamically up to the size of the largest block freed)
with fresh mmaps, and returns the top of the heap to the kernel whenever more than twice that
threshold lies free there; the next pass then page-faults all of it in again. On this project's
2-core VM a page fault costs ~6 us (a fresh 256 MiB fill runs at 0.6 GB/s against 16 GB/s for
memory already mapped), so the faults were a large share of the time. Measured (2-core Intel Xeon,
torch 2.13 CPU, 2 threads, study runners paused, medians in one process each):

    case                                       default glibc        retain_freed_memory()
    S4 + AdS tanh PGD-10 attack pass, digits   17.2 ms, 1315 faults  16.2 ms, 34 faults
    DSS + AdS tanh fwd+bwd, L 784, batch 64    439 ms, 47371 faults  388 ms, 673 faults (sys 113 -> 11 ms)

Exact: it changes where buffers live, never what is computed (same bits). Cost: the process keeps
up to TRIM_THRESHOLD_BYTES of freed heap mapped instead of returning it, so its resident size stays
near its peak (which a training loop reaches again on every step anyway). Blocks above glibc's
ceiling for the mmap threshold (32 MiB on 64-bit) are still mmapped. `ssmbench` applies it at
startup (ssmbench/cli); a library user may call it too. Other C libraries (musl, macOS) have no
`mallopt` and are left alone, as is a process whose user set glibc's own MALLOC_* variables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum: blocks up to 32 MiB come from the heap
TRIM_THRESHOLD_BYTES = 1 << 30  # hand back free heap top only beyond 1 GiB


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True if they were set."""
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False  # the user tuned glibc's malloc through its environment: theirs wins
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
