"""AT methods: each trains inside the threat model; TRADES/MART losses match their closed forms;
FreeAT replays and carries its perturbation; YOPO's inner steps touch only the first layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model_zoo import build_model
from model_zoo.training import TrainConfig
from model_zoo.training.methods import METHODS, MethodContext, get_method, list_methods
from model_zoo.training.perturb import input_gradient, project
from ssmbench.data import load_split

EPS = 0.1


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_split("digits", "train")
    return images[:96], labels[:96]


def tiny_model(**options: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("s4d", "digits", d_model=16, d_state=8, n_layers=1, **options).train()


def context(model: torch.nn.Module, method: str, **overrides: object) -> MethodContext:
    """`method`'s context: the threat model and its own parameters from the flat settings."""
    # weight_decay 0: AdamW's decay alone would change the weights even with zero gradients.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    settings = {"eps": EPS, "alpha": EPS / 4, "steps": 3, "freeat_m": 2, "yopo_m": 2, "yopo_n": 2, **overrides}
    config = TrainConfig.from_settings(method=method, **settings)
    return MethodContext(optimizer, config.method_params, config.threat, generator=torch.Generator().manual_seed(0))


def count_steps(optimizer: torch.optim.Optimizer) -> list[int]:
    steps: list[int] = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    return steps


def record_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    inputs: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach().clone()))
    return inputs


