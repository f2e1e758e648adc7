"""Timing and peak-memory measurement for the speed benchmarks, and the report they produce.

Each side of a comparison (ours, or the baseline) runs as a `Task` in a child process of its own,
so its peak memory is its own: a high-water mark read inside one long-lived process would carry
the largest allocation of every earlier case, and torch's caching CPU allocator hides most
allocations from tracemalloc. Children fork from a forkserver that has already imported torch and
the project, so a child starts in milliseconds, and it inherits no OpenMP thread pool (forking
after a parallel region can deadlock GNU OpenMP).

Inside the child: `setup` builds everything the timed step needs (model, data), then the peak RSS
is reset to the current RSS (Linux `clear_refs`; elsewhere the lifetime ru_maxrss is reported),
the step runs `warmup` untimed and `repeats` timed times, and the median wall time, the peak RSS
(and on CUDA torch.cuda.max_memory_allocated) come back through a pipe. An address-space cap
(RLIMIT_AS) turns a baseline that would exhaust the shared machine into a clean 'out of memory'.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Step = Callable[[], "dict[str, Any] | None"]
# Imported once by the forkserver, so that each measuring child starts with them loaded.
_PRELOAD = ["torch", "model_zoo", "model_zoo.training", "ssmbench.attacks", "benchmarks"]
# main before the speed work of issue 18: what `ssmbench bench commit` compares against.
BASELINE_COMMIT = "de74342"
_OOM_MARKERS = ("can't allocate memory", "out of memory", "cannot allocate memory")


@dataclass(frozen=True)
class RunOptions:
    """Where and under which limits every task runs.

    memory_cap_mb: address-space cap per child on CPU (None: no cap). torch reserves little
    virtual memory beyond what it touches on CPU, so the cap is close to a cap on RSS.
    timeout_s: a child still running after this long is terminated and reported as failed.
    baseline_commit: the revision that the `commit` benchmark checks out and runs as its baseline.
    """

    device: str = "cpu"
    threads: int | None = None
    memory_cap_mb: int | None = 12 * 1024
    timeout_s: float | None = 1800.0
    baseline_commit: str = BASELINE_COMMIT


@dataclass(frozen=True)
class Task:
    """One side of a comparison: `setup(device=..., **params)` returns the step to time.

    `setup` must be a module-level function (the child imports it by name). The step may return a
    dict of results (e.g. robust accuracy), which is reported as `info`.
    """

    label: str
    setup: Callable[..., Step]
    params: dict[str, Any] = field(default_factory=dict)
    warmup: int = 1
    repeats: int = 3


@dataclass(frozen=True)
class Measurement:
    """What one task measured. status: ok, skipped (not run; `note` says why) or failed.

    `info` is what the step returned in the repeat whose time is the median (the upper middle one
    for an even count); `load_average` is the machine's 1-minute load when the timing ended.
    """

    label: str
    status: str
    seconds: float | None = None
    times: tuple[float, ...] = ()
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    load_average: float | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def skipped(label: str, reason: str) -> Measurement:
    """A baseline that could not run here (e.g. its package is missing), with what to do about it."""
    return Measurement(label=label, status="skipped", note=reason)


@dataclass(frozen=True)
class Row:
    """One comparison: our time against a named baseline measured in the same run."""

    benchmark: str
    case: str
    ours: Measurement
    baseline: Measurement
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """baseline seconds / our seconds: above 1 means we are faster."""
        if not (self.ours.ok and self.baseline.ok) or not self.ours.seconds or self.baseline.seconds is None:
            return None
        return self.baseline.seconds / self.ours.seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.benchmark,
            "case": self.case,
            "ours": self.ours.label,
            "baseline": self.baseline.label,
            "ours_s": self.ours.seconds,
            "baseline_s": self.baseline.seconds,
            "ratio": self.ratio,
            "ours_peak_mb": self.ours.peak_rss_mb,
            "baseline_peak_mb": self.baseline.peak_rss_mb,
            "ours_peak_cuda_mb": self.ours.peak_cuda_mb,
            "baseline_peak_cuda_mb": self.baseline.peak_cuda_mb,
            "fields": self.fields,
            "measurements": {"ours": asdict(self.ours), "baseline": asdict(self.baseline)},
        }


# ---------------------------------------------------------------------------------------------
# Measuring


def measure(task: Task, options: RunOptions) -> Measurement:
    """Run `task` in a fresh child process and return what it measured (never raises for a
    failure inside the task: a crash, an exception, a timeout or memory exhaustion is a
    `failed` Measurement whose note says which)."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, task, options), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(options.timeout_s):
            child.terminate()
            child.join()
            return Measurement(task.label, "failed", note=f"timed out after {options.timeout_s:.0f} s")
        status, payload = receiver.recv()
    except EOFError:
        child.join()
        return Measurement(task.label, "failed", note=_death_note(child.exitcode))
    finally:
        receiver.close()
    child.join()
    if status == "ok":
        return Measurement(task.label, "ok", **payload)
    return Measurement(task.label, "failed", note=payload)


