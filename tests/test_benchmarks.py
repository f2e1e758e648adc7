"""Speed benchmarks: the registry, the measuring child processes, the report, and that every
baseline computes what our fast path computes (so that a ratio compares the same work)."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

import benchmarks
from benchmarks import BENCHMARKS, Context, Report, RunOptions, Task, commit_worker, run_benchmarks
from benchmarks.commit import baseline_tree
from benchmarks.mamba import MAMBAPY_INSTALL, use_mambapy
from benchmarks.mixers import ARCHS, tiny_overrides, use_recurrences
from benchmarks.runner import BASELINE_COMMIT, cpu_model, measure, measure_here
from model_zoo import build_model, list_models
from model_zoo.layers import mamba as mamba_layer
from ssmbench.cli import main

NAMES = ["mixers", "mamba", "pgd", "autoattack", "at_epoch", "commit"]


def test_registry_holds_the_six_benchmarks_in_run_order() -> None:
    assert list(BENCHMARKS) == NAMES
    assert all(spec.description for spec in BENCHMARKS.values())


def test_every_registered_mixer_has_a_sequential_baseline() -> None:
    assert sorted(ARCHS) == list_models()


# --- The baselines compute the same function as the fast paths -------------------------------


def perturbed_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A small float64 model moved off its initialization (a few steps dt made large)."""
    torch.manual_seed(seed)
    model = build_model(arch, "digits", **tiny_overrides(arch, {"n_layers": 2, "d_model": 16, "d_state": 8})).double()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def outputs_and_grads(model: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    logits = model(images)
    weights = torch.linspace(-1, 1, logits.numel(), dtype=logits.dtype).view_as(logits)
    grads = torch.autograd.grad((logits * weights).sum(), list(model.parameters()), allow_unused=True)
    return [logits.detach()] + [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, model.parameters())]


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("the sequential baseline called a parallel kernel")


