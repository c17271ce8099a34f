"""MAE's masked patch loss in Triton, with the target patchified inside the kernel.

Forward: one program per patch (b, l). A patch whose mask weight w is 0 reads nothing; the others
load the patch of `images` as a 2D tile (spatial position (dt, dy, dx) x channel), which is the
(t, p, q, C) order of pred, standardise it when NORM_PIX ((x - mean) / sqrt(unbiased var + eps),
two passes over the registers), and write w * mean((pred - target)^2) to a (B*L,) buffer; a
second one-program launch sums that buffer and the weights in a fixed order and writes
sum(w * e) / sum(w) (0 when no weight is set). Deterministic: no atomics.
Backward: one program per patch writes d loss / d pred = 2 * grad * w * (pred - target) /
(P * sum(w)), the target recomputed from the images (zeros for unmasked patches).

Floor: per masked patch, P = t*p*p*C image elements and P pred elements read once; forward writes
4 bytes per patch, backward the (B, L, P) gradient. ViT-B/16 at B=256, 75% masking, fp32 images,
bf16 pred: forward 173 MB (40 us at 4.3 TB/s), backward 173 MB + 77 MB written (58 us). About 8
FLOPs per element: memory-bound.
Limits: pred float32, bfloat16 or float16; images float32, bfloat16 or float16; any strides for
both; the mask as float32 (B*L,) (the launcher converts); statistics in float32; one patch tile
(next_pow2(t*p*p) x next_pow2(C)) at most MAX_TILE elements.
"""

import torch
import triton
import triton.language as tl

