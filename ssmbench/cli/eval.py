"""`ssmbench eval TARGET`: an attack suite on one checkpoint or on a run's best and last.

Thin: it resolves the target, loads the test split, calls `ssmbench.evaluate.evaluate` with a
rich progress bar, prints the result table (and Diff = best - last for a run directory) and
appends one leaderboard row per checkpoint. When a run's best epoch is its last, best.safetensors
and last.safetensors hold the same weights: the suite runs once and both rows record that result
(AutoAttack would otherwise take as long again for the same numbers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import typer
from rich import box
from rich.table import Table
from torch import nn

from model_zoo.bounds import BOXES
from model_zoo.checkpoints import CheckpointMeta, file_sha256, read_meta
from model_zoo.devices import resolve_device
from model_zoo.errors import RunError, UsageError
from model_zoo.limits import MAX_EPS
from model_zoo.training import distributed
from model_zoo.training.perturb import NORMS
from ssmbench import data
from ssmbench.attacks import AUTOATTACK_VERSIONS, BACKENDS, SUITES
from ssmbench.attacks.autoattack import AUTOATTACK_FLAGS
from ssmbench.byom import CONTRACT_FLAGS, build_user_model, is_callable_spec, load_weights, measure, parse_model_kwargs, user_row, weights_sha256
from ssmbench.checks import FLAGS, CheckConfig
from ssmbench.cli._common import LEADERBOARD_HELP, check_seed, console, leaderboard_path, parse_fraction, progress_bar
from ssmbench.cli._settings import fraction_setting, setting
from ssmbench.evaluate import EvalResult, EvalSettings, Progress, evaluate
from ssmbench.leaderboard import ResultRow, append_or_keep
from ssmbench.leaderboard_render import with_interval
from ssmbench.loading import load_with_meta, resolve_target
from ssmbench.protocol import AUTOATTACK_EXAMPLES, default_examples
from ssmbench.records import result_row
from ssmbench.stats import wilson

RUN_KINDS = ("best", "last")


@dataclass(frozen=True)
class _Evaluated:
    """One checkpoint's evaluation and where it came from."""

    name: str  # as recorded in the leaderboard: the path, zoo name or module:callable the user gave
    path: Path | None  # None for a module:callable model
    meta: CheckpointMeta | None  # None for a module:callable model
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


def _state_path(state_dir: Path | None, sha256: str, key: Mapping[str, object]) -> Path | None:
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
    flags_of = result.per_example
    clean, robust = (with_interval(acc, *wilson(int(flags.sum()), n)) for acc, flags in
                     ((result.clean_acc, flags_of.clean), (result.robust_acc, flags_of.robust)))
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
             for name, flags in result.per_example.robust_after.items())
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
    if [_kind(item) for item in items] == list(RUN_KINDS):  # a run directory: Diff = best - last
        best, last = (item.result for item in items)
        diffs = [f"{100 * (best.per_attack[a] - last.per_attack[a]):+.2f}" for a in attacks]
        table.add_row("Diff", "", f"{100 * (best.clean_acc - last.clean_acc):+.2f}", *diffs, f"{100 * (best.robust_acc - last.robust_acc):+.2f}", "", "")
    console.print(table)
    for item in items:
        console.print(_interval_line(item))
        if len(item.result.per_attack) > 1:
            console.print(_per_attack_line(item))
    for item in items:
        if item.shared_with:
            console.print(f"{_label(item)} holds the same weights as {item.shared_with} (epoch {item.meta.epoch if item.meta else 0}, "
                          f"weights sha256 {item.weights_sha256[:12]}...): evaluated once, both rows record that one result")
    raised = dict.fromkeys(flag for item in items for flag in item.result.flags)
    for flag in raised:
        console.print(f"flag {flag}: {FLAGS.get(flag) or CONTRACT_FLAGS.get(flag) or AUTOATTACK_FLAGS.get(flag) or 'reported by the AutoAttack code itself (see its log warnings)'}")


def _kind(item: _Evaluated) -> str:
    return item.meta.kind if item.meta is not None else ""


def _label(item: _Evaluated) -> str:
    """'best' / 'last' for a run's checkpoints, else the file name (or the module:callable)."""
    return _kind(item) or (Path(item.name).name if item.path is not None else item.name)


