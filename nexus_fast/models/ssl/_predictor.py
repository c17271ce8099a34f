"""What I-JEPA and V-JEPA 2 share: the narrow-ViT predictor, the official initialisation of their
transformers, the EMA momentum schedule, and the target-encoder bookkeeping (JEPATeacherModel).

The predictor (facebookresearch/ijepa src/models/vision_transformer.py VisionTransformerPredictor;
facebookresearch/vjepa2 src/models/predictor.py) maps the context encoder's tokens to its own
width, appends one learned mask token per patch to predict, runs a stack of transformer blocks
over context and mask tokens together, and projects the mask tokens' outputs back to the
encoder's width. Positions enter as fixed sin-cos embeddings added to both kinds of token
(I-JEPA) or as 3D RoPE inside attention (V-JEPA 2).

State-dict names are the official ones (predictor_embed, predictor_pos_embed, predictor_blocks,
predictor_norm, predictor_proj), except the mask tokens: a ParameterList `mask_tokens.{i}` of
(1, 1, dim) tokens (V-JEPA 2's layout; I-JEPA's single `mask_token` is `mask_tokens.0`).
"""

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ... import ops
from ...config import require
from ...layers import Block, RotaryEmbedding3D, TokenLayout, sincos_pos_embed
from ...layers.attention import DENSE
from ..vit import VisionTransformer
from ._base import SSLModel, frozen_copy
from ._heads import pooled

INIT_STD = 0.02  # the official init_std of every linear layer, conv and mask token


@torch.no_grad()
def official_init_(module: nn.Module, blocks: nn.ModuleList) -> None:
    """The official JEPA initialisation of a transformer (encoder or predictor), in place.

    Linear and convolution weights truncated normal (std 0.02) with zero biases, LayerNorms at
    (1, 0), then each block's residual projections (attn.proj, mlp.fc2) divided by
    sqrt(2 * depth index), counted from 1 (the official `fix_init_weight` / `_rescale_blocks`).
    Position tables and tokens are left alone.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(layer.weight, std=INIT_STD)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    for depth_index, block in enumerate(blocks, start=1):
        block.attn.proj.weight.div_(math.sqrt(2.0 * depth_index))
        block.mlp.fc2.weight.div_(math.sqrt(2.0 * depth_index))


def init_jepa_encoder_(encoder: nn.Module, patch_embed_init: str) -> None:
    """A JEPA encoder's initialisation: `official_init_`, then, with patch_embed_init="xavier",
    the patch embedding re-drawn xavier-uniform over the flattened patch (the ViT default).

    Why the choice: the official truncated normal (std 0.02) makes a token's content scale with
    the square root of the patch's input count. At 14 x 14 x 3 = 588 inputs it is about the size
    of the sin-cos position table; at 4 x 4 x 1 = 16 (28 px greyscale) it is 6x smaller, the
    layer-normed targets are 96% position at initialisation, and a predictor that ignores the
    image already reaches a low loss (docs/results.md). Xavier's scale does not shrink with the
    input count.
    """
    official_init_(encoder, encoder.blocks)
    if patch_embed_init == "xavier":
        weight = encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))


def linear_momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """The JEPA teacher momentum after optimizer step `step` (0-based) of `total_steps`:
    start + step * (end - start) / total_steps, as the official schedulers yield it (I-JEPA
    0.996 -> 1.0; V-JEPA 1 0.998 -> 1.0; V-JEPA 2 constant, start == end)."""
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} is not allowed: an integer >= 1")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= total_steps:
        raise ValueError(f"step={step!r} is not allowed: an integer in [0, {total_steps}]")
    return start + step * (end - start) / total_steps


class JEPATeacherModel(SSLModel):
    """Base of I-JEPA and V-JEPA 2: an encoder, its EMA target encoder (the evaluated one), a
    predictor, and the official initialisation of both transformers.

    Subclasses build `self.encoder` and `self.predictor`, then call `_attach_target_encoder`;
    their config has `patch_embed_init` and `ema_momentum`.
    """

    encoder: VisionTransformer
    predictor: nn.Module
    target_encoder: VisionTransformer

    def _attach_target_encoder(self, device: torch.device | str | None) -> None:
        """Initialise `self.encoder` officially (unless on the meta device; `init_weights`
        does it later) and attach its frozen copy as the target encoder."""
        if device is None or torch.device(device).type != "meta":
            # The official initialisation (truncated normal, residual projections rescaled by
            # depth), not the ViT's MAE-style default.
            init_jepa_encoder_(self.encoder, self.config.patch_embed_init)
        # The target encoder starts as an exact copy and then only follows the EMA.
        self.target_encoder = frozen_copy(self.encoder).eval()

    def init_weights(self) -> None:
        """The official initialisation of every parameter, the target encoder a copy of the
        encoder (e.g. after building on the meta device and `to_empty(device=...)`)."""
        self.encoder.init_weights()  # position tables and tokens
        init_jepa_encoder_(self.encoder, self.config.patch_embed_init)
        self.predictor.init_weights()
        with torch.no_grad():
            for teacher, student in zip(
                self.target_encoder.parameters(), self.encoder.parameters()
            ):
                teacher.copy_(student)

    def train(self, mode: bool = True) -> "JEPATeacherModel":
        """The target encoder always runs in eval mode: no stochastic depth in the targets
        (the official configurations have none anyway)."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    def evaluation_encoder(self) -> VisionTransformer:
        """The target encoder: the one `encode` evaluates."""
        return self.target_encoder

    def encode(self, x: Tensor) -> Tensor:
        """(B, D): the mean pool of the target encoder's patch tokens (I-JEPA's official
        evaluation features; V-JEPA 2's official attentive probe is nexus_fast.eval's)."""
        return pooled(self.target_encoder.forward_features(x), "mean")

    def teacher_pairs(self):
        yield self.target_encoder, self.encoder

    def momentum(self, step: int, total_steps: int) -> float:
        """Linear from ema_momentum[0] to ema_momentum[1] over total_steps optimizer steps
        (constant for V-JEPA 2's official default, where the two are equal)."""
        return linear_momentum(step, total_steps, *self.config.ema_momentum)


