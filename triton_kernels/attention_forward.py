"""Flash-attention forward in Triton for ViT-length sequences: softmax(q k^T * scale) v and lse.

FA2: one program per tile of BLOCK_M query rows keeps the running row max, row sum and output in
registers over BLOCK_N-key steps (online softmax, log2 domain) and writes out and lse, the
log-sum-exp of the scaled scores of each row (+inf for a row that sees no key).
Token stream: dense and packed inputs are one stream of tokens with a sequence id each (dense:
token // N, computed in the kernel; packed: an int32 array built on the device from cu_seqlens).
With PACK_TILES a tile takes BLOCK_M rows of the stream whatever their sequences, and loops over
the keys from the first key of its first sequence to the last key of its last one, masking pairs
of different sequences, padded keys (and queries) and the causal rule: 50-token sequences fill
64-row tiles. Without PACK_TILES a tile holds rows of one sequence (grid: sequences x tiles of
max_seqlen), which wins where the other side is much longer (a 1-query probe over 1568 keys).
The helpers here (the token stream, tile ranges, row loads) serve the backward kernels too.

Floor: 4*B*H*Nq*Nk*d FLOPs; q, k, v read and out written once: 8*N*d bytes per (b, h) in 16-bit
at Nq = Nk = N, so N/2 FLOP/byte: memory-bound below N ~ 370 on H200 (roofline min(790, 2.15*N)
TFLOP/s at hd64, PERF.md). A packed tile also spends MMA work on the masked pairs of the sequences
it spans (at N = 50 about 2.3 key steps of 64 per 64 rows instead of 1.3 without packing).
Limits: head dim <= 128, padded to a power of two with masks; q, k, v of one dtype (float32,
float16, bfloat16); float32 dots in full precision ("ieee"; 16-bit dots ignore it); float32
accumulation and lse; packed rows past cu_seqlens[-1] are zero with PACK_TILES and left unwritten
without it.
"""

import math
from dataclasses import dataclass

import triton
import triton.language as tl

LN2 = tl.constexpr(math.log(2.0))  # lse in natural log from the log2-domain running max
# What COMPILE_SPECS build: (label, dtype, VARLEN, CAUSAL, KEY_MASK), at head dims 64 and 128.
SPEC_VARIANTS = (
    ("fp16", "fp16", False, False, False),
    ("bf16", "bf16", False, False, False),
    ("bf16 varlen", "bf16", True, False, False),
    ("bf16 masked causal", "bf16", False, True, True),
)
SPEC_HEAD_DIMS = (64, 128)


