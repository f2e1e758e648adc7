"""Where a perturbation may go: the threat model's eps-ball scale and input box, per model.

For images (the default, `UNIT`) the Linf ball of radius eps intersected with [0, 1]. For
sequences in raw units the ball's radius is eps times each channel's training standard deviation
(`scale`), so eps means the same on every data set and channel, and the box is either absent
("none", the default: a sensor reading has no natural bounds) or the range observed in the
training split ("observed"). The box is orthogonal to the norm. A model declares its bounds
(`SequenceClassifier.input_bounds`; foolbox's "the model carries its bounds") and `bounds_of`
asks it, so no caller converts units by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model_zoo.errors import UsageError

Bound = torch.Tensor | float
BOXES = ("unit", "none", "observed")  # [0, 1] (images) | no box | the training split's range


@dataclass(frozen=True)
class Bounds:
    """|x_adv - x| <= eps * scale elementwise, and low <= x_adv <= high unless the box is None.

    Tensors broadcast against the input (a sequence model's are (C, 1) for (N, C, L) inputs).
    A box bound never moves x itself: a point that already lies outside the observed range may
    stay where it is (test series do exceed the training range), it may only not move further out.
    """

    box: str = "unit"
    scale: Bound = 1.0
    low: Bound | None = 0.0
    high: Bound | None = 1.0

    def to(self, x: torch.Tensor) -> Bounds:
        """The same bounds with tensors on x's device and dtype."""
        def move(value: Bound | None) -> Bound | None:
            return value.to(device=x.device, dtype=x.dtype) if isinstance(value, torch.Tensor) else value

        return Bounds(self.box, move(self.scale), move(self.low), move(self.high))  # type: ignore[arg-type]


UNIT = Bounds()


def bounds_of(model: nn.Module, box: str | None = None) -> Bounds:
    """The bounds a model declares for `box` (None: its default); other models take images in [0, 1]."""
    declare = getattr(model, "input_bounds", None)
    if declare is not None:
        return declare(box)
    if box not in (None, "unit"):
        raise UsageError(f"box {box!r} needs a model that declares its input bounds; image models take the unit box")
    return UNIT


def clip_box(x_adv: torch.Tensor, x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Onto the box (widened to contain x itself); unchanged when the box is None."""
    if bounds.low is None or bounds.high is None:
        return x_adv
    if not isinstance(bounds.low, torch.Tensor) and not isinstance(bounds.high, torch.Tensor):
        return x_adv.clamp(bounds.low, bounds.high)  # images: x is inside [0, 1] already
    return torch.max(torch.min(x_adv, torch.clamp(x, min=bounds.high)), torch.clamp(x, max=bounds.low))
