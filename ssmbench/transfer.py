"""Transfer matrix: PGD-10 examples crafted on each source model, every target measured on them.

All models see the same examples. The crafting attack is the `pgd10` suite's own PGD, run the
way the suite runs it: per batch, on the examples the source classifies correctly (so the
white-box diagonal is, flag for flag, the source's PGD-10 result with the same seed and batches),
and separately on the examples it gets wrong (a target may still be fooled by them).
A target counts as robust on an example when it classifies both the clean image and the source's
adversarial image correctly, the same definition as a suite's robust flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssmbench.attacks import AttackSettings, eval_mode, get_suite_spec, predict
from ssmbench.outputs import pyplot, save_figure, write_parquet
from ssmbench.stats import wilson

CRAFTING_SUITE = "pgd10"
# Called after each source model's batch is crafted and measured: (batches done, batches in all).
BatchHook = Callable[[int, int], None]


@dataclass(frozen=True)
class TransferMatrix:
    """robust[s, t, i]: target t correct on example i, clean and on source s's adversarial image."""

    names: tuple[str, ...]
    eps: float
    clean: torch.Tensor  # bool (T, N)
    robust: torch.Tensor  # bool (S, T, N), S = T = len(names)

    @property
    def n_examples(self) -> int:
        return self.clean.shape[1]

    def accuracy(self, source: int, target: int) -> float:
        return self.robust[source, target].float().mean().item()


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: AttackSettings) -> torch.Tensor:
    """PGD-10 points for one batch: on the correctly classified examples, then on the rest."""
    (attack,) = get_suite_spec(CRAFTING_SUITE).factory(settings)
    with eval_mode(model):
        correct = predict(model, x) == y
    x_adv = x.clone()
    for part in (correct.nonzero().flatten(), (~correct).nonzero().flatten()):
        if part.numel():
            x_adv[part] = attack(model, x[part], y[part]).x_adv
    return x_adv


def transfer_matrix(
    models: list[tuple[str, nn.Module]],
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    seed: int = 0,
    batch_size: int = 256,
    on_batch: BatchHook | None = None,
) -> TransferMatrix:
    """Craft on every model, measure every model, batch by batch."""
    settings = AttackSettings(eps=eps, seed=seed)
    count, n = len(models), len(images)
    clean = torch.zeros(count, n, dtype=torch.bool)
    robust = torch.zeros(count, count, n, dtype=torch.bool)
    batches = range(0, n, batch_size)
    for t, (_, target) in enumerate(models):
        with eval_mode(target):
            clean[t] = torch.cat([(predict(target, images[b:b + batch_size]) == labels[b:b + batch_size]).cpu() for b in batches])
    done = 0
    for s, (_, source) in enumerate(models):
        for b in batches:
            x, y = images[b:b + batch_size], labels[b:b + batch_size]
            x_adv = craft(source, x, y, settings)
            for t, (_, target) in enumerate(models):
                with eval_mode(target):
                    robust[s, t, b:b + batch_size] = clean[t, b:b + batch_size] & (predict(target, x_adv) == y).cpu()
            done += 1
            if on_batch is not None:
                on_batch(done, count * len(batches))
    return TransferMatrix(tuple(name for name, _ in models), eps, clean, robust)


def matrix_rows(matrix: TransferMatrix) -> list[dict[str, object]]:
    """One row per (source, target): robust count, accuracy, 95% Wilson interval, per-example flags."""
    rows: list[dict[str, object]] = []
    n = matrix.n_examples
    for s, source in enumerate(matrix.names):
        for t, target in enumerate(matrix.names):
            k = int(matrix.robust[s, t].sum())
            low, high = wilson(k, n)
            rows.append({
                "source": source, "target": target, "eps": matrix.eps, "attack": CRAFTING_SUITE, "n_examples": n,
                "target_clean_acc": matrix.clean[t].float().mean().item(), "robust": k, "robust_acc": k / n,
                "ci_low": low, "ci_high": high,
                "outcomes": "".join("1" if flag else "0" for flag in matrix.robust[s, t].tolist()),
            })
    return rows


def write_matrix(matrix: TransferMatrix, out_dir: Path) -> tuple[Path, Path]:
    """transfer.parquet and transfer.png in out_dir."""
    paths = (out_dir / "transfer.parquet", out_dir / "transfer.png")
    write_parquet(matrix_rows(matrix), paths[0])
    plot_matrix(matrix, paths[1])
    return paths


def plot_matrix(matrix: TransferMatrix, path: Path) -> None:
    """Heatmap of target robust accuracy (%), sources as rows; each cell shows its 95% interval."""
    plt = pyplot()
    count, n = len(matrix.names), matrix.n_examples
    values = matrix.robust.float().mean(dim=2).numpy() * 100
    figure, ax = plt.subplots(figsize=(1.25 * count + 3, 1.0 * count + 2))
    floor = max(0.0, 10 * (float(values.min()) // 10) - 10)  # the colours spread over the range that occurs
    image = ax.imshow(values, vmin=floor, vmax=100, cmap="viridis")
    for s in range(count):
        for t in range(count):
            low, high = wilson(int(matrix.robust[s, t].sum()), n)
            ax.text(t, s, f"{values[s, t]:.1f}\n({100 * low:.0f}-{100 * high:.0f})", ha="center", va="center", fontsize=6.5,
                    color="white" if values[s, t] < (floor + 100) / 2 else "black", fontweight="bold" if s == t else "normal")
    ax.set_xticks(range(count), matrix.names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(count), matrix.names, fontsize=7)
    ax.set_xlabel("target (measured)")
    ax.set_ylabel("source (PGD-10 crafted on)")
    ax.set_title(f"Target robust accuracy %, Linf eps {matrix.eps * 255:.3g}/255, n = {n}, 95% Wilson interval", fontsize=8)
    figure.colorbar(image, ax=ax, fraction=0.046)
    figure.tight_layout()
    save_figure(figure, path)
