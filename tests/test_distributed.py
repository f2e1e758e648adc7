"""Data-parallel training and evaluation under torchrun (2 CPU processes, gloo) give the numbers
of one process; the precision policy (bf16 autocast for training passes only, never evaluation).

The 2-process runs happen once per module (a launcher script written here, run by
`python -m torch.distributed.run`, and the real CLI under torchrun); the one-process references
are computed in this process with the same settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file

from model_zoo import build_model
from model_zoo.checkpoints import load
from model_zoo.errors import UsageError
from model_zoo.training import EpochRecord, TrainObserver, get_method, read_history
from model_zoo.training import trainer as trainer_module
from model_zoo.training.distributed import DataParallel, Workers, shard_bounds
from model_zoo.training.methods import MethodContext, YopoParams
from model_zoo.training.perturb import input_gradient, pgd
from model_zoo.training.settings import ThreatModel
from model_zoo.training.trainer import EVAL_STEPS, TrainConfig, evaluate_pgd10, resolve_precision, seed_everything, train
from ssmbench.data import load_split
from ssmbench.evaluate import EvalSettings, evaluate
from ssmbench.leaderboard import read

MODEL = {"d_model": 16, "d_state": 8, "n_layers": 1}
# 99 training images in batches of 32: the last batch (3) splits 2 + 1, so the gradient average
# must weight the ranks by their rows.
CONFIG = {"epochs": 1, "batch_size": 32, "eps": 0.1, "alpha": 0.03, "steps": 2, "yopo_m": 2, "yopo_n": 2,
          "train_examples": 99, "eval_examples": 40, "seed": 0}
METHODS = ("st", "pgd", "trades", "mart", "fgsm-rs", "yopo")
# FreeAT carries its perturbation across batches and epochs (per-example state that the ranks
# hold in shards): resumed runs check that it is gathered and split again. Its batches must be
# whole: a short last batch reuses the first rows of each rank's share, not of the whole batch.
RESUME = {"method": "freeat", "epochs": 2, "batch_size": 32, "eps": 0.1, "freeat_m": 2, "freeat_full_epochs": True,
          "train_examples": 96, "eval_examples": 40, "seed": 1}
REFUSED = ({"batch_size": 33}, {"train_examples": 65})  # 33 = 2 x 16 + 1; 65 = 2 x 32 + a last batch of 1
EVAL = {"eps": 0.03, "n_examples": 100, "batch_size": 16}  # 7 batches: the last round has one idle rank
CLI_TRAIN = ["--at", "st", "--epochs", "1", "--train-examples", "64", "--eval-examples", "16", "--batch-size", "32"]

LAUNCHER = '''
"""Run on every rank by tests/test_distributed.py under torchrun; argv[1] is the plan (JSON)."""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from model_zoo import build_model
from model_zoo.checkpoints import load
from model_zoo.errors import UsageError
from model_zoo.training import TrainObserver, distributed
from model_zoo.training.trainer import TrainConfig, seed_everything, train
from ssmbench.data import load_split
from ssmbench.evaluate import EvalSettings, evaluate


class StopAfterFirstEpoch(TrainObserver):
    def on_epoch(self, record, is_best):
        raise KeyboardInterrupt


plan = json.loads(Path(sys.argv[1]).read_text())
out = Path(plan["out"])
data = load_split("digits", "train"), load_split("digits", "test")


def tiny(seed):
    seed_everything(seed)
    return build_model("s4d", "digits", **plan["model"])


with distributed.process_group(torch.device("cpu")):
    for method in plan["methods"]:
        train(tiny(0), *data, TrainConfig.from_settings(method=method, **plan["config"]), out / method)
    resume = TrainConfig.from_settings(**plan["resume"])
    try:
        train(tiny(resume.seed), *data, resume, out / "resumed", observer=StopAfterFirstEpoch())
    except KeyboardInterrupt:
        pass
    train(tiny(99), *data, resume, out / "resumed", resume=True)  # the state file restores the weights
    train(tiny(99), *data, resume, plan["killed_by_one_process"], resume=True)
    refused = []
    for overrides in plan["refused"]:
        try:
            train(tiny(0), *data, TrainConfig.from_settings(method="st", **{**plan["config"], **overrides}), out / "refused")
        except UsageError as exc:
            refused.append(str(exc))
    model, _ = load(plan["eval_checkpoint"])
    e = plan["eval"]
    result = evaluate(model, data[1], "pgd10", EvalSettings(eps=e["eps"], n_examples=e["n_examples"], batch_size=e["batch_size"], device="cpu", checks=None))
    if distributed.current().is_main:
        flags = {"clean": result.per_example.clean, "robust": result.per_example.robust}
        save_file({k: v.to(torch.uint8) for k, v in flags.items()}, out / "flags.safetensors")
        (out / "refused.json").write_text(json.dumps(refused))
'''

Data = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Job:
    one: Path  # one-process reference runs
    two: Path  # what the 2-process launcher wrote
    eval_checkpoint: Path
    cli_run: Path
    cli_train: subprocess.CompletedProcess[str]
    cli_eval: subprocess.CompletedProcess[str]
    leaderboard: Path


class StopAfterFirstEpoch(TrainObserver):
    def on_epoch(self, record: EpochRecord, is_best: bool) -> None:
        raise KeyboardInterrupt


def tiny_model(seed: int = 0) -> torch.nn.Module:
    seed_everything(seed)
    return build_model("s4d", "digits", **MODEL)


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}  # no wrapped lines
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _check(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def data() -> tuple[Data, Data]:
    return load_split("digits", "train"), load_split("digits", "test")


@pytest.fixture(scope="module")
def job(data: tuple[Data, Data], tmp_path_factory: pytest.TempPathFactory) -> Job:
    root = tmp_path_factory.mktemp("distributed")
    one, two = root / "one", root / "two"
    for method in METHODS:
        train(tiny_model(), *data, TrainConfig.from_settings(method=method, **CONFIG), one / method)
    resume = TrainConfig.from_settings(**RESUME)
    train(tiny_model(RESUME["seed"]), *data, resume, one / "resumed")
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 1 in one process, resumed by two
        train(tiny_model(RESUME["seed"]), *data, resume, two / "killed-by-one", observer=StopAfterFirstEpoch())
    # A model that is right on about half of the digits and robust on fewer, so that flags can disagree.
    seed_everything(0)
    evaluated = build_model("s4d", "digits", d_model=32, d_state=16, n_layers=1)
    train(evaluated, *data, TrainConfig.from_settings(method="st", epochs=5, batch_size=32, lr=1e-2, eval_examples=16), root / "eval")
    plan = {"out": str(two), "model": MODEL, "methods": METHODS, "config": CONFIG, "resume": RESUME,
            "killed_by_one_process": str(two / "killed-by-one"), "refused": REFUSED,
            "eval_checkpoint": str(root / "eval" / "last.safetensors"), "eval": EVAL}
    (root / "plan.json").write_text(json.dumps(plan))
    (root / "launcher.py").write_text(LAUNCHER)
    _check(torchrun(str(root / "launcher.py"), str(root / "plan.json"), cwd=root))

    cli_run, leaderboard = root / "cli-run", root / "results.parquet"
    cli_train = torchrun("-m", "ssmbench", "train", "s4d", *CLI_TRAIN, "--out", str(cli_run), cwd=root)
    _check(cli_train)
    cli_eval = torchrun("-m", "ssmbench", "eval", str(cli_run), "--attack", "pgd10", "--n-examples", "48",
                        "--batch-size", "16", "--no-checks", "--leaderboard", str(leaderboard), cwd=root)
    _check(cli_eval)
    return Job(one, two, root / "eval" / "last.safetensors", cli_run, cli_train, cli_eval, leaderboard)


def max_weight_difference(a: Path, b: Path) -> float:
    first, second = load(a)[0].state_dict(), load(b)[0].state_dict()
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


def assert_same_history(a: Path, b: Path) -> None:
    timing = ("seconds", "samples_per_s")
    for mine, theirs in zip(read_history(a / "history.parquet"), read_history(b / "history.parquet"), strict=True):
        for key, value in mine.to_dict().items():
            if key not in timing:
                assert theirs.to_dict()[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_train_the_weights_of_one(method: str, job: Job) -> None:
    """Same global batch, same order, same attack noise (each rank draws its rows of it): the
    weights after an epoch agree to float rounding, also over the unevenly split last batch."""
    assert max_weight_difference(job.one / method / "last.safetensors", job.two / method / "last.safetensors") < 1e-5
    assert_same_history(job.one / method, job.two / method)
    meta = load(job.two / method / "last.safetensors")[1]
    assert meta.training["processes"] == 2 and meta.training["autocast"] == "fp32"


@pytest.mark.parametrize("run", ["resumed", "killed-by-one"])
def test_resume_under_torchrun_ends_like_an_uninterrupted_run(run: str, job: Job) -> None:
    """Killed after epoch 1 by 2 processes, or by 1, then resumed by 2: FreeAT's perturbation
    is gathered into the state file and split again, so epoch 2 is the uninterrupted one's."""
    assert max_weight_difference(job.one / "resumed" / "last.safetensors", job.two / run / "last.safetensors") < 1e-5
    assert_same_history(job.one / "resumed", job.two / run)
    assert [record.epoch for record in read_history(job.two / run / "history.parquet")] == [1, 2]


