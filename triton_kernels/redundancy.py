"""The column passes of the Barlow Twins and VICReg losses in Triton (the matrix products are
cuBLAS's, called by nexus_fast.ops.redundancy).

Kernels, each one program per block of BLOCK_D columns looping over the N rows:
- barlow_twins_standardize_kernel: column mean and biased variance of both views in one pass
  (Chan's parallel update of per-chunk moments of the data shifted by their first row: no
  E[x^2] - E[x]^2 cancellation on nearly constant columns), then a second pass that writes
  A = (z1 - mean1) * rstd1 and B likewise in the matmul dtype and sums the diagonal of the
  cross-correlation, sum_n A_ni B_ni, from the float32 values (before they are rounded to bf16).
- vicreg_center_kernel: column mean and unbiased variance of one view, then X = x - mean.
- standardization_backward_kernel: the gradient of the input of a standardisation (or a
  centring) from the gradient of its output, g = scale * M + weight * P (M a matmul product, P
  the partner view recomputed from its input and statistics): two passes, the column sums of g
  and g * A, then dz = rstd * (g - mean(g) - (A - mean(A)) * mean(g * A)) (NORMALIZED) or
  g - mean(g).

Floor: each kernel reads its (N, D) inputs twice (the second pass mostly from L2: a program's
column block is 2048 x 16 values) and writes one (N, D) output per view. At N = 2048, D = 8192
in bf16 the Barlow Twins standardisation moves ~130 MB from DRAM (~30 us at 4.3 TB/s), the
backward pass ~160 MB per view (M is float32; ~40 us). Memory-bound, ~10 FLOPs per element; the
matrix products (8 N^2 D = 275 GFLOP there, ~0.35 ms at 790 TFLOP/s) dominate.
Limits: inputs float32, bfloat16 or float16, any strides; statistics and sums in float32;
int64 offsets.
"""

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # rows per chunk of the loops


