"""`ssmbench zoo list|show|fetch`: what can be built and what is shipped."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from model_zoo import build_from_config, zoo
from model_zoo.ads import ADS_CHOICES
from model_zoo.checkpoints import file_sha256, read_meta
from model_zoo.config import PRESETS
from model_zoo.layers import MIXERS
from ssmbench.cli._common import console
from ssmbench.loading import resolve_target

zoo_app = typer.Typer(help="Architectures, presets and named checkpoints.", no_args_is_help=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


@zoo_app.command("list")
def list_command() -> None:
    """List architectures, AdS options, dataset presets and the named checkpoints.

    Example: ssmbench zoo list
    """
    archs = Table(title="Architectures", title_justify="left")
    for column in ("name", "causal", "AdS", "description"):
        archs.add_column(column)
    for name in sorted(MIXERS):
        spec = MIXERS[name]
        archs.add_row(name, "yes" if spec.causal else "no", "yes" if spec.supports_ads else "no", spec.description)
    console.print(archs)
    console.print(f"AdS options: {', '.join(ADS_CHOICES)}   attention: --attention on any architecture")
    console.print(f"Dataset presets: {', '.join(PRESETS)}")
    entries = zoo.load_zoo()
    models = Table(title="Named checkpoints (ssmbench eval NAME)", title_justify="left")
    for column in ("name", "dataset", "description", "CA %", "PGD-10 %", "AA %", "n"):
        models.add_column(column)
    for entry in entries.values():
        metrics = entry.metrics
        models.add_row(
            entry.name,
            str(entry.config.get("dataset", "")),
            entry.description,
            _percent(metrics.get("clean_acc")),
            _percent(metrics.get("pgd10_acc")),
            _percent(metrics.get("autoattack_acc")),
            str(int(metrics.get("n_examples", 0))) or "-",
        )
    console.print(models if entries else "No named checkpoints in model_zoo/zoo.toml yet.")


@zoo_app.command("show")
def show_command(target: str = typer.Argument(..., help="A .safetensors checkpoint or a zoo name.")) -> None:
    """Show a checkpoint's config, parameter count and metadata.

    Example: ssmbench zoo show runs/s4-pgd-tanh/best.safetensors
    """
    path = resolve_target(target)
    meta, raw = read_meta(path)
    model = build_from_config(meta.config)
    params = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    table = Table(title=str(path), title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("sha256", file_sha256(path))
    table.add_row("parameters", f"{params:,}")
    for key in ("arch", "dataset", "input_shape", "classes", "kind", "epoch", "seed", "format_version"):
        table.add_row(key, str(raw.get(key)))
    for key in ("config", "training", "metrics"):
        table.add_row(key, json.dumps(raw.get(key, {}), sort_keys=True))
    console.print(table)


@zoo_app.command("fetch")
def fetch_command(name: str = typer.Argument(..., help="A zoo name with a url in zoo.toml.")) -> None:
    """Download a named checkpoint and verify its sha256.

    Example: ssmbench zoo fetch s4-pgd-tanh-digits
    """
    path: Path = zoo.fetch(name)
    console.print(f"{name}: {path} (sha256 verified)")


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
