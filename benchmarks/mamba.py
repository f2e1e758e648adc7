"""`mamba`: our Mamba model against the same model run by mambapy (pure-PyTorch Mamba, pscan).

The baseline is not a look-alike: it is our model with each MambaMixer replaced by a mambapy
`MambaBlock` that carries the mixer's weights (mambapy's out_proj has no bias, so ours is added
after it). Encoder, post-norm blocks, pooling and head are shared, so the two compute the same
function (tests/test_benchmarks.py checks it) and the ratio measures the selective scan and the
code around it: our chunked, cache-sized scan against mambapy's Blelloch pscan, which pads L to a
power of two and materializes several (B, L, d_inner, d_state) tensors.

mambapy is an optional benchmark dependency, installed without its dependencies so that pip keeps
the CPU torch: `pip install --no-deps mambapy` (it imports nothing but torch). Without it the
baseline is reported as skipped, with that command.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from torch import nn

from benchmarks import Context, Row, Task, register_benchmark, skipped
from benchmarks.mixers import model_inputs
from benchmarks.runner import Step, forward_backward_step
from model_zoo import build_model
from model_zoo.layers.mamba import MambaMixer

MAMBAPY_INSTALL = "pip install --no-deps mambapy"
BASELINE = "mambapy (pscan)"
SPEEDUP_TARGET = 5.0
MEMORY_TARGET_MB = 8 * 1024


class MambapyMixer(nn.Module):
    """A mambapy MambaBlock holding the weights of one of our MambaMixers (AdS 'none' only)."""

    def __init__(self, ours: MambaMixer) -> None:
        super().__init__()
        from mambapy.mamba import MambaBlock, MambaConfig

        if not isinstance(ours.ads, nn.Identity):
            raise ValueError("mambapy has no Adaptive Scaling: convert a mamba mixer built with ads='none'")
        config = MambaConfig(
            d_model=ours.d_model, n_layers=1, dt_rank=ours.dt_rank, d_state=ours.d_state,
            expand_factor=ours.d_inner // ours.d_model, d_conv=ours.conv.kernel_size[0], pscan=True,
        )
        self.block = MambaBlock(config)
        self.block.load_state_dict({
            "in_proj.weight": ours.in_proj.weight, "conv1d.weight": ours.conv.weight, "conv1d.bias": ours.conv.bias,
            "x_proj.weight": ours.x_proj.weight, "dt_proj.weight": ours.dt_proj.weight,
            "dt_proj.bias": ours.dt_proj.bias, "A_log": ours.a_log, "D": ours.d,
            "out_proj.weight": ours.out_proj.weight,
        })
        self.out_bias = nn.Parameter(ours.out_proj.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.out_bias


def use_mambapy(model: nn.Module) -> nn.Module:
    """Replace, in place, every block's MambaMixer by a MambapyMixer with its weights."""
    for block in model.blocks:
        if isinstance(block.mixer, MambaMixer):
            block.mixer = MambapyMixer(block.mixer)
    return model


def mambapy_available() -> bool:
    return importlib.util.find_spec("mambapy") is not None


@dataclass(frozen=True)
class MambaScale:
    dataset: str
    batch: int
    n_layers: int
    d_model: int
    d_states: tuple[int, ...]
    warmup: int
    repeats: int
    baseline_repeats: int


SCALES = {
    "full": MambaScale("mnist", 64, 4, 64, (16, 64), warmup=1, repeats=3, baseline_repeats=1),
    "quick": MambaScale("mnist", 8, 4, 64, (16, 64), warmup=1, repeats=2, baseline_repeats=1),
    "tiny": MambaScale("digits", 2, 1, 16, (4, 8), warmup=0, repeats=1, baseline_repeats=1),
}


def setup_mamba_model(
    device: str, dataset: str, batch: int, n_layers: int, d_model: int, d_state: int, mambapy: bool, seed: int = 0
) -> Step:
    """A forward+backward step of our Mamba model, or of the same weights run by mambapy."""
    torch.manual_seed(seed)
    model = build_model("mamba", dataset, n_layers=n_layers, d_model=d_model, d_state=d_state)
    if mambapy:
        use_mambapy(model)
    model.to(device)
    return forward_backward_step(model, *model_inputs(model, batch, seed, device))


@register_benchmark("mamba")
def mamba_benchmark(ctx: Context) -> list[Row]:
    """Our Mamba (chunked selective scan) against mambapy's pscan on the same weights (fwd+bwd)."""
    scale = SCALES[ctx.scale]
    rows = []
    for d_state in scale.d_states:
        params = {"dataset": scale.dataset, "batch": scale.batch, "n_layers": scale.n_layers,
                  "d_model": scale.d_model, "d_state": d_state}
        ours = Task("ours (chunked scan)", setup_mamba_model, {**params, "mambapy": False}, scale.warmup, scale.repeats)
        if mambapy_available():
            baseline = Task(BASELINE, setup_mamba_model, {**params, "mambapy": True}, 0, scale.baseline_repeats)
        else:
            baseline = skipped(BASELINE, f"mambapy is not installed; install it with: {MAMBAPY_INSTALL}")
        case = f"{scale.dataset} batch {scale.batch}, {scale.n_layers} layers, d_model {scale.d_model}, d_state {d_state}"
        mine, theirs = ctx.compare(f"d_state {d_state}", ours, baseline)
        row = Row("mamba", case, mine, theirs)
        fields = {"speedup_target_met": None if row.ratio is None else row.ratio >= SPEEDUP_TARGET}
        if mine.ok and mine.peak_rss_mb is not None:
            fields["within_8GB"] = mine.peak_rss_mb <= MEMORY_TARGET_MB
        rows.append(Row("mamba", case, mine, theirs, fields))
    return rows
