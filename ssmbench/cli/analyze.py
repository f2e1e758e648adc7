"""`ssmbench analyze TARGET`: the component-wise error analysis of one checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from model_zoo.labels import run_title
from ssmbench import analysis
from ssmbench.cli._common import check_at_least, check_seed, console, parse_fraction
from ssmbench.cli._settings import fraction_default
from ssmbench.data import load_split
from ssmbench.evaluate import EvalSettings
from ssmbench.loading import load_with_meta, resolve_target


def analyze_command(
    target: str = typer.Argument(..., help="A checkpoint, a zoo name, or a run directory (its best.safetensors)."),
    n_examples: int = typer.Option(256, help="Examples per split (the first N, fixed order)."),
    eps: str = typer.Option(fraction_default(EvalSettings, "eps"), help="Linf radius of the PGD-10 attack."),
    steps: int = typer.Option(10, help="PGD steps."),
    splits: str = typer.Option("train,test", help="Comma-separated splits to analyse."),
    data_dir: Path = typer.Option(None, help="Where the dataset files live (default $SSMBENCH_DATA)."),
    out: Path = typer.Option(None, help="Output folder (default: next to the checkpoint, analysis/)."),
    seed: int = typer.Option(0, help="Seed of PGD's random start."),
) -> None:
    """Measure how each block component (SSM, AdS, attention, output Linear) changes the
    clean-vs-adversarial distance (MSE and KL), on train and test examples.

    Example: ssmbench analyze runs/s4-pgd-tanh-digits/best.safetensors --n-examples 256
    """
    check_at_least(1, n_examples=n_examples, steps=steps)
    check_seed(seed)
    radius = parse_fraction(eps, "--eps")
    path = Path(target)
    if path.is_dir():
        path = path / "best.safetensors"
    checkpoint = resolve_target(path if path.suffix == ".safetensors" else target)
    model, meta = load_with_meta(checkpoint)
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    data = {}
    for split in wanted:
        images, labels = load_split(meta.config.dataset, split, data_dir)
        data[split] = (images[:n_examples], labels[:n_examples])
    with console.status(f"PGD-{steps} on {', '.join(wanted)} and activation recording..."):
        changes = analysis.analyze(model, data, eps=radius, steps=steps, seed=seed)
    out_dir = out or checkpoint.parent / "analysis"
    stem = checkpoint.stem
    title = run_title(meta.config, str(meta.training.get("method", "")), meta.seed)
    analysis.write_parquet(changes, out_dir / f"{stem}-components.parquet")
    analysis.plot_change_rates(changes, out_dir / f"{stem}-components.png", title=f"{title}, {meta.kind or stem}")
    table = Table(title=f"Change rate (after - before) / before, {title}, {checkpoint}", title_justify="left")
    for column in ("block", "component", *(f"{m.upper()} {s}" for m in analysis.METRICS for s in wanted)):
        table.add_column(column, justify="right")
    rows: dict[tuple[int, str], dict[tuple[str, str], float]] = {}
    for c in changes:
        rows.setdefault((c.block, c.component), {})[(c.metric, c.split)] = c.change_rate
    for (block, component), rates in rows.items():
        table.add_row(str(block + 1), component, *(f"{rates[(m, s)]:+.3f}" for m in analysis.METRICS for s in wanted))
    console.print(table)
    console.print(f"wrote {out_dir / (stem + '-components.parquet')} and {out_dir / (stem + '-components.png')}")


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_command)
