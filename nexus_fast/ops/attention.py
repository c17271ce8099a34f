"""Fused attention for ViT-length and variable-length sequences: softmax(q k^T * scale) v.

Vision SSL attends over short sequences (50 to 257 tokens, ~1568 for video), non-causal, head
dim 64, often of different lengths per sample (I-JEPA context and target sets, DINOv2's global
and local crops, data2vec clones). Inputs are dense (B, H, N, d), or packed (total, H, d) with
cu_seqlens offsets; the masking rules are those of nexus_fast.ops.reference.attention.

Backends, fastest first: triton (our flash-attention kernels, packing several short sequences per
tile), sdpa (torch's scaled_dot_product_attention: its flash, cuDNN and efficient kernels on CUDA,
its CPU kernel on the CPU; packed inputs become one dense call per distinct length on the CPU, and
are padded to a dense batch and back on a GPU, where reading the lengths would sync),
xformers (when installed), reference (the definition, in float32).
"""

import importlib.util
import itertools

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    interpreter_reasons,
    interpreting,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dispatch import Backend, Operator, register
from .reference import attention as reference

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_HEAD_DIMS = (32, 64, 80, 96, 128)

# The normalised arguments every backend receives, in this order.
ARGUMENTS = (
    "q",
    "k",
    "v",
    "cu_seqlens_q",
    "cu_seqlens_k",
    "max_seqlen_q",
    "max_seqlen_k",
    "key_padding_mask",
    "scale",
    "causal",
)


# --- packed <-> padded, for backends that only take dense batches -----------------------------


def pad_packed(packed: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    """(total, H, d) -> (B, H, max_seqlen, d) zero-padded, and the (B, max_seqlen) valid mask.

    Index arithmetic on the device only: no host sync.
    """
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    positions = torch.arange(max_seqlen, device=packed.device, dtype=cu_seqlens.dtype)
    valid = positions < lengths.unsqueeze(1)  # (B, max_seqlen)
    index = (cu_seqlens[:-1].unsqueeze(1) + positions).clamp(max=max(packed.shape[0] - 1, 0))
    if packed.shape[0] == 0:
        padded = packed.new_zeros(lengths.shape[0], max_seqlen, *packed.shape[1:])
    else:
        padded = packed[index.long()] * valid[..., None, None]
    return padded.transpose(1, 2), valid


def unpad(padded: Tensor, cu_seqlens: Tensor, total: int) -> Tensor:
    """The inverse of pad_packed: (B, H, max_seqlen, d) -> (total, H, d)."""
    tokens = torch.arange(total, device=padded.device, dtype=cu_seqlens.dtype)
    sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True)
    position = tokens - cu_seqlens[sequence]
    return padded.transpose(1, 2)[sequence, position.long()]


# --- the backends -----------------------------------------------------------------------------


def _safe_key_mask(key_padding_mask: Tensor) -> tuple[Tensor, Tensor]:
    """A key mask without all-False rows (whose softmax is NaN in SDPA and xformers), and which
    samples had at least one real key (their output is zeroed afterwards)."""
    has_keys = key_padding_mask.any(dim=-1, keepdim=True)
    return key_padding_mask | ~has_keys, has_keys


def _dense_sdpa(q, k, v, key_mask, query_mask, scale, causal) -> Tensor:
    """SDPA on a dense batch; key_mask (B, Nk) and query_mask (B, Nq) bool, True = real."""
    n_q, n_k = q.shape[2], k.shape[2]
    if key_mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    keys, has_keys = _safe_key_mask(key_mask)
    mask = keys[:, None, None, :]  # (B, 1, 1, Nk), True = take part
    if causal:
        mask = mask & torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        mask = mask | ~mask.any(dim=-1, keepdim=True)  # rows left without a key by causality
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    rows = has_keys[:, None, :, None]  # (B, 1, 1, 1): samples with no real key give zeros
    if query_mask is not None:
        rows = rows & query_mask[:, None, :, None]
    return out * rows


def _query_mask(key_padding_mask: Tensor | None, n_q: int, n_k: int) -> Tensor | None:
    """A padded self-attention batch (Nq == Nk): the key mask marks the queries too."""
    return key_padding_mask if key_padding_mask is not None and n_q == n_k else None


