"""Mamba (Mamba-1): a selective SSM whose dt, B and C are computed from the input.

Per channel d and state n the recurrence is

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] u_t[d] B_t[n],   y_t[d] = sum_n C_t[n] h_t[d, n].

The state sequence has batch * L * d_inner * d_state entries (411 M for batch 64, L 784,
d_inner 128, d_state 64): nothing of that size may be kept for backward, and every pass over it
costs. `selective_scan` therefore works on tiles of (a few sequences) x (one chunk of time steps) x
d_inner x d_state sized to stay in cache. Chunks run one after the other carrying the state (the
only Python loop besides the one over batch blocks); inside a chunk the recurrence is solved by
cyclic reduction (`scan.plan_linear_scan`: log-depth, no loop over time steps). A hand-written
backward recomputes each tile from the state saved at its chunk start and runs the exact adjoint of
that reduction, reusing its coefficient products. Only decays exp(dt A) <= 1 and their products are
ever formed, so nothing can overflow. With several intra-op threads, the batch blocks are shared
among that many Python worker threads running single-threaded operations (see `_over_workers`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from model_zoo.errors import ZooError
from model_zoo.layers.base import SSMMixer, log_dt_init, register_mixer
from model_zoo.layers.scan import ScanPlan, plan_linear_scan, plan_linear_scan_adjoint

# Elements of one (batch block x chunk x d_inner x d_state) work tile: the 4 buffers of this size
# (1 MiB each in float32) stay in one core's cache, and each operation is still large enough that
# Python overhead stays small. The batch block never drops below one sequence.
TILE_ELEMENTS = 1 << 18
_LOG2_E = 1.0 / math.log(2.0)
_LOG2_FLOOR = -120.0
_R = TypeVar("_R")


def selective_scan_sequential(
    u: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """Reference: the recurrence one time step at a time, differentiated by autograd.

    u, dt: (B, L, D); a: (D, N); b, c: (B, L, N). Returns y: (B, L, D). For tests and benchmarks.
    """
    h = u.new_zeros(u.shape[0], u.shape[2], a.shape[1])
    outputs = []
    # unbind, not dt[:, t]: each indexing op's backward would allocate a zero tensor of the whole sequence
    for u_t, dt_t, b_t, c_t in zip(u.unbind(1), dt.unbind(1), b.unbind(1), c.unbind(1)):
        h = torch.exp(dt_t[:, :, None] * a) * h + (dt_t * u_t)[:, :, None] * b_t[:, None, :]
        outputs.append((h * c_t[:, None, :]).sum(-1))
    return torch.stack(outputs, dim=1)


@dataclass
class _Tile:
    """Work buffers of one tile shape (batch block, chunk, D, N) and the scan plans bound to them."""

    decay: torch.Tensor
    states: torch.Tensor
    scan: ScanPlan
    adjoint: torch.Tensor | None = None
    scratch: torch.Tensor | None = None
    adjoint_scan: ScanPlan | None = None

    def backward_parts(self) -> tuple[torch.Tensor, torch.Tensor, ScanPlan]:
        """(adjoint, scratch, adjoint scan): the buffers that only a backward pass's tiles hold."""
        if self.adjoint is None or self.scratch is None or self.adjoint_scan is None:
            raise RuntimeError("selective scan: a forward tile has no adjoint buffers")
        return self.adjoint, self.scratch, self.adjoint_scan


class _Tiles:
    """Flat buffers reused by every tile; views and plans are built once per tile shape (at most
    four: full, short last chunk, short last batch block, both)."""

    def __init__(self, max_elements: int, like: torch.Tensor, for_backward: bool) -> None:
        self.flat = [like.new_empty(max_elements) for _ in range(4 if for_backward else 2)]
        self.for_backward = for_backward
        self.cache: dict[tuple[int, ...], _Tile] = {}

    def get(self, shape: tuple[int, ...]) -> _Tile:
        if shape not in self.cache:
            size = math.prod(shape)
            views = [buffer[:size].view(shape) for buffer in self.flat]
            if self.for_backward:
                decay, states, adjoint, scratch = views
                # Keep decay intact (the gradient needs it) and the level products for the adjoint.
                scan = plan_linear_scan(decay, states, keep_in=scratch)
                tile = _Tile(decay, states, scan, adjoint, scratch, plan_linear_scan_adjoint(scan, adjoint))
            else:
                decay, states = views
                tile = _Tile(decay, states, plan_linear_scan(decay, states))
            self.cache[shape] = tile
        return self.cache[shape]


