"""The pre-norm transformer block: x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x))), with
stochastic depth on both branches (timm's names: norm1, attn, ls1, norm2, mlp, ls2)."""

from torch import Tensor, nn

from .attention import DENSE, Attention, TokenLayout
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp, SwiGLU
from .rope import RotaryEmbedding3D


class Block(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        layer_scale_init: float | None = None,
        mlp: str = "gelu",
        norm_eps: float = 1e-6,
        rope: RotaryEmbedding3D | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **factory)
        self.attn = Attention(dim, num_heads, qkv_bias, rope, **factory)
        self.ls1 = (
            LayerScale(dim, layer_scale_init, **factory) if layer_scale_init else nn.Identity()
        )
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **factory)
        if mlp == "swiglu":
            # DINOv2's width: two thirds of the GELU MLP's, rounded up to a multiple of 8.
            hidden = (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8
            self.mlp = SwiGLU(dim, hidden, **factory)
        else:
            self.mlp = Mlp(dim, int(dim * mlp_ratio), **factory)
        self.ls2 = (
            LayerScale(dim, layer_scale_init, **factory) if layer_scale_init else nn.Identity()
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self,
        x: Tensor,
        layout: TokenLayout = DENSE,
        positions: Tensor | None = None,
        return_ffn: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, N, D) or packed (total, D). With return_ffn, also the FFN's output (before the
        residual): data2vec 2.0's per-layer targets."""
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), layout, positions)))
        ffn = self.mlp(self.norm2(x))
        x = x + self.drop_path(self.ls2(ffn))
        return (x, ffn) if return_ffn else x