def _sdpa_by_length(q, k, v, cu_q, cu_k, scale, causal) -> Tensor:
    """Packed attention as one dense SDPA call per distinct (query, key) length pair.

    Reads the lengths on the host, so it is the CPU path (free there); DINOv2's 2 global + 8
    local crops become two dense batches instead of everything padded to the longest crop.
    """
    starts_q, starts_k = cu_q[:-1].tolist(), cu_k[:-1].tolist()
    lengths_q = (cu_q[1:] - cu_q[:-1]).tolist()
    lengths_k = (cu_k[1:] - cu_k[:-1]).tolist()
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, pair in enumerate(zip(lengths_q, lengths_k)):
        buckets.setdefault(pair, []).append(index)
    out = q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    for (n_q, n_k), members in buckets.items():
        if n_q == 0 or n_k == 0:
            continue  # no queries, or queries that see no key: zero rows
        rows_q = _rows([starts_q[i] for i in members], n_q, q.device)
        rows_k = _rows([starts_k[i] for i in members], n_k, q.device)
        dense = [
            t[rows].reshape(len(members), n, t.shape[1], t.shape[2]).transpose(1, 2)
            for t, rows, n in ((q, rows_q, n_q), (k, rows_k, n_k), (v, rows_k, n_k))
        ]
        attended = F.scaled_dot_product_attention(*dense, is_causal=causal, scale=scale)
        out = out.index_copy(0, rows_q, attended.transpose(1, 2).reshape(-1, *out.shape[1:]))
    return out


def _rows(starts: list[int], length: int, device: torch.device) -> Tensor:
    """Token rows of sequences that start at `starts` and have `length` tokens, in order."""
    first = torch.tensor(starts, device=device).unsqueeze(1)
    return (first + torch.arange(length, device=device)).reshape(-1)


def _run_sdpa(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal) -> Tensor:
    if cu_q is None:
        query_mask = _query_mask(key_padding_mask, q.shape[2], k.shape[2])
        return _dense_sdpa(q, k, v, key_padding_mask, query_mask, scale, causal)
    if cu_q.device.type == "cpu" and not torch.compiler.is_compiling():
        return _sdpa_by_length(q, k, v, cu_q, cu_k, scale, causal)
    # On a GPU (or in a compiled graph), no host read: pad every sequence to the longest.
    q_padded, _ = pad_packed(q, cu_q, max_q)  # padded query rows are dropped by unpad
    k_padded, valid_k = pad_packed(k, cu_k, max_k)
    v_padded, _ = pad_packed(v, cu_k, max_k)
    out = _dense_sdpa(q_padded, k_padded, v_padded, valid_k, None, scale, causal)
    return unpad(out, cu_q, q.shape[0])


def _xformers_machine_reason() -> str | None:
    return None if importlib.util.find_spec("xformers") is not None else "xformers is not installed"


def _run_xformers(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal) -> Tensor:
    """xformers' memory-efficient attention; its layout is (B, N, H, d)."""
    import xformers.ops as xops
    from xformers.ops import fmha

    if cu_q is not None:
        # BlockDiagonalMask takes the sequence lengths as Python lists: one host read.
        lengths_q = (cu_q[1:] - cu_q[:-1]).tolist()
        lengths_k = (cu_k[1:] - cu_k[:-1]).tolist()
        mask_type = (
            fmha.attn_bias.BlockDiagonalCausalMask if causal else fmha.attn_bias.BlockDiagonalMask
        )
        bias = mask_type.from_seqlens(q_seqlen=lengths_q, kv_seqlen=lengths_k)
        out = xops.memory_efficient_attention(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_bias=bias, scale=scale
        )
        return out.squeeze(0)
    q_t, k_t, v_t = (t.transpose(1, 2) for t in (q, k, v))
    if key_padding_mask is None:
        bias = fmha.attn_bias.LowerTriangularMask() if causal else None
        return xops.memory_efficient_attention(
            q_t, k_t, v_t, attn_bias=bias, scale=scale
        ).transpose(1, 2)
    # A key mask becomes an additive bias (B, H, Nq, Nk); rows without keys are zeroed after.
    keys, has_keys = _safe_key_mask(key_padding_mask)
    n_q, n_k = q.shape[2], k.shape[2]
    allowed = keys[:, None, None, :].expand(q.shape[0], q.shape[1], n_q, n_k)
    if causal:
        allowed = allowed & torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
    bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~allowed, float("-inf"))
    out = xops.memory_efficient_attention(q_t, k_t, v_t, attn_bias=bias, scale=scale)
    rows = has_keys[:, None, :, None]
    query_mask = _query_mask(key_padding_mask, n_q, n_k)
    if query_mask is not None:
        rows = rows & query_mask[:, None, :, None]
    return out.transpose(1, 2) * rows


