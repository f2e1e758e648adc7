"""`ssmbench bound TARGET`: per-component bounds next to measured amplification; certified accuracy."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from model_zoo.devices import resolve_device
from ssmbench import bound_report
from ssmbench.cli._common import check_at_least, check_seed, console, parse_fraction
from ssmbench.cli._settings import fraction_default
from ssmbench.cli._targets import first_test_examples, load_targets, target_name
from ssmbench.evaluate import EvalSettings
from ssmbench.stats import wilson


def _number(value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return "inf" if value == float("inf") else f"{value:.3g}"


def bound_command(
    target: str = typer.Argument(..., help="A checkpoint or a zoo name."),
    eps: str = typer.Option(fraction_default(EvalSettings, "eps"), help="Linf radius on [0, 1] images, e.g. 8/255 or 0.03."),
    n_examples: int = typer.Option(None, help="The first N test images (default: the whole test split)."),
    batch_size: int = typer.Option(128, help="Examples per batch."),
    seed: int = typer.Option(0, help="Seed of PGD's random start (the measured side)."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA or ~/.cache/ssmbench/data)."),
    out: Path = typer.Option(Path("runs/bound"), help="Output folder: NAME-bound-components.parquet, NAME-bound-examples.parquet, NAME-bound.png."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
) -> None:
    """Per block and component, an upper bound on how far an eps-perturbation can move its output
    (global LTI / Linear gains from the parameters; interval bounds around each input), next to the
    movement PGD-10 achieves and analyze's MSE change rate; end to end, IBP-certified accuracy.

    Example: ssmbench bound s4-pgd-tanh-digits --eps 8/255 --n-examples 360
    """
    check_at_least(1, batch_size=batch_size)
    check_seed(seed)
    radius = parse_fraction(eps, "--eps")
    where = resolve_device(device)
    ((name, model, meta),) = load_targets([target], where)
    images, labels = first_test_examples(meta.config.dataset, n_examples, data_dir, where)
    with console.status(f"PGD-10 and interval bound propagation on {len(images)} examples..."):
        report = bound_report.bound_report(model, images, labels, radius, seed, batch_size)
    stem = target_name(target).replace("/", "-")
    paths = bound_report.write_report(report, out, stem)
    n = report.n_examples
    table = Table(title=f"{name}: Linf movement bounds vs PGD-10, eps {radius * 255:.3g}/255, n = {n} test images "
                  "(movements: mean over examples of the max over tokens and features)", title_justify="left")
    for column in ("block", "component", "global gain", "IBP in", "IBP out", "IBP gain", "PGD in", "PGD out", "PGD gain", "MSE change (analyze)"):
        table.add_column(column, justify="right")
    for c in report.components:
        table.add_row(str(c.block + 1), c.component, _number(c.global_gain), _number(c.ibp_before), _number(c.ibp_after),
                      _number(c.ibp_gain), _number(c.measured_before), _number(c.measured_after), _number(c.measured_gain),
                      "-" if c.mse_change_rate is None else f"{c.mse_change_rate:+.3f}")
    console.print(table)
    for label, flags in (("clean", report.clean), ("PGD-10 robust", report.robust), ("IBP certified", report.certified)):
        k = int(flags.sum())
        low, high = wilson(k, n)
        console.print(f"{label}: {100 * k / n:.1f}% ({100 * low:.1f}-{100 * high:.1f}), {k}/{n}")
    if report.local_only:
        console.print("mamba: its dt, B and C depend on the input, so every bound of its mixer is local to each input's eps-box")
    console.print(f"wrote {', '.join(map(str, paths))}")


def register(app: typer.Typer) -> None:
    app.command("bound")(bound_command)
