"""MAE's reconstruction loss with the target patchified inside the kernel (MAE models_mae.py,
forward_loss):

    target = patchify(images)                          # (B, L, t*p*p*C), (t, p, q, C) order
    target = (target - mean) / sqrt(var + eps)         # per patch, unbiased var, when norm_pix
    loss = sum(mean((pred - target)^2, -1) * mask) / sum(mask)

The fused backends never materialise the (B, L, P) target: each patch is read straight from the
images (any strides) and only where the mask weight is not 0, which skips 25% of the image reads at
MAE's 75% masking. Their backward recomputes the target instead of saving it. They treat the
images as a constant: when images (or a float mask) require grad, the reference runs.
Backends, fastest first: triton (GPU), cpu (C++), reference.
"""

import math

import torch
from torch import Tensor

from .. import _extension
from ._common import (
    cpu_kernel_reason,
    device_reasons,
    interpreter_reasons,
    resolve_op,
    triton_cpu_path,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dispatch import Backend, Operator, register
from .reference import patches as reference

CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# A patch of the Triton kernels lives in registers as one tile (see triton_kernels/).
TRITON_MAX_TILE = 8192


def _loss_dtype(pred: Tensor) -> torch.dtype:
    """float32, or float64 for a float64 pred (the reference computes in that precision)."""
    return torch.promote_types(pred.dtype, torch.float32)


def _reference_loss(
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    tubelet: int,
    norm_pix: bool,
    eps: float,
) -> Tensor:
    return reference.masked_patch_loss(pred, images, mask, patch_size, norm_pix, tubelet, eps)


def _reference_backward(
    grad: Tensor,
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    tubelet: int,
    norm_pix: bool,
    eps: float,
) -> Tensor:
    """d loss / d pred of the reference, in closed form: 2 grad w (pred - target) / (P sum(w))."""
    compute = _loss_dtype(pred)
    target = reference.patchify(images, patch_size, tubelet).to(compute)
    if norm_pix:
        target = reference.normalize_patches(target, eps)
    weights = mask.to(compute)
    total = weights.sum().clamp_min(torch.finfo(compute).tiny)
    scale = 2.0 * grad.to(compute) / (pred.shape[-1] * total)
    return ((pred.to(compute) - target) * (weights * scale).unsqueeze(-1)).to(pred.dtype)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    pred, images, mask, patch_size, tubelet, norm_pix, eps = inputs
    ctx.save_for_backward(pred, images, mask)
    ctx.arguments = (patch_size, tubelet, norm_pix, eps)


# The Triton kernels as torch.library ops, so torch.compile and opcheck see opaque ops. Their CPU
# implementation is the interpreted kernel under TRITON_INTERPRET=1 (what CI tests), else the
# reference; DESIGN.md ("The operator contract") explains why this form and not triton_op.
@torch.library.custom_op("nexus_fast::masked_patch_loss_triton", mutates_args=())
def _masked_patch_loss_triton_op(
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    tubelet: int,
    norm_pix: bool,
    eps: float,
) -> Tensor:
    launcher = triton_function("masked_patch_loss", "masked_patch_loss")
    loss = triton_cpu_path(launcher, _reference_loss)(
        pred, images, mask, patch_size, tubelet, norm_pix, eps
    )
    return loss.to(torch.float32)


@_masked_patch_loss_triton_op.register_kernel("cuda")
def _(pred, images, mask, patch_size, tubelet, norm_pix, eps):
    launcher = triton_function("masked_patch_loss", "masked_patch_loss")
    return launcher(pred, images, mask, patch_size, tubelet, norm_pix, eps)


@torch.library.custom_op("nexus_fast::masked_patch_loss_backward_triton", mutates_args=())
def _masked_patch_loss_backward_triton_op(
    grad: Tensor,
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    tubelet: int,
    norm_pix: bool,
    eps: float,
) -> Tensor:
    launcher = triton_function("masked_patch_loss", "masked_patch_loss_backward")
    return triton_cpu_path(launcher, _reference_backward)(
        grad, pred, images, mask, patch_size, tubelet, norm_pix, eps
    )


@_masked_patch_loss_backward_triton_op.register_kernel("cuda")
def _(grad, pred, images, mask, patch_size, tubelet, norm_pix, eps):
    launcher = triton_function("masked_patch_loss", "masked_patch_loss_backward")
    return launcher(grad, pred, images, mask, patch_size, tubelet, norm_pix, eps)


def _register(forward, backward, loss_dtype) -> None:
    """Fake kernels and the gradient of pred for one family of ops (C++ or Triton). Images and
    mask are constants of these ops; the dispatcher does not choose them when those need grad."""

    def fake_forward(pred, images, mask, patch_size, tubelet, norm_pix, eps):
        return pred.new_empty((), dtype=loss_dtype(pred))

    def fake_backward(grad, pred, images, mask, patch_size, tubelet, norm_pix, eps):
        return pred.new_empty(pred.shape)

    def gradient(ctx, grad: Tensor) -> tuple:
        pred, images, mask = ctx.saved_tensors
        grad_pred = None
        if ctx.needs_input_grad[0]:
            grad_pred = resolve_op(backward)(grad, pred, images, mask, *ctx.arguments)
        return grad_pred, None, None, None, None, None, None

    torch.library.register_fake(forward)(fake_forward)
    torch.library.register_fake(backward)(fake_backward)
    torch.library.register_autograd(forward, gradient, setup_context=_setup_context)


_register(
    _masked_patch_loss_triton_op,
    _masked_patch_loss_backward_triton_op,
    lambda pred: torch.float32,
)
if _extension.is_built():
    _register(
        "nexus_fast::masked_patch_loss", "nexus_fast::masked_patch_loss_backward", _loss_dtype
    )


def _run_compiled(*args) -> Tensor:
    return torch.ops.nexus_fast.masked_patch_loss(*args)


def _fused_reasons(
    pred: Tensor, images: Tensor, mask: Tensor, device_type: str, dtypes: tuple
) -> list[str]:
    """Why a fused kernel cannot compute this loss; empty if it can."""
    reasons = device_reasons(pred, device_type)
    allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
    if pred.dtype not in dtypes:
        reasons.append(f"pred dtype {pred.dtype} is not one of {allowed}")
    if images.dtype not in dtypes:
        reasons.append(f"images dtype {images.dtype} is not one of {allowed}")
    if torch.is_grad_enabled():
        for name, tensor in (("images", images), ("mask", mask)):
            if tensor.requires_grad:
                reasons.append(
                    f"{name} requires grad: the fused kernels treat {name} as a constant "
                    "(only the reference differentiates it)"
                )
    return reasons


def _cpu_reasons(pred: Tensor, images: Tensor, mask: Tensor, *arguments) -> list[str]:
    return _fused_reasons(pred, images, mask, "cpu", CPU_DTYPES)


def _triton_reasons(
    pred: Tensor, images: Tensor, mask: Tensor, patch_size: int, tubelet: int, *arguments
) -> list[str]:
    unavailable = triton_reasons(pred)
    if unavailable:
        return unavailable
    reasons = _fused_reasons(pred, images, mask, pred.device.type, TRITON_DTYPES)
    # next_pow2(t*p*p) x next_pow2(C): the register tile of one patch (triton_kernels/).
    tile = (1 << (tubelet * patch_size**2 - 1).bit_length()) * (
        1 << (images.shape[1] - 1).bit_length()
    )
    if tile > TRITON_MAX_TILE:
        reasons.append(
            f"a patch of {tubelet}x{patch_size}x{patch_size}x{images.shape[1]} makes a tile of "
            f"{tile} elements; the kernel holds at most {TRITON_MAX_TILE}"
        )
    return reasons


MASKED_PATCH_LOSS = register(
    Operator(
        "masked_patch_loss",
        [
            Backend(
                "triton",
                _masked_patch_loss_triton_op,
                triton_machine_reason,
                _triton_reasons,
                lambda pred, *rest: interpreter_reasons(pred),
            ),
            Backend(
                "cpu",
                _run_compiled,
                cpu_kernel_reason("masked_patch_loss"),
                _cpu_reasons,
            ),
            Backend("reference", _reference_loss),
        ],
    )
)


def _check_arguments(
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix: bool,
    tubelet: int,
    eps: float,
) -> None:
    """Raises an error naming the bad value and what is allowed, if any argument is wrong."""
    for name, value in (("pred", pred), ("images", images), ("mask", mask)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
    for name, value in (("patch_size", patch_size), ("tubelet", tubelet)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if not pred.is_floating_point():
        raise TypeError(f"pred has dtype {pred.dtype}; allowed: a floating dtype")
    if not images.is_floating_point():
        raise TypeError(f"images has dtype {images.dtype}; allowed: a floating dtype")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"mask has dtype {mask.dtype}; allowed: bool or a floating dtype")
    if not pred.device == images.device == mask.device:
        raise ValueError(
            f"pred, images and mask must be on one device, got {pred.device}, {images.device} "
            f"and {mask.device}"
        )
    if images.dim() not in (4, 5):
        raise ValueError(
            f"images must be (B, C, H, W) or (B, C, T, H, W), got shape {tuple(images.shape)}"
        )
    if images.dim() == 4 and tubelet != 1:
        raise ValueError(f"tubelet {tubelet} needs video (B, C, T, H, W); images take tubelet 1")
    # Divisibility, with errors that name the sizes.
    grid = reference.grid_shape(tuple(images.shape[2:]), patch_size, tubelet)
    batch, channels = images.shape[:2]
    length = math.prod(grid)
    volume = tubelet * patch_size * patch_size * channels
    if tuple(pred.shape) != (batch, length, volume):
        raise ValueError(
            f"pred has shape {tuple(pred.shape)}; images {tuple(images.shape)} with patch_size "
            f"{patch_size} and tubelet {tubelet} need (B, L, t*p*p*C) = "
            f"({batch}, {length}, {volume})"
        )
    if tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; allowed: (B, L) = ({batch}, {length})"
        )
    if norm_pix and volume == 1:
        raise ValueError(
            "norm_pix needs patches of at least 2 values (the unbiased variance of one value is "
            f"undefined), got patch_size {patch_size} with {channels} channel(s)"
        )


def masked_patch_loss(
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix: bool = True,
    *,
    tubelet: int = 1,
    eps: float = 1e-6,
    backend: str | None = None,
) -> Tensor:
    """MAE's forward_loss: mean squared error per patch, averaged over the masked patches.

    The target is `images` patchified in the official (p, q, C) order ((t, p, q, C) for video),
    each patch standardised by its mean and unbiased variance when `norm_pix` (MAE's
    norm_pix_loss, on in the released models). He et al., "Masked Autoencoders Are Scalable
    Vision Learners", 2021.

    Args:
        pred: (B, L, t*p*p*C) predicted patches, any floating dtype (fp32 statistics).
        images: (B, C, H, W) or (B, C, T, H, W) floating, any strides (channels-last, views).
        mask: (B, L) bool or float; 1/True where the patch was removed (only those count), float
            weights allowed.
        patch_size: p; H and W must be divisible by it.
        norm_pix: standardise each target patch.
        tubelet: t, frames per patch of a video (1 for images).
        eps: added to the variance when norm_pix.
        backend: force one of "triton", "cpu", "reference" (see NEXUS_FAST_BACKEND in
            nexus_fast.ops._dispatch).

    Returns:
        A 0-dim float32 tensor (float64 when pred is float64 and the cpu or reference backend
        runs). A mask without any masked patch gives 0. Differentiable with respect to pred;
        with respect to images and a float mask too, through the reference, when they require
        grad.

    Raises:
        TypeError: a non-tensor argument, or a non-floating pred or images, or a mask that is
            neither bool nor floating.
        ValueError: shapes that do not match, sizes not divisible by patch_size or tubelet, a
            non-positive patch_size, tubelet or eps, tensors on different devices.
        BackendError: a forced backend cannot run these inputs (the error says why).

    Example:
        >>> images = torch.randn(2, 3, 32, 32)
        >>> pred = torch.randn(2, 4, 16 * 16 * 3, requires_grad=True)
        >>> mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
        >>> masked_patch_loss(pred, images, mask, 16).backward()
    """
    _check_arguments(pred, images, mask, patch_size, norm_pix, tubelet, eps)
    arguments = (pred, images, mask, patch_size, tubelet, bool(norm_pix), float(eps))
    return MASKED_PATCH_LOSS.select(*arguments, backend=backend).run(*arguments)