def _run_reference(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal) -> Tensor:
    return reference.attention(
        q,
        k,
        v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        key_padding_mask=key_padding_mask,
        scale=scale,
        causal=causal,
    )


# --- the Triton kernels as torch.library ops ----------------------------------------------------


def _reference_forward(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal):
    out, lse = reference.attention_with_lse(
        q,
        k,
        v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        key_padding_mask=key_padding_mask,
        scale=scale,
        causal=causal,
    )
    return _like_kernel_output(out, q), lse


def _reference_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, kpm, scale, causal):
    """Gradients by autograd through the reference (the CPU path of the Triton op)."""
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        expected = _run_reference(*inputs, cu_q, cu_k, max_q, max_k, kpm, scale, causal)
        grads = torch.autograd.grad(expected, inputs, dout)
    return tuple(_like_kernel_output(g, t) for g, t in zip(grads, (q, k, v)))


def _empty_like_kernel_output(like: Tensor, head_dim: int | None = None) -> Tensor:
    """The memory layout of the Triton kernels' outputs: dense (B, H, N, d) as a view of
    (B, N, H, d) memory, so that out.transpose(1, 2).reshape(B, N, H * d) is free."""
    shape = list(like.shape)
    if head_dim is not None:
        shape[-1] = head_dim
    if like.dim() == 3:
        return like.new_empty(shape)
    batch, heads, length, dim = shape
    return like.new_empty(batch, length, heads, dim).transpose(1, 2)


def _like_kernel_output(value: Tensor, like: Tensor) -> Tensor:
    result = _empty_like_kernel_output(like, value.shape[-1])
    return result.copy_(value)


@torch.library.custom_op("nexus_fast::attention_triton", mutates_args=())
def _attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor | None,
    cu_seqlens_k: Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    key_padding_mask: Tensor | None,
    scale: float,
    causal: bool,
) -> tuple[Tensor, Tensor]:
    arguments = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, key_padding_mask)
    if interpreting():
        return _triton_forward(q, k, v, *arguments, scale, causal)
    return _reference_forward(q, k, v, *arguments, scale, causal)


@_attention_triton.register_kernel("cuda")
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, kpm, scale, causal):
    return _triton_forward(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, kpm, scale, causal
    )


@torch.library.custom_op("nexus_fast::attention_backward_triton", mutates_args=())
def _attention_backward_triton(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    cu_seqlens_q: Tensor | None,
    cu_seqlens_k: Tensor | None,
    max_seqlen_q: int,
    max_seqlen_k: int,
    key_padding_mask: Tensor | None,
    scale: float,
    causal: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    arguments = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, key_padding_mask)
    backward = _triton_backward if interpreting() else _reference_backward
    return backward(dout, q, k, v, out, lse, *arguments, scale, causal)


@_attention_backward_triton.register_kernel("cuda")
def _(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, kpm, scale, causal):
    return _triton_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, kpm, scale, causal)


def _triton_forward(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal):
    return triton_function("attention", "attention_forward")(
        q,
        k,
        v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        key_padding_mask=key_padding_mask,
        scale=scale,
        causal=causal,
    )


def _triton_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, kpm, scale, causal):
    return triton_function("attention", "attention_backward")(
        dout,
        q,
        k,
        v,
        out,
        lse,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        key_padding_mask=kpm,
        scale=scale,
        causal=causal,
    )


@_attention_triton.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, kpm, scale, causal):
    total_q = q.shape[0] if q.dim() == 3 else q.shape[0] * q.shape[2]
    lse = q.new_empty(q.shape[-2] if q.dim() == 3 else q.shape[1], total_q, dtype=torch.float32)
    return _empty_like_kernel_output(q, v.shape[-1]), lse