def check_momentum_range(key: str, value: tuple[float, float]) -> None:
    """A (start, end) momentum pair with 0 <= start <= end <= 1."""
    require(
        0.0 <= value[0] <= value[1] <= 1.0, key, value, "(start, end) with 0 <= start <= end <= 1"
    )


class JEPAPredictor(nn.Module):
    """The JEPA predictor: context tokens + mask tokens at the target positions -> predictions.

    Args:
        encoder_dim: the width D of the encoder's tokens (input and output).
        grid: the patch grid, (h, w) or (t, h, w); patch ids index it row-major.
        dim: the predictor's width (official: 384).
        depth: its number of blocks (official: 12).
        num_heads: its attention heads (I-JEPA: the encoder's; V-JEPA 2: 12).
        mlp_ratio: hidden width of the MLPs over `dim`.
        pos_embed: "sincos" (fixed table added to every token, I-JEPA) or "rope" (3D rotary
            embedding in attention, V-JEPA 2).
        num_mask_tokens: learned mask tokens (V-JEPA 2: one per mask generator).
        zero_init_mask_tokens: start the mask tokens at zero (V-JEPA 2) instead of N(0, 0.02)
            (I-JEPA).
        norm_eps: of every LayerNorm (official: 1e-6).
        grad_checkpointing: recompute each block in the backward pass (saves activations).
        device, dtype: where to build the parameters ("meta" builds without memory).
    """

    def __init__(
        self,
        encoder_dim: int,
        grid: tuple[int, ...],
        *,
        dim: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        pos_embed: Literal["sincos", "rope"] = "sincos",
        num_mask_tokens: int = 1,
        zero_init_mask_tokens: bool = False,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.grid = tuple(grid)
        self.zero_init_mask_tokens = zero_init_mask_tokens
        self.grad_checkpointing = grad_checkpointing
        self.predictor_embed = nn.Linear(encoder_dim, dim, **factory)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, dim, **factory)) for _ in range(num_mask_tokens)
        )
        rope = None
        if pos_embed == "rope":
            self.predictor_pos_embed = None
            grid3 = self.grid if len(self.grid) == 3 else (1, *self.grid)
            rope = RotaryEmbedding3D(dim // num_heads, grid3)
        else:
            # Fixed, as the official's requires_grad=False parameter (the EMA skips nothing).
            self.predictor_pos_embed = nn.Parameter(
                torch.zeros(1, math.prod(self.grid), dim, **factory), requires_grad=False
            )
        self.rope = rope
        self.predictor_blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, True, 0.0, None, "gelu", norm_eps, rope, **factory)
            for _ in range(depth)
        )
        self.predictor_norm = nn.LayerNorm(dim, eps=norm_eps, **factory)
        self.predictor_proj = nn.Linear(dim, encoder_dim, **factory)
        if device is None or torch.device(device).type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation (see `official_init_`), the mask tokens and the table."""
        official_init_(self, self.predictor_blocks)
        for token in self.mask_tokens:
            if self.zero_init_mask_tokens:
                nn.init.zeros_(token)
            else:
                nn.init.trunc_normal_(token, std=INIT_STD)
        if self.predictor_pos_embed is not None:
            table = sincos_pos_embed(self.predictor_pos_embed.shape[-1], self.grid)
            self.predictor_pos_embed.copy_(table.unsqueeze(0))

    def forward(
        self,
        context: Tensor,
        context_ids: Tensor,
        target_ids: Tensor,
        *,
        context_valid: Tensor | None = None,
        target_valid: Tensor | None = None,
        mask_index: int = 0,
    ) -> Tensor:
        """Predicts the encoder's tokens at the target patches from the context tokens.

        Several target sets per sample (I-JEPA's 4 blocks) run as one batch: the context is
        repeated per set after the width reduction (cheaper than before it, as the official
        does), image-major (sample b's sets are rows b G .. b G + G - 1) so that the predictions
        come back as a view shaped like target_ids.

        Args:
            context: (B, Nc, D) the context encoder's output tokens.
            context_ids: (B, Nc) their patch indices.
            target_ids: (B, Nt) or (B, G, Nt) the patches to predict (G sets per sample).
            context_valid: (B, Nc) bool, False for padding of variable-length contexts.
            target_valid: shaped like target_ids, False for padding.
            mask_index: which mask token (V-JEPA 2: which mask generator).

        Returns:
            Predictions shaped (*target_ids.shape, D). Padded entries hold finite values that
            carry no meaning (padded tokens are masked out as attention keys).
        """
        batch, num_context, _ = context.shape
        groups = target_ids.shape[1] if target_ids.dim() == 3 else 1
        targets = target_ids.reshape(batch * groups, -1)  # (B G, Nt)
        num_targets = targets.shape[1]

        tokens = self.predictor_embed(context)  # (B, Nc, d)
        mask = self.mask_tokens[mask_index].to(tokens.dtype)
        mask = mask.expand(batch * groups, num_targets, -1)  # (B G, Nt, d)
        if self.predictor_pos_embed is not None:
            table = self.predictor_pos_embed.to(tokens.dtype)
            tokens = tokens + ops.gather_tokens(table, context_ids)
            mask = mask + ops.gather_tokens(table, targets)
        if groups > 1:
            tokens = tokens.repeat_interleave(groups, dim=0)
            context_ids = context_ids.repeat_interleave(groups, dim=0)
            if context_valid is not None:
                context_valid = context_valid.repeat_interleave(groups, dim=0)
        tokens = torch.cat([tokens, mask], dim=1)  # (B G, Nc + Nt, d)

        layout = DENSE
        if context_valid is not None or target_valid is not None:
            if context_valid is None:
                context_valid = context_ids.new_ones(context_ids.shape, dtype=torch.bool)
            target_valid = (
                targets.new_ones(targets.shape, dtype=torch.bool)
                if target_valid is None
                else target_valid.reshape(batch * groups, num_targets)
            )
            layout = TokenLayout(key_padding_mask=torch.cat([context_valid, target_valid], 1))
        positions = None
        if self.rope is not None:
            positions = self.rope.positions(torch.cat([context_ids, targets], dim=1))

        for block in self.predictor_blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, layout, positions, use_reentrant=False)
            else:
                tokens = block(tokens, layout, positions)
        # LayerNorm works per token, so normalising the mask tokens alone equals the official
        # normalise-then-slice.
        predictions = self.predictor_proj(self.predictor_norm(tokens[:, num_context:]))
        return predictions.reshape(*target_ids.shape, -1)
