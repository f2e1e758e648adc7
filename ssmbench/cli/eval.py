"""`ssmbench eval TARGET`: an attack suite on one checkpoint or on a run's best and last.

Thin: it resolves the target, loads the test split, calls `ssmbench.evaluate.evaluate` with a
rich progress bar, prints the result table (and Diff = best - last for a run directory) and
appends one leaderboard row per checkpoint. When a run's best epoch is its last, best.safetensors
and last.safetensors hold the same weights: the suite runs once and both rows record that result
(AutoAttack would otherwise take as long again for the same numbers).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import typer
from rich import box
from rich.table import Table
from torch import nn

from model_zoo.bounds import BOXES
from model_zoo.checkpoints import CheckpointMeta, file_sha256, read_meta
from model_zoo.errors import RunError, UsageError
from model_zoo.training import distributed
from ssmbench import data
from ssmbench.attacks import AUTOATTACK_VERSIONS, BACKENDS, SUITES, get_suite_spec
from ssmbench.checks import FLAGS, CheckConfig
from ssmbench.cli._common import LEADERBOARD_HELP, check_seed, console, leaderboard_path, parse_device, parse_fraction, progress_bar
from ssmbench.evaluate import EvalResult, default_device, evaluate
from ssmbench.leaderboard import ResultRow, append_or_keep
from ssmbench.leaderboard_render import with_interval
from ssmbench.loading import load_with_meta, resolve_target
from ssmbench.records import result_row
from ssmbench.stats import wilson

AUTOATTACK_EXAMPLES = 2000  # the paper (and RobustBench): AutoAttack on the first 2000 test images
RUN_KINDS = ("best", "last")


@dataclass(frozen=True)
class _Evaluated:
    """One checkpoint's evaluation and where it came from."""

    name: str  # as recorded in the leaderboard: the path or zoo name the user gave
    path: Path
    meta: CheckpointMeta
    result: EvalResult
    weights_sha256: str  # of the tensors alone: best and last of one epoch differ only in metadata
    shared_with: str = ""  # the label of the checkpoint whose evaluation this one reuses (same weights)



def _choose(value: str, choices: tuple[str, ...] | list[str], option: str) -> str:
    if value not in choices:
        raise UsageError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _checkpoints(target: str) -> list[tuple[str, Path]]:
    """(name, path) pairs: a run directory gives its best and last checkpoints, in that order."""
    folder = Path(target)
    if folder.is_dir():
        found = [(str(folder / f"{kind}.safetensors"), folder / f"{kind}.safetensors") for kind in RUN_KINDS]
        missing = [path.name for _, path in found if not path.is_file()]
        if missing:
            raise UsageError(f"{folder}: a run directory needs best.safetensors and last.safetensors; missing {', '.join(missing)}")
        return found
    return [(target, resolve_target(target))]


def default_examples(suite: str, available: int) -> int:
    """The paper's protocol: AutoAttack on the first 2000 test images, PGD-10 on the whole test set."""
    return min(AUTOATTACK_EXAMPLES, available) if get_suite_spec(suite).uses_autoattack else available


def _state_path(state_dir: Path | None, sha256: str, key: dict[str, object]) -> Path | None:
    if state_dir is None:
        return None
    digest = hashlib.sha256(json.dumps({"checkpoint": sha256, **key}, sort_keys=True).encode()).hexdigest()[:16]
    return state_dir / f"eval-{digest}.json"


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def _interval_line(item: _Evaluated) -> str:
    """'best: clean 98.6 (96.8-99.4), robust 95.8 (93.2-97.4) % on 360; checks passed on 64 examples'."""
    result = item.result
    n = result.n_examples
    clean, robust = (with_interval(acc, *wilson(int(flags.sum()), n)) for acc, flags in
                     ((result.clean_acc, result.clean), (result.robust_acc, result.robust)))
    if result.flags:
        checks = f"flagged: {', '.join(result.flags)}"
    elif result.checks:
        checks = f"checks passed on {result.check_examples} examples"
    else:
        checks = "not checked"
    return f"{_label(item)}: clean {clean}, robust {robust} % on {n} (95% Wilson); {checks}"


def _per_attack_line(item: _Evaluated) -> str:
    """'best, robust after each attack: pgd10 96.9 (89.3-99.1), apgd-ce ...': the table's columns with intervals."""
    result = item.result
    parts = (f"{name} {with_interval(flags.float().mean().item(), *wilson(int(flags.sum()), result.n_examples))}"
             for name, flags in result.robust_after.items())
    return f"{_label(item)}, robust after each attack: {', '.join(parts)} %"