def test_a_batch_that_cannot_be_split_is_refused(job: Job) -> None:
    refused = json.loads((job.two / "refused.json").read_text())
    assert len(refused) == 2
    assert "batch size 33 (the global batch) must be divisible by the number of processes, 2" in refused[0]
    assert "the last batch would hold 1 of the 65 training images, fewer than the 2 processes" in refused[1]


def test_distributed_evaluation_gives_the_flags_of_one_process(job: Job, data: tuple[Data, Data]) -> None:
    model, _ = load(job.eval_checkpoint)
    single = evaluate(model, data[1], "pgd10", EvalSettings(eps=EVAL["eps"], n_examples=EVAL["n_examples"], batch_size=EVAL["batch_size"], device="cpu", checks=None))
    merged = load_file(job.two / "flags.safetensors")
    assert 0 < single.per_example.robust.sum() < single.per_example.clean.sum() < EVAL["n_examples"]  # flags that could disagree
    assert torch.equal(merged["clean"].bool(), single.per_example.clean)
    assert torch.equal(merged["robust"].bool(), single.per_example.robust)


def test_cli_train_under_torchrun_writes_once_and_prints_once(job: Job) -> None:
    out = job.cli_train.stdout
    assert out.count("Diff (best - last)") == 1 and out.count("x 2 processes") == 1
    for name in ("best.safetensors", "last.safetensors", "history.parquet", "curves.png", "state.safetensors"):
        assert (job.cli_run / name).is_file(), name
    meta = load(job.cli_run / "last.safetensors")[1]
    assert meta.training["processes"] == 2 and meta.training["batch_size"] == 32 and meta.training["precision"] == "auto"


