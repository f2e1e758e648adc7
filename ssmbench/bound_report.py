"""`ssmbench bound`'s report: per block and component, the bounds next to what PGD-10 measures.

For each component (the sites that `ssmbench analyze` hooks, plus every LayerNorm) and the same
examples and adversarial images, three Linf movements of the component's input and output:

* the global parameter-only gain where one exists (LTI convolution with D skip, Linear; Mega's
  EMA times SiLU's Lipschitz constant), which bounds output movement / input movement for any input;
* the IBP bound: how far the component's input and output can move from their clean values over
  the eps-box around each image (mean over examples of the per-example maximum over tokens and
  features), and their ratio;
* the measured movement under the PGD-10 adversarial image, and analyze's MSE change rate.

End to end: clean, PGD-10 robust and IBP-certified accuracy on the same examples, per example.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssmbench import analysis, bounds
from ssmbench.attacks import AttackSettings, eval_mode, get_suite_spec, predict
from ssmbench.outputs import pyplot, save_figure, write_parquet

# max_x d/dx [x sigmoid(x)], attained at x ~ 2.3994: SiLU's Lipschitz constant.
SILU_LIPSCHITZ = 1.0998393194


@dataclass(frozen=True)
class ComponentBound:
    block: int  # 0-based
    component: str
    global_gain: float | None  # parameter-only Linf gain; None when only an input-dependent bound exists
    ibp_before: float
    ibp_after: float
    measured_before: float
    measured_after: float
    mse_change_rate: float | None  # analyze's measured amplification (None for the LayerNorms it does not hook)

    @property
    def ibp_gain(self) -> float:
        return self.ibp_after / self.ibp_before if self.ibp_before > 0 else float("nan")

    @property
    def measured_gain(self) -> float:
        return self.measured_after / self.measured_before if self.measured_before > 0 else float("nan")


@dataclass(frozen=True)
class BoundReport:
    arch: str
    eps: float
    components: list[ComponentBound]
    clean: torch.Tensor  # bool (N,)
    robust: torch.Tensor  # bool (N,): PGD-10 failed
    certified: torch.Tensor  # bool (N,): IBP proves the whole eps-box correct

    @property
    def n_examples(self) -> int:
        return len(self.clean)

    @property
    def local_only(self) -> bool:
        """Mamba: every bound of its mixer depends on the input (no global gain exists)."""
        return self.arch == "mamba"


def sites(model: Any) -> list[analysis.ComponentSite]:
    """analyze's sites, each block's LayerNorms after its mixer and attention."""
    found = analysis.component_sites(model)
    for index, block in enumerate(model.blocks):
        found.append(analysis.ComponentSite(index, "LayerNorm", (block.norm, "input"), (block.norm, "output")))
        if block.attention_norm is not None:
            found.append(analysis.ComponentSite(index, "Attention LayerNorm", (block.attention_norm, "input"), (block.attention_norm, "output")))
    return sorted(found, key=lambda s: s.block)


def global_gain(arch: str, model: Any, site: analysis.ComponentSite, length: int) -> float | None:
    mixer = model.blocks[site.block].mixer
    if site.component == "Linear":
        return bounds.linear_gain(mixer.out_proj.weight)
    if site.component in ("SSM", "EMA"):
        gain = bounds.lti_gain(arch, mixer, length)
        if gain is None:
            return None
        return gain.max().item() * (SILU_LIPSCHITZ if site.component == "EMA" else 1.0)
    return None


def _movement(clean: torch.Tensor, other_lower: torch.Tensor, other_upper: torch.Tensor) -> torch.Tensor:
    """Per example, the largest distance from the clean value to either bound."""
    return torch.maximum(other_upper - clean, clean - other_lower).flatten(1).amax(dim=1)


def bound_report(model: Any, images: torch.Tensor, labels: torch.Tensor, eps: float, seed: int = 0, batch_size: int = 128) -> BoundReport:
    """Bounds and measurements on these examples; PGD-10 is the pgd10 suite's attack, on all examples."""
    arch = bounds.check_supported(model)
    model64 = bounds.as_float64(model)
    model_sites = sites(model)
    sites64 = sites(model64)
    length = model.to_sequence(images[:1]).shape[1]
    (attack,) = get_suite_spec("pgd10").factory(AttackSettings(eps=eps, seed=seed))
    sums = torch.zeros(len(sites64), 4, dtype=torch.float64)  # ibp before/after, measured before/after
    mse: dict[tuple[int, str], list[float]] = {}
    flags: dict[str, list[torch.Tensor]] = {"clean": [], "robust": [], "certified": []}
    for start in range(0, len(images), batch_size):
        x, y = images[start:start + batch_size], labels[start:start + batch_size]
        x_adv = attack(model, x, y).x_adv
        with eval_mode(model):
            clean = predict(model, x) == y
            flags["clean"].append(clean.cpu())
            flags["robust"].append((clean & (predict(model, x_adv) == y)).cpu())
        propagation = bounds.propagate(model64, x, y, eps)
        flags["certified"].append((clean & (propagation.margins.min(dim=1).values > 0)).cpu())
        clean_acts = analysis.record(model64, x.double(), sites64)
        adv_acts = analysis.record(model64, x_adv.double(), sites64)
        for i, site in enumerate(sites64):
            for j, where in enumerate((site.before, site.after)):
                key = (id(where[0]), where[1])
                box = propagation.records[key]
                sums[i, j] += _movement(clean_acts[key], box.lower, box.upper).sum().cpu()
                sums[i, 2 + j] += (adv_acts[key] - clean_acts[key]).abs().flatten(1).amax(dim=1).sum().cpu()
        for change in analysis.compare(model, x, x_adv, "test"):
            if change.metric == "mse":
                totals = mse.setdefault((change.block, change.component), [0.0, 0.0])
                totals[0] += change.before * len(x)
                totals[1] += change.after * len(x)
    means = (sums / len(images)).tolist()
    components = []
    for site, site64, (ibp_b, ibp_a, meas_b, meas_a) in zip(model_sites, sites64, means):
        before_after = mse.get((site.block, site.component))
        rate = None if before_after is None or before_after[0] == 0 else (before_after[1] - before_after[0]) / before_after[0]
        components.append(ComponentBound(site.block, site.component, global_gain(arch, model64, site64, length),
                                         ibp_b, ibp_a, meas_b, meas_a, rate))
    return BoundReport(arch, eps, components, *(torch.cat(flags[k]) for k in ("clean", "robust", "certified")))