@pytest.mark.parametrize("arch", ARCHS)
def test_recurrence_baseline_equals_the_fast_path(arch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = perturbed_model(arch)
    images = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    fast = outputs_and_grads(model, images)
    sequential_model = use_recurrences(copy.deepcopy(model))
    # The baseline must really be the loop: no FFT and no parallel scan anywhere in it.
    for name in ("rfft", "irfft", "fft", "ifft"):
        monkeypatch.setattr(torch.fft, name, _refuse)
    monkeypatch.setattr(mamba_layer, "selective_scan", _refuse)
    slow = outputs_and_grads(sequential_model, images)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_mambapy_baseline_runs_our_weights() -> None:
    pytest.importorskip("mambapy")
    torch.manual_seed(0)
    model = build_model("mamba", "digits", n_layers=2, d_model=16, d_state=8)
    images = torch.rand(2, 1, 8, 8)
    twin = use_mambapy(copy.deepcopy(model))
    assert not any(isinstance(block.mixer, mamba_layer.MambaMixer) for block in twin.blocks)
    torch.testing.assert_close(twin(images), model(images), rtol=1e-4, atol=1e-5)


# --- The measuring child processes ------------------------------------------------------------


def setup_allocate(device: str, megabytes: int) -> benchmarks.runner.Step:
    """A step that fills `megabytes` of fresh memory (so the pages are really resident)."""

    def step() -> dict[str, float]:
        block = torch.ones(megabytes * 2**20 // 4)
        return {"sum": float(block[:10].sum())}

    return step


def setup_failing(device: str) -> benchmarks.runner.Step:
    raise ValueError("no such model")


def test_each_task_reports_its_own_peak_memory() -> None:
    options = RunOptions(threads=1)
    small = measure(Task("small", setup_allocate, {"megabytes": 1}, warmup=0, repeats=2), options)
    large = measure(Task("large", setup_allocate, {"megabytes": 256}, warmup=0, repeats=1), options)
    after = measure(Task("small again", setup_allocate, {"megabytes": 1}, warmup=0, repeats=1), options)
    assert small.ok and large.ok and after.ok
    assert len(small.times) == 2 and small.seconds > 0 and small.info == {"sum": 10.0} and small.load_average >= 0
    assert 230 < large.peak_rss_mb - small.peak_rss_mb < 400
    # A fresh process per task: the large allocation is not charged to the task after it.
    assert abs(after.peak_rss_mb - small.peak_rss_mb) < 40


def setup_sleeps(device: str, pauses: list[float]) -> benchmarks.runner.Step:
    """A step that sleeps for the next of `pauses` and reports which one it was."""
    remaining = list(pauses)

    def step() -> dict[str, float]:
        pause = remaining.pop(0)
        time.sleep(pause)
        return {"pause": pause}

    return step


def test_median_time_and_the_info_of_that_repeat() -> None:
    measured = measure_here(Task("sleeps", setup_sleeps, {"pauses": [0.5, 0.09, 0.03, 0.15]}, warmup=1, repeats=3))
    assert measured["seconds"] == pytest.approx(0.09, abs=0.03) and len(measured["times"]) == 3
    assert measured["info"] == {"pause": 0.09}


def test_failures_and_the_memory_cap_become_notes() -> None:
    failed = measure(Task("broken", setup_failing, warmup=0, repeats=1), RunOptions())
    assert failed.status == "failed" and failed.note == "ValueError: no such model" and failed.seconds is None
    capped = measure(Task("huge", setup_allocate, {"megabytes": 64 * 1024}, warmup=0, repeats=1), RunOptions(memory_cap_mb=2048))
    assert capped.status == "failed" and capped.note == "out of memory under the 2 GB cap"


# --- Every benchmark end to end, tiny ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_report() -> Report:
    return run_benchmarks(None, "tiny", RunOptions(threads=1))


def test_tiny_run_times_both_sides_of_every_benchmark(tiny_report: Report) -> None:
    assert {row.benchmark for row in tiny_report.rows} == set(NAMES)
    assert [row.case.split()[0] for row in tiny_report.rows if row.benchmark == "mixers"] == list(ARCHS)
    for row in tiny_report.rows:
        assert row.ours.ok and row.ours.seconds > 0 and row.ours.peak_rss_mb > 50, row
        if row.baseline.status == "skipped":  # only mambapy is optional
            assert row.benchmark == "mamba" and MAMBAPY_INSTALL in row.baseline.note
            continue
        assert row.baseline.ok and row.baseline.seconds > 0, row.baseline.note
        assert math.isfinite(row.ratio) and row.ratio == pytest.approx(row.baseline.seconds / row.ours.seconds)
    for name in ("pgd", "autoattack"):
        (row,) = [r for r in tiny_report.rows if r.benchmark == name]
        assert 0.0 <= row.fields["robust_acc_ours"] <= 1.0 and "agree" in row.fields


def test_commit_benchmark_runs_this_tree_and_the_baseline_commit_side_by_side(tiny_report: Report) -> None:
    rows = [row for row in tiny_report.rows if row.benchmark == "commit"]
    cases = [row.case.split(",")[0] for row in rows]
    assert cases == ["PGD-AT epoch", "TRADES epoch", "fwd+bwd", "AutoAttack standard", "AutoAttack standard",
                     "GFLOP/s of the S4 training pass"]
    assert rows[0].baseline.label == f"commit {BASELINE_COMMIT}"
    assert rows[4].baseline.label == "AutoAttack.run_standard_evaluation"
    # Both sides trained the same model from the same seed: the weights agree up to the rounding
    # of the short-L convolution (direct here, FFT in the baseline) and, for TRADES, of the kernel
    # gradient summed over its two passes before its backward (shared_weights).
    for row in rows[:2]:
        assert row.ours.ok and row.baseline.ok and 0.0 <= row.fields["max_weight_diff"] < 1e-3
    for row in rows[3:5]:
        assert row.fields["same_outcomes"] is True and row.fields["robust_acc_ours"] == row.fields["robust_acc_baseline"]
        assert row.fields["s_per_example_ours"] == pytest.approx(row.ours.seconds / 2)
    gflops = rows[5].fields
    assert gflops["ours_gflops"] > 0 and gflops["matmul_gflops"] > 0
    assert gflops["ours_fraction_of_matmul"] == pytest.approx(gflops["ours_gflops"] / gflops["matmul_gflops"])


def test_the_baseline_is_the_commit_tree_extracted_not_a_registered_worktree(tmp_path: Path) -> None:
    tree, why = baseline_tree(Context("tiny", RunOptions(), tmp_path), BASELINE_COMMIT)
    assert why == "" and tree == tmp_path / "baseline"
    assert (tree / "model_zoo" / "layers" / "s4.py").is_file() and not (tree / "model_zoo" / "layers" / "lti.py").exists()
    assert not (tree / ".git").exists()  # nothing registered in the repository: nothing to clean up


def test_a_baseline_commit_that_does_not_exist_is_a_skipped_side_with_the_reason(tmp_path: Path) -> None:
    context = Context("tiny", RunOptions(threads=1, baseline_commit="no-such-revision"), tmp_path)
    tree, why = baseline_tree(context, "no-such-revision")
    assert tree is None and "cannot check out baseline commit no-such-revision" in why


def test_the_baseline_side_imports_nothing_from_this_checkout(tmp_path: Path) -> None:
    """A tree without ssmbench/allocator.py runs without the allocator setting, even though an
    editable install of this checkout (CI's) could resolve the missing module to ours."""
    import subprocess
    import sys

    tree = tmp_path / "tree"
    for package in ("ssmbench", "model_zoo"):
        (tree / package).mkdir(parents=True)
        (tree / package / "__init__.py").write_text("")
    probe = (f"import runpy; ns = runpy.run_path({str(Path(commit_worker.__file__))!r}); "
             "ns['import_from_the_tree_only'](); print(ns['process_settings']()['retain_freed_memory'])")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-P", "-c", probe], cwd=tree, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"]


def test_the_worker_counts_fft_flops_that_torch_leaves_out() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=commit_worker._FFTFlops.mapping())
    with counter:
        torch.fft.rfft(torch.randn(3, 1024))
    assert counter.get_total_flops() == pytest.approx(3 * 2.5 * 1024 * 10)