def test_cli_eval_under_torchrun_records_once_what_one_process_measures(job: Job, data: tuple[Data, Data]) -> None:
    """Rank 0 alone prints the table and appends one row per checkpoint (best, last)."""
    assert job.cli_eval.stdout.count("appended 2 row(s)") == 1
    rows = read(job.leaderboard)
    assert [row.checkpoint_kind for row in rows] == ["best", "last"]
    for row in rows:
        model, _ = load(job.cli_run / f"{row.checkpoint_kind}.safetensors")
        single = evaluate(model, data[1], "pgd10", EvalSettings(eps=8 / 255, n_examples=48, batch_size=16, device="cpu", checks=None))
        assert (row.n_examples, row.clean_acc, row.robust_acc) == (48, single.clean_acc, single.robust_acc)


def test_shards_cover_a_batch_in_order() -> None:
    shards = [shard_bounds(7, Workers(rank, 3)) for rank in range(3)]
    assert shards == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(64, Workers(rank, 2)) for rank in range(2)] == [(0, 32), (32, 64)]


def test_precision_auto_is_fp32_on_cpu_and_bf16_is_refused_there() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is torch.float32
    assert resolve_precision("fp32", cpu) is torch.float32
    with pytest.raises(UsageError, match="bf16 needs a CUDA device"):
        resolve_precision("bf16", cpu)
    with pytest.raises(UsageError, match="precision must be one of auto, fp32, bf16"):
        TrainConfig.from_settings(precision="fp16")


