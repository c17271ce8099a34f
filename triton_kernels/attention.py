"""Flash attention in Triton: the launchers attention_forward and attention_backward.

The kernels are in attention_forward.py (the forward and the token-stream helpers) and
attention_backward.py (delta, dK/dV, dQ); this module lays the inputs out as token streams
(segment ids built on the device from cu_seqlens: no host sync), allocates the outputs in the
(tokens, H, d) memory order and launches. On the GPU, triton.autotune picks the tile shape, warps,
stages and packed or per-sequence tiles per head dim, dtypes, varlen, causal and max_seqlen bucket
(results cached per key); the interpreter (TRITON_INTERPRET=1) runs default_config(head_dim).
Floors and limits: see the kernel modules.
"""

import math
from dataclasses import dataclass

import torch
import triton

from . import INTERPRET
from .attention_backward import COMPILE_SPECS as BACKWARD_SPECS
from .attention_backward import (
    PREPROCESS_BLOCK,
    PREPROCESS_WARPS,
    attention_dkdv_kernel,
    attention_dq_kernel,
    attention_preprocess_kernel,
)
from .attention_forward import COMPILE_SPECS as FORWARD_SPECS
from .attention_forward import TileConfig, attention_forward_kernel, default_config

MAX_HEAD_DIM = 128
# Buckets of max_seqlen for the autotuning key: ViT-B/16 crops (50), ViT images (197, 257),
# video (1568), longer. Multiples of 16, so every bucket shares one compiled specialisation.
SEQLEN_BUCKETS = (64, 320, 2048, 16384)


# --- autotuning -----------------------------------------------------------------------------


# The sm_90 search spaces: packed or per-sequence tiles, 4 or 8 warps, a smaller step.
QUERY_TILE_CONFIGS = (  # forward and dQ: BLOCK_M query rows per program
    default_config(64),
    default_config(128),
    TileConfig(64, 64, pack_tiles=False, num_warps=4, num_stages=3),
    TileConfig(128, 64, pack_tiles=True, num_warps=8, num_stages=3),
    TileConfig(128, 64, pack_tiles=False, num_warps=8, num_stages=3),
    TileConfig(64, 32, pack_tiles=True, num_warps=4, num_stages=2),
)
KEY_TILE_CONFIGS = (  # dK/dV: BLOCK_N keys per program
    default_config(64),
    default_config(128),
    TileConfig(64, 64, pack_tiles=False, num_warps=4, num_stages=3),
    TileConfig(64, 64, pack_tiles=False, num_warps=8, num_stages=3),
    TileConfig(32, 128, pack_tiles=True, num_warps=8, num_stages=3),
    TileConfig(32, 128, pack_tiles=False, num_warps=8, num_stages=3),
    TileConfig(32, 64, pack_tiles=True, num_warps=4, num_stages=2),
)
TUNING_KEY = ["HEAD_DIM", "VARLEN", "CAUSAL", "bucket_q", "bucket_k"]  # + every tensor's dtype


def _key_tile_prune(configs: list, named_args: dict, **kwargs) -> list:
    """dK/dV holds two (BLOCK_N, d) float32 accumulators and k, v: with 4 warps they spill above
    head dim 64 (sm_90, causal varlen), so only 8-warp configurations are timed there."""
    head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
    return [c for c in configs if head_dim <= 64 or c.num_warps >= 8]


def _autotuned(kernel, configs: tuple[TileConfig, ...], prune=None):
    """The kernel behind triton.autotune on the GPU; None under the interpreter (one config)."""
    if INTERPRET:
        return None
    return triton.autotune(
        [c.triton_config() for c in configs],
        key=TUNING_KEY,
        prune_configs_by={"early_config_prune": prune} if prune else None,
    )(kernel)


_forward_tuned = _autotuned(attention_forward_kernel, QUERY_TILE_CONFIGS)
_dkdv_tuned = _autotuned(attention_dkdv_kernel, KEY_TILE_CONFIGS, _key_tile_prune)
_dq_tuned = _autotuned(attention_dq_kernel, QUERY_TILE_CONFIGS)


def _launch(kernel, tuned, config: TileConfig | None, grid, args: tuple, constexprs: dict):
    """Runs `tuned` (autotuning) when there is one and no config is forced, else `kernel` at
    `config` (default_config by default). grid(meta) -> launch grid."""
    if tuned is not None and config is None:
        tuned[grid](*args, **constexprs)
        return
    config = config or default_config(constexprs["HEAD_DIM"])
    meta = config.meta()
    kernel[grid(meta)](
        *args, **constexprs, **meta, num_warps=config.num_warps, num_stages=config.num_stages
    )


