"""Token gathers in Triton: gather_tokens, scatter_tokens (MAE's unshuffle with the mask token) and
scatter_add_tokens (the backward of both).

Floor: one read and one write per output row, B * M * D elements each way; the official unshuffle
(repeat the mask token, cat, gather) writes the sequence twice. One program moves one row block.
Backward: one program per (sample, column block) walks the sample's rows in order, adds each into
a float32 buffer with atomics (repeated ids, or a batch summed into one row, accumulate) and sums
rows beyond num_rows (the mask-token positions) in registers.
Limits: ids int64 (B, M); an id outside its range moves nothing (the wrapper reports it).
"""

import torch
import triton
import triton.language as tl

NUM_WARPS = 4


@triton.jit
def gather_rows_kernel(
    source_ptr,  # (B or 1, N, D), feature dimension contiguous
    ids_ptr,  # (B, M) int64
    fill_ptr,  # (D,) the row for ids in [N, limit) when HAS_FILL
    out_ptr,  # (B, M, D) contiguous
    length,  # M
    rows,  # N
    limit,  # ids must be < limit (N without a fill row)
    dim,  # D
    stride_b,  # 0 when the source batch of 1 is broadcast
    stride_n,
    HAS_FILL: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = columns < dim
    index = tl.load(ids_ptr + row)
    # Scalar conditions become column bounds (the Triton 3.9 interpreter mistypes a scalar
    # condition and-ed with a vector mask).
    source_columns = tl.where((index >= 0) & (index < rows), dim, 0)
    source = source_ptr + (row // length) * stride_b + index * stride_n
    values = tl.load(source + columns, mask=columns < source_columns)
    if HAS_FILL:
        fill_columns = tl.where((index >= rows) & (index < limit), dim, 0)
        from_fill = columns < fill_columns
        values = tl.where(from_fill, tl.load(fill_ptr + columns, mask=from_fill), values)
    tl.store(out_ptr + row * dim + columns, values, mask=inside)


@triton.jit
def scatter_add_rows_kernel(
    grad_ptr,  # (B, M, D) contiguous
    ids_ptr,  # (B, M) int64
    rows_ptr,  # (B or 1, N, D) float32, zero-initialised
    fill_ptr,  # (B, D) float32: per-sample sums of rows whose id >= N
    length,  # M
    num_rows,  # N
    dim,  # D
    SUM_BATCH: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    sample = tl.program_id(0).to(tl.int64)
    columns = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    inside = columns < dim
    target_base = rows_ptr + (0 if SUM_BATCH else sample * num_rows * dim)
    fill = tl.zeros([BLOCK_D], dtype=tl.float32)
    for m in range(0, length):
        row = sample * length + m
        index = tl.load(ids_ptr + row)
        grad = tl.load(grad_ptr + row * dim + columns, mask=inside).to(tl.float32)
        row_columns = tl.where((index >= 0) & (index < num_rows), dim, 0)
        tl.atomic_add(target_base + index * dim + columns, grad, mask=columns < row_columns)
        fill += tl.where(columns < tl.where(index >= num_rows, dim, 0), grad, 0.0)
    tl.store(fill_ptr + sample * dim + columns, fill, mask=inside)


def _block_d(dim: int) -> int:
    return min(1024, triton.next_power_of_2(max(dim, 1)))


def gather_rows(
    source: torch.Tensor, ids: torch.Tensor, fill: torch.Tensor | None, limit: int
) -> torch.Tensor:
    """out[b, m] = source[b or 0, ids[b, m]] if ids < N, else fill (ids < limit)."""
    batch, length = ids.shape
    dim = source.shape[2]
    if source.stride(2) != 1:
        source = source.contiguous()
    out = source.new_empty(batch, length, dim)
    if out.numel() == 0:
        return out
    block_d = _block_d(dim)
    gather_rows_kernel[(batch * length, triton.cdiv(dim, block_d))](
        source,
        ids.contiguous(),
        fill if fill is not None else source,  # unread without HAS_FILL
        out,
        length,
        source.shape[1],
        limit,
        dim,
        0 if source.shape[0] == 1 else source.stride(0),
        source.stride(1),
        HAS_FILL=fill is not None,
        BLOCK_D=block_d,
        num_warps=NUM_WARPS,
    )
    return out


def scatter_add_tokens(
    grad: torch.Tensor, ids: torch.Tensor, num_rows: int, sum_batch: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of gather_tokens and scatter_tokens; see nexus_fast.ops.tokens."""
    batch, length, dim = grad.shape
    rows = torch.zeros(1 if sum_batch else batch, num_rows, dim, device=grad.device)
    fill = torch.zeros(batch, dim, device=grad.device)
    if grad.numel() > 0:
        block_d = _block_d(dim)
        scatter_add_rows_kernel[(batch, triton.cdiv(dim, block_d))](
            grad.contiguous(),
            ids.contiguous(),
            rows,
            fill,
            length,
            num_rows,
            dim,
            SUM_BATCH=sum_batch,
            BLOCK_D=block_d,
            num_warps=NUM_WARPS,
        )
    return rows.to(grad.dtype), fill.sum(0).to(grad.dtype)


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    specs = []
    for label, dtype in (("fp32", "*fp32"), ("bf16", "*bf16")):
        for has_fill in (False, True):
            specs.append(
                CompileSpec(
                    f"gather_rows_kernel[{label}, {'fill' if has_fill else 'no fill'}]",
                    gather_rows_kernel,
                    {
                        "source_ptr": dtype,
                        "ids_ptr": "*i64",
                        "fill_ptr": dtype,
                        "out_ptr": dtype,
                        "length": "i64",
                        "rows": "i64",
                        "limit": "i64",
                        "dim": "i64",
                        "stride_b": "i64",
                        "stride_n": "i64",
                    },
                    {"HAS_FILL": has_fill, "BLOCK_D": 1024},
                    num_warps=NUM_WARPS,
                )
            )
        for sum_batch in (False, True):
            specs.append(
                CompileSpec(
                    f"scatter_add_rows_kernel[{label}, sum_batch={sum_batch}]",
                    scatter_add_rows_kernel,
                    {
                        "grad_ptr": dtype,
                        "ids_ptr": "*i64",
                        "rows_ptr": "*fp32",
                        "fill_ptr": "*fp32",
                        "length": "i64",
                        "num_rows": "i64",
                        "dim": "i64",
                    },
                    {"SUM_BATCH": sum_batch, "BLOCK_D": 1024},
                    num_warps=NUM_WARPS,
                )
            )
    return specs


COMPILE_SPECS = _compile_specs()
