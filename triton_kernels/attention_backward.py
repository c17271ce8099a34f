"""Flash-attention backward in Triton: dq, dk, dv of attention_forward_kernel, recomputing
P = exp(S - lse) from the saved log-sum-exp.

Three kernels, no atomics (deterministic): a preprocess kernel writes delta = rowsum(dO * O) in
float32; a dK/dV kernel runs one program per key tile (BLOCK_N keys) and loops over the query
tiles that can see it (BLOCK_M rows a step), accumulating dV = P^T dO and dK = scale * dS^T Q with
dS = P * (dP - delta), dP = dO V^T; a dQ kernel runs one program per query tile and loops over
its keys, accumulating dQ = scale * dS K. Both walk the token stream of attention_forward (packed
or per-sequence tiles, sequence, padding and causal masks) and read any strides.

Floor: 2.5x the forward's FLOPs (10*B*H*Nq*Nk*d: P is recomputed in both loops); q, k, v, out,
dout read and dq, dk, dv written once (delta and lse are float32 per row). Memory-bound at ViT
lengths like the forward (roofline min(790, 2.7*N) TFLOP/s at hd64, PERF.md).
Limits: those of the forward. Padded queries (QUERY_MASK) and keys, and rows that see no key
(lse +inf), get zero gradients.
"""

import triton
import triton.language as tl

from .attention_forward import (
    LN2,
    SPEC_HEAD_DIMS,
    SPEC_VARIANTS,
    _causal_limit,
    _load_rows,
    _other_range,
    _sequence_of,
    _store_rows,
    _tile,
    _valid,
    spec_signature,
    tiled_compile_specs,
)

PREPROCESS_BLOCK = 64  # rows of the delta kernel
PREPROCESS_WARPS = 4