@triton.jit
def _column_moments(
    z_ptr,  # (N, D) any strides
    stride_n,
    stride_d,
    columns,  # (BLOCK_D,) int64
    column_mask,  # (BLOCK_D,)
    rows,  # N
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Column statistics of z in float32, in one pass over the rows: (shift, mean - shift, M2),
    shift being the first row and M2 the sum of squared deviations from the mean.

    Each chunk's mean and M2 are exact two-pass values in registers, merged by Chan's update.
    The data are shifted by their first row first, so that the chunk means the update subtracts
    are small numbers: on a nearly constant column (5 + 1e-3 noise) unshifted means agree in
    their leading digits, and the merged variance lost ~1e-5 of its value."""
    shift = tl.load(z_ptr + columns * stride_d, mask=column_mask, other=0.0).to(tl.float32)
    mean = tl.zeros((BLOCK_D,), tl.float32)
    m2 = tl.zeros((BLOCK_D,), tl.float32)
    count = 0.0
    for start in range(0, rows, BLOCK_N):
        row = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (row < rows)[:, None] & column_mask[None, :]
        offsets = row[:, None] * stride_n + columns[None, :] * stride_d
        tile = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tile = tl.where(mask, tile - shift[None, :], 0.0)
        chunk = tl.minimum(rows - start, BLOCK_N).to(tl.float32)
        chunk_mean = tl.sum(tile, axis=0) / chunk
        deviation = tl.where(mask, tile - chunk_mean[None, :], 0.0)
        chunk_m2 = tl.sum(deviation * deviation, axis=0)
        total = count + chunk
        delta = chunk_mean - mean
        mean += delta * (chunk / total)
        m2 += chunk_m2 + delta * delta * (count * chunk / total)
        count = total
    return shift, mean, m2


@triton.jit
def barlow_twins_standardize_kernel(
    z1_ptr,  # (N, D) any strides
    z2_ptr,  # (N, D) any strides
    a_ptr,  # (N, D) contiguous out, the matmul dtype: standardised z1
    b_ptr,  # (N, D) contiguous out: standardised z2
    mean1_ptr,  # (D,) float32 out
    rstd1_ptr,  # (D,) float32 out: 1 / sqrt(biased var + eps)
    mean2_ptr,  # (D,) float32 out
    rstd2_ptr,  # (D,) float32 out
    diag_ptr,  # (D,) float32 out: sum_n A_ni B_ni
    rows,  # N
    cols,  # D
    stride1_n,
    stride1_d,
    stride2_n,
    stride2_d,
    eps,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    columns = program * BLOCK_D + tl.arange(0, BLOCK_D)
    column_mask = columns < cols
    shift1, centre1, m2_1 = _column_moments(
        z1_ptr, stride1_n, stride1_d, columns, column_mask, rows, BLOCK_N, BLOCK_D
    )
    shift2, centre2, m2_2 = _column_moments(
        z2_ptr, stride2_n, stride2_d, columns, column_mask, rows, BLOCK_N, BLOCK_D
    )
    rstd1 = 1.0 / tl.sqrt(m2_1 / rows + eps)
    rstd2 = 1.0 / tl.sqrt(m2_2 / rows + eps)
    diag = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, rows, BLOCK_N):
        row = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (row < rows)[:, None] & column_mask[None, :]
        offsets1 = row[:, None] * stride1_n + columns[None, :] * stride1_d
        offsets2 = row[:, None] * stride2_n + columns[None, :] * stride2_d
        z1 = tl.load(z1_ptr + offsets1, mask=mask, other=0.0).to(tl.float32)
        z2 = tl.load(z2_ptr + offsets2, mask=mask, other=0.0).to(tl.float32)
        a = tl.where(mask, (z1 - shift1[None, :] - centre1[None, :]) * rstd1[None, :], 0.0)
        b = tl.where(mask, (z2 - shift2[None, :] - centre2[None, :]) * rstd2[None, :], 0.0)
        diag += tl.sum(a * b, axis=0)
        out_offsets = row[:, None] * cols + columns[None, :]
        tl.store(a_ptr + out_offsets, a.to(a_ptr.dtype.element_ty), mask=mask)
        tl.store(b_ptr + out_offsets, b.to(b_ptr.dtype.element_ty), mask=mask)
    tl.store(mean1_ptr + columns, shift1 + centre1, mask=column_mask)
    tl.store(rstd1_ptr + columns, rstd1, mask=column_mask)
    tl.store(mean2_ptr + columns, shift2 + centre2, mask=column_mask)
    tl.store(rstd2_ptr + columns, rstd2, mask=column_mask)
    tl.store(diag_ptr + columns, diag, mask=column_mask)


@triton.jit
def vicreg_center_kernel(
    x_ptr,  # (N, D) any strides
    centered_ptr,  # (N, D) contiguous out, the matmul dtype: x - mean
    mean_ptr,  # (D,) float32 out
    var_ptr,  # (D,) float32 out: unbiased variance
    rows,  # N >= 2
    cols,  # D
    stride_n,
    stride_d,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    columns = program * BLOCK_D + tl.arange(0, BLOCK_D)
    column_mask = columns < cols
    shift, centre, m2 = _column_moments(
        x_ptr, stride_n, stride_d, columns, column_mask, rows, BLOCK_N, BLOCK_D
    )
    for start in range(0, rows, BLOCK_N):
        row = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (row < rows)[:, None] & column_mask[None, :]
        offsets = row[:, None] * stride_n + columns[None, :] * stride_d
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        out_offsets = row[:, None] * cols + columns[None, :]
        centered = (x - shift[None, :] - centre[None, :]).to(centered_ptr.dtype.element_ty)
        tl.store(centered_ptr + out_offsets, centered, mask=mask)
    tl.store(mean_ptr + columns, shift + centre, mask=column_mask)
    tl.store(var_ptr + columns, m2 / (rows - 1), mask=column_mask)


@triton.jit
def _output_gradient(
    m_ptr,  # (N, D) float32 contiguous
    p_ptr,  # (N, D) any strides: the partner view's input
    row,  # (BLOCK_N,) int64
    columns,  # (BLOCK_D,) int64
    mask,  # (BLOCK_N, BLOCK_D)
    cols,
    stride_pn,
    stride_pd,
    partner_mean,  # (BLOCK_D,)
    partner_rstd,  # (BLOCK_D,)
    weight,  # (BLOCK_D,)
    scale,
):
    """g = scale * M + weight * P on one tile, zero outside the matrix."""
    m = tl.load(m_ptr + row[:, None] * cols + columns[None, :], mask=mask, other=0.0)
    p_offsets = row[:, None] * stride_pn + columns[None, :] * stride_pd
    p = tl.load(p_ptr + p_offsets, mask=mask, other=0.0).to(tl.float32)
    p = (p - partner_mean[None, :]) * partner_rstd[None, :]
    return tl.where(mask, scale * m + weight[None, :] * p, 0.0)


@triton.jit
def standardization_backward_kernel(
    m_ptr,  # (N, D) float32 contiguous: the matmul part of d loss / d output
    z_ptr,  # (N, D) any strides: this view's input
    mean_ptr,  # (D,) float32
    rstd_ptr,  # (D,) float32 (ones for a centring)
    p_ptr,  # (N, D) any strides: the partner view's input (this view for VICReg)
    partner_mean_ptr,  # (D,) float32
    partner_rstd_ptr,  # (D,) float32
    weight_ptr,  # (D,) float32: per-column coefficient of the partner term
    grad_ptr,  # (N, D) contiguous out, z's dtype: d loss / d z
    scale,  # coefficient of M
    rows,
    cols,
    stride_zn,
    stride_zd,
    stride_pn,
    stride_pd,
    NORMALIZED: tl.constexpr,  # True: a standardisation (Barlow Twins), False: a centring
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    columns = program * BLOCK_D + tl.arange(0, BLOCK_D)
    column_mask = columns < cols
    mean = tl.load(mean_ptr + columns, mask=column_mask, other=0.0)
    rstd = tl.load(rstd_ptr + columns, mask=column_mask, other=0.0)
    partner_mean = tl.load(partner_mean_ptr + columns, mask=column_mask, other=0.0)
    partner_rstd = tl.load(partner_rstd_ptr + columns, mask=column_mask, other=0.0)
    weight = tl.load(weight_ptr + columns, mask=column_mask, other=0.0)
    sum_g = tl.zeros((BLOCK_D,), tl.float32)
    sum_a = tl.zeros((BLOCK_D,), tl.float32)
    sum_ga = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, rows, BLOCK_N):
        row = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (row < rows)[:, None] & column_mask[None, :]
        g = _output_gradient(
            m_ptr, p_ptr, row, columns, mask, cols, stride_pn, stride_pd,
            partner_mean, partner_rstd, weight, scale,
        )  # fmt: skip
        sum_g += tl.sum(g, axis=0)
        if NORMALIZED:
            z_offsets = row[:, None] * stride_zn + columns[None, :] * stride_zd
            z = tl.load(z_ptr + z_offsets, mask=mask, other=0.0).to(tl.float32)
            a = tl.where(mask, (z - mean[None, :]) * rstd[None, :], 0.0)
            sum_a += tl.sum(a, axis=0)
            sum_ga += tl.sum(g * a, axis=0)
    mean_g = sum_g / rows
    mean_a = sum_a / rows
    mean_ga = sum_ga / rows
    for start in range(0, rows, BLOCK_N):
        row = start + tl.arange(0, BLOCK_N).to(tl.int64)
        mask = (row < rows)[:, None] & column_mask[None, :]
        g = _output_gradient(
            m_ptr, p_ptr, row, columns, mask, cols, stride_pn, stride_pd,
            partner_mean, partner_rstd, weight, scale,
        )  # fmt: skip
        if NORMALIZED:
            z_offsets = row[:, None] * stride_zn + columns[None, :] * stride_zd
            z = tl.load(z_ptr + z_offsets, mask=mask, other=0.0).to(tl.float32)
            a = (z - mean[None, :]) * rstd[None, :]
            # A - mean(A): mean(A) is 0 but for the rounding of `mean`, which matters where rstd
            # is large (nearly constant columns).
            a = a - mean_a[None, :]
            grad = rstd[None, :] * (g - mean_g[None, :] - a * mean_ga[None, :])
        else:
            grad = g - mean_g[None, :]
        out_offsets = row[:, None] * cols + columns[None, :]
        tl.store(grad_ptr + out_offsets, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def block_columns(cols: int) -> int:
    """Columns per program: 16 up to D = 8192 keeps ~2 programs per SM of an H100/H200 at
    D = 4096..8192 (each program loops over every row); wider blocks beyond."""
    return 16 if cols <= 8192 else 32


def _grid(cols: int) -> tuple[int]:
    return (triton.cdiv(cols, block_columns(cols)),)


def barlow_twins_standardize(
    z1: torch.Tensor, z2: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """(A, B, mean1, rstd1, mean2, rstd2, diag): A, B contiguous (N, D) in out_dtype; the rest
    (D,) float32; diag = sum_n A_ni B_ni."""
    rows, cols = z1.shape
    a = torch.empty((rows, cols), dtype=out_dtype, device=z1.device)
    b = torch.empty_like(a)
    vectors = torch.empty((5, cols), dtype=torch.float32, device=z1.device)
    mean1, rstd1, mean2, rstd2, diag = vectors.unbind(0)
    barlow_twins_standardize_kernel[_grid(cols)](
        z1, z2, a, b, mean1, rstd1, mean2, rstd2, diag,
        rows, cols, *z1.stride(), *z2.stride(), eps,
        BLOCK_N=BLOCK_N, BLOCK_D=block_columns(cols),
    )  # fmt: skip
    return a, b, mean1, rstd1, mean2, rstd2, diag


def vicreg_center(x: torch.Tensor, out_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(X, mean, var): X = x - mean contiguous (N, D) in out_dtype; mean and the unbiased
    variance (D,) float32."""
    rows, cols = x.shape
    centered = torch.empty((rows, cols), dtype=out_dtype, device=x.device)
    vectors = torch.empty((2, cols), dtype=torch.float32, device=x.device)
    mean, var = vectors.unbind(0)
    vicreg_center_kernel[_grid(cols)](
        x, centered, mean, var, rows, cols, *x.stride(),
        BLOCK_N=BLOCK_N, BLOCK_D=block_columns(cols),
    )  # fmt: skip
    return centered, mean, var


def standardization_backward(
    m: torch.Tensor,
    scale: float,
    weight: torch.Tensor,
    z: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor | None,
    partner: torch.Tensor,
    partner_mean: torch.Tensor,
    partner_rstd: torch.Tensor | None,
) -> torch.Tensor:
    """d loss / d z (contiguous, z's dtype) for d loss / d output = scale * m + weight * P,
    P = (partner - partner_mean) * partner_rstd. rstd None: the output was z - mean (a
    centring, partner_rstd None too); else (z - mean) * rstd."""
    rows, cols = z.shape
    grad = torch.empty((rows, cols), dtype=z.dtype, device=z.device)
    normalized = rstd is not None
    if not normalized:
        rstd = partner_rstd = torch.ones(cols, dtype=torch.float32, device=z.device)
    standardization_backward_kernel[_grid(cols)](
        m.contiguous(), z, mean, rstd, partner, partner_mean, partner_rstd, weight, grad,
        scale, rows, cols, *z.stride(), *partner.stride(),
        NORMALIZED=normalized, BLOCK_N=BLOCK_N, BLOCK_D=block_columns(cols),
    )  # fmt: skip
    return grad


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    specs = []
    for block_d in (16, 32):
        constexprs = {"BLOCK_N": BLOCK_N, "BLOCK_D": block_d}
        for dtype in ("bf16", "fp32"):
            label = f"{dtype}, BLOCK_D={block_d}"
            specs.append(
                CompileSpec(
                    f"barlow_twins_standardize_kernel[{label}]",
                    barlow_twins_standardize_kernel,
                    {"z1_ptr": f"*{dtype}", "z2_ptr": f"*{dtype}"}
                    | {"a_ptr": f"*{dtype}", "b_ptr": f"*{dtype}"}
                    | {name: "*fp32" for name in ("mean1_ptr", "rstd1_ptr", "mean2_ptr")}
                    | {"rstd2_ptr": "*fp32", "diag_ptr": "*fp32", "rows": "i32", "cols": "i32"}
                    | {name: "i32" for name in ("stride1_n", "stride1_d", "stride2_n")}
                    | {"stride2_d": "i32", "eps": "fp32"},
                    constexprs,
                )
            )
            specs.append(
                CompileSpec(
                    f"vicreg_center_kernel[{label}]",
                    vicreg_center_kernel,
                    {"x_ptr": f"*{dtype}", "centered_ptr": f"*{dtype}"}
                    | {"mean_ptr": "*fp32", "var_ptr": "*fp32", "rows": "i32", "cols": "i32"}
                    | {"stride_n": "i32", "stride_d": "i32"},
                    constexprs,
                )
            )
            for normalized in (True, False):
                specs.append(
                    CompileSpec(
                        f"standardization_backward_kernel[{label}, NORMALIZED={normalized}]",
                        standardization_backward_kernel,
                        {"m_ptr": "*fp32", "z_ptr": f"*{dtype}"}
                        | {"mean_ptr": "*fp32", "rstd_ptr": "*fp32", "p_ptr": f"*{dtype}"}
                        | {"partner_mean_ptr": "*fp32", "partner_rstd_ptr": "*fp32"}
                        | {"weight_ptr": "*fp32", "grad_ptr": f"*{dtype}", "scale": "fp32"}
                        | {"rows": "i32", "cols": "i32", "stride_zn": "i32", "stride_zd": "i32"}
                        | {"stride_pn": "i32", "stride_pd": "i32"},
                        constexprs | {"NORMALIZED": normalized},
                    )
                )
    return specs


COMPILE_SPECS = _compile_specs()
