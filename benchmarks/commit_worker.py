"""One side of a `commit` benchmark case, run as a script in a fresh interpreter:

    PYTHONPATH=<tree> python -P benchmarks/commit_worker.py '<case as JSON>'

It imports `model_zoo` and `ssmbench` from whichever source tree PYTHONPATH names (this checkout,
or the baseline commit's temporary worktree), so it may use only what both trees have: build_model,
the training methods' registry and context, the attack suites, ssmbench.load. It imports nothing
from `benchmarks` (the baseline tree's copy is older). The last line it prints is
`RESULT {json}`: seconds (median of the timed repeats), times, peak RSS (MiB) and case results.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

EPS = 8 / 255
ALPHA = 2 / 255
SEED = 0


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step: Callable[[], dict[str, Any] | None], warmup: int, repeats: int, device: str) -> dict[str, Any]:
    for _ in range(warmup):
        step()
    synchronize(device)
    reset_peak_rss()
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        info = step() or {}
        synchronize(device)
        runs.append((time.perf_counter() - started, info))
    times = [seconds for seconds, _ in runs]
    return {"seconds": statistics.median(times), "times": times, "peak_rss_mb": peak_rss_mb(),
            "info": sorted(runs, key=lambda run: run[0])[len(runs) // 2][1]}


def load_split(path: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(path)
    return tensors["images"][:n], tensors["labels"][:n]


def build(arch: str, dataset: str, ads: str, overrides: dict[str, Any], device: str) -> torch.nn.Module:
    from model_zoo import build_model

    torch.manual_seed(SEED)
    return build_model(arch, dataset, ads=ads, **overrides).to(device)


def method_context(name: str, optimizer: torch.optim.Optimizer, steps: int, generator: torch.Generator) -> Any:
    """The method's context in either tree's API: a ThreatModel and the method's registered
    parameter dataclass (after issue 10), or the flat fields of the baseline commit."""
    from model_zoo.training import methods

    try:
        from model_zoo.training.settings import ThreatModel
    except ImportError:
        return methods.MethodContext(optimizer=optimizer, eps=EPS, alpha=ALPHA, steps=steps, generator=generator)
    params = methods.METHODS.get(name).params()
    return methods.MethodContext(optimizer, params, ThreatModel(eps=EPS, alpha=ALPHA, steps=steps), generator=generator)


def case_epoch(case: dict[str, Any], device: str) -> dict[str, Any]:
    """One PGD-AT epoch (PGD-10, eps 8/255, step 2/255) through the tree's own `pgd` method, on
    the images in `train_file` (digits by default; `dataset` names the model preset)."""
    from model_zoo.training import methods

    images, labels = load_split(case["train_file"], case.get("train_examples"))
    images, labels = images.to(device), labels.to(device)
    model = build(case["arch"], case.get("dataset", "digits"), case["ads"], case.get("model", {}), device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    name = case.get("method", "pgd")
    ctx = method_context(name, optimizer, case.get("steps", 10), torch.Generator(device=device).manual_seed(SEED))
    method = methods.get_method(name)
    batch = case["batch_size"]
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SEED)).to(device)

    def epoch() -> None:
        for start in range(0, len(images), batch):
            rows = order[start:start + batch]
            method(model, images[rows], labels[rows], ctx)

    result = timed(epoch, warmup=0, repeats=1, device=device)
    if case.get("weights_out"):
        from safetensors.torch import save_file

        save_file({name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}, case["weights_out"])
    return result


def case_fwd_bwd(case: dict[str, Any], device: str) -> dict[str, Any]:
    """One training forward + backward (no optimizer step) on random images of the dataset's shape."""
    model = build(case["arch"], case.get("dataset", "mnist"), case["ads"], case.get("model", {}), device).train()
    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(case["batch_size"], *case["shape"], generator=generator).to(device)
    labels = torch.randint(0, 10, (case["batch_size"],), generator=generator).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    return timed(step, warmup=case.get("warmup", 1), repeats=case.get("repeats", 3), device=device)


def _outcomes(flags: torch.Tensor) -> str:
    return "".join("1" if flag else "0" for flag in flags.tolist())


