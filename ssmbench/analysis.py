"""Component-wise error analysis: where in a block does an adversarial perturbation grow?

For clean inputs x and PGD-10 adversarial inputs x', we record the activations entering and
leaving each component of every block (SSM, AdS, attention, output Linear) and measure how far
the adversarial activations are from the clean ones, as an MSE and as a KL divergence between
the softmax-normalized feature vectors of each token. A component's change rate
(after - before) / before says whether it amplifies (> 0) or damps (< 0) the perturbation;
this is the paper's component figure.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.ads import AdaptiveScaling
from model_zoo.files import atomic_writer
from model_zoo.training.perturb import pgd

if TYPE_CHECKING:
    import pyarrow

METRICS = ("mse", "kl")


@dataclass(frozen=True)
class ComponentSite:
    """One component of one block: the modules whose input/output are its before/after."""

    block: int
    component: str
    before: tuple[nn.Module, str]  # (module, "input" | "output")
    after: tuple[nn.Module, str]


@dataclass(frozen=True)
class ComponentChange:
    """How the clean-vs-adversarial distance changes across one component."""

    split: str
    block: int
    component: str
    metric: str
    before: float
    after: float

    @property
    def change_rate(self) -> float:
        return (self.after - self.before) / self.before if self.before > 0 else float("nan")


def component_sites(model: nn.Module) -> list[ComponentSite]:
    """The analysable components of a SequenceClassifier, block by block."""
    sites: list[ComponentSite] = []
    for index, block in enumerate(model.get_submodule("blocks").children()):
        mixer = block.get_submodule("mixer")
        if hasattr(mixer, "ads") and hasattr(mixer, "out_proj"):
            ads, out_proj = mixer.get_submodule("ads"), mixer.get_submodule("out_proj")
            sites.append(ComponentSite(index, "SSM", (mixer, "input"), (ads, "input")))
            if isinstance(ads, AdaptiveScaling):
                sites.append(ComponentSite(index, "AdS", (ads, "input"), (ads, "output")))
            sites.append(ComponentSite(index, "Linear", (out_proj, "input"), (out_proj, "output")))
        elif hasattr(mixer, "ema"):  # Mega: EMA, then gated attention over the EMA output
            ema = mixer.get_submodule("ema")
            sites.append(ComponentSite(index, "EMA", (mixer, "input"), (ema, "output")))
            sites.append(ComponentSite(index, "Gated attention", (ema, "output"), (mixer, "output")))
        else:
            sites.append(ComponentSite(index, type(mixer).__name__.removesuffix("Mixer"), (mixer, "input"), (mixer, "output")))
        attention = getattr(block, "attention", None)  # None: the block has no attention layer
        if isinstance(attention, nn.Module):
            sites.append(ComponentSite(index, "Attention", (attention, "input"), (attention, "output")))
    return sites


class ActivationRecorder:
    """Forward hooks that keep the input and output of the given modules for one forward pass.

    A pass through frozen weights may call each module once per block of batch rows
    (SequenceClassifier.frozen_block_rows); the blocks are joined along the batch axis.
    """

    def __init__(self, modules: Iterator[nn.Module]) -> None:
        self._blocks: dict[tuple[int, str], list[torch.Tensor]] = {}
        self._handles = [module.register_forward_hook(self._hook) for module in dict.fromkeys(modules)]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self._blocks.setdefault((id(module), "input"), []).append(inputs[0].detach())
        self._blocks.setdefault((id(module), "output"), []).append(output.detach())

    @property
    def records(self) -> dict[tuple[int, str], torch.Tensor]:
        return {key: torch.cat(blocks) for key, blocks in self._blocks.items()}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def mse(clean: torch.Tensor, adv: torch.Tensor) -> float:
    return F.mse_loss(adv, clean).item()


def token_kl(clean: torch.Tensor, adv: torch.Tensor) -> float:
    """KL(softmax(clean) || softmax(adv)) over the feature axis, averaged over tokens."""
    log_p = F.log_softmax(clean.float(), dim=-1)
    log_q = F.log_softmax(adv.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean().item()


METRIC_FUNCTIONS = {"mse": mse, "kl": token_kl}


def _key(where: tuple[nn.Module, str]) -> tuple[int, str]:
    return (id(where[0]), where[1])


def record(model: nn.Module, images: torch.Tensor, sites: list[ComponentSite]) -> dict[tuple[int, str], torch.Tensor]:
    """Run one forward pass and return every hooked module's input and output."""
    recorder = ActivationRecorder(m for site in sites for m in (site.before[0], site.after[0]))
    try:
        with torch.no_grad():
            model(images)
    finally:
        recorder.close()
    return recorder.records


def compare(model: nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, split: str) -> list[ComponentChange]:
    """Distances between clean and adversarial activations before/after every component."""
    sites = component_sites(model)
    clean_acts = record(model, clean, sites)
    adv_acts = record(model, adversarial, sites)
    return [
        ComponentChange(
            split, site.block, site.component, metric,
            METRIC_FUNCTIONS[metric](clean_acts[_key(site.before)], adv_acts[_key(site.before)]),
            METRIC_FUNCTIONS[metric](clean_acts[_key(site.after)], adv_acts[_key(site.after)]),
        )
        for site in sites
        for metric in METRICS
    ]


def analyze(
    model: nn.Module,
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
    eps: float = 8 / 255,
    alpha: float | None = None,
    steps: int = 10,
    seed: int = 0,
) -> list[ComponentChange]:
    """PGD-attack each split's examples, then compare activations component by component."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    changes: list[ComponentChange] = []
    for split, (images, labels) in splits.items():
        adversarial = pgd(model, images, labels, eps, alpha if alpha is not None else eps / 4, steps, generator=generator)
        changes.extend(compare(model, images, adversarial, split))
    return changes


def to_table(changes: list[ComponentChange]) -> pyarrow.Table:
    import pyarrow as pa

    return pa.Table.from_pylist(
        [
            {"split": c.split, "block": c.block, "component": c.component, "metric": c.metric,
             "before": c.before, "after": c.after, "change_rate": c.change_rate}
            for c in changes
        ]
    )


def write_parquet(changes: list[ComponentChange], path: Path) -> None:
    """Atomic Parquet write (temp file + rename), like every other result file."""
    import pyarrow.parquet as pq

    with atomic_writer(path) as handle:
        pq.write_table(to_table(changes), handle)


def plot_change_rates(changes: list[ComponentChange], path: Path, title: str = "") -> None:
    """Grouped bars, one group per (block, component), train and test side by side, per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({c.split for c in changes}, key=lambda s: (s != "train", s))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(6 * len(METRICS), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], METRICS):
        groups = list(dict.fromkeys((c.block, c.component) for c in changes if c.metric == metric))
        width = 0.8 / max(len(splits), 1)
        for offset, split in enumerate(splits):
            rates = {(c.block, c.component): c.change_rate for c in changes if c.metric == metric and c.split == split}
            xs = [i + (offset - (len(splits) - 1) / 2) * width for i in range(len(groups))]
            ax.bar(xs, [rates.get(g, float("nan")) for g in groups], width, label=split)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), [f"L{b + 1} {name}" for b, name in groups], rotation=45, ha="right")
        ax.set_ylabel(f"{metric.upper()} change rate")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
