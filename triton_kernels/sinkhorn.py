"""Sinkhorn-Knopp (DINOv2's sinkhorn_knopp_teacher) in scaling-vector form, in Triton.

DINOv2 normalises the whole (K, rows) matrix Q = exp(L / tau)^T in place: a total, then per
iteration a sum over samples for each prototype and a sum over prototypes for each sample, each
followed by a full division pass (~40 passes over a rows x K float32 matrix at iters = 3). Here Q
is never stored. With x = L / tau, a per-prototype shift mu[k] = max_b x[b, k] and
E[b, k] = exp(x[b, k] - mu[k]) (<= 1, recomputed from the logits on every pass):
    Q[b, k] = E[b, k] * u[k] * v[b]
    u[k] = 1 / sum_b E[b, k] v[b]          prototype pass (v = 1 in the first; sums over ranks)
    v[b] = 1 / sum_k E[b, k] u[k]          sample pass
The first prototype pass finds mu with a running maximum. DINOv2's constants (the initial total,
1/K, 1/B and the final *B) scale every entry alike and cancel in the last sample normalisation,
so they are not computed: the result is DINOv2's in exact arithmetic.

Why this form: mu[k] is a copy of one logit, so x - mu is exact for the entries that dominate
(Sterbenz), and the scalings are plain float32 factors. The errors match DINOv2's float32 form;
a log-domain form (alpha[k] = -logsumexp, exponents x + alpha - l) is 3-8x less accurate, because
log-scalings of magnitude ~1/tau are rounded. Range: E <= 1 never overflows (DINOv2's exp does
above L / tau = 88). E underflows to 0 where a logit is more than 87 (in units of L / tau)
below the best logit of its prototype, harmless unless every logit of a sample does (then v is
inf): impossible for cosine logits (weight-normalised last layer with g = 1: |L| <= 1, a spread
of at most 2 / tau) above tau = 0.023.

Launches: per iteration a prototype pass and a sample pass (DINOv2's order; the first prototype
pass also finds mu), then one pass that writes Q (float32): 2 per iteration, 2 * iters + 1.
Distributed (gather), a prototype pass writes sums (and the first, maxima) instead of u, and the
caller combines them across ranks (the first: an all-reduce of the maxima, then of the rescaled
sums; later ones: one all-reduce of K sums).

Floor: (2 * iters + 1) reads of the rows x K logits and one float32 write; at rows = 4096,
K = 65536 (1.07 GB float32 logits) and iters = 3: 8.6 GB moved, ~1.8 ms at 4.8 TB/s, against
~40 passes (43 GB) in DINOv2's form. One exp2 per element per pass: memory-bound.
Limits: logits float32, bfloat16 or float16 with unit stride along K (any row stride); float32
statistics; rows and K below 2^31.
"""

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# (BLOCK_R, BLOCK_K, num_warps) of each kernel: 4096-element float32 tiles, 16 per thread.
PROTOTYPE_BLOCKS = (32, 128, 8)
WRITE_BLOCKS = (8, 512, 8)
SAMPLE_ROWS = (1, 2, 4)  # rows per program of the sample pass, by batch size (sample_blocks)


