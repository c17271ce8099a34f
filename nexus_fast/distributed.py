"""torch.distributed helpers for losses that need the global batch.

Barlow Twins, VICReg, DINO centering, Sinkhorn-Knopp and KoLeo are functions of the whole batch.
Their `gather=True` options gather embeddings with autograd-aware collectives, so that each rank
computes the global-batch loss and the gradient reaching its own embeddings is exactly that of one
process holding the whole batch (with DDP's averaging of parameter gradients: see `gather_batch`).
The official Barlow Twins code all-reduces the cross-correlation matrix without autograd, which
scales gradients by 1 / world_size; nothing here does that.

Without an initialised process group (or with one process) every helper is the identity.
"""

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """The number of processes of the default group; 1 when torch.distributed is not running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def gather_batch(x: Tensor) -> Tensor:
    """Concatenates x (N, ...) of every rank along dim 0, rank by rank: (world_size * N, ...).

    Autograd-aware: the backward sums the gradients every rank computes for this rank's rows
    (a reduce-scatter). Each rank then holds world_size times the gradient of the global loss,
    which DDP's averaging over ranks turns into exactly the single-process gradient.
    Every rank must pass the same shape.
    """
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of x over ranks, autograd-aware (its backward all-reduces the gradient likewise)."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x, op=dist.ReduceOp.SUM)


def all_reduce_sum_async(x: Tensor) -> tuple[Tensor, object | None]:
    """Starts an in-place sum of x over ranks without autograd (statistics such as DINO's
    center); returns x and the work handle to wait on (None without a process group), so the
    communication overlaps the computation that follows."""
    if world_size() == 1:
        return x, None
    return x, dist.all_reduce(x, op=dist.ReduceOp.SUM, async_op=True)
