"""`ssmbench zoo list|show|fetch|add`: what can be built, what is shipped, and shipping more."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.progress import TaskID
from rich.table import Table

from model_zoo import zoo
from model_zoo.ads import ADS_CHOICES
from model_zoo.checkpoints import file_sha256, load, read_meta, stored_values
from model_zoo.datasets import list_datasets
from model_zoo.devices import resolve_device
from model_zoo.errors import RunError, UsageError
from model_zoo.labels import method_label
from model_zoo.layers import get_mixer
from model_zoo.plugins import plugin_of
from model_zoo.registry import list_models
from ssmbench import data
from ssmbench.attacks import BACKENDS
from ssmbench.attacks.autoattack import AUTOATTACK_FLAGS
from ssmbench.checks import FLAGS, CheckConfig
from ssmbench.cli._common import console, parse_fraction, progress_bar
from ssmbench.cli._settings import default, fraction_default
from ssmbench.evaluate import EvalResult, EvalSettings, evaluate
from ssmbench.leaderboard import read
from ssmbench.leaderboard_render import with_interval
from ssmbench.loading import resolve_target
from ssmbench.records import newest_rows, zoo_metrics
from ssmbench.stats import count, wilson

ZOO_SUITES = ("pgd10", "autoattack")

zoo_app = typer.Typer(help="Architectures, presets and named checkpoints.", no_args_is_help=True)


def _interval(metrics: dict[str, float], key: str, n_key: str, lines: str = "\n") -> str:
    """'74.2' over '(69.4-78.4)': an entry's accuracy with its 95% Wilson interval ('-' if absent)."""
    value, n = metrics.get(key), int(metrics.get(n_key, 0))
    if value is None or n < 1:
        return "-"
    return with_interval(value, *wilson(count(value, n), n)).replace(" ", lines, 1)


def _training_summary(training: dict[str, object]) -> str:
    """'PGD-AT 20 ep': the method and epochs (the name already says AdS and attention)."""
    method = str(training.get("method", "?"))
    epochs = training.get("epochs")
    return f"{method_label(method)}{f' {epochs} ep' if epochs else ''}"