def sample_blocks(rows: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_K, num_warps) of the sample pass: fewer rows per program for small batches,
    so that a GPU gets a few programs per SM (512 rows: 256 programs), same-sized tiles."""
    block_r = SAMPLE_ROWS[2] if rows >= 1024 else SAMPLE_ROWS[1] if rows >= 256 else SAMPLE_ROWS[0]
    return block_r, 4096 // block_r, 8


@triton.jit
def sinkhorn_prototype_kernel(
    logits_ptr,  # (rows, K), unit stride along K
    v_ptr,  # (rows,) float32: the sample scalings (unused when FIRST: v = 1)
    shift_ptr,  # (K,) float32: mu, written when FIRST, read otherwise
    out_ptr,  # (K,) float32 out: u = 1 / sum when FINISH, else the sum (to combine over ranks)
    rows,
    prototypes,  # K
    stride_row,
    scale,  # log2(e) / temperature
    FIRST: tl.constexpr,
    FINISH: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One program per BLOCK_K prototypes, streaming every sample: sum_b E[b, k] v[b]."""
    columns = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    column_ok = columns < prototypes
    if FIRST:
        # A running maximum that starts at -1e30 rather than -inf: rescaling the untouched sum
        # is then exp2(0) * 0, never exp2(-inf + inf).
        shift = tl.full((BLOCK_K,), -1.0e30, tl.float32)
        total = tl.zeros((BLOCK_K,), tl.float32)
        for start in range(0, rows, BLOCK_R):
            samples = start + tl.arange(0, BLOCK_R)
            offsets = samples.to(tl.int64)[:, None] * stride_row + columns[None, :]
            valid = (samples < rows)[:, None] & column_ok[None, :]
            x = tl.load(logits_ptr + offsets, mask=valid, other=float("-inf")).to(tl.float32)
            x = x * scale
            updated = tl.maximum(shift, tl.max(x, axis=0))
            total = total * tl.exp2(shift - updated)
            total += tl.sum(tl.exp2(x - updated[None, :]), axis=0)
            shift = updated
    else:
        shift = tl.load(shift_ptr + columns, mask=column_ok, other=0.0)
        partial = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
        for start in range(0, rows, BLOCK_R):
            samples = start + tl.arange(0, BLOCK_R)
            sample_ok = samples < rows
            offsets = samples.to(tl.int64)[:, None] * stride_row + columns[None, :]
            valid = sample_ok[:, None] & column_ok[None, :]
            x = tl.load(logits_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
            v = tl.load(v_ptr + samples, mask=sample_ok, other=0.0)
            partial += tl.exp2(x * scale - shift[None, :]) * v[:, None]
        total = tl.sum(partial, axis=0)
    if FIRST:
        tl.store(shift_ptr + columns, shift, mask=column_ok)
    if FINISH:
        # Columns past K summed nothing: divide them by 1, not 0.
        tl.store(out_ptr + columns, 1.0 / tl.where(column_ok, total, 1.0), mask=column_ok)
    else:
        tl.store(out_ptr + columns, total, mask=column_ok)


@triton.jit
def sinkhorn_sample_kernel(
    logits_ptr,  # (rows, K), unit stride along K
    shift_ptr,  # (K,) float32: mu
    u_ptr,  # (K,) float32: the prototype scalings
    v_ptr,  # (rows,) float32 out: v[b] = 1 / sum_k E[b, k] u[k]
    rows,
    prototypes,
    stride_row,
    scale,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One program per BLOCK_R samples, streaming every prototype."""
    samples = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    sample_ok = samples < rows
    total = tl.zeros((BLOCK_R, BLOCK_K), tl.float32)
    for start in range(0, prototypes, BLOCK_K):
        columns = start + tl.arange(0, BLOCK_K)
        column_ok = columns < prototypes
        shift = tl.load(shift_ptr + columns, mask=column_ok, other=0.0)
        u = tl.load(u_ptr + columns, mask=column_ok, other=0.0)
        offsets = samples[:, None] * stride_row + columns[None, :]
        valid = sample_ok[:, None] & column_ok[None, :]
        x = tl.load(logits_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
        total += tl.exp2(x * scale - shift[None, :]) * u[None, :]
    sums = tl.where(sample_ok, tl.sum(total, axis=1), 1.0)  # rows past the end: not 1 / 0
    tl.store(v_ptr + samples, 1.0 / sums, mask=sample_ok)


@triton.jit
def sinkhorn_write_kernel(
    logits_ptr,  # (rows, K), unit stride along K
    shift_ptr,  # (K,) float32
    u_ptr,  # (K,) float32
    v_ptr,  # (rows,) float32
    out_ptr,  # (rows, K) float32 out, contiguous: E[b, k] u[k] v[b]
    rows,
    prototypes,
    stride_row,
    scale,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    samples = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    columns = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    sample_ok = samples < rows
    column_ok = columns < prototypes
    valid = sample_ok[:, None] & column_ok[None, :]
    shift = tl.load(shift_ptr + columns, mask=column_ok, other=0.0)
    u = tl.load(u_ptr + columns, mask=column_ok, other=0.0)
    v = tl.load(v_ptr + samples, mask=sample_ok, other=0.0)
    x = tl.load(
        logits_ptr + samples[:, None] * stride_row + columns[None, :], mask=valid, other=0.0
    )
    probs = tl.exp2(x.to(tl.float32) * scale - shift[None, :]) * u[None, :] * v[:, None]
    tl.store(out_ptr + samples[:, None] * prototypes + columns[None, :], probs, mask=valid)


def _first_across_ranks(shift: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Makes `shift` the maximum over ranks (in place) and returns u from every rank's sums,
    rescaled to it: two all-reduces of K values."""
    import torch.distributed as dist

    local = shift.clone()
    dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    total = total * torch.exp2(local - shift)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return 1.0 / total


def _sums_across_ranks(total: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return 1.0 / total


def sinkhorn_knopp(
    logits: torch.Tensor, temperature: float, iters: int, gather: bool
) -> torch.Tensor:
    """(rows, K) float32 probabilities; arguments as nexus_fast.ops.sinkhorn_knopp (checked
    there, iters >= 1). gather: prototype sums over every rank of the default process group."""
    from nexus_fast import distributed

    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    rows, prototypes = logits.shape
    device = logits.device
    across_ranks = gather and distributed.world_size() > 1
    geometry = (rows, prototypes, logits.stride(0), LOG2E / temperature)
    shift = torch.empty(prototypes, dtype=torch.float32, device=device)
    u = torch.empty(prototypes, dtype=torch.float32, device=device)
    v = torch.ones(rows, dtype=torch.float32, device=device)
    out = torch.empty(rows, prototypes, dtype=torch.float32, device=device)
    block_r, block_k, warps = PROTOTYPE_BLOCKS
    sample_r, sample_k, sample_warps = sample_blocks(rows)
    for iteration in range(iters):
        first = iteration == 0
        # Without rows there is nothing to sum, unless other ranks wait for this one's sums.
        if prototypes > 0 and (rows > 0 or across_ranks):
            sinkhorn_prototype_kernel[(triton.cdiv(prototypes, block_k),)](
                logits, v, shift, u, *geometry,
                FIRST=first, FINISH=not across_ranks,
                BLOCK_R=block_r, BLOCK_K=block_k, num_warps=warps,
            )  # fmt: skip
        if across_ranks:
            u = _first_across_ranks(shift, u) if first else _sums_across_ranks(u)
        if rows > 0 and prototypes > 0:
            sinkhorn_sample_kernel[(triton.cdiv(rows, sample_r),)](
                logits, shift, u, v, *geometry,
                BLOCK_R=sample_r, BLOCK_K=sample_k, num_warps=sample_warps,
            )  # fmt: skip
    write_r, write_k, write_warps = WRITE_BLOCKS
    if rows > 0 and prototypes > 0:
        sinkhorn_write_kernel[(triton.cdiv(rows, write_r), triton.cdiv(prototypes, write_k))](
            logits, shift, u, v, out, *geometry,
            BLOCK_R=write_r, BLOCK_K=write_k, num_warps=write_warps,
        )  # fmt: skip
    return out


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    geometry = {"rows": "i32", "prototypes": "i32", "stride_row": "i32", "scale": "fp32"}
    specs = []
    for dtype in ("bf16", "fp32"):
        logits = {"logits_ptr": f"*{dtype}"}
        block_r, block_k, warps = PROTOTYPE_BLOCKS
        for first in (True, False):
            for finish in (True, False):
                label = f"{'first' if first else 'next'}, {'u' if finish else 'sums'}"
                specs.append(
                    CompileSpec(
                        f"sinkhorn_prototype_kernel[{dtype}, {label}]",
                        sinkhorn_prototype_kernel,
                        logits
                        | {"v_ptr": "*fp32", "shift_ptr": "*fp32", "out_ptr": "*fp32"}
                        | geometry,
                        {"FIRST": first, "FINISH": finish, "BLOCK_R": block_r, "BLOCK_K": block_k},
                        num_warps=warps,
                    )
                )
        for rows in (1, 256, 1024):
            block_r, block_k, warps = sample_blocks(rows)
            specs.append(
                CompileSpec(
                    f"sinkhorn_sample_kernel[{dtype}, {block_r} rows]",
                    sinkhorn_sample_kernel,
                    logits | {"shift_ptr": "*fp32", "u_ptr": "*fp32", "v_ptr": "*fp32"} | geometry,
                    {"BLOCK_R": block_r, "BLOCK_K": block_k},
                    num_warps=warps,
                )
            )
        block_r, block_k, warps = WRITE_BLOCKS
        specs.append(
            CompileSpec(
                f"sinkhorn_write_kernel[{dtype}]",
                sinkhorn_write_kernel,
                logits
                | {"shift_ptr": "*fp32", "u_ptr": "*fp32", "v_ptr": "*fp32", "out_ptr": "*fp32"}
                | geometry,
                {"BLOCK_R": block_r, "BLOCK_K": block_k},
                num_warps=warps,
            )
        )
    return specs


COMPILE_SPECS = _compile_specs()
