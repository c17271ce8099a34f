"""Patches: `patchify` / `unpatchify` (a reshape and one copy; no kernel needed) and the fused
`gather_patches`, which patchifies and keeps the visible patches in one pass so that the patch
embedding runs on visible patches only (DESIGN.md, "Data flow of one training step").

Backends of gather_patches, fastest first: triton (CUDA), cpu (C++), reference (patchify, then
torch.gather). Gradients flow to x when it requires grad.
"""

import torch
from torch import Tensor

from ._common import (
    as_index_tensor,
    check_index_range,
    cpu_kernel_reason,
    device_reasons,
    interpreter_reasons,
    triton_cpu_path,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dispatch import Backend, Operator, register
from .reference import patches as reference
from .reference.patches import grid_shape, patchify, unpatchify

__all__ = ["gather_patches", "grid_shape", "patchify", "unpatchify"]


@torch.library.custom_op("nexus_fast::gather_patches_triton", mutates_args=())
def _gather_patches_triton(x: Tensor, patch_size: int, tubelet: int, ids: Tensor) -> Tensor:
    launcher = triton_function("patches", "gather_patches")
    return triton_cpu_path(launcher, _run_reference)(x, patch_size, tubelet, ids)


@_gather_patches_triton.register_kernel("cuda")
def _(x: Tensor, patch_size: int, tubelet: int, ids: Tensor) -> Tensor:
    return triton_function("patches", "gather_patches")(x, patch_size, tubelet, ids)


@torch.library.custom_op("nexus_fast::gather_patches_backward_triton", mutates_args=())
def _gather_patches_backward_triton(
    grad: Tensor, ids: Tensor, patch_size: int, tubelet: int, input_size: list[int]
) -> Tensor:
    launcher = triton_function("patches", "gather_patches_backward")
    return triton_cpu_path(launcher, _backward_reference)(
        grad, ids, patch_size, tubelet, input_size
    )


@_gather_patches_backward_triton.register_kernel("cuda")
def _(grad: Tensor, ids: Tensor, patch_size: int, tubelet: int, input_size: list[int]) -> Tensor:
    launcher = triton_function("patches", "gather_patches_backward")
    return launcher(grad, ids, patch_size, tubelet, input_size)


def _backward_reference(
    grad: Tensor, ids: Tensor, patch_size: int, tubelet: int, input_size: list[int]
) -> Tensor:
    """The gradient by autograd through the reference (the CPU path of the Triton op)."""
    with torch.enable_grad():
        x = torch.zeros(input_size, dtype=grad.dtype, device=grad.device, requires_grad=True)
        (grad_x,) = torch.autograd.grad(
            reference.gather_patches(x, patch_size, ids, tubelet), x, grad
        )
    return grad_x


def _fake_forward(x: Tensor, patch_size: int, tubelet: int, ids: Tensor) -> Tensor:
    return x.new_empty(ids.shape[0], ids.shape[1], tubelet * patch_size * patch_size * x.shape[1])


def _fake_backward(
    grad: Tensor, ids: Tensor, patch_size: int, tubelet: int, input_size: list[int]
) -> Tensor:
    return grad.new_empty(input_size)


def _setup_context(ctx, inputs, output) -> None:
    x, patch_size, tubelet, ids = inputs
    ctx.save_for_backward(ids)
    ctx.geometry = (patch_size, tubelet, list(x.shape))


def _autograd(backward_op):
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        patch_size, tubelet, input_size = ctx.geometry
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = backward_op(grad, ids, patch_size, tubelet, input_size)
        return grad_x, None, None, None

    return backward


_gather_patches_triton.register_fake(_fake_forward)
_gather_patches_backward_triton.register_fake(_fake_backward)
_gather_patches_triton.register_autograd(
    _autograd(_gather_patches_backward_triton), setup_context=_setup_context
)

if hasattr(torch.ops.nexus_fast, "gather_patches"):  # the compiled extension is loaded
    torch.library.register_fake("nexus_fast::gather_patches")(_fake_forward)
    torch.library.register_fake("nexus_fast::gather_patches_backward")(_fake_backward)
    torch.library.register_autograd(
        "nexus_fast::gather_patches",
        _autograd(torch.ops.nexus_fast.gather_patches_backward),
        setup_context=_setup_context,
    )


def _run_cpu(x: Tensor, patch_size: int, tubelet: int, ids: Tensor) -> Tensor:
    return torch.ops.nexus_fast.gather_patches(x, patch_size, tubelet, ids)


def _run_reference(x: Tensor, patch_size: int, tubelet: int, ids: Tensor) -> Tensor:
    return reference.gather_patches(x, patch_size, ids, tubelet)


GATHER_PATCHES = register(
    Operator(
        "gather_patches",
        [
            Backend(
                "triton",
                _gather_patches_triton,
                triton_machine_reason,
                lambda x, p, t, ids: triton_reasons(x),
                lambda x, p, t, ids: interpreter_reasons(x),
            ),
            Backend(
                "cpu",
                _run_cpu,
                cpu_kernel_reason("gather_patches"),
                lambda x, p, t, ids: device_reasons(x, "cpu"),
            ),
            Backend("reference", _run_reference),
        ],
    )
)


def gather_patches(
    x: Tensor, patch_size: int, ids_keep: Tensor, tubelet: int = 1, *, backend: str | None = None
) -> Tensor:
    """Patchify x and keep the patches ids_keep, in one pass: patchify(x)[b, ids_keep[b, k]].

    Args:
        x: images (B, C, H, W) or video (B, C, T, H, W), any dtype and strides (channels-last and
            sliced views are read in place).
        patch_size: p; H and W must be divisible by it.
        ids_keep: (B, K) integer patch indices in [0, L), L the number of patches.
        tubelet: frames per patch for video (T divisible by it).
        backend: force "triton", "cpu" or "reference" (see NEXUS_FAST_BACKEND).

    Returns:
        (B, K, tubelet * p * p * C) in x's dtype, each patch in MAE's (t, p, q, C) order.

    Raises:
        ValueError: a bad shape, or sizes not divisible by patch_size / tubelet.
        IndexError: an index outside [0, L) (on the GPU: a device-side assert).

    Example:
        >>> images = torch.randn(2, 3, 32, 32)
        >>> gather_patches(images, 16, torch.tensor([[0, 3], [1, 2]])).shape
        torch.Size([2, 2, 768])
    """
    if x.dim() not in (4, 5):
        raise ValueError(f"x must be (B, C, H, W) or (B, C, T, H, W), got {tuple(x.shape)}")
    if patch_size <= 0 or tubelet <= 0:
        raise ValueError(f"patch_size and tubelet must be positive, got {patch_size}, {tubelet}")
    if x.dim() == 4 and tubelet != 1:
        raise ValueError(f"tubelet {tubelet} needs video (B, C, T, H, W), got {tuple(x.shape)}")
    grid = grid_shape(tuple(x.shape[2:]), patch_size, tubelet)
    ids_keep = as_index_tensor(ids_keep, "ids_keep")
    if ids_keep.dim() != 2 or ids_keep.shape[0] != x.shape[0]:
        raise ValueError(
            f"ids_keep must be (B, K) with B = {x.shape[0]}, got {tuple(ids_keep.shape)}"
        )
    num_patches = 1
    for extent in grid:
        num_patches *= extent
    check_index_range(ids_keep, num_patches, "ids_keep", "patches")
    chosen = GATHER_PATCHES.select(x, patch_size, tubelet, ids_keep, backend=backend)
    return chosen.run(x, patch_size, tubelet, ids_keep)
