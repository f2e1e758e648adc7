"""Adversarial training methods: one function per method, one signature, one registry.

Every method is `method(model, x, y, ctx) -> StepOutput`, registered with its display name and its
own frozen parameter dataclass (`ctx.params`: a method sees its own knobs only). It crafts the inputs it trains on,
takes its optimizer step(s) through `ctx.optimizer`, and reports what it trained on. The methods
own their optimizer steps because they differ exactly there: FreeAT steps m times per batch, YOPO
accumulates gradients over m passes and steps once.

Perturbations are projected onto the threat model's eps-ball around x (Linf, or L2 for the methods
registered with it: PGD-AT, TRADES, MART) and onto the input box after every update, so every
`StepOutput.x_adv` is a valid input of the threat model. In L2 the steps follow the normalized
gradient and the projection rescales delta (model_zoo/training/perturb.py, as torchattacks.PGDL2);
TRADES' released L2 code takes steps of 2 eps / K with an SGD optimizer on delta and clamps before
it renormalizes, where ours uses the threat model's step (2.5 eps / K by default) and the shared
projection; both stay in the ball and the box. The ball and box are
`ctx.bounds` (images: radius eps in [0, 1]; sequences: radius eps times each channel's training
std, no box by default); every step size below is in the same units (times `bounds.scale`).

Train/eval mode: every method leaves the model in the mode the trainer set (train mode) for the
attack as well as for the update. FreeAT and YOPO must, because one forward pass serves both the
attack and the weight update; the others do the same so that all methods see the same network.
Our classifiers have no BatchNorm or dropout, so the mode does not change any number (the tests
check this); a model that had them would see its training-mode statistics during the attack.

Precision: every attack takes its input gradients in fp32 (perturb.input_gradient switches
autocast off). FreeAT and YOPO take theirs from the very passes that also train the weights, so
under autocast they run those passes in fp32 as a whole (`_fp32`): a bf16 pass would give them
bf16 input gradients. They gain nothing from bf16 autocast; the other methods' updates still do.

Frozen weights: the attack passes of PGD-AT, TRADES, MART and FGSM-RS run inside
`frozen_weights(model)` (model_zoo/frozen.py), so the mixers' kernels are computed once per batch
for the attack instead of once per pass; only the update pass builds them with gradients. The
passes that train through one set of weights share theirs too (`shared_weights`): TRADES' and
MART's clean and adversarial passes and YOPO's m outer passes compute each kernel once with its
graph and send its accumulated gradient back once before the step (the same gradient up to the
order of float additions). FreeAT has nothing to share: every replay steps the weights before the
next. YOPO's inner steps run through the first layer only, which has no kernel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.bounds import UNIT, Bounds, clip_box
from model_zoo.errors import UsageError
from model_zoo.frozen import frozen_weights, shared_weights
from model_zoo.registries import Registry
from model_zoo.training.perturb import LossFn, get_norm, input_gradient, pgd, project, uniform_start
from model_zoo.training.settings import MethodParams, ThreatModel

# FGSM-RS step (Wong et al. 2020): 1.25 eps from a uniform start, the value their paper found
# to train robustly without catastrophic overfitting at eps 8/255.
FGSM_RS_STEP = 1.25
# TRADES and MART start their inner maximization at x + 0.001 N(0, 1) (their released code).
GAUSSIAN_START_STD = 0.001


P = TypeVar("P", bound=MethodParams)


@dataclass(frozen=True)
class TradesParams(MethodParams):
    """TRADES: the weight of the KL term (the paper's 6)."""

    beta: float = field(default=6.0, metadata={"help": "TRADES KL weight.", "min": 0})


@dataclass(frozen=True)
class MartParams(MethodParams):
    """MART: the weight of the misclassification-weighted KL term (the paper's 6)."""

    beta: float = field(default=6.0, metadata={"help": "MART KL weight.", "min": 0})


@dataclass(frozen=True)
class FreeATParams(MethodParams):
    """FreeAT: m replays per batch; by default a run trains epochs/m epochs, so it makes as many
    forward/backward passes as standard training (about 1/11 of PGD-10-AT's)."""

    m: int = field(default=4, metadata={"help": "FreeAT replays per batch."})
    full_epochs: bool = field(default=False, metadata={"help": "FreeAT: run all epochs (the paper) instead of epochs/m (standard training's pass count)."})

    def effective_epochs(self, epochs: int) -> int:
        """FreeAT replays each batch m times, so by default it runs epochs/m (rounded up) to make
        the forward/backward passes of standard training; full_epochs runs them all (the paper)."""
        return epochs if self.full_epochs else max(1, math.ceil(epochs / self.m))


@dataclass(frozen=True)
class YopoParams(MethodParams):
    """YOPO-m-n: m full passes per batch, n cheap first-layer steps after each but the last."""

    m: int = field(default=5, metadata={"help": "YOPO outer (full) passes per batch."})
    n: int = field(default=3, metadata={"help": "YOPO inner first-layer steps per outer pass."})


@dataclass(frozen=True)
class MethodContext(Generic[P]):
    """What a method needs besides the batch: the optimizer, the threat model and its own parameters.

    `params` is the method's own parameter dataclass (registered with it), so TRADES sees a beta
    and FreeAT an m, and neither sees the other's. `state` is the one mutable part: per-run state
    that outlives a batch (FreeAT's perturbation under the key "freeat_delta"); the trainer saves
    it in the resume state.
    """

    optimizer: torch.optim.Optimizer
    params: P
    threat: ThreatModel = ThreatModel()
    grad_clip: float | None = None
    generator: torch.Generator | None = None
    bounds: Bounds = UNIT  # the model's ball scale and box (model_zoo.bounds), orthogonal to the norm
    state: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class StepOutput:
    """One batch's result: the training objective, the inputs trained on and their logits.

    `logits_adv` were computed on `x_adv` with the weights before this batch's (last) update;
    for standard training x_adv is x itself.
    """

    loss: torch.Tensor
    x_adv: torch.Tensor
    logits_adv: torch.Tensor


class Method(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[Any]) -> StepOutput: ...


@dataclass(frozen=True)
class MethodSpec:
    """A registered AT method: its function, its parameter dataclass, the name tables print, and
    the norms its inner maximization is defined for."""

    name: str
    fn: Method
    params: type[MethodParams]
    display: str
    norms: tuple[str, ...] = ("linf",)


METHODS: Registry[MethodSpec] = Registry("training method")


def register_method(
    name: str, display: str, params: type[MethodParams] = MethodParams, norms: tuple[str, ...] = ("linf",)
) -> Callable[[Method], Method]:
    """Function decorator: make an AT method usable by name, with its parameters, display name and norms."""
    return METHODS.register(name, lambda fn: MethodSpec(name, fn, params, display, norms))


def get_method(name: str) -> Method:
    return METHODS.get(name).fn


def list_methods() -> list[str]:
    return METHODS.names()


def _apply_gradients(model: nn.Module, ctx: MethodContext[Any]) -> None:
    """Clip (if asked) and step on the gradients already accumulated in the parameters."""
    if ctx.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
    ctx.optimizer.step()


def _backward(loss: torch.Tensor, ctx: MethodContext[Any]) -> None:
    ctx.optimizer.zero_grad(set_to_none=True)
    loss.backward()


def _update(model: nn.Module, loss: torch.Tensor, ctx: MethodContext[Any]) -> None:
    _backward(loss, ctx)
    _apply_gradients(model, ctx)


def _gaussian_start(x: torch.Tensor, generator: torch.Generator | None, bounds: Bounds) -> torch.Tensor:
    """x + 0.001 N(0, 1) (times the bounds' scale), NOT clamped to the box: the released TRADES and
    MART code starts there, so the first gradient is taken slightly outside the box (every step
    then projects and clamps)."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + GAUSSIAN_START_STD * bounds.scale * noise


def _fp32(method: Method) -> Method:
    """Run `method` with autocast off: its passes yield the input gradients of its attack."""

    @functools.wraps(method)
    def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[Any]) -> StepOutput:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return method(model, x, y, ctx)

    return run


def _ascend(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, target: torch.Tensor, loss_fn: LossFn, ctx: MethodContext[Any]
) -> torch.Tensor:
    """ctx.threat.steps steepest-ascent steps on loss_fn from x_adv in the threat model's norm (signed
    gradient for Linf, normalized for L2), projected onto its ball and the box after each."""
    ball = get_norm(ctx.threat.norm)
    for _ in range(ctx.threat.steps):
        grad = input_gradient(model, x_adv, target, loss_fn)
        step = ctx.threat.step_size * ctx.bounds.scale * ball.direction(grad * ctx.bounds.scale)
        x_adv = ball.project(x_adv + step, x, ctx.threat.eps, ctx.bounds)
    return x_adv.detach()


def kl_to_clean(logits_adv: torch.Tensor, logits_clean: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)) summed over classes, averaged over the batch (TRADES)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")


@register_method("st", "ST", norms=("linf", "l2"))
def standard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[MethodParams]) -> StepOutput:
    """Standard training: cross-entropy on the clean batch (the baseline every table compares to)."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    _update(model, loss, ctx)
    return StepOutput(loss.detach(), x, logits.detach())


