"""The xformers backend's adapter (layouts, masks, varlen) against a stand-in for xformers.ops.

xformers is not installed here, and it runs CUDA tensors only; the stand-in implements the part of
its API the adapter uses (memory_efficient_attention on (B, M, H, K) tensors with a tensor bias,
LowerTriangularMask, BlockDiagonalMask / BlockDiagonalCausalMask.from_seqlens) by the definition,
so these tests check our calls, not xformers. On a GPU with xformers installed, the attention tests
run the real library through dispatch.
"""

import sys
import types

import pytest
import torch

from nexus_fast.ops.attention import _run_xformers
from nexus_fast.ops.reference.attention import attention as reference


class _LowerTriangularMask:
    pass


class _BlockDiagonalMask:
    causal = False

    def __init__(self, q_seqlen: list[int], kv_seqlen: list[int]) -> None:
        self.q_seqlen, self.kv_seqlen = q_seqlen, kv_seqlen

    @classmethod
    def from_seqlens(cls, q_seqlen: list[int], kv_seqlen: list[int]):
        return cls(q_seqlen, kv_seqlen)


class _BlockDiagonalCausalMask(_BlockDiagonalMask):
    causal = True


def _memory_efficient_attention(query, key, value, attn_bias=None, scale=None):
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, H, M, K)
    if isinstance(attn_bias, _BlockDiagonalMask):
        cu_q = torch.tensor([0, *attn_bias.q_seqlen]).cumsum(0).to(torch.int32)
        cu_k = torch.tensor([0, *attn_bias.kv_seqlen]).cumsum(0).to(torch.int32)
        out = reference(
            q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
            cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, scale=scale, causal=attn_bias.causal,
        )  # fmt: skip
        return out.unsqueeze(0)
    scores = (q @ k.transpose(-2, -1)) * scale
    if isinstance(attn_bias, _LowerTriangularMask):
        scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).tril(), -torch.inf)
    elif attn_bias is not None:
        scores = scores + attn_bias
    return (torch.softmax(scores, -1) @ v).transpose(1, 2)


@pytest.fixture
def fake_xformers(monkeypatch: pytest.MonkeyPatch) -> None:
    attn_bias = types.SimpleNamespace(
        LowerTriangularMask=_LowerTriangularMask,
        BlockDiagonalMask=_BlockDiagonalMask,
        BlockDiagonalCausalMask=_BlockDiagonalCausalMask,
    )
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = _memory_efficient_attention
    ops.fmha = types.SimpleNamespace(attn_bias=attn_bias)
    package = types.ModuleType("xformers")
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


@pytest.mark.parametrize("causal", [False, True])
def test_dense_layouts_and_masks(fake_xformers, causal: bool) -> None:
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    mask = torch.tensor([[True] * 4 + [False] * 2, [False] * 6])
    for key_padding_mask in (None, mask):
        out = _run_xformers(q, k, v, None, None, 6, 6, key_padding_mask, 0.3, causal)
        expected = reference(q, k, v, key_padding_mask=key_padding_mask, scale=0.3, causal=causal)
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_sequences(fake_xformers, causal: bool) -> None:
    cu = torch.tensor([0, 2, 7], dtype=torch.int32)
    q, k, v = (torch.randn(7, 3, 8) for _ in range(3))
    out = _run_xformers(q, k, v, cu, cu, 5, 5, None, 0.3, causal)
    expected = reference(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, scale=0.3, causal=causal)
    torch.testing.assert_close(out, expected)
