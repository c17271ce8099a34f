"""The Vision Transformer family every method uses: images and video, cls token and registers,
sin-cos / learned position embeddings or 3D RoPE, LayerScale, stochastic depth; it embeds and
processes only the patches it is given (MAE's visible patches, I-JEPA's context blocks).

State-dict names follow timm's VisionTransformer (patch_embed.proj, cls_token, reg_token,
pos_embed, blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2 / ls1.gamma, norm),
so weights move between nexus_fast, timm and the official repositories (models/checkpoints.py).
"""

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import ops
from ..config import build_config, require
from ..layers import (
    Block,
    LayerScale,
    PatchEmbed,
    RotaryEmbedding3D,
    TokenLayout,
    interpolate_pos_embed,
    sincos_pos_embed,
)
from ..layers.attention import DENSE

# (embed_dim, depth, num_heads) of the standard sizes.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1408, 40, 16),
}


@dataclass
class ViTConfig:
    """A Vision Transformer's shape. Video when num_frames > 1 (tubelets of `tubelet` frames)."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_frames: int = 1
    tubelet: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    mlp: Literal["gelu", "swiglu"] = "gelu"
    cls_token: bool = True
    num_registers: int = 0
    pos_embed: Literal["sincos", "learned", "rope"] = "sincos"
    layer_scale_init: float | None = None
    drop_path: float = 0.0
    drop_path_uniform: bool = False  # DINOv2: every block at drop_path (else 0 -> drop_path)
    mask_token: bool = False  # iBOT / DINOv2: a learned token for masked patches (embed(mask=))
    norm_eps: float = 1e-6
    grad_checkpointing: bool = False

    def validate(self) -> None:
        for key in ("img_size", "patch_size", "in_chans", "num_frames", "tubelet", "depth"):
            require(getattr(self, key) > 0, key, getattr(self, key), "a positive integer")
        require(
            self.img_size % self.patch_size == 0,
            "img_size",
            self.img_size,
            f"a multiple of patch_size {self.patch_size}",
        )
        require(
            self.num_frames % self.tubelet == 0,
            "num_frames",
            self.num_frames,
            f"a multiple of tubelet {self.tubelet}",
        )
        require(
            self.num_heads > 0 and self.embed_dim % self.num_heads == 0,
            "num_heads",
            self.num_heads,
            f"a positive divisor of embed_dim {self.embed_dim}",
        )
        require(0.0 <= self.drop_path < 1.0, "drop_path", self.drop_path, "in [0, 1)")
        require(self.num_registers >= 0, "num_registers", self.num_registers, ">= 0")
        require(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "> 0")
        if self.pos_embed == "rope":
            require(
                not self.cls_token and self.num_registers == 0,
                "pos_embed",
                self.pos_embed,
                "'rope' only without cls token and registers (V-JEPA 2's encoder)",
            )

    @property
    def video(self) -> bool:
        return self.num_frames > 1

    @property
    def grid(self) -> tuple[int, ...]:
        side = self.img_size // self.patch_size
        return (self.num_frames // self.tubelet, side, side) if self.video else (side, side)

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.cls_token) + self.num_registers


def vit_config(preset: str | None = None, **overrides) -> ViTConfig:
    """A validated ViTConfig: a preset's width, depth and heads, then the overrides."""
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not allowed: one of {', '.join(PRESETS)}")
        values.update(zip(("embed_dim", "depth", "num_heads"), PRESETS[preset]))
    values.update(overrides)
    return build_config(ViTConfig, values)


@dataclass
class ViTFeatures:
    """What forward_features returns (DINOv2's names in the docstrings).

    Attributes:
        tokens: (B, prefix + K, D) after the final norm.
        prenorm: (B, prefix + K, D) before it (x_prenorm).
        num_prefix_tokens: cls + registers at the front of the token axis.
        layers: the per-block outputs asked for with `collect` (block outputs or FFN outputs).
    """

    tokens: Tensor
    prenorm: Tensor
    num_prefix_tokens: int
    has_cls: bool
    layers: list[Tensor] = field(default_factory=list)

    @property
    def cls(self) -> Tensor | None:
        """(B, D) x_norm_clstoken."""
        return self.tokens[:, 0] if self.has_cls else None

    @property
    def registers(self) -> Tensor:
        """(B, R, D) x_norm_regtokens."""
        return self.tokens[:, int(self.has_cls) : self.num_prefix_tokens]

    @property
    def patch_tokens(self) -> Tensor:
        """(B, K, D) x_norm_patchtokens."""
        return self.tokens[:, self.num_prefix_tokens :]


