"""Sanity checks against gradient masking, stored as flags on a result instead of silently passing.

A robust accuracy is only as good as the attacks behind it. Gradient-based attacks fail without
telling anyone when a model's gradients are useless: zero (quantization, saturation), NaN, random
(a stochastic forward pass) or misleading. Each check below looks for one symptom, following the
flags that AutoAttack raises and the advice of Carlini et al., "On Evaluating Adversarial
Robustness" (2019). They run on the first `CheckConfig.n_examples` evaluated examples, so their
cost does not grow with the evaluation; every number behind a verdict is kept in `detail`.

Flags (codes as stored in the leaderboard):
- `zero-gradients` / `nan-gradients`: some example's input gradient of the logit margin is
  exactly zero / not finite.
- `random-forward`: two forward passes in eval mode disagree.
- `black-box-beats-white-box`: the black-box Square attack fools examples that every gradient
  attack missed.
- `pgd-steps-no-gain`: 100 PGD steps (with CE and with the margin loss) do no better than
  PGD-10 although other attacks prove that PGD-10 left breakable examples standing.
- `margin-attack-beats-pgd10`: a 100-step attack on the margin (CW) loss breaks more examples
  than PGD-10 (CE) does, by more than `margin_max_gain` and by more than chance explains (an exact
  one-sided McNemar test on the examples where the two disagree). This is how a saturated softmax
  masks CE gradients (e.g. logits scaled by a large temperature): CE's gradient underflows to
  zero while the margin's does not, so PGD-10 overstates robustness without stalling anywhere.
- `unbounded-pgd-not-zero`: PGD over the whole input box (images: eps = 1, any image in [0, 1]
  is reachable; sequences: the training split's observed range, a radius of its full width)
  leaves examples correctly classified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from scipy.stats import binomtest
from torch import nn

from model_zoo.bounds import bounds_of
from model_zoo.errors import UsageError
from model_zoo.training.perturb import input_gradient
from ssmbench.attacks import PGD, Attack, AttackSettings, autoattack, eval_mode

FLAGS: dict[str, str] = {
    "zero-gradients": "some examples have an all-zero input gradient: gradient attacks cannot move them",
    "nan-gradients": "some input gradients are NaN or infinite: gradient attacks are blind there",
    "random-forward": "the forward pass is random in eval mode: use AutoAttack --version rand",
    "black-box-beats-white-box": "Square (black box) fooled examples that all gradient attacks missed",
    "pgd-steps-no-gain": "PGD-100 (CE and margin) gains nothing over PGD-10 although other attacks found a gap",
    "margin-attack-beats-pgd10": "a 100-step margin (CW) attack breaks significantly more examples than PGD-10 (CE): CE gradients are masked",
    "unbounded-pgd-not-zero": "PGD over the whole input box (eps = 1 on images) does not bring accuracy to ~0",
}


@dataclass(frozen=True)
class CheckConfig:
    """How much work the checks do; the defaults take seconds on a CPU for a digits-sized model.

    Thresholds:
    - `black_box_max_gain` is AutoAttack's own (check_square_sr): Square may lower robust
      accuracy by at most 0.2% of the examples after the white-box attacks.
    - `min_gap` / `min_gap_examples`: the gap between PGD-10 and the best other attack below which
      a PGD-100 plateau is expected (PGD-10 had already converged) and not flagged.
    - `unbounded_max_acc`: what '~0 accuracy at eps = 1' allows.
    - `margin_max_gain` / `margin_alpha`: a 100-step margin attack is a stronger attack than
      PGD-10 and may lower robust accuracy by up to `margin_max_gain` (a few points is normal
      on adversarially trained models); beyond that, and with a one-sided exact McNemar p-value
      below `margin_alpha`, PGD-10 is flagged as masked.

    `n_examples`: 128 examples resolve a 10-point gap between two attacks; fewer when the
    evaluation has fewer.
    """

    n_examples: int = 128
    long_steps: int = 100
    square_queries: int = 1000
    unbounded_steps: int = 20
    unbounded_max_acc: float = 0.02
    black_box_max_gain: float = 0.002
    min_gap: float = 0.03
    min_gap_examples: int = 2
    margin_max_gain: float = 0.03
    margin_alpha: float = 0.01
    random_repeats: int = 3
    random_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if self.n_examples < 1 or self.long_steps <= 10 or self.unbounded_steps < 1 or self.random_repeats < 2:
            raise UsageError(
                "checks need n_examples >= 1, long_steps > 10, unbounded_steps >= 1 and random_repeats >= 2; "
                f"got {self.n_examples}, {self.long_steps}, {self.unbounded_steps}, {self.random_repeats}"
            )
        if not (0 <= self.margin_max_gain < 1 and 0 < self.margin_alpha < 1):
            raise UsageError(
                f"checks need 0 <= margin_max_gain < 1 and 0 < margin_alpha < 1; got {self.margin_max_gain}, {self.margin_alpha}"
            )


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict: `flag` is a code from FLAGS when it failed, None when it passed."""

    name: str
    flag: str | None
    detail: str


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum over examples of (best wrong logit - true logit).

    Unlike cross-entropy, whose gradient underflows to exactly zero once softmax rounds to 1 for
    a confident correct prediction, the margin's gradient is zero only where the logits are
    locally flat in the input, which is the masking symptom we look for.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return (wrong - true).sum()


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckOutcome:
    """Zero or non-finite input gradients of the margin at the clean examples."""
    with eval_mode(model):
        grad = input_gradient(model, x, y, margin_loss).flatten(1)
    nan = int((~torch.isfinite(grad)).any(dim=1).sum())
    zero = int((grad == 0).all(dim=1).sum())
    flag = "nan-gradients" if nan else "zero-gradients" if zero else None
    return CheckOutcome("gradients", flag, f"{zero} zero and {nan} non-finite gradients on {len(x)} examples")