def case_autoattack(case: dict[str, Any], device: str) -> dict[str, Any]:
    """AutoAttack 'standard' (eps 8/255) on the first n test examples: the tree's own suite
    (`implementation` ssmbench) or the authors' `AutoAttack.run_standard_evaluation` directly."""
    import ssmbench

    model = ssmbench.load(case["checkpoint"], device).eval()
    images, labels = load_split(case["test_file"], case["n_examples"])
    eps = case.get("eps", EPS)
    images, labels = images.to(device), labels.to(device)
    if case["implementation"] == "ssmbench":
        from ssmbench.attacks import AttackSettings, build_suite

        suite = build_suite("autoattack", AttackSettings(eps=eps, backend="official", version="standard", seed=SEED))

        def step() -> dict[str, Any]:
            result = suite.run(model, images, labels)
            return {"robust_acc": result.robust.float().mean().item(), "robust": _outcomes(result.robust)}
    else:
        from pyautoattack import AutoAttack

        def step() -> dict[str, Any]:
            runner = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=SEED, device=images.device)
            x_adv, _ = runner.run_standard_evaluation(images, labels, batch_size=len(images))
            with torch.no_grad():
                robust = model(x_adv).argmax(1) == labels
            return {"robust_acc": robust.float().mean().item(), "robust": _outcomes(robust)}

    result = timed(step, warmup=0, repeats=1, device=device)
    result["info"]["seconds_per_example"] = result["seconds"] / len(images)
    return result


class _FFTFlops:
    """FLOP formulas for the FFTs, which torch's FlopCounterMode does not count: the usual
    5 n log2 n for a complex transform of size n, half of it for a real one."""

    @staticmethod
    def mapping() -> dict[Any, Callable[..., int]]:
        import math

        aten = torch.ops.aten

        def transform(real: bool) -> Callable[..., int]:
            def flops(input_shape: Any, dim: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
                sizes = [(out_shape if not real or out_shape is None else input_shape)[d] for d in dim]
                n = math.prod(max(s, 2) for s in sizes)
                count = math.prod(input_shape) // math.prod(input_shape[d] for d in dim)
                return int((2.5 if real else 5.0) * n * math.log2(n) * count)

            return flops

        return {aten._fft_r2c: transform(True), aten._fft_c2r: transform(True), aten._fft_c2c: transform(False)}


def case_gflops(case: dict[str, Any], device: str) -> dict[str, Any]:
    """Achieved GFLOP/s of the S4 training pass (fwd + bwd at L = 784, batch 64: matmul and FFT
    FLOPs counted by torch's FlopCounterMode) next to a dense float32 matmul's on this machine."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build("s4", "mnist", "none", case.get("model", {}), device).train()
    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(case["batch_size"], 1, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, 10, (case["batch_size"],), generator=generator).to(device)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()

    try:
        counter = FlopCounterMode(display=False, custom_mapping=_FFTFlops.mapping())
    except TypeError:  # an older torch without custom formulas: matmul FLOPs only
        counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    result = timed(step, warmup=1, repeats=case.get("repeats", 3), device=device)
    n = case["matmul_size"]
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    matmul = timed(lambda: {"_": torch.mm(a, b).sum().item() * 0}, warmup=1, repeats=5, device=device)
    result["info"] = {"gflop": flops / 1e9, "gflops": flops / 1e9 / result["seconds"],
                      "matmul_gflops": 2 * n**3 / 1e9 / matmul["seconds"]}
    result["info"]["fraction_of_matmul"] = result["info"]["gflops"] / result["info"]["matmul_gflops"]
    return result


CASES = {"epoch": case_epoch, "fwd_bwd": case_fwd_bwd, "autoattack": case_autoattack, "gflops": case_gflops}


def import_from_the_tree_only() -> None:
    """Drop the import finders of an editable install of this project (`pip install -e`), before
    any `model_zoo` / `ssmbench` import. For a module that the PYTHONPATH tree lacks, such a finder
    imports this checkout's copy instead, so the baseline side would run our code: it did, for
    ssmbench.allocator (absent in de74342) in the run of benchmarks/results/2026-12-03-allocator."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not finder.__module__.startswith("__editable__")]


def process_settings() -> dict[str, Any]:
    """What the tree's `ssmbench` command sets in its process before any work, applied here too so
    that each side runs as its own CLI would: the allocator setting (ssmbench/allocator.py) where
    the tree has it."""
    try:
        from ssmbench.allocator import retain_freed_memory
    except ImportError:
        return {"retain_freed_memory": False}
    return {"retain_freed_memory": retain_freed_memory()}


def main() -> None:
    case = json.loads(sys.argv[1])
    import_from_the_tree_only()
    settings = process_settings()
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    result = CASES[case["kind"]](case, case.get("device", "cpu"))
    result["info"].update(settings)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