@dataclass(frozen=True)
class _ScanInputs:
    """The dense inputs of one call and what every tile derives from them."""

    u: torch.Tensor
    dt: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    chunks: list[tuple[int, int]]
    blocks: list[slice]
    a_log2: torch.Tensor
    dtu: torch.Tensor
    floor: bool

    @classmethod
    def prepare(
        cls, u: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk_size: int
    ) -> _ScanInputs:
        # Tiles are sliced from these hundreds of times: make them dense once.
        u, dt, a, b, c = (t.contiguous() for t in (u, dt, a, b, c))
        batch, length, width = u.shape
        chunk = max(1, min(chunk_size, length))
        # On a GPU there is no cache to fit, and fewer, larger tiles mean fewer kernel launches.
        on_cpu = u.device.type == "cpu"
        block = max(1, min(batch, TILE_ELEMENTS // (chunk * width * a.shape[1]))) if on_cpu else batch
        a_log2 = a * _LOG2_E
        return cls(
            u, dt, a, b, c,
            chunks=[(t0, min(t0 + chunk, length)) for t0 in range(0, length, chunk)],
            blocks=[slice(b0, min(b0 + block, batch)) for b0 in range(0, batch, block)],
            a_log2=a_log2,
            dtu=dt * u,
            # Whether some dt A log2(e) may fall below the floor (needs dt |A| > 83: rare).
            floor=bool(dt.max() * -a_log2.min() > -_LOG2_FLOOR),
        )

    def tiles(self, for_backward: bool) -> _Tiles:
        rows = self.blocks[0].stop - self.blocks[0].start
        chunk = self.chunks[0][1] - self.chunks[0][0]
        return _Tiles(rows * chunk * self.u.shape[2] * self.a.shape[1], self.u, for_backward)

    def tile_shape(self, rows: slice, t0: int, t1: int) -> tuple[int, int, int, int]:
        return (rows.stop - rows.start, t1 - t0, self.u.shape[2], self.a.shape[1])

    def fill(self, tile: _Tile, rows: slice, t0: int, t1: int, h0: torch.Tensor) -> None:
        """Fill the tile's decay with exp(dt A) and its states with the scan inputs, h0 folded in.

        exp(x) is computed as exp2(x log2 e): torch's exp2 is about 3x faster than exp on CPU. Both
        fall into a slow path (10-30x) for results below the float32 normal range, so with `floor` the
        exponent is first clamped at -120 (2^-120 ~ 1e-36, a change that float32 sums cannot resolve).
        """
        torch.mul(self.dt[rows, t0:t1, :, None], self.a_log2, out=tile.decay)
        if self.floor:
            tile.decay.clamp_(min=_LOG2_FLOOR)
        tile.decay.exp2_()
        torch.mul(self.dtu[rows, t0:t1, :, None], self.b[rows, t0:t1, None, :], out=tile.states)
        tile.states[:, 0].addcmul_(tile.decay[:, 0], h0)


def _contract_state(x: torch.Tensor, v: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """sum_n x[b, t, d, n] v[b, t, n] -> (b, t, d); a multiply and a reduction in cache beat
    batched matrix-vector products (4-8x on CPU)."""
    return torch.mul(x, v[:, :, None, :], out=scratch).sum(-1)


def _forward_blocks(data: _ScanInputs, blocks: list[slice], y: torch.Tensor, starts: torch.Tensor) -> None:
    """Scan the given batch blocks chunk after chunk, writing y and each chunk's start state."""
    tiles = data.tiles(for_backward=False)
    for rows in blocks:
        h = data.u.new_zeros(rows.stop - rows.start, *starts.shape[2:])
        for j, (t0, t1) in enumerate(data.chunks):
            starts[rows, j] = h
            tile = tiles.get(data.tile_shape(rows, t0, t1))
            data.fill(tile, rows, t0, t1, h)
            tile.scan.run()  # clobbers decay, which then serves as scratch
            y[rows, t0:t1] = _contract_state(tile.states, data.c[rows, t0:t1], tile.decay)
            h = tile.states[:, -1].clone()


@dataclass(frozen=True)
class _Grads:
    """Gradients written block by block (disjoint rows), except dA, which each worker sums apart."""

    dtu: torch.Tensor
    dt: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor


def _backward_blocks(
    data: _ScanInputs, blocks: list[slice], grad_y: torch.Tensor, starts: torch.Tensor, grads: _Grads, need_a: bool
) -> torch.Tensor | None:
    """Recompute each tile, run the adjoint scan over it, write the row gradients; returns dL/dA
    (None when A needs none: an attack through frozen weights saves one reduction per tile)."""
    tiles = data.tiles(for_backward=True)
    grad_a = torch.zeros_like(data.a) if need_a else None
    for rows in blocks:
        # carry = a_{t+1} lambda_{t+1} at the first step of the chunk after the current one.
        carry = data.u.new_zeros(rows.stop - rows.start, *starts.shape[2:])
        for j in reversed(range(len(data.chunks))):
            t0, t1 = data.chunks[j]
            tile = tiles.get(data.tile_shape(rows, t0, t1))
            decay, states = tile.decay, tile.states
            adjoint, scratch, adjoint_scan = tile.backward_parts()
            h0 = starts[rows, j]
            data.fill(tile, rows, t0, t1, h0)
            tile.scan.run()
            # lambda_t = dL/dh_t: the adjoint of the scan applied to C_t gy_t (+ later chunks).
            gy = grad_y[rows, t0:t1]
            torch.mul(gy[..., None], data.c[rows, t0:t1, None, :], out=adjoint)
            adjoint[:, -1].add_(carry)
            adjoint_scan.run()
            carry = decay[:, 0] * adjoint[:, 0]
            grads.dtu[rows, t0:t1] = _contract_state(adjoint, data.b[rows, t0:t1], scratch)
            grads.b[rows, t0:t1] = torch.matmul(data.dtu[rows, t0:t1, None, :], adjoint)[:, :, 0]
            grads.c[rows, t0:t1] = torch.matmul(gy[:, :, None, :], states)[:, :, 0]
            # dL/d(dt A) = lambda_t a_t h_{t-1}, overwriting buffers no longer needed.
            grad_log_decay = adjoint.mul_(decay)
            grad_log_decay[:, 1:].mul_(states[:, :-1])
            grad_log_decay[:, 0].mul_(h0)
            if grad_a is not None:
                grad_a += torch.mul(grad_log_decay, data.dt[rows, t0:t1, :, None], out=scratch).sum((0, 1))
            grads.dt[rows, t0:t1] = torch.mul(grad_log_decay, data.a, out=scratch).sum(-1)
    return grad_a


def _over_workers(work: Callable[[list[slice]], _R], blocks: list[slice], on_cpu: bool) -> list[_R]:
    """Run `work` on torch.get_num_threads() Python threads, each on its share of the batch blocks,
    with single-threaded tensor operations.

    Why: a scan issues tens of thousands of operations on cache-sized tiles. Split across OpenMP
    threads, every one of them ends in a barrier; on a busy CPU a barrier waits for a descheduled
    thread (on this project's 2-core machine under load, 2 OpenMP threads ran the scan 8-15x slower
    than 1). Independent workers on disjoint sequences never wait for each other (the GIL is
    released inside each operation). The process-wide intra-op thread count is set to 1 while the
    workers run, since new threads take it over, and restored afterwards. Not used on a GPU.
    """
    n_workers = min(torch.get_num_threads(), len(blocks)) if on_cpu else 1
    if n_workers == 1:
        return [work(blocks)]

    def run(share: list[slice]) -> _R:
        with torch.no_grad():  # grad mode is per thread; the tiles are written in place
            return work(share)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(n_workers) as pool:
            return list(pool.map(run, [blocks[i::n_workers] for i in range(n_workers)]))
    finally:
        torch.set_num_threads(threads)


class _SelectiveScan(torch.autograd.Function):  # ctx is typed Any: autograd gives it the attributes set on it
    """y = C . h for the selective recurrence; see `selective_scan`."""

    @staticmethod
    def forward(
        ctx: Any, u: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
        chunk_size: int,
    ) -> torch.Tensor:
        data = _ScanInputs.prepare(u, dt, a, b, c, chunk_size)
        batch, length, width = data.u.shape
        y = data.u.new_empty(batch, length, width)
        starts = data.u.new_empty(batch, len(data.chunks), width, data.a.shape[1])
        _over_workers(partial(_forward_blocks, data, y=y, starts=starts), data.blocks, data.u.is_cpu)
        ctx.save_for_backward(data.u, data.dt, data.a, data.b, data.c, starts)
        ctx.chunk_size = chunk_size
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, dt, a, b, c, starts = ctx.saved_tensors
        data = _ScanInputs.prepare(u, dt, a, b, c, ctx.chunk_size)
        grad_y = grad_y.contiguous()
        grads = _Grads(torch.empty_like(u), torch.empty_like(dt), torch.empty_like(b), torch.empty_like(c))
        need_a = ctx.needs_input_grad[2]
        work = partial(_backward_blocks, data, grad_y=grad_y, starts=starts, grads=grads, need_a=need_a)
        per_worker = _over_workers(work, data.blocks, data.u.is_cpu)
        grad_a: torch.Tensor | None = None
        for part in per_worker if need_a else []:  # each worker's share of dL/dA, added in worker order
            assert part is not None  # a worker returns its share whenever need_a
            grad_a = part if grad_a is None else grad_a + part
        grads.dt.addcmul_(grads.dtu, u)
        return grads.dtu * dt, grads.dt, grad_a, grads.b, grads.c, None


def selective_scan(
    u: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk_size: int = 64
) -> torch.Tensor:
    """Chunked parallel selective scan: y_t = sum_n C_t[n] h_t[:, n] (no D skip).

    u, dt: (B, L, D) with dt > 0; a: (D, N) with a < 0; b, c: (B, L, N). Returns (B, L, D).
    Any L works: the last chunk is simply shorter. Memory beyond the inputs is the state at each
    chunk start (B * ceil(L / chunk_size) * D * N) plus four cache-sized work tiles per worker thread.
    """
    if chunk_size < 1:
        raise ZooError(f"chunk_size must be a positive integer, got {chunk_size}")
    fused = mamba_ssm_scan() if u.is_cuda else None
    if fused is not None:
        # mamba-ssm's fused kernel wants channels-first (B, D, L) and (B, N, L).
        def first(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).contiguous()

        return fused(first(u), first(dt), a.contiguous(), first(b), first(c)).transpose(1, 2)
    return _SelectiveScan.apply(u, dt, a, b, c, chunk_size)


@functools.cache
def mamba_ssm_scan() -> Callable[..., torch.Tensor] | None:
    """mamba-ssm's fused CUDA selective scan when that optional package is installed, else None.

    It computes the same y_t = sum_n C_t[n] h_t[:, n] (checked against our scan in
    tests/test_mamba_cuda.py wherever CUDA and mamba-ssm are present); mamba-ssm is CUDA-only and
    ships no wheel, so it is an optional extra (`pip install -e '.[cuda]'`), never required.
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """y with softplus(y) = x, for x > 0."""
    return x + torch.log(-torch.expm1(-x))


@register_mixer("mamba", causal=True, row_blocks=False)
class MambaMixer(SSMMixer):
    """Mamba: selective SSM (input-dependent dt, B, C), causal depthwise conv, SiLU gate."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        ads: str = "none",
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        chunk_size: int = 64,
    ) -> None:
        if chunk_size < 1 or d_conv < 1 or expand < 1:
            raise ZooError(f"mamba needs positive chunk_size, d_conv and expand; got {chunk_size}, {d_conv}, {expand}")
        d_inner = expand * d_model
        super().__init__(d_model, d_inner, ads)
        self.d_state = d_state
        self.chunk_size = chunk_size
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        # Depthwise and causal: pad d_conv - 1 steps on both sides, keep the first L outputs.
        self.conv = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        with torch.no_grad():
            # Mamba's init: small random dt_proj weights, and a bias that makes softplus(bias),
            # the initial dt, log-uniform in [1e-3, 1e-1].
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus(torch.exp(log_dt_init(d_inner))))
        # S4D-real: A[d, n] = -(n + 1), stored as log(-A) so that A stays negative.
        self.a_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.d = nn.Parameter(torch.ones(d_inner))

    def state_matrix(self) -> torch.Tensor:
        """A = -exp(A_log) (d_inner, d_state): computed once while the weights are frozen."""
        return self.weight_cache.get(self, ("a",), lambda: -torch.exp(self.a_log))

    def selective_inputs(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dt (B, L, d_inner) > 0 and B, C (B, L, d_state), all computed from the scan input u."""
        dt_low, b, c = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.softplus(self.dt_proj(dt_low)), b, c

    def core(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(u.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2))
        dt, b, c = self.selective_inputs(u)
        y = selective_scan(u, dt, self.state_matrix(), b, c, self.chunk_size) + self.d * u
        return y * F.silu(z)
