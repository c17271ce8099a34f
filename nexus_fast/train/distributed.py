"""Multi-process training: process-group setup from torchrun's environment, DDP and FSDP2
wrapping, a batch norm over the global batch, gathering and loading full checkpoints, and the
per-step sample indices of each rank.

Single machine first: `torchrun --nproc-per-node N -m nexus_fast.cli pretrain ...` sets RANK,
LOCAL_RANK and WORLD_SIZE; `setup_distributed` joins the group (nccl on GPUs, gloo on CPUs).
Without torchrun every function here is the single-process identity.
"""

import os
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import all_reduce_sum

Mode = Literal["ddp", "fsdp"]


def setup_distributed(device: torch.device | str | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) of this process, joining torchrun's process group if needed.

    Args:
        device: "cpu", "cuda" (this process's GPU is picked from LOCAL_RANK), a full device, or
            None for a GPU when one is available, else the CPU.

    Returns:
        The rank, the number of processes and the device this process trains on. Without
        torchrun's variables and without an initialised group: (0, 1, device).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return 0, 1, device
    backend = "nccl" if device.type == "cuda" else "gloo"
    # torchrun's variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) are read by env://.
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


def unwrap(network: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards the model in place: it is its own)."""
    return network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network


def is_sharded(network: nn.Module) -> bool:
    """Whether fully_shard was applied to this module (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(network, FSDPModule)


def wrap_model(
    model: nn.Module,
    mode: Mode,
    device: torch.device,
    *,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """The network to run forward and backward through when world_size > 1.

    Args:
        model: the model, already on `device`.
        mode: "ddp" (replicated weights, gradients averaged) or "fsdp" (FSDP2: each ViT block
            and then the root sharded with fully_shard, for models too large to replicate).
        device: this process's device.
        find_unused_parameters: DDP's option; needed only when some parameter that requires
            grad gets no gradient in a step. Parameters that do not require grad (EMA teachers,
            fixed tables) never need it: DDP ignores them.

    Returns:
        A DistributedDataParallel wrapper, or the model itself sharded in place for "fsdp".
    """
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    if mode == "fsdp":
        return shard_model(model)
    raise ValueError(f"distributed={mode!r} is not allowed: 'ddp' or 'fsdp'")


def shard_model(model: nn.Module) -> nn.Module:
    """FSDP2: `fully_shard` every transformer block (student's, teacher's, predictor's and
    decoder's alike), then the root, so each block's weights are gathered only while it runs.

    Teacher and student parameters are split the same way (dim 0 across ranks), so the EMA
    update runs on local shards (see `local_tensors`). `encode` is registered as a forward method
    so that evaluation through it gathers the root's weights too.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from ..layers.block import Block

    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model)
    if hasattr(model, "encode"):
        register_fsdp_forward_method(model, "encode")
    return model


def local_tensors(parameters: list[Tensor]) -> list[Tensor]:
    """This rank's shards of FSDP2 parameters (DTensors); plain tensors unchanged."""
    return [getattr(parameter, "to_local", lambda p=parameter: p)() for parameter in parameters]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, on any device.

    torch's SyncBatchNorm runs on GPUs only; this one sums the local sums over ranks with an
    autograd-aware all-reduce, so with gloo on CPUs a step of N processes computes what one
    process computes on their concatenated batches (the gradient convention is that of
    nexus_fast.distributed.gather_batch). Every rank must hold the same number of samples. The
    state dict keys are those of nn.BatchNorm*d, so checkpoints load into the plain model.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects (N, C, ...) input, got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.numel() // input.shape[1] * dist.get_world_size()
        # Two passes (mean, then centred squares) rather than E[x^2] - E[x]^2, for accuracy.
        mean = all_reduce_sum(input.sum(dim=dims)) / count
        centred = input - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dim=dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        output = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        return output

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1, 1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm*d with its global-batch version (torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere), as the official Barlow Twins and VICReg code does under DDP;
    without it each rank would normalise its projector outputs by its own share of the batch.
    Returns the model (converted in place where possible)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, (GlobalBatchNorm, nn.SyncBatchNorm)
        ):
            replacement = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=device,
            )
            replacement.load_state_dict(child.state_dict())
            replacement.train(child.training)
            setattr(model, name, replacement)
        else:
            convert_batchnorm(child, device)
    return model


def model_state(network: nn.Module) -> dict[str, Tensor]:
    """The model's full state dict, on the CPU; under FSDP2 gathered to rank 0 (other ranks get
    an empty dict). Keys are the plain model's (no DDP prefix)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=is_sharded(network), cpu_offload=True)
    return get_model_state_dict(unwrap(network), options=options)


def optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter names (so it loads whatever the number of
    processes and the wrapping), on the CPU; under FSDP2 gathered to rank 0."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=is_sharded(network), cpu_offload=True)
    return get_optimizer_state_dict(unwrap(network), optimizer, options=options)


def load_model_state(network: nn.Module, weights: dict[str, Tensor]) -> None:
    """Loads a full state dict (every rank holds it), strictly: a missing or unexpected key is
    an error, never a silent partial load."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=is_sharded(network), strict=True)
    set_model_state_dict(unwrap(network), weights, options=options)


def load_optimizer_state(network: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Loads an optimizer state saved by `optimizer_state` (every rank holds it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=is_sharded(network))
    set_optimizer_state_dict(unwrap(network), optimizer, state, options=options)


def step_batch_indices(
    step: int,
    batch_size: int,
    num_samples: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """The sample indices of one rank's share of a step's global batch: the distributed sampler
    of a step-indexed run.

    The data set is visited epoch by epoch in a fresh permutation drawn from (seed, epoch), the
    global batch of step s being positions [s * batch_size, (s + 1) * batch_size) of that
    sequence (a batch may straddle two epochs). Rank r takes the r-th of world_size equal
    slices. It depends on nothing but its arguments, so a resumed run reads the same data.

    Returns:
        (batch_size // world_size,) int64 indices into the data set.
    """
    if batch_size % world_size:
        raise ValueError(
            f"batch_size={batch_size} is not allowed: a multiple of world_size={world_size}"
        )
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} is not allowed: a data set of >= 1 sample")
    share = batch_size // world_size
    positions = torch.arange(
        step * batch_size + rank * share, step * batch_size + (rank + 1) * share
    )
    epochs = positions // num_samples
    indices = torch.empty_like(positions)
    for epoch in epochs.unique().tolist():
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(num_samples, generator=generator)
        selected = epochs == epoch
        indices[selected] = order[positions[selected] % num_samples]
    return indices