@register_method("pgd", "PGD-AT", norms=("linf", "l2"))
def pgd_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[MethodParams]) -> StepOutput:
    """PGD-AT (Madry et al. 2018): CE on PGD-K examples from one uniform random start."""
    with frozen_weights(model):
        x_adv = pgd(model, x, y, ctx.threat.eps, ctx.threat.step_size, ctx.threat.steps, generator=ctx.generator,
                    norm=ctx.threat.norm, bounds=ctx.bounds)
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y)
    _update(model, loss, ctx)
    return StepOutput(loss.detach(), x_adv, logits.detach())


@register_method("trades", "TRADES", TradesParams, norms=("linf", "l2"))
def trades(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[TradesParams]) -> StepOutput:
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')).

    x' maximizes the KL to the clean prediction (held fixed during the attack), starting at
    x + 0.001 N(0, 1). In the outer loss the gradient flows through both f(x) and f(x'), as in
    the released code.
    """
    with shared_weights(model):  # the clean and the adversarial pass: one kernel with gradients
        logits_clean = model(x)
        start = _gaussian_start(x, ctx.generator, ctx.bounds)
        with frozen_weights(model):
            x_adv = _ascend(model, x, start, logits_clean.detach(), kl_to_clean, ctx)
        logits_adv = model(x_adv)
        loss = F.cross_entropy(logits_clean, y) + ctx.params.beta * kl_to_clean(logits_adv, logits_clean)
        _backward(loss, ctx)
    _apply_gradients(model, ctx)
    return StepOutput(loss.detach(), x_adv, logits_adv.detach())


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020): boosted CE on x' + beta * KL(p(x) || p(x')) * (1 - p_y(x)).

    The boosted CE adds -log(1 - max_{k != y} p_k(x')), the margin term that pushes down the
    strongest wrong class; the KL is weighted per example by how misclassified x is.
    The 1e-12 / 1.0001 offsets keep the logs finite exactly as in the released code.
    """
    probs_adv = F.softmax(logits_adv, dim=1)
    probs_clean = F.softmax(logits_clean, dim=1)
    top2 = probs_adv.argsort(dim=1)[:, -2:]
    strongest_wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - probs_adv + 1e-12), strongest_wrong)
    kl = F.kl_div(torch.log(probs_adv + 1e-12), probs_clean, reduction="none").sum(dim=1)
    p_true = probs_clean.gather(1, y[:, None]).squeeze(1)
    return boosted_ce + beta * (kl * (1.0000001 - p_true)).mean()