MAX_TILE = 8192  # elements of one patch tile: p=32, t=2, C=3 is 2048 x 4
FINISH_BLOCK = 1024
TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@triton.jit
def _patch_tiles(
    pred_ptr,  # (B, L, P) any strides: P in (t, p, q, C) order
    images_ptr,  # (B, C, H, W) or (B, C, T, H, W) any strides
    program,  # int64: b * L + l
    patches,  # L
    grid_w,  # W / p
    cells,  # (H / p) * (W / p): patches per tubelet
    pred_stride_b,
    pred_stride_l,
    pred_stride_p,
    stride_b,
    stride_c,
    stride_t,  # 0 for images
    stride_h,
    stride_w,
    eps,
    PATCH: tl.constexpr,
    TUBELET: tl.constexpr,
    CHANNELS: tl.constexpr,
    NORM_PIX: tl.constexpr,
    BLOCK_S: tl.constexpr,  # next_pow2(TUBELET * PATCH * PATCH)
    BLOCK_C: tl.constexpr,  # next_pow2(CHANNELS)
):
    """pred[b, l] and its target as (BLOCK_S, BLOCK_C) float32 tiles, and the valid-element mask."""
    volume = TUBELET * PATCH * PATCH * CHANNELS  # P, a compile-time constant
    b = program // patches
    l = program % patches
    frame = l // cells
    row = (l % cells) // grid_w
    column = l % grid_w
    position = tl.arange(0, BLOCK_S)  # (dt, dy, dx) flattened, row-major
    channel = tl.arange(0, BLOCK_C)
    dt = position // (PATCH * PATCH)
    dy = (position // PATCH) % PATCH
    dx = position % PATCH
    valid = (position < TUBELET * PATCH * PATCH)[:, None] & (channel < CHANNELS)[None, :]
    origin = (
        b * stride_b
        + frame * TUBELET * stride_t
        + row * PATCH * stride_h
        + column * PATCH * stride_w
    )
    spatial = dt * stride_t + dy * stride_h + dx * stride_w  # (BLOCK_S,)
    image_offsets = origin + spatial[:, None] + channel[None, :] * stride_c
    target = tl.load(images_ptr + image_offsets, mask=valid, other=0.0).to(tl.float32)
    element = position[:, None] * CHANNELS + channel[None, :]  # index into pred's last dimension
    pred_offsets = b * pred_stride_b + l * pred_stride_l + element * pred_stride_p
    prediction = tl.load(pred_ptr + pred_offsets, mask=valid, other=0.0).to(tl.float32)
    if NORM_PIX:
        mean = tl.sum(tl.sum(target, axis=1), axis=0) / volume
        deviation = tl.where(valid, target - mean, 0.0)
        # Unbiased, as torch.var and the official code.
        var = tl.sum(tl.sum(deviation * deviation, axis=1), axis=0) / (volume - 1)
        target = deviation / tl.sqrt(var + eps)
    return prediction, target, valid


@triton.jit
def masked_patch_loss_forward_kernel(
    pred_ptr,  # (B, L, P) any strides
    images_ptr,  # (B, C, [T,] H, W) any strides
    weights_ptr,  # (B * L,) float32 mask weights
    partial_ptr,  # (B * L,) float32 out: w * mean squared error of each patch
    patches,
    grid_w,
    cells,
    pred_stride_b,
    pred_stride_l,
    pred_stride_p,
    stride_b,
    stride_c,
    stride_t,
    stride_h,
    stride_w,
    eps,
    PATCH: tl.constexpr,
    TUBELET: tl.constexpr,
    CHANNELS: tl.constexpr,
    NORM_PIX: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    volume = TUBELET * PATCH * PATCH * CHANNELS  # P, a compile-time constant
    program = tl.program_id(0).to(tl.int64)
    weight = tl.load(weights_ptr + program)
    if weight != 0.0:
        prediction, target, valid = _patch_tiles(
            pred_ptr,
            images_ptr,
            program,
            patches,
            grid_w,
            cells,
            pred_stride_b,
            pred_stride_l,
            pred_stride_p,
            stride_b,
            stride_c,
            stride_t,
            stride_h,
            stride_w,
            eps,
            PATCH,
            TUBELET,
            CHANNELS,
            NORM_PIX,
            BLOCK_S,
            BLOCK_C,
        )
        error = tl.where(valid, prediction - target, 0.0)
        squares = tl.sum(tl.sum(error * error, axis=1), axis=0)
        tl.store(partial_ptr + program, weight * (squares / volume))
    else:
        # Unmasked: its image and pred are never read.
        tl.store(partial_ptr + program, 0.0)


@triton.jit
def masked_patch_loss_finish_kernel(
    partial_ptr,  # (count,) float32: w * error per patch
    weights_ptr,  # (count,) float32 mask weights
    loss_ptr,  # (,) float32 out
    count,
    tiny,  # float32's smallest normal number: an all-zero mask gives 0 / tiny = 0
    BLOCK: tl.constexpr,
):
    partial_sums = tl.zeros((BLOCK,), tl.float32)
    weight_sums = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, count, BLOCK):
        index = start + tl.arange(0, BLOCK)
        inside = index < count
        partial_sums += tl.load(partial_ptr + index, mask=inside, other=0.0)
        weight_sums += tl.load(weights_ptr + index, mask=inside, other=0.0)
    total = tl.maximum(tl.sum(weight_sums, axis=0), tiny)
    tl.store(loss_ptr, tl.sum(partial_sums, axis=0) / total)


@triton.jit
def masked_patch_loss_backward_kernel(
    grad_ptr,  # (,) float32 upstream gradient of the loss
    total_ptr,  # (,) float32 sum of the weights, clamped to tiny
    pred_ptr,  # (B, L, P) any strides
    images_ptr,  # (B, C, [T,] H, W) any strides
    weights_ptr,  # (B * L,) float32 mask weights
    grad_pred_ptr,  # (B, L, P) contiguous out, pred's dtype
    patches,
    grid_w,
    cells,
    pred_stride_b,
    pred_stride_l,
    pred_stride_p,
    stride_b,
    stride_c,
    stride_t,
    stride_h,
    stride_w,
    eps,
    PATCH: tl.constexpr,
    TUBELET: tl.constexpr,
    CHANNELS: tl.constexpr,
    NORM_PIX: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    volume = TUBELET * PATCH * PATCH * CHANNELS  # P, a compile-time constant
    program = tl.program_id(0).to(tl.int64)
    weight = tl.load(weights_ptr + program)
    position = tl.arange(0, BLOCK_S)
    channel = tl.arange(0, BLOCK_C)
    valid = (position < TUBELET * PATCH * PATCH)[:, None] & (channel < CHANNELS)[None, :]
    out_offsets = program * volume + position[:, None] * CHANNELS + channel[None, :]
    out_dtype = grad_pred_ptr.dtype.element_ty
    if weight != 0.0:
        prediction, target, _ = _patch_tiles(
            pred_ptr,
            images_ptr,
            program,
            patches,
            grid_w,
            cells,
            pred_stride_b,
            pred_stride_l,
            pred_stride_p,
            stride_b,
            stride_c,
            stride_t,
            stride_h,
            stride_w,
            eps,
            PATCH,
            TUBELET,
            CHANNELS,
            NORM_PIX,
            BLOCK_S,
            BLOCK_C,
        )
        scale = 2.0 * tl.load(grad_ptr) * weight / (volume * tl.load(total_ptr))
        tl.store(grad_pred_ptr + out_offsets, (scale * (prediction - target)).to(out_dtype), valid)
    else:
        zeros = tl.zeros((BLOCK_S, BLOCK_C), out_dtype)
        tl.store(grad_pred_ptr + out_offsets, zeros, valid)


def tile_shape(patch_size: int, tubelet: int, channels: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_C): the register tile of one patch."""
    return triton.next_power_of_2(tubelet * patch_size**2), triton.next_power_of_2(channels)


def _num_warps(block_s: int, block_c: int) -> int:
    # 8-16 tile elements per thread: two fp32 tiles stay in registers without spilling.
    return max(1, min(16, block_s * block_c // 256))


def _geometry(pred: torch.Tensor, images: torch.Tensor, patch_size: int, tubelet: int) -> dict:
    """Runtime arguments and constexprs shared by the forward and backward launches."""
    video = images.dim() == 5
    channels, height, width = images.shape[1], images.shape[-2], images.shape[-1]
    grid_h, grid_w = height // patch_size, width // patch_size
    block_s, block_c = tile_shape(patch_size, tubelet, channels)
    runtime = (
        pred.shape[1],
        grid_w,
        grid_h * grid_w,
        *pred.stride(),
        images.stride(0),
        images.stride(1),
        images.stride(2) if video else 0,
        images.stride(-2),
        images.stride(-1),
    )
    constexprs = {
        "PATCH": patch_size,
        "TUBELET": tubelet,
        "CHANNELS": channels,
        "BLOCK_S": block_s,
        "BLOCK_C": block_c,
    }
    return {"runtime": runtime, "constexprs": constexprs, "num_warps": _num_warps(block_s, block_c)}


def _weights(mask: torch.Tensor) -> torch.Tensor:
    """The mask as contiguous float32 (B * L,): one tiny copy, so the kernels read one dtype."""
    return mask.to(torch.float32).contiguous().view(-1)


def masked_patch_loss(
    pred: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    tubelet: int,
    norm_pix: bool,
    eps: float,
) -> torch.Tensor:
    """The loss as a 0-dim float32 tensor; arguments as nexus_fast.ops.masked_patch_loss (checked
    there). Two launches: the per-patch errors, then their masked mean."""
    weights = _weights(mask)
    count = weights.numel()
    loss = torch.zeros((), dtype=torch.float32, device=pred.device)
    if count == 0:
        return loss
    geometry = _geometry(pred, images, patch_size, tubelet)
    partial = torch.empty(count, dtype=torch.float32, device=pred.device)
    masked_patch_loss_forward_kernel[(count,)](
        pred,
        images,
        weights,
        partial,
        *geometry["runtime"],
        eps,
        NORM_PIX=norm_pix,
        **geometry["constexprs"],
        num_warps=geometry["num_warps"],
    )
    masked_patch_loss_finish_kernel[(1,)](
        partial, weights, loss, count, torch.finfo(torch.float32).tiny, BLOCK=FINISH_BLOCK
    )
    return loss


def masked_patch_loss_backward(
    grad: torch.Tensor,
    pred: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int,
    tubelet: int,
    norm_pix: bool,
    eps: float,
) -> torch.Tensor:
    """d loss / d pred (contiguous, pred's dtype) for the 0-dim upstream gradient `grad`."""
    weights = _weights(mask)
    grad_pred = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    count = weights.numel()
    if count == 0:
        return grad_pred
    # Both scalars stay on the device: no host sync.
    total = weights.sum().clamp_min(torch.finfo(torch.float32).tiny)
    geometry = _geometry(pred, images, patch_size, tubelet)
    masked_patch_loss_backward_kernel[(count,)](
        grad.to(torch.float32),
        total,
        pred,
        images,
        weights,
        grad_pred,
        *geometry["runtime"],
        eps,
        NORM_PIX=norm_pix,
        **geometry["constexprs"],
        num_warps=geometry["num_warps"],
    )
    return grad_pred


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    geometry = {
        "patches": "i32",
        "grid_w": "i32",
        "cells": "i32",
        "pred_stride_b": "i32",
        "pred_stride_l": "i32",
        "pred_stride_p": "i32",
        "stride_b": "i32",
        "stride_c": "i32",
        "stride_t": "i32",
        "stride_h": "i32",
        "stride_w": "i32",
        "eps": "fp32",
    }
    specs = [
        CompileSpec(
            "masked_patch_loss_finish_kernel",
            masked_patch_loss_finish_kernel,
            {
                "partial_ptr": "*fp32",
                "weights_ptr": "*fp32",
                "loss_ptr": "*fp32",
                "count": "i32",
                "tiny": "fp32",
            },
            {"BLOCK": FINISH_BLOCK},
        )
    ]
    # (label, patch, tubelet, channels): MAE ViT-B/16 and ViT-H/14, V-JEPA's 2x16x16 tubelets.
    shapes = (("p16", 16, 1, 3), ("p14", 14, 1, 3), ("p16 t2", 16, 2, 3))
    for label, patch, tubelet, channels in shapes:
        block_s, block_c = tile_shape(patch, tubelet, channels)
        constexprs = {
            "PATCH": patch,
            "TUBELET": tubelet,
            "CHANNELS": channels,
            "NORM_PIX": True,
            "BLOCK_S": block_s,
            "BLOCK_C": block_c,
        }
        for pred_type in ("bf16", "fp32"):
            tensors = {"pred_ptr": f"*{pred_type}", "images_ptr": "*fp32"}
            specs.append(
                CompileSpec(
                    f"masked_patch_loss_forward_kernel[{label}, {pred_type}]",
                    masked_patch_loss_forward_kernel,
                    tensors | {"weights_ptr": "*fp32", "partial_ptr": "*fp32"} | geometry,
                    constexprs,
                    num_warps=_num_warps(block_s, block_c),
                )
            )
            specs.append(
                CompileSpec(
                    f"masked_patch_loss_backward_kernel[{label}, {pred_type}]",
                    masked_patch_loss_backward_kernel,
                    {"grad_ptr": "*fp32", "total_ptr": "*fp32"}
                    | tensors
                    | {"weights_ptr": "*fp32", "grad_pred_ptr": f"*{pred_type}"}
                    | geometry,
                    constexprs,
                    num_warps=_num_warps(block_s, block_c),
                )
            )
    return specs


COMPILE_SPECS = _compile_specs()