def _context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _death_note(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the child process was killed by signal {-exitcode} (the kernel's OOM killer sends 9)"
    return f"the child process exited with code {exitcode} without a result"


def _child_main(sender: Any, task: Task, options: RunOptions) -> None:
    """Entry point of a measuring child: apply the limits, measure, and send (status, payload):
    ("ok", the Measurement's fields) or ("failed", the reason)."""
    # CUDA reserves far more address space than memory, so the cap only applies on CPU.
    if options.memory_cap_mb is not None and torch.device(options.device).type == "cpu":
        cap = options.memory_cap_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    message: tuple[str, dict[str, Any] | str]
    try:
        message = ("ok", measure_here(task, options.device))
    except MemoryError:
        message = ("failed", _oom_note(options))
    except Exception as exc:  # noqa: BLE001 - any failure of the measured code is a result to report
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        message = ("failed", _oom_note(options) if any(m in str(exc).lower() for m in _OOM_MARKERS) else text)
    sender.send(message)
    sender.close()


def _oom_note(options: RunOptions) -> str:
    cap = f"the {options.memory_cap_mb / 1024:.0f} GB cap" if options.memory_cap_mb else "the machine's memory"
    return f"out of memory under {cap}"


def measure_here(task: Task, device: str = "cpu") -> dict[str, Any]:
    """Set up and time `task` in this process; the fields of a Measurement (without label/status)."""
    step = task.setup(device=device, **task.params)
    cuda = torch.device(device).type == "cuda"
    _synchronize(cuda)
    reset_peak_rss()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(task.warmup):
        step()
    runs = []
    for _ in range(task.repeats):
        _synchronize(cuda)
        started = time.perf_counter()
        info = step()
        _synchronize(cuda)
        runs.append((time.perf_counter() - started, info or {}))
    times = tuple(seconds for seconds, _ in runs)
    median_info = sorted(runs, key=lambda run: run[0])[len(runs) // 2][1] if runs else {}
    return {
        "seconds": statistics.median(times) if times else None,
        "times": times,
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "info": dict(median_info),
        "load_average": load_average(),
    }


def _synchronize(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0); False if the
    kernel does not allow it, in which case `peak_rss_mb` reports the lifetime peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's RSS high-water mark in MiB (VmHWM, or ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if platform.system() == "Darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def forward_backward_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Step:
    """The step that the model benchmarks time: one training forward and backward (no optimizer)."""
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    return step


# ---------------------------------------------------------------------------------------------
# The report


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(options: RunOptions) -> dict[str, Any]:
    """What the figures depend on: CPU, cores, torch and its threads, GPU, date, load average."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": options.threads or torch.get_num_threads(),
        "python": platform.python_version(),
        "device": options.device,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_start": load_average(),
    }
    if torch.device(options.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(options.device))
    return info


def load_average() -> float | None:
    """The 1-minute load average: other work on a shared machine slows every figure."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_line(machine: dict[str, Any]) -> str:
    parts = [
        f"{machine['cpu']}, {machine['cores']} cores",
        f"torch {machine['torch']} ({machine['threads']} threads)",
        f"Python {machine['python']}",
        f"device {machine['device']}" + (f" ({machine['gpu']})" if machine.get("gpu") else ""),
        machine["date"],
        f"load average {machine.get('load_start')} at start, {machine.get('load_end')} at end",
    ]
    return "; ".join(parts)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _megabytes(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _load(row: Row) -> str:
    loads = [m.load_average if m.ok else None for m in (row.ours, row.baseline)]
    return " / ".join("-" if load is None else f"{load:.1f}" for load in loads)


def _field(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def row_cells(row: Row) -> list[str]:
    """The columns of a row as text, for both the markdown and the terminal table."""
    ratio = row.ratio
    notes = [f"{key}={_field(value)}" for key, value in row.fields.items()]
    notes += [f"{side}: {m.note}" for side, m in (("ours", row.ours), ("baseline", row.baseline)) if m.note]
    peak = _megabytes(row.ours.peak_cuda_mb) if row.ours.peak_cuda_mb is not None else ""
    return [
        row.benchmark,
        row.case,
        row.baseline.label,
        _seconds(row.ours.seconds),
        _seconds(row.baseline.seconds),
        "-" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}x",
        _megabytes(row.ours.peak_rss_mb) + (f" (GPU {peak})" if peak else ""),
        _megabytes(row.baseline.peak_rss_mb),
        _load(row),
        "; ".join(notes),
    ]


COLUMNS = (
    "benchmark", "case", "baseline", "ours (s)", "baseline (s)", "speed-up", "ours peak MB", "baseline peak MB",
    "load", "notes",
)


def render_markdown(machine: dict[str, Any], scale: str, rows: list[Row]) -> str:
    """A markdown table of the rows under a line that names the machine and the run."""
    lines = [
        f"Machine: {machine_line(machine)}. Scale: {scale}. Times are medians of wall seconds; "
        "speed-up = baseline / ours; peak MB = peak RSS of the process that ran that side alone; "
        "load = the 1-minute load average when each side's timing ended (ours / baseline).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row_cells(row)) + " |")
    return "\n".join(lines) + "\n"
