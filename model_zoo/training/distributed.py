"""Data parallelism under torchrun: the process group, who is who, and how work is split.

torchrun (`python -m torch.distributed.run`) starts one process per worker and tells each one
its place through environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). `process_group(device)` joins that job (gloo on CPU; nccl on CUDA, each process
on cuda:LOCAL_RANK) and leaves it at the end; outside torchrun it does nothing, so one command
serves one process and many.

`train()` and `evaluate()` ask `current()` whether they run inside a group and split their work
so that the result is the one a single process gets:
- a global batch is cut into contiguous shards, one per rank, in the same global order on every
  rank (`shard_bounds`), and the gradient average weights each rank by its share of the batch
  (`DataParallel`), so uneven last batches still average over examples;
- random attack noise is drawn so that a shard's noise is the matching rows of the noise one
  process would draw for the whole batch (`shard_generator`; exact on CPU, see there);
- whatever only rank 0 does (reading the resume state, writing files) goes through `on_main`,
  which hands its result, or its exception, to every rank, so no rank waits for one that stopped.
"""

# No `from __future__ import annotations` here: DDP inspects the comm hook's annotations and
# refuses them as strings.
import gc
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model_zoo.errors import UsageError

T = TypeVar("T")
# A rank can wait for a slower one for as long as one batch of the slowest attack takes (an
# AutoAttack batch on a large model runs for minutes), so the default 10 minutes of nccl are short.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Workers:
    """This process's place in the job: rank (0 = the one that writes and prints) of world_size."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def current() -> Workers:
    """The job this process is part of: a single worker unless a process group is up."""
    if dist.is_available() and dist.is_initialized():
        return Workers(dist.get_rank(), dist.get_world_size())
    return Workers()


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join the torchrun job described by the environment; yields the device this rank uses.

    Outside torchrun (no WORLD_SIZE, or 1) nothing happens and `device` is yielded as given. Under
    torchrun a CUDA device becomes cuda:LOCAL_RANK (one GPU per process, as nccl requires), so
    `device` must not name an index; a CPU job uses gloo. A group that the caller already set up is
    used as it is.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or (dist.is_available() and dist.is_initialized()):
        yield device
        return
    if device.type == "cuda":
        device = _local_gpu(device)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UsageError(f"distributed runs use cpu (gloo) or cuda (nccl), not {device}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield device
    except BaseException:
        # nccl's teardown waits for the other ranks, which may be stuck in a collective for the
        # one that failed; exiting lets torchrun stop them. Gloo's teardown does not wait.
        if backend == "gloo":
            _leave()
        raise
    _leave()


def _leave() -> None:
    """Destroy the process group once nothing refers to it any more.

    DDP wrappers sit in reference cycles and keep the group's worker threads alive until the
    garbage collector runs; if that only happens while Python shuts down, gloo aborts the process
    (SIGABRT, "terminate called without an active exception"). Collecting first avoids that.
    """
    gc.collect()
    dist.destroy_process_group()


def _local_gpu(device: torch.device) -> torch.device:
    if device.index is not None:
        raise UsageError(f"under torchrun every process uses cuda:LOCAL_RANK; pass cuda (or auto), not {device}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                         "start at most that many processes per node (--nproc-per-node)")
    return torch.device("cuda", local_rank)


def shard_bounds(n: int, workers: Workers) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n rows: sizes differ by at most one,
    the larger shares first, so equal shares whenever world_size divides n."""
    size, extra = divmod(n, workers.world_size)
    start = workers.rank * size + min(workers.rank, extra)
    return start, start + size + (workers.rank < extra)


def shard_generator(key: Sequence[object], device: torch.device, skip: int, workers: Workers) -> torch.Generator:
    """The generator for one shard of one global batch's random draws.

    `key` names the batch (seed, purpose, epoch, batch index); `skip` is how many numbers the rows
    of the shards before this one take (start row x elements per row). The methods draw their
    noise for a batch in one call of the batch's shape.
    - CPU (mt19937): float32 uniform draws take one 32-bit number per element in order, and
      Gaussian ones transform such uniforms in blocks of 16, so after skipping the earlier rows'
      numbers the shard's draw is exactly its rows of the whole batch's draw (for Gaussian draws
      when the rows' element counts are multiples of 16, as for every image size here). So a
      K-process run attacks with the noise of a one-process run.
    - CUDA (Philox) draws in parallel threads and cannot be sliced that way; each rank gets
      its own stream from the key and its rank instead: statistically the same training, not
      the same bits (nccl's reduction order and bf16 would change the bits anyway).
    """
    if device.type == "cpu":
        generator = torch.Generator().manual_seed(_seed(key))
        if skip:
            torch.empty(skip).uniform_(generator=generator)
        return generator
    return torch.Generator(device).manual_seed(_seed((*key, "rank", workers.rank)))