# --- launchers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """Queries or keys as a stream of tokens."""

    total: int
    seq_len: int  # dense N; 0 when packed
    max_len: int
    segments: torch.Tensor | None  # (total,) int32 sequence of each token, packed only
    cu_seqlens: torch.Tensor | None  # (B + 1,) int32, packed only

    def programs(self, batch: int, block: int, pack_tiles: bool) -> int:
        if pack_tiles:
            return triton.cdiv(self.total, block)
        return batch * triton.cdiv(self.max_len, block)


def _side(x: torch.Tensor, cu_seqlens: torch.Tensor | None, max_seqlen: int) -> _Side:
    if cu_seqlens is None:
        batch, _, length, _ = x.shape
        return _Side(batch * length, length, length, None, None)
    total = x.shape[0]
    cu_seqlens = cu_seqlens.to(torch.int32)
    tokens = torch.arange(total, dtype=torch.int32, device=x.device)
    # On the device, no host sync; tokens past cu_seqlens[-1] get sequence B.
    segments = torch.searchsorted(cu_seqlens[1:], tokens, right=True, out_int32=True)
    return _Side(total, 0, max_seqlen, segments, cu_seqlens)


def _strides(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(token, sequence, head, dim) strides: token t of sequence s starts at
    t * token + s * sequence, so dense (B, H, N, d) and packed (total, H, d) read alike."""
    if x.dim() == 4:
        stride_b, stride_h, stride_n, stride_d = x.stride()
        return stride_n, stride_b - x.shape[2] * stride_n, stride_h, stride_d
    stride_t, stride_h, stride_d = x.stride()
    return stride_t, 0, stride_h, stride_d


def _aligned(*tensors: torch.Tensor) -> bool:
    """16-byte aligned data, dim stride 1, head dim and other strides multiples of 16: what Triton's
    launch specialisation sees in the usual case, stated as hints so that the offline sm_90 build
    (COMPILE_SPECS) compiles the code the GPU runs. The outputs are allocated aligned."""
    for tensor in tensors:
        if tensor.shape[-1] % 16:
            return False
        token, sequence, head, dim = _strides(tensor)
        if tensor.data_ptr() % 16 or dim != 1 or token % 16 or sequence % 16 or head % 16:
            return False
    return True


def _bucket(max_seqlen: int) -> int:
    return next((b for b in SEQLEN_BUCKETS if max_seqlen <= b), SEQLEN_BUCKETS[-1])


def _token_major(like: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A (total, H, d) buffer the kernels write, and its view in like's layout (dense: (B, H, N, d)
    over (B, N, H, d) memory)."""
    if dense:
        batch, heads, length, dim = like.shape
        buffer = like.new_empty(batch, length, heads, dim)
        return buffer, buffer.transpose(1, 2)
    buffer = like.new_empty(like.shape)
    return buffer, buffer


def _common(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, key_padding_mask,
            causal):  # fmt: skip
    """Sides, batch, heads, the key mask as uint8 and the constexprs shared by every kernel."""
    head_dim = q.shape[-1]
    if head_dim > MAX_HEAD_DIM:
        raise ValueError(f"head dim {head_dim} is not supported (at most {MAX_HEAD_DIM})")
    dense = cu_seqlens_q is None
    if key_padding_mask is not None and not dense:
        raise ValueError("key_padding_mask applies to dense inputs only (packed: use cu_seqlens)")
    queries = _side(q, cu_seqlens_q, max_seqlen_q)
    keys = _side(k, cu_seqlens_k, max_seqlen_k)
    batch = q.shape[0] if dense else cu_seqlens_q.numel() - 1
    key_mask = None
    if key_padding_mask is not None:
        key_mask = key_padding_mask.contiguous().view(torch.uint8).view(-1)
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": triton.next_power_of_2(head_dim),
        "VARLEN": not dense,
        "CAUSAL": bool(causal),
        "KEY_MASK": key_mask is not None,
        "QUERY_MASK": key_mask is not None and queries.seq_len == keys.seq_len,
    }
    return queries, keys, batch, q.shape[1], key_mask, constexprs


def attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale) v and the log-sum-exp of each query row's scaled scores.

    Args:
        q, k, v: dense (B, H, Nq, d) and (B, H, Nk, d), or packed (total_q, H, d) and
            (total_k, H, d); any strides, one dtype.
        cu_seqlens_q, cu_seqlens_k: (B + 1,) int32 offsets on the device (packed), else None.
        max_seqlen_q, max_seqlen_k: upper bounds of the packed lengths (dense: ignored).
        key_padding_mask: None or (B, Nk) bool, True for real keys (dense only); with Nq == Nk it
            marks the queries too.
        scale: multiplies the scores.
        causal: query i sees keys j <= i of its sequence.
        config: force one launch configuration (tests, benchmarks); None autotunes on the GPU.

    Returns:
        out: dense (B, H, Nq, d) as a view of (B, Nq, H, d) memory, or packed (total_q, H, d);
            zero rows for queries that see no key and for padded queries (Nq == Nk).
        lse: (H, total_q) float32 (dense token b * Nq + n), the log-sum-exp of each row's allowed
            scaled scores (padded queries too); +inf where a row sees no key.
    """
    queries, keys, batch, heads, key_mask, constexprs = _common(
        q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, key_padding_mask, causal
    )
    constexprs["ALIGNED"] = _aligned(q, k, v)
    out, out_view = _token_major(q, cu_seqlens_q is None)
    lse = torch.empty(heads, queries.total, dtype=torch.float32, device=q.device)
    if queries.total == 0 or heads == 0:
        return out_view, lse
    args = (
        q, k, v, out, lse,
        queries.segments, keys.segments, queries.cu_seqlens, keys.cu_seqlens, key_mask,
        queries.total, queries.seq_len, keys.seq_len, queries.max_len, batch,
        *_strides(q), *_strides(k), *_strides(v),
        scale * math.log2(math.e), _bucket(queries.max_len), _bucket(keys.max_len),
    )  # fmt: skip

    def grid(meta: dict) -> tuple[int, int]:
        return queries.programs(batch, meta["BLOCK_M"], meta["PACK_TILES"]), heads

    _launch(attention_forward_kernel, _forward_tuned, config, grid, args, constexprs)
    return out_view, lse


def attention_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    key_padding_mask: torch.Tensor | None,
    scale: float,
    causal: bool,
    config: TileConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of attention_forward for the upstream gradient dout (shaped like out, any
    strides); out and lse as attention_forward returned them, other arguments as there.

    Returns dense gradients as (B, H, N, d) views of (B, N, H, d) memory, packed ones contiguous.
    """
    queries, keys, batch, heads, key_mask, constexprs = _common(
        q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, key_padding_mask, causal
    )
    constexprs["ALIGNED"] = _aligned(q, k, v, out, dout)
    lse = lse.contiguous()
    dense = cu_seqlens_q is None
    dq, dq_view = _token_major(q, dense)
    dk, dk_view = _token_major(k, dense)
    dv, dv_view = _token_major(v, dense)
    if heads == 0:
        return dq_view, dk_view, dv_view
    delta = torch.empty(heads, queries.total, dtype=torch.float32, device=q.device)
    if queries.total > 0:
        attention_preprocess_kernel[(triton.cdiv(queries.total, PREPROCESS_BLOCK), heads)](
            out, dout, delta, queries.segments, queries.total, queries.seq_len,
            *_strides(out), *_strides(dout),
            HEAD_DIM=constexprs["HEAD_DIM"], BLOCK_D=constexprs["BLOCK_D"],
            VARLEN=constexprs["VARLEN"], ALIGNED=constexprs["ALIGNED"], BLOCK_M=PREPROCESS_BLOCK,
            num_warps=PREPROCESS_WARPS,
        )  # fmt: skip
    inputs = (
        queries.segments, keys.segments, queries.cu_seqlens, keys.cu_seqlens, key_mask,
    )  # fmt: skip
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(dout))
    scales = (scale, scale * math.log2(math.e), _bucket(queries.max_len), _bucket(keys.max_len))
    if keys.total > 0:
        # Every key tile writes its rows (zeros where no query sees them).
        def dkdv_grid(meta: dict) -> tuple[int, int]:
            return keys.programs(batch, meta["BLOCK_N"], meta["PACK_TILES"]), heads

        args = (
            q, k, v, dout, lse, delta, dk, dv, *inputs,
            queries.total, keys.total, queries.seq_len, keys.seq_len, keys.max_len, batch,
            *strides, *scales,
        )  # fmt: skip
        _launch(attention_dkdv_kernel, _dkdv_tuned, config, dkdv_grid, args, constexprs)
    if queries.total > 0:

        def dq_grid(meta: dict) -> tuple[int, int]:
            return queries.programs(batch, meta["BLOCK_M"], meta["PACK_TILES"]), heads

        args = (
            q, k, v, dout, lse, delta, dq, *inputs,
            queries.total, queries.seq_len, keys.seq_len, queries.max_len, batch,
            *strides, *scales,
        )  # fmt: skip
        _launch(attention_dq_kernel, _dq_tuned, config, dq_grid, args, constexprs)
    return dq_view, dk_view, dv_view


# The sm_90 check compiles the kernels of both modules under this one (sm90_check.KERNEL_MODULES).
COMPILE_SPECS = [*FORWARD_SPECS, *BACKWARD_SPECS]