@triton.jit(do_not_specialize=("total_q", "len_q"))
def attention_preprocess_kernel(
    out_ptr,  # dense (B, H, Nq, d) / packed (total_q, H, d), any strides
    dout_ptr,  # like out
    delta_ptr,  # (H, total_q) float32: rowsum(dout * out)
    segment_q_ptr,  # (total_q,) int32 (VARLEN), else None
    total_q,
    len_q,
    stride_out_token,
    stride_out_sequence,
    stride_out_head,
    stride_out_dim,
    stride_dout_token,
    stride_dout_sequence,
    stride_dout_head,
    stride_dout_dim,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    head = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_in = rows < total_q
    sequence = _sequence_of(rows, row_in, segment_q_ptr, len_q, VARLEN)
    out = _load_rows(
        out_ptr + head * stride_out_head, rows, sequence, row_in,
        stride_out_token, stride_out_sequence, stride_out_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    dout = _load_rows(
        dout_ptr + head * stride_dout_head, rows, sequence, row_in,
        stride_dout_token, stride_dout_sequence, stride_dout_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    delta = tl.sum(out.to(tl.float32) * dout.to(tl.float32), axis=1)
    tl.store(delta_ptr + head * total_q + rows, delta, mask=row_in)


@triton.jit(do_not_specialize=("total_q", "total_k", "len_q", "len_k", "max_len_k", "batch"))
def attention_dkdv_kernel(
    q_ptr,  # dense (B, H, Nq, d) / packed (total_q, H, d), any strides
    k_ptr,  # dense (B, H, Nk, d) / packed (total_k, H, d), any strides
    v_ptr,  # like k
    dout_ptr,  # like q
    lse_ptr,  # (H, total_q) float32
    delta_ptr,  # (H, total_q) float32
    dk_ptr,  # (total_k, H, d) contiguous (dense: the (B, Nk, H, d) buffer)
    dv_ptr,  # (total_k, H, d) contiguous
    segment_q_ptr,  # (total_q,) int32 (VARLEN), else None
    segment_k_ptr,  # (total_k,) int32 (VARLEN), else None
    cu_q_ptr,  # (B + 1,) int32 (VARLEN), else None
    cu_k_ptr,  # (B + 1,) int32 (VARLEN), else None
    key_mask_ptr,  # (B * Nk,) uint8, 1 = real key (KEY_MASK), else None
    total_q,
    total_k,
    len_q,
    len_k,
    max_len_k,
    batch,
    stride_q_token,
    stride_q_sequence,
    stride_q_head,
    stride_q_dim,
    stride_k_token,
    stride_k_sequence,
    stride_k_head,
    stride_k_dim,
    stride_v_token,
    stride_v_sequence,
    stride_v_head,
    stride_v_dim,
    stride_dout_token,
    stride_dout_sequence,
    stride_dout_head,
    stride_dout_dim,
    scale,
    scale_log2,
    bucket_q,
    bucket_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    CAUSAL: tl.constexpr,
    KEY_MASK: tl.constexpr,
    QUERY_MASK: tl.constexpr,
    ALIGNED: tl.constexpr,  # every tensor 16-byte aligned, strides multiples of 16
    BLOCK_M: tl.constexpr,  # query rows per step
    BLOCK_N: tl.constexpr,  # keys per program
    PACK_TILES: tl.constexpr,
):
    program = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    start, end, first, last = _tile(
        program, total_k, max_len_k, segment_k_ptr, cu_k_ptr, len_k, BLOCK_N, PACK_TILES, VARLEN
    )
    keys = start + tl.arange(0, BLOCK_N)
    key_in = keys < end
    key_sequence = _sequence_of(keys, key_in, segment_k_ptr, len_k, VARLEN)
    key_match = tl.where(_valid(keys, key_in, key_mask_ptr, KEY_MASK), key_sequence, -2)
    k = _load_rows(
        k_ptr + head * stride_k_head, keys, key_sequence, key_in,
        stride_k_token, stride_k_sequence, stride_k_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    v = _load_rows(
        v_ptr + head * stride_v_head, keys, key_sequence, key_in,
        stride_v_token, stride_v_sequence, stride_v_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    lo, hi = _other_range(start, end, first, last, cu_q_ptr, len_q, batch, VARLEN)
    if CAUSAL:
        # The first query that sees a key of this tile is at the first key's position.
        first_seen = _causal_limit(keys, key_sequence, cu_k_ptr, cu_q_ptr, len_k, len_q, VARLEN)
        lo = tl.maximum(lo, tl.min(tl.where(key_match >= 0, first_seen, hi), axis=0))
    q_base = q_ptr + head * stride_q_head
    dout_base = dout_ptr + head * stride_dout_head
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    for row_start in range(lo, hi, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_in = rows < hi
        sequence = _sequence_of(rows, row_in, segment_q_ptr, len_q, VARLEN)
        # A padded query (QUERY_MASK) matches no key: no gradient flows through its row.
        row_match = tl.where(_valid(rows, row_in, key_mask_ptr, QUERY_MASK), sequence, -1)
        q = _load_rows(
            q_base, rows, sequence, row_in,
            stride_q_token, stride_q_sequence, stride_q_dim, HEAD_DIM, BLOCK_D, ALIGNED,
        )  # fmt: skip
        dout = _load_rows(
            dout_base, rows, sequence, row_in,
            stride_dout_token, stride_dout_sequence, stride_dout_dim, HEAD_DIM, BLOCK_D, ALIGNED,
        )  # fmt: skip
        lse_log2 = tl.load(lse_ptr + head * total_q + rows, mask=row_in, other=0.0) * (1.0 / LN2)
        delta = tl.load(delta_ptr + head * total_q + rows, mask=row_in, other=0.0)
        allowed = key_match[:, None] == row_match[None, :]  # (keys, rows)
        if CAUSAL:
            limit = _causal_limit(rows, sequence, cu_q_ptr, cu_k_ptr, len_q, len_k, VARLEN)
            allowed = allowed & (keys[:, None] <= limit[None, :])
        scores = tl.dot(k, tl.trans(q), input_precision="ieee") * scale_log2
        # A row that saw no key has lse +inf and no allowed pair: p is 0 either way.
        p = tl.where(allowed, tl.exp2(scores - lse_log2[None, :]), 0.0)
        dv = tl.dot(p.to(dout.dtype), dout, dv, input_precision="ieee")
        dp = tl.dot(v, tl.trans(dout), input_precision="ieee")
        ds = p * (dp - delta[None, :])
        dk = tl.dot(ds.to(q.dtype), q, dk, input_precision="ieee")
    _store_rows(dk_ptr, head, keys, key_in, dk * scale, HEAD_DIM, BLOCK_D, ALIGNED)
    _store_rows(dv_ptr, head, keys, key_in, dv, HEAD_DIM, BLOCK_D, ALIGNED)


@triton.jit(do_not_specialize=("total_q", "len_q", "len_k", "max_len_q", "batch"))
def attention_dq_kernel(
    q_ptr,  # dense (B, H, Nq, d) / packed (total_q, H, d), any strides
    k_ptr,  # dense (B, H, Nk, d) / packed (total_k, H, d), any strides
    v_ptr,  # like k
    dout_ptr,  # like q
    lse_ptr,  # (H, total_q) float32
    delta_ptr,  # (H, total_q) float32
    dq_ptr,  # (total_q, H, d) contiguous (dense: the (B, Nq, H, d) buffer)
    segment_q_ptr,  # (total_q,) int32 (VARLEN), else None
    segment_k_ptr,  # (total_k,) int32 (VARLEN), else None
    cu_q_ptr,  # (B + 1,) int32 (VARLEN), else None
    cu_k_ptr,  # (B + 1,) int32 (VARLEN), else None
    key_mask_ptr,  # (B * Nk,) uint8, 1 = real key (KEY_MASK), else None
    total_q,
    len_q,
    len_k,
    max_len_q,
    batch,
    stride_q_token,
    stride_q_sequence,
    stride_q_head,
    stride_q_dim,
    stride_k_token,
    stride_k_sequence,
    stride_k_head,
    stride_k_dim,
    stride_v_token,
    stride_v_sequence,
    stride_v_head,
    stride_v_dim,
    stride_dout_token,
    stride_dout_sequence,
    stride_dout_head,
    stride_dout_dim,
    scale,
    scale_log2,
    bucket_q,
    bucket_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    CAUSAL: tl.constexpr,
    KEY_MASK: tl.constexpr,
    QUERY_MASK: tl.constexpr,
    ALIGNED: tl.constexpr,  # every tensor 16-byte aligned, strides multiples of 16
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PACK_TILES: tl.constexpr,
):
    program = tl.program_id(0)
    head = tl.program_id(1).to(tl.int64)
    start, end, first, last = _tile(
        program, total_q, max_len_q, segment_q_ptr, cu_q_ptr, len_q, BLOCK_M, PACK_TILES, VARLEN
    )
    rows = start + tl.arange(0, BLOCK_M)
    row_in = rows < end
    sequence = _sequence_of(rows, row_in, segment_q_ptr, len_q, VARLEN)
    # A padded query (QUERY_MASK) matches no key: no gradient flows through its row.
    row_match = tl.where(_valid(rows, row_in, key_mask_ptr, QUERY_MASK), sequence, -1)
    q = _load_rows(
        q_ptr + head * stride_q_head, rows, sequence, row_in,
        stride_q_token, stride_q_sequence, stride_q_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    dout = _load_rows(
        dout_ptr + head * stride_dout_head, rows, sequence, row_in,
        stride_dout_token, stride_dout_sequence, stride_dout_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    lse_log2 = tl.load(lse_ptr + head * total_q + rows, mask=row_in, other=0.0) * (1.0 / LN2)
    delta = tl.load(delta_ptr + head * total_q + rows, mask=row_in, other=0.0)
    lo, hi = _other_range(start, end, first, last, cu_k_ptr, len_k, batch, VARLEN)
    if CAUSAL:
        limit = _causal_limit(rows, sequence, cu_q_ptr, cu_k_ptr, len_q, len_k, VARLEN)
        hi = tl.minimum(hi, tl.max(tl.where(row_match >= 0, limit, lo - 1), axis=0) + 1)
    k_base = k_ptr + head * stride_k_head
    v_base = v_ptr + head * stride_v_head
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for key_start in range(lo, hi, BLOCK_N):
        keys = key_start + tl.arange(0, BLOCK_N)
        key_in = keys < hi
        key_sequence = _sequence_of(keys, key_in, segment_k_ptr, len_k, VARLEN)
        k = _load_rows(
            k_base, keys, key_sequence, key_in,
            stride_k_token, stride_k_sequence, stride_k_dim, HEAD_DIM, BLOCK_D, ALIGNED,
        )  # fmt: skip
        v = _load_rows(
            v_base, keys, key_sequence, key_in,
            stride_v_token, stride_v_sequence, stride_v_dim, HEAD_DIM, BLOCK_D, ALIGNED,
        )  # fmt: skip
        key_match = tl.where(_valid(keys, key_in, key_mask_ptr, KEY_MASK), key_sequence, -2)
        allowed = row_match[:, None] == key_match[None, :]
        if CAUSAL:
            allowed = allowed & (keys[None, :] <= limit[:, None])
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2
        p = tl.where(allowed, tl.exp2(scores - lse_log2[:, None]), 0.0)
        dp = tl.dot(dout, tl.trans(v), input_precision="ieee")
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    _store_rows(dq_ptr, head, rows, row_in, dq * scale, HEAD_DIM, BLOCK_D, ALIGNED)


def _preprocess_specs() -> list:
    from .compile_spec import CompileSpec

    specs = []
    for label, dtype, varlen, causal, key_mask in SPEC_VARIANTS:
        if causal or key_mask:  # the delta kernel has neither
            continue
        for head_dim in SPEC_HEAD_DIMS:
            constexprs = {
                "HEAD_DIM": head_dim,
                "BLOCK_D": head_dim,
                "VARLEN": varlen,
                "ALIGNED": True,
                "BLOCK_M": PREPROCESS_BLOCK,
            }
            signature, constants = spec_signature(attention_preprocess_kernel, dtype, varlen, False)
            specs.append(
                CompileSpec(
                    f"attention_preprocess_kernel[{label}, d{head_dim}]",
                    attention_preprocess_kernel,
                    signature | dict.fromkeys(constexprs, "constexpr"),
                    constants | constexprs,
                    num_warps=PREPROCESS_WARPS,
                )
            )
    return specs


COMPILE_SPECS = [
    *_preprocess_specs(),
    *tiled_compile_specs(attention_dkdv_kernel),
    *tiled_compile_specs(attention_dq_kernel),
]