def eval_command(
    target: str = typer.Argument(..., help="A .safetensors checkpoint, a zoo name, a run directory (then best and last are evaluated and Diff = best - last is shown), or your own model as module:callable (returns an nn.Module; needs --dataset)."),
    attack: str = typer.Option("pgd10", "--attack", help=f"Attack suite: {' | '.join(SUITES)} (all = pgd10, then AutoAttack on what PGD-10 left standing)."),
    n_examples: int = typer.Option(None, help=f"Evaluate the first N test images. Default, the paper's protocol: {AUTOATTACK_EXAMPLES} (or the whole split if smaller) for autoattack and all, the whole test set for pgd10."),
    eps: str = fraction_setting(EvalSettings, "eps"),
    norm: str = setting(EvalSettings, "norm"),
    box: str = typer.Option(None, help="Input box of a sequence model: none (default: no box, eps-ball only) | observed (also stay in the training split's range). Images always use [0, 1]."),
    backend: str = setting(EvalSettings, "backend"),
    batch_size: int = setting(EvalSettings, "batch_size"),
    version: str = setting(EvalSettings, "version"),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA or ~/.cache/ssmbench/data)."),
    checks: bool = typer.Option(True, "--checks/--no-checks", help="Run the gradient-masking sanity checks and record their flags."),
    check_examples: int = typer.Option(CheckConfig.n_examples, help="How many of the evaluated examples the sanity checks use."),
    leaderboard: Path = typer.Option(None, "--leaderboard", help=f"Where one row per checkpoint is appended. {LEADERBOARD_HELP}"),
    no_leaderboard: bool = typer.Option(False, "--no-leaderboard", help="Do not record the results."),
    seed: int = setting(EvalSettings, "seed"),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    state_dir: Path = typer.Option(None, help="Keep finished batches here; rerunning the same command after an interruption resumes."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model first (pays off on long GPU runs; on a CPU compiling takes minutes)."),
    dataset: str = typer.Option(None, help="module:callable targets only (required there): the dataset whose test split is attacked, e.g. digits."),
    model_kwargs: str = typer.Option(None, help="module:callable targets only: keyword arguments of the callable as a JSON object, e.g. '{\"d_model\": 64}'."),
    weights: Path = typer.Option(None, help="module:callable targets only: load this state_dict first (a RobustBench-format .pt, {'state_dict': ...} or bare, or a .safetensors)."),
    name: str = typer.Option(None, help="module:callable targets only: the architecture name its rows carry (default: the target, with its kwargs)."),
) -> None:
    """Attack a checkpoint (or a run's best and last) with an attack suite and record the result.

    Each attack runs only on the points still robust; the table shows clean accuracy, the robust accuracy after each attack, the worst case, and the sanity-check flags.

    Under torchrun (torchrun --nproc-per-node K -m ssmbench eval ...) the batches are split across the K processes and the per-example results merged exactly; rank 0 prints and records.

    A module:callable model is first held to the model I/O contract (logits of shape (N, classes), finite, inputs in [0, 1], deterministic in eval mode): what would make its numbers meaningless is refused, the rest is recorded as a flag. Its rows are named after it and carry a sha256 of its weights.

    Example: ssmbench eval runs/s4d-pgd-digits --attack autoattack --eps 8/255

    Example: ssmbench eval mypkg.models:build --dataset digits --model-kwargs '{"d_model": 64}' --weights model.pt
    """
    suite = _choose(attack, list(SUITES), "--attack")
    _choose(backend, BACKENDS, "--backend")
    _choose(version, AUTOATTACK_VERSIONS, "--version")
    _choose(norm, list(NORMS), "--norm")
    radius = parse_fraction(eps, "--eps", maximum=MAX_EPS if norm == "linf" else None)
    for option, value in (("--n-examples", n_examples), ("--batch-size", batch_size), ("--check-examples", check_examples)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be >= 1, got {value}")
    check_seed(seed)
    if box is not None:
        _choose(box, BOXES, "--box")
    target_device = resolve_device(device)
    settings = EvalSettings(eps=radius, batch_size=batch_size, device=target_device, backend=backend, version=version, seed=seed,
                            checks=CheckConfig(n_examples=check_examples) if checks else None, norm=norm, box=box)
    options = _Options(suite, settings, state_dir, compile_model)
    run_id = uuid.uuid4().hex[:12]
    if is_callable_spec(target):
        _eval_user_model(target, run_id, options, n_examples, data_dir, _UserModel(dataset, model_kwargs, weights, name),
                         None if no_leaderboard else leaderboard_path(leaderboard))
        return
    given = [option for option, value in (("--dataset", dataset), ("--model-kwargs", model_kwargs), ("--weights", weights),
                                          ("--name", name)) if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)} only apply to a module:callable target (mypkg.models:build); a checkpoint knows its own")
    evaluated: list[_Evaluated] = []
    rows: list[ResultRow] = []
    # Under torchrun every rank evaluates its share of the batches; "cuda" then means cuda:LOCAL_RANK.
    with distributed.process_group(target_device):
        for label, path in _checkpoints(target):
            model, meta = load_with_meta(path)  # verifies the weights against their checksum
            tensors, sha256 = read_meta(path)[1]["tensors_sha256"], file_sha256(path)
            same = next((item for item in evaluated if item.weights_sha256 == tensors and item.meta is not None
                         and item.meta.config == meta.config), None)
            if same is not None:
                item = _Evaluated(label, path, meta, same.result, tensors, shared_with=_label(same))
            else:
                item = _Evaluated(label, path, meta, _evaluate_checkpoint(label, sha256, model, meta, options, n_examples, data_dir), tensors)
            evaluated.append(item)
            rows.append(result_row(run_id, item.name, meta, item.result, sha256))
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
    path = evaluated[0].path
    return path.parent if path is not None and Path(target).exists() else Path.cwd()


