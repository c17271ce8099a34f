"""Reference attention: softmax(q k^T * scale) v, written out, with the masking rules of
nexus_fast.ops.attention.

Layouts:
- dense: q (B, H, Nq, d), k and v (B, H, Nk, d);
- packed varlen: q (total_q, H, d), k and v (total_k, H, d), with cu_seqlens_q / cu_seqlens_k
  (B + 1,) int32 offsets: sequence i is rows cu[i]:cu[i + 1] (self-attention passes the same
  offsets twice).

Masking rules (every backend follows them):
- key_padding_mask (B, Nk) bool, dense only, True where the key is real: masked keys get zero
  weight. When Nq == Nk (a padded self-attention batch) it marks the queries too: the rows of
  masked queries are zero, and so are their gradients.
- causal: query i sees keys j <= i of its own sequence (q and k lengths must be equal).
- a query that sees no key at all gets a zero row (not NaN).
"""

import torch
from torch import Tensor


def _attend(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, scale: float
) -> tuple[Tensor, Tensor]:
    """(..., Nq, d) x (..., Nk, d) with a broadcastable (..., Nq, Nk) bool `allowed`.

    Returns the output and the log-sum-exp of each row's scaled scores (+inf for a row that sees
    no key, so that exp(score - lse) is 0 there).
    """
    scores = (q @ k.transpose(-2, -1)) * scale
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    lse = lse.masked_fill(lse == float("-inf"), float("inf"))
    # A row without any allowed key: softmax of all -inf is NaN; it is defined as zero here.
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, lse


def _causal(n_q: int, n_k: int, device: torch.device) -> Tensor:
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()


def attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    cu_seqlens_q: Tensor | None = None,
    cu_seqlens_k: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    causal: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention by the definition, differentiable by autograd, and its log-sum-exp.

    Args:
        q, k, v: dense (B, H, N, d) or packed (total, H, d) (with cu_seqlens_q and cu_seqlens_k).
        cu_seqlens_q, cu_seqlens_k: (B + 1,) offsets of the packed sequences.
        key_padding_mask: (B, Nk) bool, True for real keys (dense only).
        scale: default 1 / sqrt(d).
        causal: query i sees keys <= i of its sequence.
        compute_dtype: the precision of the arithmetic (default: float32, or float64 for float64
            inputs); the result is cast back to q's dtype. Tests pass q's own low precision here to
            measure the error of a naive computation.

    Returns:
        out (shaped like q, with v's head dimension) and lse, float32 (H, total_q) where a dense
        query (b, n) is token b * Nq + n.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    compute = compute_dtype or torch.promote_types(q.dtype, torch.float32)
    q_c, k_c, v_c = (t.to(compute) for t in (q, k, v))
    if cu_seqlens_q is not None:
        out = torch.zeros(q.shape[0], q.shape[1], v.shape[-1], dtype=compute, device=q.device)
        lse = torch.full((q.shape[1], q.shape[0]), float("inf"), dtype=compute, device=q.device)
        starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
        for i in range(len(starts_q) - 1):
            rows = slice(starts_q[i], starts_q[i + 1])
            keys = slice(starts_k[i], starts_k[i + 1])
            n_q, n_k = rows.stop - rows.start, keys.stop - keys.start
            allowed = _causal(n_q, n_k, q.device) if causal else None
            # (n, H, d) -> (H, n, d) for the product, and back.
            attended, lse[:, rows] = _attend(
                q_c[rows].transpose(0, 1),
                k_c[keys].transpose(0, 1),
                v_c[keys].transpose(0, 1),
                allowed,
                scale,
            )
            out[rows] = attended.transpose(0, 1)
        return out.to(q.dtype), lse.float()
    batch, heads, n_q = q.shape[:3]
    n_k = k.shape[2]
    allowed = None
    if key_padding_mask is not None:
        allowed = key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk)
    if causal:
        tril = _causal(n_q, n_k, q.device)
        allowed = tril if allowed is None else allowed & tril
    out, lse = _attend(q_c, k_c, v_c, allowed, scale)
    if key_padding_mask is not None and n_q == n_k:
        out = out * key_padding_mask[:, None, :, None]  # padded queries: zero rows
    lse = lse.permute(1, 0, 2).reshape(heads, batch * n_q)
    return out.to(q.dtype), lse.float()


def attention(q: Tensor, k: Tensor, v: Tensor, **options) -> Tensor:
    """Attention by the definition (see attention_with_lse for the arguments)."""
    return attention_with_lse(q, k, v, **options)[0]
