"""`commit`: this source tree against the baseline commit, each side in a fresh process of its own.

The baseline commit (runner.BASELINE_COMMIT: main before the speed work of issue 18, or
`ssmbench bench --baseline-commit REV`) is checked out into the run's temporary folder (its tree,
extracted with `git archive`), which goes with the run. Every case runs `benchmarks/commit_worker.py` twice with the same
arguments, once with PYTHONPATH on this tree and once on the baseline's, so both sides execute the
same harness around their own `model_zoo` / `ssmbench`, with the process settings its own `ssmbench`
command applies at startup (`process_settings` in the worker: the allocator setting of
ssmbench/allocator.py where the tree has it, so not in the baseline). Cases:

- `epoch`: one PGD-AT epoch (PGD-10, eps 8/255, step 2/255, Adam 1e-3, seed 0) on the 1437 digits
  training images, through each tree's own `pgd` method, at batch 64 and 256, for S4,
  S4 + AdS tanh, DSS and Mamba, and one TRADES and one YOPO epoch of S4 at batch 64 (the methods
  whose training passes share one kernel per batch). `max_weight_diff` compares the two sides'
  weights after it.
- `fwd_bwd`: one training forward + backward at L = 784 (MNIST preset: 2 layers, d_model 128,
  d_state 32), batch 64, for every mixer and DSS + AdS tanh.
- `autoattack`: AutoAttack standard (eps 8/255) on the first n digits test images of the robust
  zoo model s4-pgd-tanh-digits, seconds per example: ours, the baseline's suite, and the authors'
  `AutoAttack.run_standard_evaluation` run directly on the same model and images (the
  `official` row); `same_outcomes` says whether the per-example results are identical.
- `gflops`: achieved GFLOP/s of the S4 training pass at L = 784 (FLOPs counted by torch's
  FlopCounterMode, FFTs at 5 n log2 n) against a dense float32 matmul in the same process.

Targets of issue 18 (checked on a quiet machine, not by tests): PGD-AT epoch at batch 64 <= 0.5x
the baseline's time for S4 and S4 + AdS tanh; fwd+bwd at L = 784 <= 0.7x for DSS and DSS + AdS;
nothing slower than the baseline.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from benchmarks import Context, Measurement, Row, register_benchmark, skipped
from benchmarks.runner import load_average
from model_zoo.labels import method_label

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("commit_worker.py")
ROBUST_MODEL = ROOT / "model_zoo" / "weights" / "s4-pgd-tanh-digits.safetensors"
EPS = 8 / 255


@dataclass(frozen=True)
class CommitScale:
    epochs: tuple[tuple[str, str], ...]  # (arch, ads)
    epoch_batches: tuple[int, ...]
    fwd_bwd: tuple[tuple[str, str], ...]
    autoattack_examples: int
    train_examples: int | None = None
    fwd_bwd_batch: int = 64
    fwd_bwd_repeats: int = 3
    model: dict[str, Any] = field(default_factory=dict)
    autoattack_eps: float = EPS
    matmul_size: int = 2048
    steps: int = 10
    method_epochs: tuple[tuple[str, str, str], ...] = ()  # (arch, ads, method) epochs at the first batch size


EPOCH_CASES = (("s4", "none"), ("s4", "tanh"), ("dss", "none"), ("mamba", "none"))
# The methods whose training passes share one kernel per batch (shared_weights): TRADES, YOPO.
METHOD_EPOCH_CASES = (("s4", "none", "trades"), ("s4", "none", "yopo"))
FWD_BWD_CASES = (("s4", "none"), ("dss", "none"), ("dss", "tanh"), ("s4d", "none"), ("s5", "none"),
                 ("mamba", "none"), ("mega", "none"))
SCALES = {
    "full": CommitScale(EPOCH_CASES, (64, 256), FWD_BWD_CASES, autoattack_examples=8, method_epochs=METHOD_EPOCH_CASES),
    "quick": CommitScale(EPOCH_CASES[:2], (64,), FWD_BWD_CASES[:3], autoattack_examples=4, train_examples=256,
                         fwd_bwd_repeats=1),
    # Seconds: the plumbing of both sides, with a radius so large that APGD-CE breaks every point.
    "tiny": CommitScale(EPOCH_CASES[:1], (8,), FWD_BWD_CASES[:1], autoattack_examples=2, train_examples=16,
                        fwd_bwd_batch=2, fwd_bwd_repeats=1, model={"n_layers": 1, "d_model": 8, "d_state": 4},
                        autoattack_eps=0.5, matmul_size=64, steps=2, method_epochs=METHOD_EPOCH_CASES[:1]),
}


def baseline_tree(ctx: Context, commit: str) -> tuple[Path | None, str]:
    """The tree of `commit` extracted into the scratch folder (`git archive`); (path, '') or (None, why).

    An archive rather than `git worktree add`: it leaves nothing in the repository to clean up,
    even when the run is killed, and the scratch folder goes with the run.
    """
    path = ctx.scratch / "baseline"
    if path.is_dir():
        return path, ""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode:
        reason = archive.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit code {archive.returncode}"]
        return None, f"cannot check out baseline commit {commit}: {reason[0]}"
    path.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(path, filter="data")
    return path, ""


def run_side(ctx: Context, label: str, tree: Path, case: dict[str, Any]) -> Measurement:
    """Run the worker on `tree` for `case` in a fresh interpreter and read back its measurement."""
    if ctx.on_task is not None:
        ctx.on_task(f"{ctx.benchmark}/{case['kind']}", label)
    options = ctx.options
    payload = {**case, "device": options.device, "threads": options.threads}
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        done = subprocess.run([sys.executable, "-P", str(WORKER), json.dumps(payload)], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=options.timeout_s)
    except subprocess.TimeoutExpired:
        return Measurement(label, "failed", note=f"timed out after {options.timeout_s:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return Measurement(label, "failed", note=reason[:200])
    result = json.loads(lines[-1][len("RESULT "):])
    return Measurement(label, "ok", seconds=result["seconds"], times=tuple(result["times"]),
                       peak_rss_mb=result["peak_rss_mb"], info=result["info"], load_average=load_average())


def max_weight_diff(ours: Path, theirs: Path) -> float | None:
    if not (ours.is_file() and theirs.is_file()):
        return None
    a, b = load_file(str(ours)), load_file(str(theirs))
    if a.keys() != b.keys():
        return None
    return max((a[name] - b[name]).abs().max().item() for name in a)


def _case_name(arch: str, ads: str) -> str:
    return arch + (f" + AdS {ads}" if ads != "none" else "")


@register_benchmark("commit")
def commit_benchmark(ctx: Context) -> list[Row]:
    """This tree against the baseline commit (extracted to a temporary folder): PGD-AT epochs, fwd+bwd, AutoAttack, GFLOP/s."""
    scale = SCALES[ctx.scale]
    commit = ctx.options.baseline_commit
    label = f"commit {commit}"
    tree, why = baseline_tree(ctx, commit)
    return _rows(ctx, scale, tree, label, why)


def _rows(ctx: Context, scale: CommitScale, tree: Path | None, label: str, why: str) -> list[Row]:
    def both(case: dict[str, Any], name: str, extra: dict[str, Any] | None = None) -> tuple[Measurement, Measurement]:
        mine = run_side(ctx, "ours", ROOT, {**case, **(extra or {}).get("ours", {})})
        if tree is None:
            return mine, skipped(label, why)
        return mine, run_side(ctx, label, tree, {**case, **(extra or {}).get("baseline", {})})

    rows = []
    train_file = str(ctx.cached_split("digits", "train"))
    epochs = [(arch, ads, "pgd", batch) for arch, ads in scale.epochs for batch in scale.epoch_batches]
    epochs += [(arch, ads, method, scale.epoch_batches[0]) for arch, ads, method in scale.method_epochs]
    for arch, ads, method, batch in epochs:
        weights = {side: ctx.scratch / f"{arch}-{ads}-{method}-{batch}-{side}.safetensors" for side in ("ours", "baseline")}
        case = {"kind": "epoch", "arch": arch, "ads": ads, "batch_size": batch, "train_file": train_file, "method": method,
                "train_examples": scale.train_examples, "model": scale.model, "steps": scale.steps}
        mine, theirs = both(case, "epoch", {side: {"weights_out": str(path)} for side, path in weights.items()})
        n = scale.train_examples or "1437"
        rows.append(Row("commit", f"{method_label(method)} epoch, {_case_name(arch, ads)}, digits {n} images, batch {batch}",
                        mine, theirs, {"max_weight_diff": max_weight_diff(weights["ours"], weights["baseline"])}))
    for arch, ads in scale.fwd_bwd:
        case = {"kind": "fwd_bwd", "arch": arch, "ads": ads, "batch_size": scale.fwd_bwd_batch, "shape": [1, 28, 28],
                "model": scale.model, "repeats": scale.fwd_bwd_repeats}
        mine, theirs = both(case, "fwd_bwd")
        rows.append(Row("commit", f"fwd+bwd, {_case_name(arch, ads)}, L 784, batch {scale.fwd_bwd_batch}", mine, theirs))
    rows.extend(_autoattack_rows(ctx, scale, both))
    case = {"kind": "gflops", "batch_size": scale.fwd_bwd_batch, "model": scale.model, "matmul_size": scale.matmul_size}
    mine, theirs = both(case, "gflops")
    fields = {f"{side}_{key}": m.info.get(key) for side, m in (("ours", mine), ("baseline", theirs))
              for key in ("gflops", "fraction_of_matmul") if m.ok}
    fields["matmul_gflops"] = mine.info.get("matmul_gflops") if mine.ok else None
    rows.append(Row("commit", f"GFLOP/s of the S4 training pass, L 784, batch {scale.fwd_bwd_batch}", mine, theirs, fields))
    return rows


def _autoattack_rows(ctx: Context, scale: CommitScale, both: Any) -> list[Row]:
    n = scale.autoattack_examples
    case = {"kind": "autoattack", "checkpoint": str(ROBUST_MODEL), "test_file": str(ctx.cached_split("digits", "test")),
            "n_examples": n, "eps": scale.autoattack_eps, "implementation": "ssmbench"}
    mine, theirs = both(case, "autoattack")
    official = run_side(ctx, "AutoAttack.run_standard_evaluation", ROOT, {**case, "implementation": "official"})
    name = f"AutoAttack standard, s4-pgd-tanh-digits, {n} digits test images"
    rows = []
    for other in (theirs, official):
        fields: dict[str, Any] = {}
        if mine.ok and other.ok:
            fields = {"robust_acc_ours": mine.info["robust_acc"], "robust_acc_baseline": other.info["robust_acc"],
                      "same_outcomes": mine.info["robust"] == other.info["robust"],
                      "s_per_example_ours": mine.info["seconds_per_example"],
                      "s_per_example_baseline": other.info["seconds_per_example"]}
        rows.append(Row("commit", name, mine, other, fields))
    return rows
