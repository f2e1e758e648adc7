"""`pgd` and `autoattack`: our attack paths against torchattacks on the same model and examples.

Both attack the same briefly trained digits model (s4d, digits preset, a few epochs of standard
training; trained once per run in the scratch folder): about half of the test images right and a
good share of those still right under PGD-10 at 8/255, so that every attack of AutoAttack has
points left to work on and the accuracy checks compare numbers that could differ.

`pgd`: our PGD-10 (`ssmbench.attacks.PGD`: one uniform start, 10 signed steps of eps/4 = 2/255, eps 8/255)
against torchattacks.PGD with the same settings, both on all the examples at once. The random
starts differ, so robust accuracies may differ by a few examples; they must agree within 1 point.

`autoattack`: the `autoattack` suite with the official backend (pyautoattack, the authors' code:
our default and the paper's protocol) against torchattacks.AutoAttack 'standard' run directly.
torchattacks 3.5.1 builds APGD, APGD-T and FAB with 10 iterations and n_classes - 1 targets; the
baseline is set to the authors' budget (100 iterations, 9 targets, as our torchattacks backend
does), so that both sides run the same attack and `agree` (identical robust accuracy) is a fair
check of the two implementations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ssmbench
from benchmarks import Context, Row, Task, load_split_file, register_benchmark
from benchmarks.runner import Step
from model_zoo import build_model
from model_zoo.training import TrainConfig, seed_everything, train
from ssmbench.attacks import PGD, AttackSettings, build_suite
from ssmbench.attacks.autoattack import TORCHATTACKS_STANDARD_BUDGET

EPS = 8 / 255
STEPS = 10
SEED = 0


@dataclass(frozen=True)
class AttackScale:
    """`eps` is 8/255 except in the tiny scale, whose large radius lets the first attack break
    every point, so that AutoAttack's later attacks have nothing left: the plumbing in seconds."""

    train_epochs: int
    pgd_examples: int
    autoattack_examples: int
    warmup: int
    repeats: int
    model: dict[str, Any] = field(default_factory=dict)
    train_examples: int | None = None
    eps: float = EPS


SCALES = {
    "full": AttackScale(4, pgd_examples=360, autoattack_examples=32, warmup=1, repeats=3),
    "quick": AttackScale(2, pgd_examples=360, autoattack_examples=8, warmup=0, repeats=1),
    "tiny": AttackScale(1, pgd_examples=4, autoattack_examples=2, warmup=0, repeats=1,
                        model={"n_layers": 1, "d_model": 16, "d_state": 4}, train_examples=512, eps=0.25),
}


def digits_checkpoint(ctx: Context) -> Path:
    """The attacked model: s4d with the digits preset after a few epochs of standard training.

    Trained once per run (both attack benchmarks reuse it) and handed to the measuring processes
    as a checkpoint file, so that ours and the baseline attack exactly the same weights.
    """
    scale = SCALES[ctx.scale]
    run_dir = ctx.scratch / f"digits-s4d-{ctx.scale}"
    checkpoint = run_dir / "last.safetensors"
    if not checkpoint.is_file():
        seed_everything(SEED)
        model = build_model("s4d", "digits", **scale.model)
        config = TrainConfig.from_settings(method="st", epochs=scale.train_epochs, batch_size=32, lr=3e-3,
                             eval_examples=16, train_examples=scale.train_examples, seed=SEED)
        splits = (load_split_file(ctx.cached_split("digits", split)) for split in ("train", "test"))
        train(model, *splits, config, run_dir)
    return checkpoint


def _attack_inputs(
    device: str, checkpoint: str, examples: str, n_examples: int
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    images, labels = load_split_file(examples, n_examples)
    return ssmbench.load(checkpoint, device), images.to(device), labels.to(device)


def _robust_acc(model: torch.nn.Module, x_adv: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x_adv).argmax(1) == labels).float().mean().item()