def test_registry_holds_the_seven_methods() -> None:
    assert set(list_methods()) == {"st", "pgd", "trades", "mart", "fgsm-rs", "freeat", "yopo"}
    with pytest.raises(ValueError, match="unknown training method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_inside_the_threat_model(name: str, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = context(model, name)
    for start in range(0, len(images), 40):  # batches of 40, 40, 16: a smaller last batch too
        x, y = images[start : start + 40], labels[start : start + 40]
        out = get_method(name)(model, x, y, ctx)
        distance = (out.x_adv - x).abs().max().item()
        assert distance <= EPS + 1e-6
        assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
        if name == "st":
            assert distance == 0
        else:
            assert distance > EPS / 2, "the method trained on (almost) clean inputs"
        assert out.logits_adv.shape == (len(x), 10) and torch.isfinite(out.loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before), f"unchanged: {set(before) - set(changed)}"


def test_train_and_eval_mode_agree(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Why the methods may attack in train mode: no BatchNorm or dropout, so the mode changes nothing."""
    model = tiny_model(ads="tanh", attention=True)
    x = digits[0][:16]
    with torch.no_grad():
        train_logits = model.train()(x)
        eval_logits = model.eval()(x)
    assert torch.equal(train_logits, eval_logits)


def test_trades_loss_is_ce_plus_beta_kl(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0][:32], digits[1][:32]
    model = tiny_model()
    reference = copy.deepcopy(model)
    out = get_method("trades")(model, x, y, context(model, "trades", trades_beta=6.0))
    p = torch.softmax(reference(x).double(), dim=1)
    q = torch.softmax(reference(out.x_adv).double(), dim=1)
    ce = -torch.log(p[torch.arange(len(y)), y]).mean()
    kl = (p * (p.log() - q.log())).sum(dim=1).mean()
    assert kl > 1e-5, "the inner maximization did not move the prediction"
    assert out.loss.item() == pytest.approx((ce + 6.0 * kl).item(), rel=1e-5)
    # The gradient flows through f(x) inside the KL too (the released code does not detach it).
    (ce + 6.0 * kl).backward()
    for (name, trained), expected in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(trained.grad, expected.grad.float(), rtol=1e-3, atol=1e-6), name


def test_mart_loss_matches_its_definition(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0][:32], digits[1][:32]
    model = tiny_model()
    reference = copy.deepcopy(model)
    out = get_method("mart")(model, x, y, context(model, "mart", mart_beta=6.0))
    with torch.no_grad():
        clean = torch.softmax(reference(x).double(), dim=1)
        adv = torch.softmax(reference(out.x_adv).double(), dim=1)
    total = 0.0
    for i, label in enumerate(y.tolist()):
        wrong = max((k for k in range(10) if k != label), key=lambda k: adv[i, k])
        boosted = -torch.log(adv[i, label]) - torch.log(1.0001 - adv[i, wrong] + 1e-12)
        kl = (clean[i] * (clean[i].log() - torch.log(adv[i] + 1e-12))).sum()
        total += boosted + 6.0 * kl * (1.0000001 - clean[i, label])
    assert out.loss.item() == pytest.approx(total.item() / len(y), rel=1e-5)


def test_freeat_replays_m_times_and_carries_delta(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = digits
    model = tiny_model()
    ctx = context(model, "freeat", freeat_m=3)
    steps, inputs = count_steps(ctx.optimizer), record_inputs(model)
    first, second = (images[:32], labels[:32]), (images[32:52], labels[32:52])

    get_method("freeat")(model, *first, ctx)
    assert len(steps) == 3 and len(inputs) == 3
    assert torch.equal(inputs[0], first[0]), "the perturbation of a run starts at zero"
    interior = (inputs[1] > 0) & (inputs[1] < 1)
    assert torch.allclose((inputs[1] - first[0])[interior].abs(), torch.tensor(EPS)), "one signed step of eps"
    carried = ctx.state["freeat_delta"].clone()
    assert carried.shape == first[0].shape and carried.abs().max() == pytest.approx(EPS)

    get_method("freeat")(model, *second, ctx)
    assert len(steps) == 6 and len(inputs) == 6
    assert torch.allclose(inputs[3], (second[0] + carried[:20]).clamp(0, 1)), "delta carried to the next batch"
    updated = ctx.state["freeat_delta"]
    assert torch.equal(updated[20:], carried[20:]) and not torch.equal(updated[:20], carried[:20])


def test_yopo_inner_steps_use_only_the_first_layer(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits[0][:32], digits[1][:32]
    model = tiny_model()
    ctx = context(model, "yopo", yopo_m=3, yopo_n=2)
    calls = {"encoder": 0, "block": 0, "backward": 0}
    model.encoder.register_forward_hook(lambda *_: calls.__setitem__("encoder", calls["encoder"] + 1))
    model.blocks[0].register_forward_hook(lambda *_: calls.__setitem__("block", calls["block"] + 1))
    model.blocks[0].register_full_backward_hook(lambda *_: calls.__setitem__("backward", calls["backward"] + 1))
    steps = count_steps(ctx.optimizer)
    get_method("yopo")(model, x, y, ctx)
    # m full passes; the (m - 1) * n inner steps run the encoder alone (none after the last pass).
    assert calls == {"encoder": 3 + 2 * 2, "block": 3, "backward": 3}
    assert len(steps) == 1, "gradients of the m passes are accumulated into one step"


def test_yopo_first_inner_step_is_an_fgsm_step(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """d<p, f0(x)>/dx with p = dL/df0 is dL/dx (chain rule): the first inner step is FGSM."""
    x, y = digits[0][:32], digits[1][:32]
    model = tiny_model()
    reference = copy.deepcopy(model)
    inputs = record_inputs(model)
    get_method("yopo")(model, x, y, context(model, "yopo", yopo_m=2, yopo_n=1))
    gradient = input_gradient(reference, inputs[0], y, F.cross_entropy)
    expected = project(inputs[0] + EPS / 4 * gradient.sign(), x, EPS)
    agree = torch.isclose(inputs[1], expected, atol=1e-6).float().mean().item()
    assert agree > 0.99
    assert not torch.equal(inputs[1], inputs[0])


def test_trades_starts_unclamped_as_the_reference(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """yaodongyu/TRADES: x_adv = x + 0.001 randn (no clamp), then per step: signed KL ascent,
    projection onto the eps-ball, clamp to [0, 1]."""
    x, y = digits[0][:32], digits[1][:32]
    model = tiny_model()
    reference = copy.deepcopy(model)
    out = get_method("trades")(model, x, y, context(model, "trades", steps=2, trades_beta=6.0))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    start = x + 0.001 * noise
    assert (start < 0).any(), "digits have black pixels: the reference start leaves [0, 1] there"
    with torch.no_grad():
        clean = F.softmax(reference(x), dim=1)
    x_adv = start
    for _ in range(2):
        x_adv = x_adv.detach().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(reference(x_adv), dim=1), clean, reduction="sum")
        (grad,) = torch.autograd.grad(kl, x_adv)
        x_adv = x_adv.detach() + EPS / 4 * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - EPS), x + EPS).clamp(0.0, 1.0)
    assert torch.equal(out.x_adv, x_adv)


def _free_at_reference(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, m: int) -> torch.Tensor:
    """mahyarnajibi/FreeAdversarialTraining's inner loop: the gradient of the noise is taken
    through in1 = (input + noise).clamp_(0, 1); returns the final noise."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    global_noise = torch.zeros_like(x)
    for _ in range(m):
        noise = global_noise.clone().requires_grad_(True)
        in1 = x + noise
        in1.clamp_(0, 1.0)
        loss = F.cross_entropy(model(in1), y)
        optimizer.zero_grad()
        loss.backward()
        global_noise += EPS * noise.grad.sign()
        global_noise.clamp_(-EPS, EPS)
        optimizer.step()
    return global_noise


def test_freeat_takes_the_gradient_through_the_clamp(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits
    model = tiny_model()
    reference = copy.deepcopy(model)
    # 8 replays: within the first few the gradient at a clamped pixel seldom changes sign, so a
    # gradient taken after the clamp (which keeps pushing those pixels) would go unnoticed.
    ctx = context(model, "freeat", freeat_m=8)
    get_method("freeat")(model, x, y, ctx)
    expected = _free_at_reference(reference, x, y, 8)
    # Pixels that the previous replay pushed out of [0, 1] get no gradient and keep their delta.
    assert torch.allclose(ctx.state["freeat_delta"], expected)
    assert ((x + expected < 0) | (x + expected > 1)).any()
    for trained, expected_param in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(trained, expected_param, atol=1e-6)


@pytest.mark.parametrize("name", ["freeat", "yopo"])
def test_single_pass_methods_take_fp32_gradients_under_autocast(name: str, digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """FreeAT's and YOPO's input gradients come from their training passes: under (here CPU
    bfloat16) autocast those passes must stay fp32, so the run equals one without autocast."""
    x, y = digits[0][:32], digits[1][:32]
    runs = []
    for autocast in (False, True):
        model = tiny_model()
        ctx = context(model, name)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=autocast):
            out = get_method(name)(model, x, y, ctx)
        runs.append((out.x_adv, [p.detach().clone() for p in model.parameters()]))
    (plain_x, plain_weights), (cast_x, cast_weights) = runs
    assert torch.equal(plain_x, cast_x)
    assert all(torch.equal(a, b) for a, b in zip(plain_weights, cast_weights))


def test_bfloat16_autocast_changes_a_plain_pass(digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The autocast test above can fail: a pass under CPU bf16 autocast is not the fp32 pass."""
    model = tiny_model()
    x = digits[0][:8]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        cast = model(x)
    assert not torch.equal(cast.float(), model(x))
