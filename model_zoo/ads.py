"""Adaptive Scaling (AdS): a per-token gate placed after an SSM's output.

AdS(y) = act(W_s y + b_s) * y + act(W_b y + b_b), act in {relu, sigmoid, tanh}.
It rescales and shifts every token with weights computed from that token alone, which
bounds how far an adversarial perturbation amplified by the SSM can propagate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from model_zoo.frozen import weights_frozen


@dataclass(frozen=True)
class Activation:
    """An activation as AdS applies it: in place on a fresh pre-activation, and its backward
    from the activation's output (the ATen kernels autograd itself runs for these three)."""

    forward_: Callable[[torch.Tensor], torch.Tensor]
    backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (grad of output, output) -> grad of input


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(torch.relu_, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
    "sigmoid": Activation(torch.sigmoid_, torch.ops.aten.sigmoid_backward),
    "tanh": Activation(torch.tanh_, torch.ops.aten.tanh_backward),
}
ADS_CHOICES: tuple[str, ...] = ("none", *ACTIVATIONS)


class AdSGate(torch.autograd.Function):
    """out = act(y W_s^T + b_s) * y + act(y W_b^T + b_b) on (..., H) tokens, with a hand-written backward.

    Why not autograd: it runs the product's backward as four multiplications (addcmul's formula
    scales by its value 1), the two activations' backward separately, and adds the three gradients
    of y in two more passes; here dL/dy = g * s + gs W_s + gb W_b is one multiplication and two
    GEMMs that accumulate into it. The weights' gradients are computed only when they require
    grad: an attack through frozen weights passes them detached. Same kernels as autograd's, same
    values up to the order of the three additions into dL/dy (bit-identical on this project's CPU).
    """

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, act: str, w_s: torch.Tensor, b_s: torch.Tensor,
                w_b: torch.Tensor, b_b: torch.Tensor) -> torch.Tensor:
        # The LTI mixers hand over a transposed view of their (B, H, L) output; one copy to
        # (B, L, H) makes the GEMMs and the product read it densely (forward + backward of
        # S4 + AdS tanh, d_model 64, batch 64, L 64, 2-core CPU: 19.3 ms strided vs 15.4 ms).
        tokens = y.contiguous().view(-1, y.shape[-1])
        activation = ACTIVATIONS[act]
        scale = activation.forward_(torch.addmm(b_s, tokens, w_s.t()))
        shift = activation.forward_(torch.addmm(b_b, tokens, w_b.t()))
        ctx.activation = activation
        ctx.shape = y.shape
        ctx.save_for_backward(tokens, scale, shift, w_s, w_b)
        return torch.addcmul(shift, scale, tokens).view(y.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        tokens, scale, shift, w_s, w_b = ctx.saved_tensors
        grad = grad.reshape(tokens.shape)
        backward = ctx.activation.backward
        grad_scale = backward(grad * tokens, scale)  # dL/d(W_s y + b_s)
        grad_shift = backward(grad, shift)  # dL/d(W_b y + b_b)
        needs = ctx.needs_input_grad
        grad_y = torch.mul(grad, scale).addmm_(grad_scale, w_s).addmm_(grad_shift, w_b).view(ctx.shape) if needs[0] else None
        return (
            grad_y,
            None,
            grad_scale.t().mm(tokens) if needs[2] else None,
            grad_scale.sum(0) if needs[3] else None,
            grad_shift.t().mm(tokens) if needs[4] else None,
            grad_shift.sum(0) if needs[5] else None,
        )


class AdaptiveScaling(nn.Module):
    """The AdS gate on features of width `dim` (applied per token, last axis).

    `scale` and `shift` stay nn.Linear modules (their weights are what checkpoints, the bound
    analysis and the closed-form tests read); the forward runs them inside `AdSGate`.
    """

    def __init__(self, dim: int, act: str) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown AdS activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.act_name = act
        self.scale = nn.Linear(dim, dim)
        self.shift = nn.Linear(dim, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        weights: tuple[torch.Tensor, ...] = (self.scale.weight, self.scale.bias, self.shift.weight, self.shift.bias)
        if weights_frozen(self):  # an attack pass: no gradient to the weights, so none computed
            weights = tuple(weight.detach() for weight in weights)
        return AdSGate.apply(y, self.act_name, *weights)

    def extra_repr(self) -> str:
        return f"act={self.act_name}"


def build_ads(dim: int, ads: str | None) -> nn.Module:
    """AdS for `ads` in relu|sigmoid|tanh, identity for none.

    The identity is still a module so that analysis hooks find the same component in every model.
    """
    if ads in (None, "none"):
        return nn.Identity()
    return AdaptiveScaling(dim, ads)