def setup_pgd(device: str, checkpoint: str, examples: str, n_examples: int, eps: float, implementation: str) -> Step:
    """One PGD-10 run (step eps/4) over all the examples, by ssmbench or by torchattacks."""
    model, images, labels = _attack_inputs(device, checkpoint, examples, n_examples)
    if implementation == "ssmbench":
        attack = PGD(eps, steps=STEPS, alpha=eps / 4, seed=SEED)

        def step() -> dict[str, Any]:
            return {"robust_acc": (~attack(model, images, labels).success).float().mean().item()}

        return step
    import torchattacks  # imported when used: it takes a second, and `ssmbench --help` needs none of it

    reference = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=STEPS, random_start=True)

    def reference_step() -> dict[str, Any]:
        torch.manual_seed(SEED)  # torchattacks draws its start from the global generator
        return {"robust_acc": _robust_acc(model, reference(images, labels), labels)}

    return reference_step


def setup_autoattack(
    device: str, checkpoint: str, examples: str, n_examples: int, eps: float, implementation: str
) -> Step:
    """AutoAttack 'standard' over the examples: our suite (official backend) or torchattacks'."""
    model, images, labels = _attack_inputs(device, checkpoint, examples, n_examples)
    if implementation == "ssmbench":
        suite = build_suite("autoattack", AttackSettings(eps=eps, backend="official", version="standard", seed=SEED))

        def step() -> dict[str, Any]:
            result = suite.run(model, images, labels)
            return {"robust_acc": result.robust_acc, "clean_acc": result.clean_acc}

        return step
    import torchattacks

    reference = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=SEED)
    for part in reference._autoattack.attacks:  # torchattacks 3.5.1 keeps them in a MultiAttack
        if hasattr(part, "steps"):
            part.steps = TORCHATTACKS_STANDARD_BUDGET["steps"]
        if hasattr(part, "n_target_classes"):
            part.n_target_classes = TORCHATTACKS_STANDARD_BUDGET["n_target_classes"]

    def reference_step() -> dict[str, Any]:
        return {"robust_acc": _robust_acc(model, reference(images, labels), labels)}

    return reference_step


def _fraction(eps: float) -> str:
    return f"{eps * 255:g}/255"


def _accuracy_fields(ours: dict[str, Any], theirs: dict[str, Any], tolerance: float) -> dict[str, Any]:
    if "robust_acc" not in ours or "robust_acc" not in theirs:
        return {}
    gap = abs(ours["robust_acc"] - theirs["robust_acc"])
    return {"robust_acc_ours": ours["robust_acc"], "robust_acc_baseline": theirs["robust_acc"],
            "agree": gap <= tolerance + 1e-9}


@register_benchmark("pgd")
def pgd_benchmark(ctx: Context) -> list[Row]:
    """Our PGD-10 against torchattacks.PGD (eps 8/255, step 2/255, random start) on digits."""
    scale = SCALES[ctx.scale]
    params = {"checkpoint": str(digits_checkpoint(ctx)), "examples": str(ctx.cached_split("digits", "test")),
              "n_examples": scale.pgd_examples, "eps": scale.eps}
    ours = Task("ssmbench PGD-10", setup_pgd, {**params, "implementation": "ssmbench"}, scale.warmup, scale.repeats)
    baseline = Task("torchattacks.PGD", setup_pgd, {**params, "implementation": "torchattacks"}, scale.warmup, scale.repeats)
    mine, theirs = ctx.compare("pgd10", ours, baseline)
    fields = _accuracy_fields(mine.info, theirs.info, tolerance=0.01)
    case = f"s4d digits, {scale.pgd_examples} test examples, eps {_fraction(scale.eps)}"
    return [Row("pgd", case, mine, theirs, fields)]


@register_benchmark("autoattack")
def autoattack_benchmark(ctx: Context) -> list[Row]:
    """The official AutoAttack (standard) through our suite against torchattacks.AutoAttack on digits."""
    scale = SCALES[ctx.scale]
    params = {"checkpoint": str(digits_checkpoint(ctx)), "examples": str(ctx.cached_split("digits", "test")),
              "n_examples": scale.autoattack_examples, "eps": scale.eps}
    ours = Task("ssmbench autoattack (official)", setup_autoattack, {**params, "implementation": "ssmbench"}, 0, 1)
    baseline = Task("torchattacks.AutoAttack (100 iterations)", setup_autoattack, {**params, "implementation": "torchattacks"}, 0, 1)
    mine, theirs = ctx.compare("standard", ours, baseline)
    fields = _accuracy_fields(mine.info, theirs.info, tolerance=0.0)
    case = f"s4d digits, {scale.autoattack_examples} test examples, eps {_fraction(scale.eps)}"
    return [Row("autoattack", case, mine, theirs, fields)]