class VisionTransformer(nn.Module):
    """A ViT encoder (no classification head).

    Args:
        config: a ViTConfig or a dict of its fields (validated).
        device, dtype: where to build the parameters; "meta" builds without memory (then
            `to_empty(device=...)` and `init_weights()`).
    """

    def __init__(self, config: ViTConfig | dict | None = None, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config = build_config(ViTConfig, config)
        factory = {"device": device, "dtype": dtype}
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(
            config.patch_size, config.in_chans, dim, config.tubelet, config.video, **factory
        )
        self.cls_token = (
            nn.Parameter(torch.zeros(1, 1, dim, **factory)) if config.cls_token else None
        )
        self.reg_token = (
            nn.Parameter(torch.zeros(1, config.num_registers, dim, **factory))
            if config.num_registers
            else None
        )
        self.mask_token = (
            nn.Parameter(torch.zeros(1, dim, **factory)) if config.mask_token else None
        )
        if config.pos_embed == "rope":
            self.pos_embed = None
            rope = RotaryEmbedding3D(dim // config.num_heads, self._grid3(config.grid))
        else:
            length = config.num_patches + int(config.cls_token)
            self.pos_embed = nn.Parameter(
                torch.zeros(1, length, dim, **factory),
                requires_grad=config.pos_embed == "learned",
            )
            rope = None
        # Stochastic depth rates (on the CPU: also under a `with torch.device("meta")` context).
        rates = torch.linspace(0, config.drop_path, config.depth, device="cpu").tolist()
        if config.drop_path_uniform:
            rates = [config.drop_path] * config.depth
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.num_heads,
                config.mlp_ratio,
                config.qkv_bias,
                rate,
                config.layer_scale_init,
                config.mlp,
                config.norm_eps,
                rope,
                **factory,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps, **factory)
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    @staticmethod
    def _grid3(grid: tuple[int, ...]) -> tuple[int, int, int]:
        return grid if len(grid) == 3 else (1, *grid)

    @torch.no_grad()
    def init_weights(self) -> None:
        """MAE/timm initialisation: truncated normal (0.02) linears, xavier patch embedding,
        sin-cos position embeddings computed, learned ones and tokens N(0, 0.02)."""
        weight = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        for token in (self.cls_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=0.02)
        if self.mask_token is not None:
            nn.init.zeros_(self.mask_token)
        if self.pos_embed is not None:
            if self.config.pos_embed == "sincos":
                table = sincos_pos_embed(
                    self.config.embed_dim, self.config.grid, self.config.cls_token
                )
                self.pos_embed.copy_(table.unsqueeze(0))
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                module.reset_parameters()
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    @property
    def num_prefix_tokens(self) -> int:
        return self.config.num_prefix_tokens

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def grid_of(self, x: Tensor) -> tuple[int, ...]:
        """The patch grid of an input batch (another image size than the config's is allowed)."""
        from ..ops.patches import grid_shape

        return grid_shape(tuple(x.shape[2:]), self.config.patch_size, self.config.tubelet)

    def patch_pos_embed(self, grid: tuple[int, ...]) -> Tensor | None:
        """(1, L, D) position embeddings of the patches of `grid`, resized when it differs."""
        if self.pos_embed is None:
            return None
        table = self.pos_embed[:, int(self.config.cls_token) :]
        if tuple(grid) == tuple(self.config.grid):
            return table
        if len(grid) != 2:
            raise ValueError(f"position embeddings resize for images only, got grid {grid}")
        return interpolate_pos_embed(table, self.config.grid, grid)

    def embed(self, x: Tensor, ids: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Patch embedding of the patches ids (all when None) + positions + cls/registers:
        (B, prefix + K, D).

        mask: (B, L) bool (all patches only): those patches' embeddings are replaced by the mask
        token before the position embedding is added (iBOT, DINOv2's prepare_tokens_with_masks).
        """
        tokens = self.patch_embed(x, ids)
        if mask is not None:
            if self.mask_token is None or ids is not None:
                raise ValueError("embed(mask=...) needs mask_token=True and every patch (ids=None)")
            filler = self.mask_token.to(tokens.dtype).unsqueeze(0)  # (1, 1, D)
            tokens = torch.where(mask.unsqueeze(-1), filler, tokens)
        pos = self.patch_pos_embed(self.grid_of(x))
        if pos is not None:
            pos = pos.to(tokens.dtype)
            tokens = tokens + (pos if ids is None else ops.gather_tokens(pos, ids))
        prefix = []
        if self.cls_token is not None:
            cls = self.cls_token
            if self.pos_embed is not None:
                cls = cls + self.pos_embed[:, :1]
            prefix.append(cls.to(tokens.dtype).expand(tokens.shape[0], -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1))
        return torch.cat([*prefix, tokens], dim=1) if prefix else tokens

    def run_blocks(
        self,
        x: Tensor,
        layout: TokenLayout = DENSE,
        positions: Tensor | None = None,
        collect: Literal["blocks", "ffn"] | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Every block over tokens x (dense (B, N, D) or packed (total, D)); returns the output
        before the final norm and, with `collect`, each block's output or FFN output."""
        layers = []
        for block in self.blocks:
            if self.config.grad_checkpointing and self.training and torch.is_grad_enabled():
                out = checkpoint(block, x, layout, positions, collect == "ffn", use_reentrant=False)
            else:
                out = block(x, layout, positions, return_ffn=collect == "ffn")
            if collect == "ffn":
                x, ffn = out
                layers.append(ffn)
            else:
                x = out
                if collect == "blocks":
                    layers.append(x)
        return x, layers

    def forward_features(
        self,
        x: Tensor,
        ids: Tensor | None = None,
        valid: Tensor | None = None,
        collect: Literal["blocks", "ffn"] | None = None,
    ) -> ViTFeatures:
        """Encodes only the patches `ids` (B, K) of x (all patches when None).

        Args:
            x: images (B, C, H, W) or video (B, C, T, H, W).
            ids: patch indices to encode, e.g. MAE's ids_keep or I-JEPA's context.
            valid: (B, K) bool, False for padding of variable-length ids (masked in attention).
            collect: "blocks" keeps every block's output, "ffn" every FFN output (data2vec 2.0).
        """
        tokens = self.embed(x, ids)
        layout = DENSE
        if valid is not None:
            prefix = valid.new_ones(valid.shape[0], self.num_prefix_tokens)
            layout = TokenLayout(key_padding_mask=torch.cat([prefix, valid], dim=1))
        positions = None
        if self.config.pos_embed == "rope":
            rope = self.blocks[0].attn.rope
            if ids is None:
                ids = torch.arange(tokens.shape[1], device=x.device).expand(tokens.shape[0], -1)
            positions = rope.positions(ids, self._grid3(self.grid_of(x)))
        prenorm, layers = self.run_blocks(tokens, layout, positions, collect)
        return ViTFeatures(
            self.norm(prenorm), prenorm, self.num_prefix_tokens, self.cls_token is not None, layers
        )

    def forward(self, x: Tensor, ids: Tensor | None = None, valid: Tensor | None = None) -> Tensor:
        """The normalised tokens (B, prefix + K, D) of the patches ids (all when None)."""
        return self.forward_features(x, ids, valid).tokens

    def forward_packed(
        self, crops: list[Tensor], masks: list[Tensor | None] | None = None
    ) -> list[Tensor]:
        """Several batches of different sizes (DINOv2's global and local crops) through the
        blocks as ONE packed varlen batch (DINOv2's forward_features_list on a block-diagonal
        mask); returns each batch's normalised tokens (B_i, N_i, D). masks[i]: embed's mask."""
        if self.config.pos_embed == "rope":
            raise ValueError("forward_packed needs position embeddings, not RoPE")
        masks = masks if masks is not None else [None] * len(crops)
        embedded = [self.embed(crop, mask=mask) for crop, mask in zip(crops, masks)]
        if len(embedded) == 1:
            tokens, _ = self.run_blocks(embedded[0])
            return [self.norm(tokens)]
        lengths = [t.shape[1] for t in embedded for _ in range(t.shape[0])]
        offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        layout = TokenLayout(
            cu_seqlens=offsets.to(crops[0].device), max_seqlen=max(t.shape[1] for t in embedded)
        )
        packed = torch.cat([t.reshape(-1, t.shape[-1]) for t in embedded])  # (total, D)
        tokens, _ = self.run_blocks(packed, layout)
        pieces = self.norm(tokens).split([t.shape[0] * t.shape[1] for t in embedded])
        return [piece.reshape(t.shape) for piece, t in zip(pieces, embedded)]

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | list[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """DINOv2's get_intermediate_layers: the patch tokens of the last n blocks (or of the
        blocks indexed by n), normalised by the final norm when `norm`; reshaped to (B, D, h, w)
        when `reshape`; paired with the class token when `return_class_token`."""
        depth = len(self.blocks)
        indices = list(range(depth - n, depth)) if isinstance(n, int) else list(n)
        if any(not 0 <= i < depth for i in indices):
            raise ValueError(f"layer indices {indices} outside [0, {depth})")
        features = self.forward_features(x, collect="blocks")
        outputs = [features.layers[i] for i in indices]
        if norm:
            outputs = [self.norm(out) for out in outputs]
        classes = [out[:, 0] for out in outputs]
        patches = [out[:, self.num_prefix_tokens :] for out in outputs]
        if reshape:
            grid = self.grid_of(x)
            patches = [
                p.reshape(p.shape[0], *grid, -1).movedim(-1, 1).contiguous() for p in patches
            ]
        if return_class_token:
            return tuple(zip(patches, classes))
        return tuple(patches)

    def load_pretrained(self, source, strict: bool = True, **options):
        """Loads our, timm's, or the official MAE / I-JEPA / DINOv2 weights: see
        nexus_fast.models.checkpoints.load_pretrained."""
        from .checkpoints import load_pretrained

        return load_pretrained(self, source, strict=strict, **options)