@zoo_app.command("list")
def list_command() -> None:
    """List architectures, AdS options, dataset presets and the named checkpoints.

    Example: ssmbench zoo list
    """
    archs = Table(title="Architectures", title_justify="left")
    for column in ("name", "causal", "AdS", "from", "description"):
        archs.add_column(column)
    for name in list_models():
        spec, plugin = get_mixer(name), plugin_of(name)  # get_mixer imports a plugin's mixer
        source = f"{plugin.distribution} {plugin.version}" if plugin else "built in"
        archs.add_row(name, "yes" if spec.causal else "no", "yes" if spec.supports_ads else "no", source, spec.description)
    console.print(archs)
    console.print(f"AdS options: {', '.join(ADS_CHOICES)}   attention: --attention on any architecture")
    console.print(f"Dataset presets: {', '.join(list_datasets())}")
    entries = zoo.load_zoo()
    models = Table(title="Named checkpoints: accuracy % over its 95% Wilson interval; n = PGD-10/AutoAttack "
                   "test images (ssmbench zoo show NAME)", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    models.add_column("name", no_wrap=True)
    models.add_column("trained", no_wrap=True)  # two lines: the dataset, then method and epochs
    for column in ("CA", "PGD-10", "AA"):
        models.add_column(column, justify="right", no_wrap=True)
    for entry in entries.values():
        metrics = entry.metrics
        models.add_row(
            f"{entry.name}\nn = {int(metrics.get('n_examples', 0))}/{int(metrics.get('autoattack_examples', 0))}",
            f"{entry.config.get('dataset', '')}\n{_training_summary(entry.training)}",
            _interval(metrics, "clean_acc", "n_examples"),
            _interval(metrics, "pgd10_acc", "n_examples"),
            _interval(metrics, "autoattack_acc", "autoattack_examples"),
        )
    console.print(models if entries else "No named checkpoints in model_zoo/zoo.toml yet.")


@zoo_app.command("show")
def show_command(target: str = typer.Argument(..., help="A .safetensors checkpoint or a zoo name.")) -> None:
    """Show a checkpoint's config, parameter count and metadata.

    Example: ssmbench zoo show runs/s4-pgd-tanh/best.safetensors
    """
    path = resolve_target(target)
    _, raw = read_meta(path)  # checks every claim against the tensor header; builds nothing
    params = stored_values(path)
    table = Table(title=str(path), title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    entry = zoo.load_zoo().get(target)
    if entry is not None:
        table.add_row("zoo entry", entry.description)
    table.add_row("sha256", file_sha256(path))
    table.add_row("parameters", f"{params:,}")
    for key in ("arch", "dataset", "input_shape", "classes", "kind", "epoch", "seed", "format_version"):
        table.add_row(key, str(raw.get(key)))
    for key in ("config", "training", "metrics"):
        table.add_row(key, json.dumps(raw.get(key, {}), sort_keys=True))
    if entry is not None and entry.metrics:
        metrics = entry.metrics
        table.add_row("accuracy % (95% Wilson)", (
            f"clean {_interval(metrics, 'clean_acc', 'n_examples', ' ')}, PGD-10 {_interval(metrics, 'pgd10_acc', 'n_examples', ' ')} "
            f"on {int(metrics.get('n_examples', 0))}; AutoAttack {_interval(metrics, 'autoattack_acc', 'autoattack_examples', ' ')} "
            f"on {int(metrics.get('autoattack_examples', 0))} test images"))
    console.print(table)


@zoo_app.command("fetch")
def fetch_command(name: str = typer.Argument(..., help="A zoo name with a url in zoo.toml.")) -> None:
    """Download a named checkpoint and verify its sha256.

    Example: ssmbench zoo fetch s4-pgd-tanh-digits
    """
    path: Path = zoo.fetch(name)
    console.print(f"{name}: {path} (sha256 verified)")


def _measure(
    path: Path, eps: float, aa_examples: int, backend: str, batch_size: int, device: str | None, data_dir: Path | None,
    checks: bool,
) -> dict[str, EvalResult]:
    """Clean and PGD-10 on the whole test split, AutoAttack on its first aa_examples, with bars."""
    model, meta = load(path)
    images, labels = data.load_split(meta.config.dataset, "test", data_dir)
    results = {}
    with progress_bar(unit=None) as bar:
        for suite, n in (("pgd10", len(images)), ("autoattack", min(aa_examples, len(images)))):
            task = bar.add_task(suite, total=n)

            def show(done: int, total: int, attack: str, task: TaskID = task, suite: str = suite) -> None:
                bar.update(task, completed=done, description=suite + (f" ({attack})" if attack else ""))

            try:
                settings = EvalSettings(eps=eps, n_examples=n, batch_size=batch_size, device=device, backend=backend,
                                        checks=CheckConfig() if checks else None)
                results[suite] = evaluate(model, (images, labels), suite, settings, progress=show)
            except RunError:
                raise
            except RuntimeError as exc:  # a torch failure inside an attack (e.g. out of memory)
                raise RunError(f"{path}: {suite} evaluation failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return results


@zoo_app.command("add")
def add_command(
    checkpoint: Path = typer.Argument(..., help="A .safetensors checkpoint, e.g. runs/study-digits/s4-pgd-tanh/best.safetensors."),
    name: str = typer.Option(..., "--name", help="The zoo name (letters, digits, - and _); the file becomes weights/NAME.safetensors."),
    description: str = typer.Option("", help="One line for `zoo list` (default: architecture, method, dataset, checkpoint)."),
    aa_examples: int = typer.Option(2000, help="AutoAttack on the first N test images (capped at the split); clean and PGD-10 use the whole split."),
    from_leaderboard: Path = typer.Option(None, help="Take the numbers from this results file (the newest pgd10 and autoattack rows of this exact file, by sha256) instead of evaluating."),
    eps: str = typer.Option(fraction_default(EvalSettings, "eps"), help="Linf radius of the evaluation, e.g. 8/255."),
    backend: str = typer.Option(default(EvalSettings, "backend"), help=f"AutoAttack code: {' | '.join(BACKENDS)}."),
    batch_size: int = typer.Option(default(EvalSettings, "batch_size"), help="Evaluation batch size."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA)."),
    checks: bool = typer.Option(True, "--checks/--no-checks", help="Run the gradient-masking sanity checks and show their flags."),
    replace: bool = typer.Option(False, "--replace", help="Replace an entry of the same name."),
    zoo_file: Path = typer.Option(zoo.ZOO_FILE, help="The zoo.toml to add to (default: the package's); the weights go to weights/ beside it."),
) -> None:
    """Ship a trained checkpoint: copy it to weights/NAME.safetensors and record it in zoo.toml with
    its sha256, config, training settings and measured accuracies (evaluated now, or taken from
    the leaderboard). Other entries and comments in zoo.toml stay as they are.

    Example: ssmbench zoo add runs/study-digits/s4-pgd-tanh/best.safetensors --name s4-pgd-tanh-digits --aa-examples 360
    """
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if aa_examples < 1 or batch_size < 1:
        raise UsageError(f"--aa-examples and --batch-size must be >= 1, got {aa_examples} and {batch_size}")
    radius = parse_fraction(eps, "--eps")
    device = None if device is None else str(resolve_device(device))
    if not checkpoint.is_file():
        raise UsageError(f"{checkpoint}: no such checkpoint file")
    if from_leaderboard is not None:
        found = newest_rows(read(from_leaderboard), file_sha256(checkpoint), ZOO_SUITES)
        metrics = zoo_metrics(found["pgd10"], found["autoattack"])
    else:
        measured = _measure(checkpoint, radius, aa_examples, backend, batch_size, device, data_dir, checks)
        metrics = zoo_metrics(measured["pgd10"], measured["autoattack"])
        for flag in dict.fromkeys(f for result in measured.values() for f in result.flags):
            console.print(f"[yellow]flag {flag}[/yellow]: {FLAGS.get(flag) or AUTOATTACK_FLAGS.get(flag) or 'reported by the AutoAttack code itself'}")
    entry = zoo.add_entry(checkpoint, name, metrics, description, zoo_file=zoo_file, replace=replace)
    console.print(
        f"{name}: {zoo_file.parent / entry.file} (sha256 {entry.sha256[:12]}...), clean {_interval(metrics, 'clean_acc', 'n_examples', ' ')} "
        f"and PGD-10 {_interval(metrics, 'pgd10_acc', 'n_examples', ' ')} % on {metrics['n_examples']}, "
        f"AutoAttack {_interval(metrics, 'autoattack_acc', 'autoattack_examples', ' ')} % (95% Wilson intervals) on {metrics['autoattack_examples']} test images"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
