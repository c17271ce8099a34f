"""Multi-head self-attention with a fused qkv projection, on nexus_fast.ops.attention.

Tokens come dense (B, N, D), optionally with a key padding mask (variable-length sets padded to
one length), or packed (total, D) with cu_seqlens (sequences of different lengths in one batch,
e.g. DINOv2's global and local crops): `TokenLayout` says which. q, k and v are strided views of
the one qkv projection, read in place by the kernels.
"""

from dataclasses import dataclass

from torch import Tensor, nn

from .. import ops
from .rope import RotaryEmbedding3D


@dataclass(frozen=True)
class TokenLayout:
    """How the tokens of a batch are laid out for attention.

    Attributes:
        key_padding_mask: (B, N) bool, True for real tokens, for dense tokens with padding.
        cu_seqlens: (S + 1,) int32 offsets when the tokens are packed (total, D).
        max_seqlen: the longest packed sequence (an int, so no host sync is needed).
    """

    key_padding_mask: Tensor | None = None
    cu_seqlens: Tensor | None = None
    max_seqlen: int | None = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


DENSE = TokenLayout()


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rope: RotaryEmbedding3D | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide the width {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.rope = rope

    def forward(
        self, x: Tensor, layout: TokenLayout = DENSE, positions: Tensor | None = None
    ) -> Tensor:
        """x (B, N, D) dense or (total, D) packed; positions (B, N, 3) for RoPE (dense only)."""
        heads, head_dim = self.num_heads, self.head_dim
        if layout.packed:
            total, width = x.shape
            q, k, v = self.qkv(x).reshape(total, 3, heads, head_dim).unbind(1)  # (T, H, d)
            out = ops.attention(q, k, v, cu_seqlens=layout.cu_seqlens, max_seqlen=layout.max_seqlen)
            return self.proj(out.reshape(total, width))
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, d) views of one projection
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        out = ops.attention(q, k, v, key_padding_mask=layout.key_padding_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))