@_attention_backward_triton.register_fake
def _(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, kpm, scale, causal):
    return tuple(_empty_like_kernel_output(t) for t in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, key_padding_mask)
    ctx.options = (max_q, max_k, scale, causal)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout: Tensor, dlse: Tensor | None):
    q, k, v, out, lse, cu_q, cu_k, key_padding_mask = ctx.saved_tensors
    max_q, max_k, scale, causal = ctx.options
    dq, dk, dv = _attention_backward_triton(
        dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal
    )
    return dq, dk, dv, None, None, None, None, None, None, None


_attention_triton.register_autograd(_backward, setup_context=_setup_context)


def _run_triton(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal) -> Tensor:
    out, _ = _attention_triton(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal)
    return out


def _triton_input_reasons(q, k, v, cu_q, cu_k, max_q, max_k, kpm, scale, causal) -> list[str]:
    reasons = triton_reasons(q)
    if q.dtype not in TRITON_DTYPES:
        reasons.append(f"dtype {q.dtype} is not float32, float16 or bfloat16")
    if q.shape[-1] not in TRITON_HEAD_DIMS or v.shape[-1] != q.shape[-1]:
        reasons.append(
            f"head dims q {q.shape[-1]} / v {v.shape[-1]}: the kernels take one head dim in "
            f"{TRITON_HEAD_DIMS}"
        )
    return reasons


# --- the operator -----------------------------------------------------------------------------

ATTENTION = register(
    Operator(
        "attention",
        [
            Backend(
                "triton",
                _run_triton,
                triton_machine_reason,
                _triton_input_reasons,
                lambda q, *rest: interpreter_reasons(q),
            ),
            Backend(
                "sdpa",
                _run_sdpa,
                input_reasons=lambda q, *rest: (
                    [] if q.device.type in ("cpu", "cuda") else [f"SDPA on {q.device} untested"]
                ),
            ),
            Backend(
                "xformers",
                _run_xformers,
                _xformers_machine_reason,
                lambda q, *rest: [] if q.is_cuda else ["xformers runs CUDA tensors only"],
            ),
            Backend("reference", _run_reference),
        ],
    )
)


def _check_tensors(q: Tensor, k: Tensor, v: Tensor, packed: bool) -> None:
    for name, value in (("q", q), ("k", k), ("v", v)):
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating Tensor, got {getattr(value, 'dtype', value)}"
            )
    if not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device:
        raise ValueError(
            f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
            f"{q.device}/{k.device}/{v.device}"
        )
    layout = "(total, H, d) with cu_seqlens" if packed else "(B, H, N, d)"
    if any(t.dim() != (3 if packed else 4) for t in (q, k, v)):
        raise ValueError(
            f"expected {layout} for q, k, v, got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}"
        )
    leading = slice(1, 2) if packed else slice(0, 2)  # (H,) or (B, H)
    if (
        not (q.shape[leading] == k.shape[leading] == v.shape[leading])
        or k.shape[:-1] != v.shape[:-1]
    ):
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not agree: "
            f"{'heads' if packed else 'batch and heads'} must match, and k, v share their lengths"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} and {k.shape[-1]}")


def _offsets(cu_seqlens: Tensor, total: int, name: str) -> Tensor:
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"{name} must be a 1-D tensor of B + 1 offsets, got {cu_seqlens!r}")
    if cu_seqlens.is_floating_point():
        raise TypeError(f"{name} must be an integer tensor, got {cu_seqlens.dtype}")
    cu_seqlens = cu_seqlens.to(torch.int32)
    if cu_seqlens.device.type == "cpu" and not torch.compiler.is_compiling():
        values = cu_seqlens.tolist()
        rising = all(a <= b for a, b in itertools.pairwise(values))
        if values[0] != 0 or values[-1] != total or not rising:
            raise ValueError(f"{name} must rise from 0 to the {total} packed tokens, got {values}")
    return cu_seqlens