def _render(target: str, items: list[_Evaluated]) -> None:
    attacks = list(dict.fromkeys(name for item in items for name in item.result.per_attack))
    first = items[0].result
    table = Table(title=f"{target}: {first.suite}, {first.threat_model} eps = {first.eps:.5g} (accuracy %, robust after each attack)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for column in ("ckpt", "n", "clean", *attacks, "robust", "flags", "s"):  # fits 80 columns with AutoAttack's 4 parts
        table.add_column(column, justify="left" if column in ("ckpt", "flags") else "right", no_wrap=column != "flags")
    for item in items:
        result = item.result
        cells = [_percent(result.per_attack[name]) if name in result.per_attack else "-" for name in attacks]
        flags = ", ".join(result.flags) or "none"
        seconds = f"={item.shared_with}" if item.shared_with else f"{result.wall_seconds:.1f}"
        table.add_row(_label(item), str(result.n_examples), _percent(result.clean_acc), *cells, _percent(result.robust_acc), flags, seconds)
    if [item.meta.kind for item in items] == list(RUN_KINDS):  # a run directory: Diff = best - last
        best, last = (item.result for item in items)
        diffs = [f"{100 * (best.per_attack[a] - last.per_attack[a]):+.2f}" for a in attacks]
        table.add_row("Diff", "", f"{100 * (best.clean_acc - last.clean_acc):+.2f}", *diffs, f"{100 * (best.robust_acc - last.robust_acc):+.2f}", "", "")
    console.print(table)
    for item in items:
        console.print(_interval_line(item))
        if len(item.result.robust_after) > 1:
            console.print(_per_attack_line(item))
    for item in items:
        if item.shared_with:
            console.print(f"{_label(item)} holds the same weights as {item.shared_with} (epoch {item.meta.epoch}, "
                          f"weights sha256 {item.weights_sha256[:12]}...): evaluated once, both rows record that one result")
    raised = dict.fromkeys(flag for item in items for flag in item.result.flags)
    for flag in raised:
        console.print(f"flag {flag}: {FLAGS.get(flag, 'reported by the AutoAttack code itself (see its log warnings)')}")


def _label(item: _Evaluated) -> str:
    """'best' / 'last' for a run's checkpoints, else the file name."""
    return item.meta.kind or Path(item.name).name


def eval_command(
    target: str = typer.Argument(..., help="A .safetensors checkpoint, a zoo name, or a run directory (then best and last are evaluated and Diff = best - last is shown)."),
    attack: str = typer.Option("pgd10", "--attack", help=f"Attack suite: {' | '.join(SUITES)} (all = pgd10, then AutoAttack on what PGD-10 left standing)."),
    n_examples: int = typer.Option(None, help=f"Evaluate the first N test images. Default, the paper's protocol: {AUTOATTACK_EXAMPLES} (or the whole split if smaller) for autoattack and all, the whole test set for pgd10."),
    eps: str = typer.Option("8/255", help="Linf radius: on [0, 1] images, e.g. 8/255 or 0.03; on sequences, in training standard deviations per channel, e.g. 0.1."),
    box: str = typer.Option(None, help="Input box of a sequence model: none (default: no box, eps-ball only) | observed (also stay in the training split's range). Images always use [0, 1]."),
    backend: str = typer.Option("official", help="AutoAttack implementation: official (the authors' code, pyautoattack) | torchattacks (its reimplementation, run with the same 100-iteration, 9-target budget)."),
    batch_size: int = typer.Option(256, help="Examples per batch; each batch runs the whole suite."),
    version: str = typer.Option("standard", help="AutoAttack version: standard | plus | rand (rand for randomized models)."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA or ~/.cache/ssmbench/data)."),
    checks: bool = typer.Option(True, "--checks/--no-checks", help="Run the gradient-masking sanity checks and record their flags."),
    check_examples: int = typer.Option(CheckConfig.n_examples, help="How many of the evaluated examples the sanity checks use."),
    leaderboard: Path = typer.Option(None, "--leaderboard", help=f"Where one row per checkpoint is appended. {LEADERBOARD_HELP}"),
    no_leaderboard: bool = typer.Option(False, "--no-leaderboard", help="Do not record the results."),
    seed: int = typer.Option(0, help="Seed of the attacks' random starts."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    state_dir: Path = typer.Option(None, help="Keep finished batches here; rerunning the same command after an interruption resumes."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model first (pays off on long GPU runs; on a CPU compiling takes minutes)."),
) -> None:
    """Attack a checkpoint (or a run's best and last) with an attack suite and record the result.

    Each attack runs only on the points still robust; the table shows clean accuracy, the robust accuracy after each attack, the worst case, and the sanity-check flags.

    Under torchrun (torchrun --nproc-per-node K -m ssmbench eval ...) the batches are split across the K processes and the per-example results merged exactly; rank 0 prints and records.

    Example: ssmbench eval runs/s4d-pgd-digits --attack autoattack --eps 8/255
    """
    suite = _choose(attack, list(SUITES), "--attack")
    _choose(backend, BACKENDS, "--backend")
    _choose(version, AUTOATTACK_VERSIONS, "--version")
    radius = parse_fraction(eps, "--eps")
    for option, value in (("--n-examples", n_examples), ("--batch-size", batch_size), ("--check-examples", check_examples)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    check_seed(seed)
    device = None if device is None else str(parse_device(device))
    if box is not None:
        _choose(box, BOXES, "--box")
    options = _Options(suite, radius, batch_size, device, backend, seed, version, CheckConfig(n_examples=check_examples) if checks else None, state_dir,
                       compile_model, box)
    run_id = uuid.uuid4().hex[:12]
    evaluated: list[_Evaluated] = []
    rows: list[ResultRow] = []
    # Under torchrun every rank evaluates its share of the batches; "cuda" then means cuda:LOCAL_RANK.
    with distributed.process_group(torch.device(device) if device is not None else default_device()):
        for name, path in _checkpoints(target):
            model, meta = load_with_meta(path)  # verifies the weights against their checksum
            weights, sha256 = read_meta(path)[1]["tensors_sha256"], file_sha256(path)
            same = next((item for item in evaluated if item.weights_sha256 == weights and item.meta.config == meta.config), None)
            if same is not None:
                item = _Evaluated(name, path, meta, same.result, weights, shared_with=_label(same))
            else:
                item = _Evaluated(name, path, meta, _evaluate_checkpoint(name, sha256, model, meta, options, n_examples, data_dir), weights)
            evaluated.append(item)
            rows.append(result_row(run_id, item.name, item.meta, item.result, sha256))
        if not distributed.current().is_main:
            return
    _render(target, evaluated)
    if not no_leaderboard:
        results = leaderboard_path(leaderboard)
        append_or_keep(results, rows, _keep_dir(target, evaluated))
        console.print(f"appended {len(rows)} row(s) to {results} (run {run_id})", soft_wrap=True)


def _keep_dir(target: str, evaluated: list[_Evaluated]) -> Path:
    """Where rows that the leaderboard cannot take are kept: the run directory or the checkpoint's
    folder; for a zoo name (its folder is the package's) the current directory."""
    if Path(target).is_dir():
        return Path(target)
    return evaluated[0].path.parent if Path(target).exists() else Path.cwd()


@dataclass(frozen=True)
class _Options:
    """The evaluation settings shared by every checkpoint of one command."""

    suite: str
    eps: float
    batch_size: int
    device: str | None
    backend: str
    seed: int
    version: str
    checks: CheckConfig | None
    state_dir: Path | None
    compile: bool = False
    box: str | None = None


def _evaluate_checkpoint(
    name: str, sha256: str, model: nn.Module, meta: CheckpointMeta, options: _Options, n_examples: int | None,
    data_dir: Path | None,
) -> EvalResult:
    """Evaluate under a progress bar; `sha256` (the file's) keys the resume state.

    A failure inside the attacks (a torch RuntimeError, e.g. out of memory) is a failed run: exit 1.
    """
    if options.compile:
        model.compile()
    images, labels = data.load_split(meta.config.dataset, "test", data_dir)
    n = n_examples if n_examples is not None else default_examples(options.suite, len(images))
    if n > len(images):
        raise UsageError(f"--n-examples {n} exceeds the {len(images)} test images of {meta.config.dataset}")
    key = {"suite": options.suite, "version": options.version, "eps": options.eps, "n": n, "backend": options.backend,
           "seed": options.seed, "batch_size": options.batch_size, **({"box": options.box} if options.box else {})}
    label = f"{meta.kind or name} {options.suite}"
    with progress_bar(decimals=1, disable=not distributed.current().is_main) as bar:
        task = bar.add_task(label, total=n)

        def show(done: int, total: int, attack: str) -> None:
            bar.update(task, completed=done, description=label + (f" ({attack})" if attack else ""))

        try:
            result = evaluate(
                model, images, labels, options.suite, options.eps, n, options.batch_size, options.device, options.backend,
                options.seed, show, version=options.version, checks=options.checks,
                state_path=_state_path(options.state_dir, sha256, key), box=options.box,
            )
        except RunError:
            raise
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunError(f"{name}: {options.suite} evaluation failed: {reason}") from exc
    return result


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
