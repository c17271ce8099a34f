"""ViT building blocks, one concern per file, in timm's names (so state dicts load across the
ecosystem): patch embedding, position embeddings, 3D RoPE, attention on nexus_fast.ops.attention,
MLPs, LayerScale, DropPath, and the transformer Block."""

from .attention import Attention, TokenLayout
from .block import Block
from .drop_path import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp, SwiGLU
from .patch_embed import PatchEmbed
from .pos_embed import interpolate_pos_embed, sincos_pos_embed
from .rope import RotaryEmbedding3D

__all__ = [
    "Attention",
    "Block",
    "DropPath",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "RotaryEmbedding3D",
    "SwiGLU",
    "TokenLayout",
    "interpolate_pos_embed",
    "sincos_pos_embed",
]