def _max_length(cu_seqlens: Tensor, given: int | None) -> int:
    if given is not None:
        return int(given)
    # Read from the offsets: one host sync on a GPU (pass max_seqlen to avoid it).
    return int((cu_seqlens[1:] - cu_seqlens[:-1]).max())


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    cu_seqlens: Tensor | None = None,
    max_seqlen: int | None = None,
    cu_seqlens_q: Tensor | None = None,
    cu_seqlens_k: Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    causal: bool = False,
    backend: str | None = None,
) -> Tensor:
    """softmax(q k^T * scale) v for dense or packed variable-length sequences.

    Args:
        q, k, v: dense (B, H, Nq, d) and (B, H, Nk, d), or packed (total_q, H, d) and
            (total_k, H, d); any strides (e.g. views of a fused qkv projection, no copies).
            float32, float16 or bfloat16.
        cu_seqlens: (B + 1,) offsets of packed self-attention (sequence i is rows
            cu_seqlens[i]:cu_seqlens[i + 1] of q, k and v); int32 (other integers converted).
        max_seqlen: the longest sequence (read from cu_seqlens when omitted: a host sync).
        cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: packed cross-attention, where
            queries and keys have their own lengths (predictors, attentive probes).
        key_padding_mask: (B, Nk) bool for dense inputs, True where the key is real (as SDPA's
            boolean masks): padded keys get zero weight; when Nq == Nk it marks the queries too,
            whose rows come back zero, with zero gradients.
        scale: default 1 / sqrt(d).
        causal: query i sees keys j <= i of its own sequence (q and k lengths must be equal).
        backend: force "triton", "sdpa", "xformers" or "reference" (see NEXUS_FAST_BACKEND).

    Returns:
        Dense (B, H, Nq, d_v) or packed (total_q, H, d_v). A query that sees no key gets a zero
        row, not NaN.

    Raises:
        TypeError, ValueError: inconsistent shapes, dtypes, devices or offsets (the message names
            them). BackendError: a forced backend cannot run these inputs.

    Example:
        >>> qkv = torch.randn(2, 50, 3, 4, 64).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d) views
        >>> attention(*qkv.unbind(0)).shape
        torch.Size([2, 4, 50, 64])
    """
    if cu_seqlens is not None:
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            raise ValueError("pass cu_seqlens (self-attention) or cu_seqlens_q/_k, not both")
        cu_seqlens_q = cu_seqlens_k = cu_seqlens
        max_seqlen_q = max_seqlen_k = max_seqlen
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError("packed cross-attention needs both cu_seqlens_q and cu_seqlens_k")
    packed = cu_seqlens_q is not None
    _check_tensors(q, k, v, packed)
    if packed:
        if key_padding_mask is not None:
            raise ValueError("key_padding_mask is for dense inputs; packed inputs have no padding")
        same_offsets = cu_seqlens_q is cu_seqlens_k
        cu_seqlens_q = _offsets(cu_seqlens_q, q.shape[0], "cu_seqlens_q")
        cu_seqlens_k = (
            cu_seqlens_q if same_offsets else _offsets(cu_seqlens_k, k.shape[0], "cu_seqlens_k")
        )
        if cu_seqlens_q.shape != cu_seqlens_k.shape:
            raise ValueError(
                f"cu_seqlens_q and cu_seqlens_k hold {cu_seqlens_q.numel() - 1} and "
                f"{cu_seqlens_k.numel() - 1} sequences"
            )
        if causal and not same_offsets:
            raise ValueError("causal packed attention needs equal q and k lengths: pass cu_seqlens")
        max_seqlen_q = _max_length(cu_seqlens_q, max_seqlen_q)
        max_seqlen_k = max_seqlen_q if same_offsets else _max_length(cu_seqlens_k, max_seqlen_k)
    else:
        max_seqlen_q, max_seqlen_k = q.shape[2], k.shape[2]
        if key_padding_mask is not None and (
            key_padding_mask.dtype != torch.bool
            or tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2])
        ):
            raise ValueError(
                f"key_padding_mask must be bool (B, Nk) = ({k.shape[0]}, {k.shape[2]}), got "
                f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
            )
        if causal and max_seqlen_q != max_seqlen_k:
            raise ValueError(
                f"causal attention needs Nq == Nk, got {max_seqlen_q} and {max_seqlen_k}"
            )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    arguments = (
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        key_padding_mask,
        scale,
        bool(causal),
    )
    return ATTENTION.select(*arguments, backend=backend).run(*arguments)