def test_report_names_the_machine_in_markdown_and_json(tiny_report: Report, tmp_path: Path) -> None:
    text = tiny_report.markdown()
    machine = text.splitlines()[0]
    for expected in (cpu_model(), f"{os.cpu_count()} cores", f"torch {torch.__version__}", "load average", "Scale: tiny"):
        assert expected in machine
    assert len([line for line in text.splitlines() if line.startswith("| ")]) == len(tiny_report.rows) + 1
    json_path, markdown_path = tiny_report.write(tmp_path / "results" / "today.json")
    saved = json.loads(json_path.read_text())
    assert [row["name"] for row in saved["rows"]] == [row.benchmark for row in tiny_report.rows]
    assert saved["machine"]["cpu"] == cpu_model() and markdown_path.read_text() == text


def test_cli_writes_the_results_and_prints_the_table(
    tiny_report: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []

    def fake_run(names: list[str] | None, scale: str, options: RunOptions, on_task: object) -> Report:
        calls.append((names, scale, options))
        return tiny_report

    monkeypatch.setattr(benchmarks, "run_benchmarks", fake_run)
    out = tmp_path / "bench.json"
    assert main(["bench", "pgd", "mixers", "--quick", "--device", "cpu", "--threads", "1", "--out", str(out), "--markdown"]) == 0
    assert calls == [(["pgd", "mixers"], "quick", RunOptions(device="cpu", threads=1))]
    assert main(["bench", "commit", "--quick", "--baseline-commit", "abc123", "--out", str(out)]) == 0
    assert calls[-1] == (["commit"], "quick", RunOptions(device=calls[-1][2].device, baseline_commit="abc123"))
    printed = capsys.readouterr().out
    assert "| mixers | s4 " in printed and out.is_file() and out.with_suffix(".md").is_file()

    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in NAMES)
    assert main(["bench", "nosuch"]) == 2
    assert "unknown benchmark 'nosuch'" in capsys.readouterr().err