def component_rows(report: BoundReport) -> list[dict[str, object]]:
    return [{
        "block": c.block + 1, "component": c.component, "eps": report.eps, "n_examples": report.n_examples,
        "global_gain": c.global_gain, "ibp_before": c.ibp_before, "ibp_after": c.ibp_after, "ibp_gain": c.ibp_gain,
        "measured_before": c.measured_before, "measured_after": c.measured_after, "measured_gain": c.measured_gain,
        "mse_change_rate": c.mse_change_rate, "local_only": report.local_only,
    } for c in report.components]


def example_rows(report: BoundReport) -> list[dict[str, object]]:
    return [{"example": i, "eps": report.eps, "clean": bool(report.clean[i]), "pgd10_robust": bool(report.robust[i]),
             "certified": bool(report.certified[i])} for i in range(report.n_examples)]


def write_report(report: BoundReport, out_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    paths = (out_dir / f"{stem}-bound-components.parquet", out_dir / f"{stem}-bound-examples.parquet", out_dir / f"{stem}-bound.png")
    write_parquet(component_rows(report), paths[0])
    write_parquet(example_rows(report), paths[1])
    plot_report(report, paths[2], stem)
    return paths


def plot_report(report: BoundReport, path: Path, title: str) -> None:
    """Per component, on a log axis: the global gain, the IBP gain and the measured Linf gain
    (output movement / input movement), with analyze's MSE ratio 1 + change rate beside them."""
    plt = pyplot()
    labels = [f"L{c.block + 1} {c.component}" for c in report.components]
    series = {
        "global gain (parameters)": [c.global_gain if c.global_gain is not None else float("nan") for c in report.components],
        "IBP gain (eps-box)": [c.ibp_gain for c in report.components],
        "measured Linf gain (PGD-10)": [c.measured_gain for c in report.components],
        "measured MSE ratio (analyze)": [1 + c.mse_change_rate if c.mse_change_rate is not None else float("nan") for c in report.components],
    }
    figure, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(labels) + 2), 4.2))
    width = 0.8 / len(series)
    for offset, (name, values) in enumerate(series.items()):
        xs = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v if v == v and 0 < v < float("inf") else float("nan") for v in values], width, label=name)
    ax.set_yscale("log")
    ax.axhline(1, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("output / input movement")
    n = report.n_examples
    ax.set_title(f"{title}: eps {report.eps * 255:.3g}/255, n = {n}; certified {report.certified.sum().item()}/{n}, "
                 f"PGD-10 robust {report.robust.sum().item()}/{n}", fontsize=8)
    ax.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)