@dataclass(frozen=True)
class _UserModel:
    """The options that only a module:callable target takes."""

    dataset: str | None
    kwargs: str | None
    weights: Path | None
    name: str | None


def _eval_user_model(
    spec: str, run_id: str, options: _Options, n_examples: int | None, data_dir: Path | None, user: _UserModel,
    results: Path | None,
) -> None:
    """Build the user's model, hold it to the contract, evaluate it and record one row."""
    if user.dataset is None:
        raise UsageError(f"{spec}: a module:callable target needs --dataset (one of {', '.join(data.list_datasets())})")
    info = data.get_dataset(user.dataset)
    kwargs = parse_model_kwargs(user.kwargs)
    model = build_user_model(spec, kwargs)
    if user.weights is not None:
        load_weights(model, user.weights)
    # PyTorch builds every module in train mode, so a fresh one says nothing about its author's
    # intent: the callable's model is evaluated in eval mode, unflagged (benchmark() flags a model
    # that is handed over in train mode, since that one may have been used so).
    model.eval()
    if options.compile:
        model.compile()
    arch = user.name or (spec + json.dumps(kwargs, sort_keys=True) if kwargs else spec)
    common = options.settings
    with distributed.process_group(resolve_device(common.device)):
        key = {"target": spec, "kwargs": kwargs, "suite": options.suite, "version": common.version, "eps": common.eps,
               "n": n_examples, "backend": common.backend, "seed": common.seed, "batch_size": common.batch_size,
               **({"norm": common.norm} if common.norm != "linf" else {})}
        settings = dataclasses.replace(common, n_examples=n_examples,
                                       state_path=_state_path(options.state_dir, weights_sha256(model), key))
        measured = _with_progress(f"{spec} {options.suite}", lambda show: measure(
            model, info.name, options.suite, settings, data_dir=data_dir, progress=show))
        if not distributed.current().is_main:
            return
    item = _Evaluated(spec, None, None, measured.result, measured.weights_sha256)
    _render(spec, [item])
    console.print(f"{spec}: weights sha256 {measured.weights_sha256[:12]}... (over its state_dict tensors in key order)")
    if results is not None:
        append_or_keep(results, [user_row(run_id, spec, arch, info.name, measured)], Path.cwd())
        console.print(f"appended 1 row to {results} (run {run_id})", soft_wrap=True)


@dataclass(frozen=True)
class _Options:
    """The evaluation settings shared by every checkpoint of one command."""

    suite: str
    settings: EvalSettings  # without n_examples and state_path, which are per checkpoint
    state_dir: Path | None
    compile: bool = False


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
    common = options.settings
    key = {"suite": options.suite, "version": common.version, "eps": common.eps, "n": n, "backend": common.backend,
           "seed": common.seed, "batch_size": common.batch_size, **({"norm": common.norm} if common.norm != "linf" else {}),
           **({"box": common.box} if common.box else {})}
    settings = dataclasses.replace(common, n_examples=n, state_path=_state_path(options.state_dir, sha256, key))
    label = f"{meta.kind or name} {options.suite}"
    return _with_progress(label, lambda show: evaluate(model, (images, labels), options.suite, settings, progress=show))


T = TypeVar("T")


def _with_progress(label: str, run: Callable[[Progress], T]) -> T:
    """`run(progress)` under the progress bar; a failure inside the attacks (a torch RuntimeError,
    e.g. out of memory) is a failed run: exit 1."""
    with progress_bar(decimals=1, disable=not distributed.current().is_main) as bar:
        task = bar.add_task(label, total=None)

        def show(done: int, total: int, attack: str) -> None:
            bar.update(task, completed=done, total=total, description=label + (f" ({attack})" if attack else ""))

        try:
            return run(show)
        except RunError:
            raise
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunError(f"{label}: evaluation failed: {reason}") from exc


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
