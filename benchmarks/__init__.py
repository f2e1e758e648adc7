"""Speed benchmarks: each compares our implementation with a named baseline measured in the same
run, on the same machine, and reports the time ratio (baseline / ours) and each side's peak memory.

    >>> report = run_benchmarks(["mixers"], scale="quick")
    >>> report.rows[0].ratio          # e.g. 40.2: the FFT convolution against the recurrence
    >>> report.write("benchmarks/results/2026-11-25.json")   # + the .md beside it

A benchmark is a function `bench(ctx) -> list[Row]` registered with `@register_benchmark(name)`;
importing this package registers every module in it. `ctx.scale` is one of SCALES: `full` (the
figures we publish), `quick` (smaller batches, fewer repeats) and `tiny` (seconds; for tests only).
"""

from __future__ import annotations

import importlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from benchmarks.runner import (
    Measurement,
    Row,
    RunOptions,
    Task,
    load_average,
    machine_info,
    measure,
    render_markdown,
    skipped,
)
from model_zoo.errors import UsageError
from ssmbench.data import load_split

SCALES = ("full", "quick", "tiny")
TaskHook = Callable[[str, str], None]  # (benchmark/case, side label) about to be measured


@dataclass
class Context:
    """What a benchmark gets: the scale, the run options, and a scratch folder for files that
    several tasks share (a trained checkpoint); `measure` runs a task and reports progress."""

    scale: str
    options: RunOptions
    scratch: Path
    on_task: TaskHook | None = None
    benchmark: str = ""

    def cached_split(self, dataset: str, split: str) -> Path:
        """The split saved once per run as a safetensors file that measuring processes read.

        Reading a few tensors is instant, where loading the dataset itself may import its reader
        (scikit-learn for digits: half a second per process) and would charge that to the task.
        """
        path = self.scratch / f"{dataset}-{split}.safetensors"
        if not path.is_file():
            images, labels = load_split(dataset, split)
            save_file({"images": images, "labels": labels}, str(path))
        return path

    def measure(self, case: str, task: Task) -> Measurement:
        if self.on_task is not None:
            self.on_task(f"{self.benchmark}/{case}", task.label)
        return measure(task, self.options)

    def compare(self, case: str, ours: Task, baseline: Task | Measurement) -> tuple[Measurement, Measurement]:
        """Measure both sides (a baseline that cannot run here is passed as a skipped Measurement)."""
        mine = self.measure(case, ours)
        theirs = baseline if isinstance(baseline, Measurement) else self.measure(case, baseline)
        return mine, theirs


def load_split_file(path: str | Path, n_examples: int | None = None) -> tuple[Tensor, Tensor]:
    """Images and labels saved by `Context.cached_split`, the first n_examples of them."""
    tensors = load_file(str(path))
    return tensors["images"][:n_examples], tensors["labels"][:n_examples]


Benchmark = Callable[[Context], list[Row]]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    description: str
    run: Benchmark


BENCHMARKS: dict[str, BenchmarkSpec] = {}


def register_benchmark(name: str) -> Callable[[Benchmark], Benchmark]:
    """Decorator: make `bench(ctx) -> rows` runnable as `ssmbench bench NAME`; the first line of
    its docstring is its description."""

    def decorate(bench: Benchmark) -> Benchmark:
        if name in BENCHMARKS:
            raise UsageError(f"benchmark {name!r} registered twice")
        doc = (bench.__doc__ or "").strip().splitlines()
        BENCHMARKS[name] = BenchmarkSpec(name, doc[0] if doc else "", bench)
        return bench

    return decorate


def get_benchmark(name: str) -> BenchmarkSpec:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UsageError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}") from None


@dataclass
class Report:
    """The rows of one run and the machine they were measured on."""

    machine: dict[str, Any]
    scale: str
    rows: list[Row] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "scale": self.scale, "rows": [row.to_dict() for row in self.rows]}

    def markdown(self) -> str:
        return render_markdown(self.machine, self.scale, self.rows)

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write the JSON to `path` and the markdown table beside it (same name, .md)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        markdown = path.with_suffix(".md")
        markdown.write_text(self.markdown())
        return path, markdown


def run_benchmarks(
    names: list[str] | None = None,
    scale: str = "full",
    options: RunOptions | None = None,
    on_task: TaskHook | None = None,
) -> Report:
    """Run the named benchmarks (default: all, in registry order) at `scale`."""
    if scale not in SCALES:
        raise UsageError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    specs = [get_benchmark(name) for name in (names or list(BENCHMARKS))]
    options = options or RunOptions()
    report = Report(machine_info(options), scale)
    with tempfile.TemporaryDirectory(prefix="ssmbench-bench-") as scratch:
        context = Context(scale, options, Path(scratch), on_task)
        for spec in specs:
            context.benchmark = spec.name
            report.rows.extend(spec.run(context))
    report.machine["load_end"] = load_average()
    return report


__all__ = [
    "BENCHMARKS",
    "SCALES",
    "BenchmarkSpec",
    "Context",
    "Measurement",
    "Report",
    "Row",
    "RunOptions",
    "Task",
    "get_benchmark",
    "load_split_file",
    "register_benchmark",
    "run_benchmarks",
    "skipped",
]

# Registration order is the order `ssmbench bench` runs them: cheapest and most basic first.
for _module in ("mixers", "mamba", "attacks", "training", "commit"):
    importlib.import_module(f"{__name__}.{_module}")