@register_method("mart", "MART", MartParams, norms=("linf", "l2"))
def mart(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[MartParams]) -> StepOutput:
    """MART: PGD-K on CE from x + 0.001 N(0, 1) (the released code's start), then `mart_loss`."""
    with frozen_weights(model):
        x_adv = _ascend(model, x, _gaussian_start(x, ctx.generator, ctx.bounds), y, F.cross_entropy, ctx)
    with shared_weights(model):
        logits_clean = model(x)
        logits_adv = model(x_adv)
        loss = mart_loss(logits_clean, logits_adv, y, ctx.params.beta)
        _backward(loss, ctx)
    _apply_gradients(model, ctx)
    return StepOutput(loss.detach(), x_adv, logits_adv.detach())


@register_method("fgsm-rs", "FGSM-RS")
def fgsm_rs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[MethodParams]) -> StepOutput:
    """Fast AT (Wong et al. 2020): uniform start, one FGSM step of 1.25 eps, projected."""
    x_start = uniform_start(x, ctx.threat.eps, ctx.generator, ctx.bounds)
    with frozen_weights(model):
        grad = input_gradient(model, x_start, y, F.cross_entropy)
    x_adv = project(x_start + FGSM_RS_STEP * ctx.threat.eps * ctx.bounds.scale * grad.sign(), x, ctx.threat.eps, ctx.bounds).detach()
    logits = model(x_adv)
    loss = F.cross_entropy(logits, y)
    _update(model, loss, ctx)
    return StepOutput(loss.detach(), x_adv, logits.detach())


def _freeat_delta(x: torch.Tensor, ctx: MethodContext[FreeATParams]) -> torch.Tensor:
    """The persistent perturbation's first len(x) rows, zeros on a run's first batch.

    The first batch of a run is never smaller than a later one, so it fixes the stored size.
    """
    if "freeat_delta" not in ctx.state:
        ctx.state["freeat_delta"] = torch.zeros_like(x)
    return ctx.state["freeat_delta"][: x.shape[0]].clone()