# --- launch configurations ------------------------------------------------------------------


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of the attention kernels.

    Attributes:
        block_m: query rows per tile (forward, dQ) or per step (dK/dV).
        block_n: keys per step (forward, dQ) or per tile (dK/dV).
        pack_tiles: a tile takes rows of several sequences (else one sequence per tile).
        num_warps, num_stages: as triton.Config.
    """

    block_m: int
    block_n: int
    pack_tiles: bool
    num_warps: int
    num_stages: int

    def meta(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "PACK_TILES": self.pack_tiles}

    def triton_config(self) -> triton.Config:
        return triton.Config(self.meta(), num_warps=self.num_warps, num_stages=self.num_stages)


def default_config(head_dim: int) -> TileConfig:
    """The configuration the interpreter runs and COMPILE_SPECS check: 64 x 64 tiles (ViT
    sequences are short, PERF.md; larger tiles only pad them), packed; 8 warps above head dim 64
    keep the (64, d) float32 accumulators in registers."""
    return TileConfig(64, 64, pack_tiles=True, num_warps=4 if head_dim <= 64 else 8, num_stages=3)


# --- token stream helpers -------------------------------------------------------------------


@triton.jit
def _sequence_of(
    tokens,
    inside,
    segment_ptr,  # (total,) int32 sequence of each token (VARLEN)
    seq_len,  # tokens per sequence (dense)
    VARLEN: tl.constexpr,
):
    """Sequence index of each token (vector) or of one token (scalar); -1 where not inside."""
    if VARLEN:
        sequence = tl.load(segment_ptr + tokens, mask=inside, other=-1)
    else:
        sequence = tl.where(inside, tokens // seq_len, -1)
    return sequence


@triton.jit
def _sequence_start(
    sequence,
    cu_ptr,  # (B + 1,) int32 offsets (VARLEN)
    seq_len,
    VARLEN: tl.constexpr,
):
    """First token of each sequence in [0, B] (-1 reads sequence 0: callers mask those tokens)."""
    if VARLEN:
        start = tl.load(cu_ptr + tl.maximum(sequence, 0))
    else:
        start = sequence * seq_len
    return start


@triton.jit
def _tile(
    program,
    total,
    max_len,  # max_seqlen: tiles per sequence without PACK_TILES
    segment_ptr,
    cu_ptr,
    seq_len,
    BLOCK: tl.constexpr,
    PACK_TILES: tl.constexpr,
    VARLEN: tl.constexpr,
):
    """[start, end) tokens of this program's tile, and the sequences of its first and last token.
    Without PACK_TILES, end <= start for a tile past the end of its (shorter) sequence."""
    if PACK_TILES:
        start = program * BLOCK
        end = tl.minimum(start + BLOCK, total)
        first = _sequence_of(start, True, segment_ptr, seq_len, VARLEN)
        last = _sequence_of(end - 1, True, segment_ptr, seq_len, VARLEN)
    else:
        tiles = tl.cdiv(max_len, BLOCK)
        first = program // tiles
        last = first
        start = _sequence_start(first, cu_ptr, seq_len, VARLEN) + (program % tiles) * BLOCK
        end = tl.minimum(start + BLOCK, _sequence_start(first + 1, cu_ptr, seq_len, VARLEN))
    return start, end, first, last


@triton.jit
def _other_range(
    start,
    end,
    first,
    last,
    cu_other_ptr,  # the other side's offsets (VARLEN)
    other_seq_len,
    batch,
    VARLEN: tl.constexpr,
):
    """[lo, hi) tokens of the other side (keys for a query tile, queries for a key tile) in the
    sequences first..last of tile [start, end); empty when the tile is."""
    lo = _sequence_start(first, cu_other_ptr, other_seq_len, VARLEN)
    # Packed tokens past cu_seqlens[-1] have sequence B: they see nothing.
    hi = _sequence_start(tl.minimum(last + 1, batch), cu_other_ptr, other_seq_len, VARLEN)
    return lo, tl.where(end > start, hi, lo)


@triton.jit
def _causal_limit(
    tokens,
    sequence,
    cu_ptr,
    cu_other_ptr,
    seq_len,
    other_seq_len,
    VARLEN: tl.constexpr,
):
    """The token of the other side at the same position of the same sequence: query i sees keys
    j <= i, so a query sees keys up to its limit and a key is seen by queries from its limit."""
    own_start = _sequence_start(sequence, cu_ptr, seq_len, VARLEN)
    other_start = _sequence_start(sequence, cu_other_ptr, other_seq_len, VARLEN)
    return tokens - own_start + other_start


@triton.jit
def _valid(
    tokens,
    inside,
    key_mask_ptr,  # (B * Nk,) uint8, 1 = real key
    USE_MASK: tl.constexpr,
):
    """inside, and the key padding mask of those tokens when USE_MASK."""
    if USE_MASK:
        inside = inside & (tl.load(key_mask_ptr + tokens, mask=inside, other=0) != 0)
    return inside


@triton.jit
def _load_rows(
    ptr,  # base of one head
    tokens,
    sequence,
    inside,
    stride_token,
    stride_sequence,  # extra offset per sequence: dense stride_b - N * stride_n, 0 packed
    stride_dim,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGNED: tl.constexpr,  # every row starts 16-byte aligned
):
    """(len(tokens), BLOCK_D) tile, zero outside the tokens and past HEAD_DIM."""
    dims = tl.arange(0, BLOCK_D)
    rows = tokens.to(tl.int64) * stride_token + sequence.to(tl.int64) * stride_sequence
    pointers = ptr + rows[:, None] + dims[None, :] * stride_dim
    if ALIGNED:
        pointers = tl.multiple_of(pointers, [16, 16])
    mask = inside[:, None] & (dims < HEAD_DIM)[None, :]
    return tl.load(pointers, mask=mask, other=0.0)


@triton.jit
def _store_rows(
    ptr,  # (total, H, d) contiguous, H = the grid's second axis
    head,
    tokens,
    inside,
    values,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ALIGNED: tl.constexpr,  # ptr 16-byte aligned
):
    dims = tl.arange(0, BLOCK_D)
    rows = (tokens.to(tl.int64) * tl.num_programs(1) + head) * HEAD_DIM
    pointers = ptr + rows[:, None] + dims[None, :]
    if ALIGNED:
        pointers = tl.multiple_of(pointers, [16, 16])
    mask = inside[:, None] & (dims < HEAD_DIM)[None, :]
    tl.store(pointers, values.to(ptr.dtype.element_ty), mask=mask)


# --- the forward kernel ---------------------------------------------------------------------


# Sizes change from batch to batch (do_not_specialize): specialising on their divisibility by 16
# would only recompile the kernels.
@triton.jit(do_not_specialize=("total_q", "len_q", "len_k", "max_len_q", "batch"))
def attention_forward_kernel(
    q_ptr,  # dense (B, H, Nq, d) / packed (total_q, H, d), any strides
    k_ptr,  # dense (B, H, Nk, d) / packed (total_k, H, d), any strides
    v_ptr,  # like k
    out_ptr,  # (total_q, H, d) contiguous (dense: the (B, Nq, H, d) buffer)
    lse_ptr,  # (H, total_q) float32
    segment_q_ptr,  # (total_q,) int32 sequence of each query token (VARLEN), else None
    segment_k_ptr,  # (total_k,) int32 (VARLEN), else None
    cu_q_ptr,  # (B + 1,) int32 (VARLEN), else None
    cu_k_ptr,  # (B + 1,) int32 (VARLEN), else None
    key_mask_ptr,  # (B * Nk,) uint8, 1 = real key (KEY_MASK), else None
    total_q,
    len_q,  # dense Nq (0 packed)
    len_k,  # dense Nk (0 packed)
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
    scale_log2,  # scale * log2(e)
    bucket_q,  # max_seqlen buckets: the autotuning key only
    bucket_k,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    CAUSAL: tl.constexpr,
    KEY_MASK: tl.constexpr,
    QUERY_MASK: tl.constexpr,  # the key padding mask marks queries too (Nq == Nk): zero rows
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
    # A row outside the tile matches no key (-1 vs keys' -2).
    row_match = tl.where(row_in, sequence, -1)
    q = _load_rows(
        q_ptr + head * stride_q_head, rows, sequence, row_in,
        stride_q_token, stride_q_sequence, stride_q_dim, HEAD_DIM, BLOCK_D, ALIGNED,
    )  # fmt: skip
    lo, hi = _other_range(start, end, first, last, cu_k_ptr, len_k, batch, VARLEN)
    if CAUSAL:
        limit = _causal_limit(rows, sequence, cu_q_ptr, cu_k_ptr, len_q, len_k, VARLEN)
        hi = tl.minimum(hi, tl.max(tl.where(row_match >= 0, limit, lo - 1), axis=0) + 1)
    k_base = k_ptr + head * stride_k_head
    v_base = v_ptr + head * stride_v_head
    row_max = tl.full((BLOCK_M,), float("-inf"), tl.float32)  # log2 domain
    row_sum = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
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
        scores = tl.where(allowed, scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))
        # A row that has seen no key yet keeps max -inf: shift by 0 so exp2 gives 0, not NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        p = tl.exp2(scores - shift[:, None])
        alpha = tl.exp2(row_max - shift)
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        row_max = new_max
    seen = row_sum > 0.0
    out = acc / tl.where(seen, row_sum, 1.0)[:, None]
    if QUERY_MASK:
        # A padded query attends like the others (its lse is that of its scores, as in the
        # reference) but outputs zeros.
        out = tl.where(_valid(rows, row_in, key_mask_ptr, QUERY_MASK)[:, None], out, 0.0)
    _store_rows(out_ptr, head, rows, row_in, out, HEAD_DIM, BLOCK_D, ALIGNED)
    lse = tl.where(seen, (row_max + tl.log2(tl.where(seen, row_sum, 1.0))) * LN2, float("inf"))
    tl.store(lse_ptr + head * total_q + rows, lse, mask=row_in)


def tiled_compile_specs(kernel) -> list:
    """`kernel` (forward, dK/dV or dQ) at default_config for each variant of SPEC_VARIANTS."""
    from .compile_spec import CompileSpec

    specs = []
    for label, dtype, varlen, causal, key_mask in SPEC_VARIANTS:
        for head_dim in SPEC_HEAD_DIMS:
            config = default_config(head_dim)
            constexprs = config.meta() | {
                "HEAD_DIM": head_dim,
                "BLOCK_D": head_dim,
                "VARLEN": varlen,
                "CAUSAL": causal,
                "KEY_MASK": key_mask,
                "QUERY_MASK": key_mask,
                "ALIGNED": True,
            }
            signature, constants = spec_signature(kernel, dtype, varlen, key_mask)
            specs.append(
                CompileSpec(
                    f"{kernel.__name__}[{label}, d{head_dim}]",
                    kernel,
                    signature | dict.fromkeys(constexprs, "constexpr"),
                    constants | constexprs,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                )
            )
    return specs


def spec_signature(kernel, dtype: str, varlen: bool, key_mask: bool) -> tuple[dict, dict]:
    """Runtime argument types as a launch specialises them: absent pointers are constexpr None,
    dim strides (1) constant, other integers i32; and the constants that implies."""
    signature, constants = {}, {}
    for name in kernel.arg_names:
        if name.isupper():
            continue
        if name in ("segment_q_ptr", "segment_k_ptr", "cu_q_ptr", "cu_k_ptr"):
            signature[name] = "*i32" if varlen else "constexpr"
        elif name == "key_mask_ptr":
            signature[name] = "*u8" if key_mask else "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in ("lse_ptr", "delta_ptr") else f"*{dtype}"
        elif name.endswith("_dim"):
            signature[name] = "constexpr"
            constants[name] = 1
        else:
            signature[name] = "fp32" if name.startswith("scale") else "i32"
        if signature[name] == "constexpr" and name not in constants:
            constants[name] = None
    return signature, constants


COMPILE_SPECS = tiled_compile_specs(attention_forward_kernel)
