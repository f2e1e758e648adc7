"""Which torch device a run uses: the one parser behind every `--device` and `device=` argument.

"auto" (or nothing) means CUDA when this torch build sees a GPU, else the CPU; "cpu", "cuda" and
"cuda:N" are taken as given once checked, so a device that does not exist is a one-line usage error
before any work starts, not a torch error halfway through a run.
"""

from __future__ import annotations

import torch

from model_zoo.errors import UsageError

DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """None or 'auto' -> cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' (or a torch.device) as given, checked."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in DEVICE_TYPES or (device.type == "cpu" and device.index not in (None, 0)):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, got {str(name)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: this torch build sees no CUDA device; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device