@register_method("freeat", "FreeAT", FreeATParams)
@_fp32
def free_at(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[FreeATParams]) -> StepOutput:
    """Free AT (Shafahi et al. 2019): m replays of the batch, each one backward pass that gives
    both the weight gradient (one optimizer step) and the input gradient (one signed step of eps,
    Algorithm 1 of the paper) for the perturbation.

    The perturbation is kept across batches in ctx.state (a batch-sized tensor; a smaller last
    batch uses and updates its first rows), starting from zero as in the paper. delta itself is
    clipped to the eps-ball; the input trained on is x + delta clamped to [0, 1], as in the
    released code, so delta is not shaped by one batch's pixel bounds before the next. The input
    gradient is taken with respect to delta, through that clamp, as the released code does: it is
    zero on pixels pushed out of [0, 1], whose delta therefore stays where it is.
    """
    delta = _freeat_delta(x, ctx)
    radius = ctx.threat.eps * ctx.bounds.scale
    losses = []
    for _ in range(ctx.params.m):
        delta.requires_grad_(True)
        x_adv = clip_box(x + delta, x, ctx.bounds)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        assert delta.grad is not None  # delta requires grad and the loss depends on it
        step = delta.detach() + radius * delta.grad.sign()
        bound = torch.as_tensor(radius, dtype=step.dtype, device=step.device)  # a float or a per-channel scale
        delta = step.clamp(-bound, bound)
        _apply_gradients(model, ctx)
        losses.append(loss.detach())
    ctx.state["freeat_delta"][: x.shape[0]] = delta
    return StepOutput(torch.stack(losses).mean(), x_adv.detach(), logits.detach())


class _FirstLayer(Protocol):
    """What YOPO attacks through: a SequenceClassifier, or the DataParallel wrapper that forwards to one."""

    encoder: nn.Module
    encoder_norm: nn.Module

    def to_sequence(self, x: torch.Tensor) -> torch.Tensor: ...


def yopo_first_layer(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f0 = encoder_norm(encoder(pixel tokens)): YOPO's "first layer" for a SequenceClassifier.

    We include the LayerNorm because the encoder alone is affine: its input gradient W^T p does
    not depend on eta, so all n inner steps would take the same sign step and YOPO-m-n would
    collapse to YOPO-m-1 with step n*alpha. With the norm, f0 is nonlinear yet still per-pixel
    (no sequence mixing), so an inner step costs a tiny fraction of a full pass.
    """
    first = cast(_FirstLayer, model)  # yopo() checked that it has these
    return first.encoder_norm(first.encoder(first.to_sequence(x)))


@contextmanager
def _capture_first_layer(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record encoder_norm's output of each forward pass, retaining its gradient."""
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        output.retain_grad()
        captured.append(output)

    handle = cast(_FirstLayer, model).encoder_norm.register_forward_hook(keep)
    try:
        yield captured
    finally:
        handle.remove()


@register_method("yopo", "YOPO", YopoParams)
@_fp32
def yopo(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: MethodContext[YopoParams]) -> StepOutput:
    """YOPO-m-n (Zhang et al. 2019): m full forward/backward passes per batch, n cheap inner steps.

    Each outer pass j trains on x + eta_j, accumulates the parameter gradients (the mean over
    the m passes: one optimizer step per batch) and yields p = dL/d f0 at the first layer's
    output. The n inner steps then ascend <p, f0(x + eta)> in eta through the first layer only.
    eta starts uniformly in the eps-ball (the released code started at exactly +eps) and is
    projected onto the ball and [0, 1] every step (the released code did not clip to [0, 1]).
    The inner loop after the last outer pass is skipped: in the paper its eta only feeds a
    separate first-layer weight update, which this implementation folds into the accumulated
    full-pass gradients.
    """
    if not (hasattr(model, "encoder") and hasattr(model, "encoder_norm")):
        raise UsageError("yopo needs a SequenceClassifier (it attacks through model.encoder/encoder_norm)")
    x_adv = uniform_start(x, ctx.threat.eps, ctx.generator, ctx.bounds)
    ctx.optimizer.zero_grad(set_to_none=True)
    losses = []
    with shared_weights(model):  # the m full passes: one kernel with gradients, its backward once
        for outer in range(ctx.params.m):
            with _capture_first_layer(model) as captured:
                logits = model(x_adv)
            loss = F.cross_entropy(logits, y)
            (loss / ctx.params.m).backward()
            losses.append(loss.detach())
            if outer == ctx.params.m - 1:
                break
            first_grad = captured[0].grad  # retained by the hook
            assert first_grad is not None
            p = first_grad.detach()
            for _ in range(ctx.params.n):
                x_adv = x_adv.detach().requires_grad_(True)
                hamiltonian = (p * yopo_first_layer(model, x_adv)).sum()
                (grad,) = torch.autograd.grad(hamiltonian, x_adv)
                x_adv = project(x_adv.detach() + ctx.threat.step_size * ctx.bounds.scale * grad.sign(), x, ctx.threat.eps, ctx.bounds)
    _apply_gradients(model, ctx)
    return StepOutput(torch.stack(losses).mean(), x_adv.detach(), logits.detach())