class AutocastProbe:
    """Records, for every forward pass: train mode, input gradient wanted, grad mode, autocast on."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[bool, bool, bool, bool]] = []
        model.register_forward_pre_hook(self.record)

    def record(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self.calls.append((module.training, inputs[0].requires_grad, torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))


def test_bf16_autocast_covers_the_update_passes_only(
    data: tuple[Data, Data], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the policy forced to bf16 (CPU autocast stands in for CUDA's), PGD-AT's update pass
    runs under autocast; its attack's input gradients, the clean metrics and the per-epoch
    evaluation do not."""
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda precision, device: torch.bfloat16)
    model = tiny_model()
    probe = AutocastProbe(model)
    config = TrainConfig.from_settings(method="pgd", epochs=1, batch_size=16, steps=2, train_examples=32, eval_examples=16)
    result = train(model, *data, config, tmp_path)
    update = [c for c in probe.calls if c[0] and not c[1] and c[2]]
    others = [c for c in probe.calls if c not in update]
    assert len(update) == 2 and all(c[3] for c in update)  # one update pass per batch, in bf16
    # per batch: clean metrics + 2 attack steps; evaluation: EVAL_STEPS attack steps + clean + adversarial
    assert len(others) == 2 * (1 + 2) + EVAL_STEPS + 2 and not any(c[3] for c in others)
    assert load(result.last_path)[1].training["autocast"] == "bf16"


def test_evaluation_never_runs_under_autocast(data: tuple[Data, Data]) -> None:
    """A caller's autocast is switched off inside evaluate() and the trainer's PGD-10 evaluation,
    and the numbers are the fp32 ones."""
    model = tiny_model()
    images, labels = data[1]
    reference = evaluate(model, (images, labels), "pgd10", EvalSettings(eps=0.03, n_examples=32, batch_size=16, device="cpu", checks=None))
    pgd10 = evaluate_pgd10(model, images[:32], labels[:32], 0.03, 0.01, 16, 0)
    probe = AutocastProbe(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        inside = evaluate(model, (images, labels), "pgd10", EvalSettings(eps=0.03, n_examples=32, batch_size=16, device="cpu", checks=None))
        assert evaluate_pgd10(model, images[:32], labels[:32], 0.03, 0.01, 16, 0) == pgd10
    assert probe.calls and not any(call[3] for call in probe.calls)
    assert torch.equal(inside.per_example.robust_after["pgd10"], reference.per_example.robust_after["pgd10"])


@pytest.fixture
def single_rank_group(tmp_path: Path) -> Iterator[None]:
    """A one-process gloo group: DDP's reducer and comm hook run as they do with more ranks."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.usefixtures("single_rank_group")
def test_input_gradient_passes_start_no_allreduce(data: tuple[Data, Data], monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack's passes through the DDP wrapper take input gradients only and must not set
    off DDP's gradient allreduce; the update's backward pass must (once per pass). YOPO through
    the wrapper (it reads model.encoder) trains the weights it trains without it."""
    calls: list[int] = []
    real_all_reduce = dist.all_reduce

    def counting(tensor: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append(tensor.numel())
        return real_all_reduce(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counting)
    x, y = data[0][0][:8], data[0][1][:8]
    wrapped = DataParallel(tiny_model(), torch.device("cpu"))
    input_gradient(wrapped, x, y, F.cross_entropy)
    pgd(wrapped, x, y, 0.1, 0.03, 3)
    assert calls == []
    F.cross_entropy(wrapped(x), y).backward()
    assert sum(calls) == sum(p.numel() for p in wrapped.parameters())

    def yopo_weights(model: torch.nn.Module) -> list[torch.Tensor]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        context = MethodContext(optimizer, YopoParams(m=3, n=2), ThreatModel(eps=0.1, alpha=0.03), generator=torch.Generator().manual_seed(4))
        get_method("yopo")(model, x, y, context)
        return [p.detach().clone() for p in model.parameters()]

    plain = yopo_weights(tiny_model(seed=2))
    calls.clear()
    wrapped_run = yopo_weights(DataParallel(tiny_model(seed=2), torch.device("cpu")))
    assert sum(calls) == 3 * sum(p.numel() for p in wrapped.parameters())  # m = 3 full backward passes, no more
    for a, b in zip(plain, wrapped_run, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