def _seed(key: Sequence[object]) -> int:
    """A 63-bit seed from a key; unrelated keys give unrelated streams."""
    return int.from_bytes(hashlib.blake2b(repr(tuple(key)).encode(), digest_size=8).digest(), "little") >> 1


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run fn on rank 0 only and give every rank its outcome: the value it returned, or the
    exception it raised (raised on every rank). Outside a group it is just fn(*args, **kwargs).

    This is also the barrier after rank 0's writes: no rank continues before they are done.
    """
    workers = current()
    if not workers.is_distributed:
        return fn(*args, **kwargs)
    outcome: list[Any] = [None]
    failure: Exception | None = None
    if workers.is_main:
        try:
            outcome[0] = (True, fn(*args, **kwargs))
        except Exception as exc:  # every rank must learn of it, or the others wait forever
            failure = exc
            outcome[0] = (False, exc)
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def sum_across(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (float64; on the rank's device, which nccl needs)."""
    if not current().is_distributed:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def gather_objects(value: T) -> list[T]:
    """Every rank's value, in rank order, on every rank (pickled: keep it small)."""
    workers = current()
    if not workers.is_distributed:
        return [value]
    gathered: list[Any] = [None] * workers.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def gather_rows(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate each rank's per-row tensors along dim 0 in rank order: the global tensor.

    Used for per-example training state (FreeAT's perturbation), which each rank holds for
    its shard; `split_rows` is its inverse.
    """
    parts = gather_objects({name: tensor.detach().cpu() for name, tensor in tensors.items()})
    return {name: torch.cat([part[name] for part in parts]) for name in tensors}


def split_rows(tensors: dict[str, torch.Tensor], workers: Workers) -> dict[str, torch.Tensor]:
    """This rank's rows of global per-row tensors (the shards `shard_bounds` gives)."""
    out = {}
    for name, tensor in tensors.items():
        start, stop = shard_bounds(len(tensor), workers)
        out[name] = tensor[start:stop].clone()
    return out


@dataclass
class _Share:
    """This rank's share of the current global batch: its rows / the batch's rows."""

    weight: float


def _weighted_allreduce(share: _Share, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """sum over ranks of share x gradient: with each rank's loss a mean over its rows, that is
    the mean over the global batch, also when the last batch splits unevenly (plain DDP divides
    by world_size, which weights a short shard's examples more)."""
    buffer = bucket.buffer().mul_(share.weight)
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda fut: fut.value()[0])


class DataParallel(DistributedDataParallel):
    """DistributedDataParallel for the AT methods: what they call for every forward pass.

    Gradient passes. The methods take the parameter gradients with `loss.backward()` through
    this wrapper, once per optimizer step (PGD, TRADES, MART, FGSM-RS), once per replay (FreeAT:
    m backward passes and m steps) or m times into the same .grad before one step (YOPO). DDP
    starts its allreduce from hooks on the parameters' gradient accumulators, so each backward
    pass averages the gradient it adds; an accumulated .grad stays right because the part already
    averaged is equal on every rank (YOPO pays m allreduces per batch for this).

    Attack passes. Input gradients (`perturb.input_gradient`, YOPO's inner steps) come from
    `torch.autograd.grad(loss, x_adv)`, which runs only the graph between the loss and x_adv: the
    parameters' accumulators never run, so these passes start no allreduce and cannot leave DDP
    waiting for a reduction (`no_sync()` is not needed; tests/test_distributed.py counts the
    allreduces to hold this). YOPO's inner steps call the wrapped model's first layer directly:
    attribute lookups fall through to the wrapped model.

    `share` must hold this rank's share of the batch before the batch's backward passes.
    Buffers are synced once at the start, not on every forward: our models' buffers are constants.
    """

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__(module, device_ids=[device.index] if device.type == "cuda" else None, forward_sync_buffers=False)
        self.share = _Share(1.0 / dist.get_world_size())
        self.register_comm_hook(self.share, _weighted_allreduce)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)
