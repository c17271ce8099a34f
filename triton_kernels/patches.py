"""gather_patches in Triton: patchify and keep the patches ids (B, K) in one pass, from x's memory.

Floor: reads the kept patches once and writes them once, 2 * B * K * t*p*p*C elements: a
(1 - mask_ratio) fraction of what patchify-then-gather moves. One program copies one patch as a
(t*p*p, C) tile, so loads follow x's strides and the store is one contiguous row.
Backward: gradient rows are added into a zero float32 batch with atomics (repeated ids
accumulate), then cast to the gradient's dtype.
Limits: ids int64 (B, K); an id outside [0, L) moves nothing (the wrapper reports it: IndexError
on the CPU, a device-side assert on the GPU).
"""

import torch
import triton
import triton.language as tl

NUM_WARPS = 4


@triton.jit
def _patch_offsets(
    ids_ptr,  # (B, K) int64
    row,  # program's row of (B * K)
    kept,
    grid_h,
    grid_w,
    num_patches,
    stride_b,
    stride_c,
    stride_t,
    stride_h,
    stride_w,
    CHANNELS: tl.constexpr,
    PATCH: tl.constexpr,
    TUBELET: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Offsets into x of the (t*p*p, C) tile of the patch at `row`, its mask, and its (s, c)."""
    cell = tl.load(ids_ptr + row)
    gw = cell % grid_w
    gh = (cell // grid_w) % grid_h
    gt = cell // (grid_w * grid_h)
    origin = (
        (row // kept) * stride_b
        + gt * TUBELET * stride_t
        + gh * PATCH * stride_h
        + gw * PATCH * stride_w
    )
    s = tl.arange(0, BLOCK_S)
    c = tl.arange(0, BLOCK_C)
    t = s // (PATCH * PATCH)
    p = (s // PATCH) % PATCH
    q = s % PATCH
    offsets = (
        origin + (t * stride_t + p * stride_h + q * stride_w)[:, None] + (c * stride_c)[None, :]
    )
    # An id outside [0, L) moves nothing. (A scalar condition is folded into the bound rather
    # than and-ed with the tile mask, which the Triton 3.9 interpreter mistypes.)
    spatial = tl.where((cell >= 0) & (cell < num_patches), TUBELET * PATCH * PATCH, 0)
    valid = (s < spatial)[:, None] & (c < CHANNELS)[None, :]
    return offsets, valid, s, c


@triton.jit
def gather_patches_kernel(
    x_ptr,  # (B, C, [T], H, W), any strides
    ids_ptr,  # (B, K) int64
    out_ptr,  # (B, K, TUBELET * PATCH * PATCH * CHANNELS), contiguous
    kept,
    grid_h,
    grid_w,
    num_patches,
    stride_b,
    stride_c,
    stride_t,
    stride_h,
    stride_w,
    CHANNELS: tl.constexpr,
    PATCH: tl.constexpr,
    TUBELET: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offsets, valid, s, c = _patch_offsets(
        ids_ptr, row, kept, grid_h, grid_w, num_patches,
        stride_b, stride_c, stride_t, stride_h, stride_w,
        CHANNELS, PATCH, TUBELET, BLOCK_S, BLOCK_C,
    )  # fmt: skip
    values = tl.load(x_ptr + offsets, mask=valid)
    patch_numel = TUBELET * PATCH * PATCH * CHANNELS
    store_mask = (s < TUBELET * PATCH * PATCH)[:, None] & (c < CHANNELS)[None, :]
    tl.store(
        out_ptr + row * patch_numel + s[:, None] * CHANNELS + c[None, :], values, mask=store_mask
    )


@triton.jit
def gather_patches_backward_kernel(
    grad_ptr,  # (B, K, TUBELET * PATCH * PATCH * CHANNELS), contiguous
    ids_ptr,  # (B, K) int64
    grad_x_ptr,  # (B, C, [T], H, W) float32, contiguous, zero-initialised
    kept,
    grid_h,
    grid_w,
    num_patches,
    stride_b,
    stride_c,
    stride_t,
    stride_h,
    stride_w,
    CHANNELS: tl.constexpr,
    PATCH: tl.constexpr,
    TUBELET: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offsets, valid, s, c = _patch_offsets(
        ids_ptr, row, kept, grid_h, grid_w, num_patches,
        stride_b, stride_c, stride_t, stride_h, stride_w,
        CHANNELS, PATCH, TUBELET, BLOCK_S, BLOCK_C,
    )  # fmt: skip
    patch_numel = TUBELET * PATCH * PATCH * CHANNELS
    grad = tl.load(grad_ptr + row * patch_numel + s[:, None] * CHANNELS + c[None, :], mask=valid)
    tl.atomic_add(grad_x_ptr + offsets, grad.to(tl.float32), mask=valid)


def _geometry(shape: tuple[int, ...], strides: tuple[int, ...], patch: int, tubelet: int) -> dict:
    video = len(shape) == 5
    grid_t = shape[2] // tubelet if video else 1
    grid_h, grid_w = shape[-2] // patch, shape[-1] // patch
    return {
        "grid_h": grid_h,
        "grid_w": grid_w,
        "num_patches": grid_t * grid_h * grid_w,
        "stride_b": strides[0],
        "stride_c": strides[1],
        "stride_t": strides[2] if video else 0,
        "stride_h": strides[-2],
        "stride_w": strides[-1],
    }


def _constexprs(channels: int, patch: int, tubelet: int) -> dict:
    return {
        "CHANNELS": channels,
        "PATCH": patch,
        "TUBELET": tubelet,
        "BLOCK_S": triton.next_power_of_2(tubelet * patch * patch),
        "BLOCK_C": triton.next_power_of_2(channels),
    }


def gather_patches(
    x: torch.Tensor, patch_size: int, tubelet: int, ids: torch.Tensor
) -> torch.Tensor:
    """(B, C, [T], H, W) x and (B, K) int64 ids -> (B, K, t*p*p*C) in x's dtype."""
    batch, kept = ids.shape
    out = x.new_empty(batch, kept, tubelet * patch_size * patch_size * x.shape[1])
    if out.numel() == 0:
        return out
    ids = ids.contiguous()
    gather_patches_kernel[(batch * kept,)](
        x, ids, out, kept,
        **_geometry(tuple(x.shape), x.stride(), patch_size, tubelet),
        **_constexprs(x.shape[1], patch_size, tubelet),
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def gather_patches_backward(
    grad: torch.Tensor, ids: torch.Tensor, patch_size: int, tubelet: int, input_size: list[int]
) -> torch.Tensor:
    """Gradient of gather_patches w.r.t. x: (B, C, [T], H, W), contiguous, grad's dtype."""
    grad_x = torch.zeros(input_size, dtype=torch.float32, device=grad.device)
    batch, kept = ids.shape
    if batch * kept > 0:
        gather_patches_backward_kernel[(batch * kept,)](
            grad.contiguous(), ids.contiguous(), grad_x, kept,
            **_geometry(tuple(grad_x.shape), grad_x.stride(), patch_size, tubelet),
            **_constexprs(input_size[1], patch_size, tubelet),
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return grad_x.to(grad.dtype)


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    signature = {
        "kept": "i64",
        "grid_h": "i64",
        "grid_w": "i64",
        "num_patches": "i64",
        "stride_b": "i64",
        "stride_c": "i64",
        "stride_t": "i64",
        "stride_h": "i64",
        "stride_w": "i64",
    }
    specs = []
    for label, dtype in (("fp32", "*fp32"), ("bf16", "*bf16")):
        for patch, tubelet in ((16, 1), (16, 2), (14, 1)):
            config = f"{label}, p{patch}, t{tubelet}"
            specs.append(
                CompileSpec(
                    f"gather_patches_kernel[{config}]",
                    gather_patches_kernel,
                    {"x_ptr": dtype, "ids_ptr": "*i64", "out_ptr": dtype, **signature},
                    _constexprs(3, patch, tubelet),
                    num_warps=NUM_WARPS,
                )
            )
            specs.append(
                CompileSpec(
                    f"gather_patches_backward_kernel[{config}]",
                    gather_patches_backward_kernel,
                    {"grad_ptr": dtype, "ids_ptr": "*i64", "grad_x_ptr": "*fp32", **signature},
                    _constexprs(3, patch, tubelet),
                    num_warps=NUM_WARPS,
                )
            )
    return specs


COMPILE_SPECS = _compile_specs()