def check_randomness(model: nn.Module, x: torch.Tensor, config: CheckConfig) -> CheckOutcome:
    """Repeated eval-mode forward passes must agree (relative logit difference, and predictions)."""
    with eval_mode(model), torch.no_grad():
        runs = [model(x) for _ in range(config.random_repeats)]
    first = runs[0]
    scale = first.abs().max().clamp_min(1e-12)
    change = max(float((run - first).abs().max() / scale) for run in runs[1:])
    flips = max(int((run.argmax(1) != first.argmax(1)).sum()) for run in runs[1:])
    flagged = not math.isfinite(change) or change > config.random_tolerance or flips > 0
    detail = f"max relative logit change {change:.2e}, {flips} changed predictions over {config.random_repeats} passes"
    return CheckOutcome("randomness", "random-forward" if flagged else None, detail)


def _robust(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ~attack(model, x, y).success


def unbounded_attack(model: nn.Module, seed: int, config: CheckConfig) -> PGD:
    """PGD whose ball covers the model's whole input box, with the box's own step rule.

    Images: eps = 1 on [0, 1], steps of 1/4 clipped to the box. A sequence has no natural box, so
    the check takes the range observed in the training split (box "observed") and a radius of its
    full width in training standard deviations (the widest channel): every series inside that
    range is reachable from every other, as every image is at eps = 1, and the steps are a quarter
    of the range as an image's are. A fixed radius without a box (10 standard deviations, what
    this check used before) makes the steps 2.5 standard deviations on every time step: sign-PGD
    then jumps between far corners where the model's output hardly changes, and on GunPoint it
    left 2.3% of S4 PGD-AT's test series standing that this attack and PGD at 1 or 3 standard
    deviations break completely.
    """
    bounds = bounds_of(model)
    if bounds.box == "unit":
        return PGD(1.0, steps=config.unbounded_steps, seed=seed, name="pgd-eps1")
    observed = bounds_of(model, "observed")
    assert observed.high is not None and observed.low is not None  # "observed" always has a box
    width = float(torch.as_tensor((observed.high - observed.low) / observed.scale).max())
    return PGD(width, steps=config.unbounded_steps, seed=seed, name="pgd-whole-box", box="observed")


def check_unbounded(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, config: CheckConfig) -> CheckOutcome:
    """PGD over the whole input box (`unbounded_attack`): a working attack reaches ~0 accuracy."""
    attack = unbounded_attack(model, seed, config)
    acc = _robust(attack, model, x, y).float().mean().item()
    flag = "unbounded-pgd-not-zero" if acc > config.unbounded_max_acc else None
    box = "" if attack.box is None else f" in the {attack.box} box"
    return CheckOutcome("unbounded", flag, f"PGD-{config.unbounded_steps} at eps={attack.eps:.3g}{box}: {100 * acc:.1f}% accuracy")


def check_black_box_in_suite(
    attacks: tuple[Attack, ...], clean: torch.Tensor, robust_after: dict[str, torch.Tensor], config: CheckConfig
) -> CheckOutcome:
    """The suite's own black-box attacks (AutoAttack's Square) against what ran before them.

    Every example a black-box attack fools was, by the suite's order, missed by all attacks before
    it; AutoAttack flags this when it exceeds 0.2% of the examples.
    """
    before = clean
    gained = 0
    for attack in attacks:
        after = robust_after[attack.name]
        if attack.black_box:
            gained += int((before & ~after).sum())
        before = after
    share = gained / len(clean)
    flag = "black-box-beats-white-box" if share > config.black_box_max_gain else None
    return CheckOutcome("black-box", flag, f"black-box attacks fooled {gained} of {len(clean)} examples the gradient attacks missed")


def check_pgd_steps(r10: torch.Tensor, r100: torch.Tensor, reference: torch.Tensor, config: CheckConfig) -> CheckOutcome:
    """Flag a PGD-100 plateau only where PGD-10 provably had not converged.

    `r100` = robust to PGD-100 with CE and with the margin loss; `reference` = robust under the
    other attacks (the suite, Square). The gap = examples that
    PGD-10 left standing but another attack broke. Without a gap, PGD-100 = PGD-10 just means that
    PGD-10 had converged, the normal case for a smooth model. With a gap, 10x more steps of a
    working gradient should convert some of it; if robust accuracy does not drop at all, the
    steps go nowhere useful (zero, shattered or random gradients).
    """
    gap = int((r10 & ~reference).sum())
    threshold = max(config.min_gap_examples, math.ceil(config.min_gap * len(r10)))
    stalled = int(r100.sum()) >= int(r10.sum())
    flag = "pgd-steps-no-gain" if gap >= threshold and stalled else None
    detail = (
        f"PGD-10 {100 * r10.float().mean():.1f}%, PGD-{config.long_steps} (CE, margin) {100 * r100.float().mean():.1f}%, "
        f"{gap} examples broken by other attacks but not by PGD-10 (flag needs >= {threshold})"
    )
    return CheckOutcome("pgd-steps", flag, detail)


def check_pgd_margin(r10: torch.Tensor, r_margin: torch.Tensor, config: CheckConfig) -> CheckOutcome:
    """PGD-10 (CE) against a `long_steps` attack on the margin loss, paired on the same examples.

    Only the discordant examples carry information: `gained` = robust to PGD-10 but broken by the
    margin attack, `lost` = the reverse. If PGD-10's gradients were as useful as the margin's, the
    difference would be attack noise and, given gained + lost, `gained` ~ Binomial(., 1/2); the
    exact one-sided test (McNemar's) gives the chance of a gain at least this large. A gain that is
    both improbable under that noise and larger than `margin_max_gain` means PGD-10 is masked.
    """
    gained = int((r10 & ~r_margin).sum())
    lost = int((~r10 & r_margin).sum())
    p_value = binomtest(gained, gained + lost, 0.5, alternative="greater").pvalue if gained + lost else 1.0
    gain = (gained - lost) / len(r10)
    flagged = gain > config.margin_max_gain and p_value < config.margin_alpha
    detail = (
        f"PGD-10 {100 * r10.float().mean():.1f}%, margin PGD-{config.long_steps} {100 * r_margin.float().mean():.1f}% "
        f"on {len(r10)} examples: {gained} broken only by the margin attack, {lost} only by PGD-10, "
        f"one-sided exact McNemar p = {p_value:.2g} (flag needs a gain > {100 * config.margin_max_gain:g} points "
        f"and p < {config.margin_alpha:g})"
    )
    return CheckOutcome("pgd-margin", "margin-attack-beats-pgd10" if flagged else None, detail)


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AttackSettings,
    config: CheckConfig,
    attacks: tuple[Attack, ...],
    clean: torch.Tensor,
    robust_after: dict[str, torch.Tensor],
) -> tuple[CheckOutcome, ...]:
    """All checks, on the first `config.n_examples` of the evaluated examples.

    x, y: the evaluated examples in order (at least the first n_examples of them, on the model's
    device); `attacks`, `clean` and `robust_after` describe the suite run on all evaluated
    examples (flags on the same device).
    At eps = 0 no attack can do anything, so only the model-level checks run.
    """
    k = min(config.n_examples, len(x))
    xs, ys = x[:k], y[:k]
    outcomes = [check_gradients(model, xs, ys), check_randomness(model, xs, config), check_unbounded(model, xs, ys, settings.seed, config)]
    if settings.eps == 0:
        return tuple(outcomes)
    suite_robust = list(robust_after.values())[-1]
    r10 = _robust(PGD(settings.eps, steps=10, seed=settings.seed, norm=settings.norm), model, xs, ys)
    # The long attack maximizes both CE and the margin: CE alone can stall on a plain but poorly
    # fit model (it is not masking when a margin loss on the same gradients succeeds).
    r_margin = _robust(PGD(settings.eps, steps=config.long_steps, seed=settings.seed, loss_fn=margin_loss, norm=settings.norm), model, xs, ys)
    r100 = r_margin & _robust(PGD(settings.eps, steps=config.long_steps, seed=settings.seed, norm=settings.norm), model, xs, ys)
    if any(attack.black_box for attack in attacks):
        outcomes.append(check_black_box_in_suite(attacks, clean, robust_after, config))
        reference = suite_robust[:k]
    else:
        reference, black_box = _square_on_survivors(model, xs, ys, settings, config, r10 & suite_robust[:k], r10 & r100)
        outcomes.append(black_box)
    outcomes.append(check_pgd_steps(r10, r100, reference, config))
    outcomes.append(check_pgd_margin(r10, r_margin, config))
    return tuple(outcomes)


def _square_on_survivors(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AttackSettings,
    config: CheckConfig,
    survivors: torch.Tensor,
    white_box_robust: torch.Tensor,
) -> tuple[torch.Tensor, CheckOutcome]:
    """Square on the examples that the gradient attacks left standing: (robust flags, verdict)."""
    robust = survivors.clone()
    todo = survivors.nonzero().flatten()
    if todo.numel():
        square = autoattack.square(settings, n_queries=config.square_queries)
        robust[todo] = _robust(square, model, x[todo], y[todo])
    wins = int((white_box_robust & survivors & ~robust).sum())
    flag = "black-box-beats-white-box" if wins / len(x) > config.black_box_max_gain else None
    detail = f"Square ({config.square_queries} queries) fooled {wins} of {len(x)} examples that PGD-10 and PGD-{config.long_steps} (CE, margin) missed"
    return robust, CheckOutcome("black-box", flag, detail)
