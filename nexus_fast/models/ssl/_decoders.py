"""The decoders of the two reconstruction methods: MAE's transformer decoder and data2vec 2.0's
light convolutional decoder. Both turn the encoder's tokens of the visible patches into one
prediction per patch of the full grid; they differ in what they put at the masked positions (a
learned mask token vs. small noise) and in what mixes the tokens (attention vs. grouped
convolutions on the patch grid)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ... import ops
from ...layers import Block, interpolate_pos_embed, sincos_pos_embed


class MAEDecoder(nn.Module):
    """MAE's decoder (facebookresearch/mae models_mae.py `forward_decoder`).

    Linear(D -> decoder_dim), the learned mask token at every removed position (unshuffled with
    ids_restore, the cls token kept in front), fixed sin-cos positions, `depth` pre-norm blocks,
    LayerNorm, Linear(decoder_dim -> t*p*p*C). The official names are `decoder_embed`,
    `mask_token`, `decoder_pos_embed`, `decoder_blocks`, `decoder_norm`, `decoder_pred`; here
    they are `decoder.embed`, ... (an official checkpoint maps by renaming "decoder_" to
    "decoder.").

    Args:
        encoder_dim: D, the width of the encoder's tokens.
        decoder_dim: the decoder's width (512 in the released models).
        depth: number of blocks (8).
        num_heads: attention heads (16).
        mlp_ratio: hidden width of the blocks' MLP over decoder_dim.
        grid: the patch grid the position table is built for, (h, w) or (t, h, w).
        patch_volume: t*p*p*C, the values predicted per patch.
        norm_eps: of every LayerNorm (1e-6, as the official `partial(nn.LayerNorm, eps=1e-6)`).
        grad_checkpointing: recompute each block in the backward pass (saves activations).
        device: where to build the parameters ("meta": without memory, uninitialised).
    """

    def __init__(
        self,
        encoder_dim: int,
        decoder_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        grid: tuple[int, ...],
        patch_volume: int,
        norm_eps: float = 1e-6,
        grad_checkpointing: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.grad_checkpointing = grad_checkpointing
        self.embed = nn.Linear(encoder_dim, decoder_dim, device=device)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim, device=device))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, math.prod(grid) + 1, decoder_dim, device=device), requires_grad=False
        )
        self.blocks = nn.ModuleList(
            Block(
                decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=norm_eps, device=device
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(decoder_dim, eps=norm_eps, device=device)
        self.pred = nn.Linear(decoder_dim, patch_volume, device=device)

    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation: sin-cos positions (a zero row for the cls token), the
        mask token N(0, 0.02), xavier-uniform linears with zero biases, LayerNorms 1 / 0."""
        table = sincos_pos_embed(self.pos_embed.shape[-1], self.grid, cls_token=True)
        self.pos_embed.copy_(table.unsqueeze(0))
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def positions(self, grid: tuple[int, ...]) -> Tensor:
        """(1, 1 + L, decoder_dim) the position table of `grid`; an image grid other than the
        configured one gets the patch rows resized bicubically, as the encoder does."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        if len(grid) != 2:
            raise ValueError(f"the decoder's positions resize for images only, got grid {grid}")
        patches = interpolate_pos_embed(self.pos_embed[:, 1:], self.grid, grid)
        return torch.cat([self.pos_embed[:, :1], patches], dim=1)

    def forward(self, latent: Tensor, ids_restore: Tensor, grid: tuple[int, ...]) -> Tensor:
        """Predicts every patch from the encoder's visible tokens.

        Args:
            latent: (B, 1 + K, D) the encoder's normalised output, cls token first.
            ids_restore: (B, L) the mask's unshuffle indices (values < K: a kept patch).
            grid: the patch grid of the images, prod(grid) = L.

        Returns:
            (B, L, t*p*p*C) the predicted patches in patch order.
        """
        tokens = self.embed(latent)  # (B, 1 + K, Dd)
        patches = ops.scatter_tokens(tokens[:, 1:], ids_restore, self.mask_token)  # (B, L, Dd)
        x = torch.cat([tokens[:, :1], patches], dim=1) + self.positions(grid).to(tokens.dtype)
        for block in self.blocks:
            x = _run_block(block, x, self.grad_checkpointing and self.training)
        # Norm and projection are per token: dropping the cls token first spares its row.
        return self.pred(self.norm(x)[:, 1:])


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, without affine parameters (fairseq's
    TransposeLast -> LayerNorm(elementwise_affine=False) -> TransposeLast; eps 1e-5)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        channels_last = x.permute(0, 2, 3, 1)
        return F.layer_norm(channels_last, channels_last.shape[-1:], eps=self.eps).permute(
            0, 3, 1, 2
        )


class ConvDecoder2d(nn.Module):
    """data2vec 2.0's image decoder (fairseq examples/data2vec/models/modalities/modules.py
    `Decoder2d`).

    The tokens are laid out on the patch grid and go through `num_layers` blocks of
    [grouped Conv2d (kernel k, padding k // 2) -> LayerNorm over channels (no affine) -> GELU].
    As the official: there is no input projection (the first convolution maps the encoder's D
    channels to decoder_dim), each block's output is added to its input whenever both have the
    same number of channels (so the first block has no residual when D != decoder_dim), and a
    final Linear(decoder_dim -> D) maps every position back to the targets' width.

    Args:
        input_dim: D, the encoder's width (and the width of the targets).
        decoder_dim: the convolutions' width (768 for ViT-B).
        num_layers: convolution blocks (6 for ViT-B).
        kernel_size: odd (3 for ViT-B, 5 for ViT-L/H).
        groups: of every convolution (16); divides input_dim and decoder_dim.
        grad_checkpointing: recompute each block in the backward pass (saves activations).
        device: where to build the parameters.
    """

    def __init__(
        self,
        input_dim: int,
        decoder_dim: int,
        num_layers: int,
        kernel_size: int,
        groups: int,
        grad_checkpointing: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    input_dim if i == 0 else decoder_dim,
                    decoder_dim,
                    kernel_size,
                    padding=kernel_size // 2,
                    groups=groups,
                    device=device,
                ),
                ChannelLayerNorm(),
                nn.GELU(),
            )
            for i in range(num_layers)
        )
        self.proj = nn.Linear(decoder_dim, input_dim, device=device)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, L, D) tokens of the full (h, w) grid, row-major -> (B, L, D) predictions."""
        batch, length, dim = x.shape
        height, width = grid
        if height * width != length:
            raise ValueError(f"{length} tokens do not fill a {height}x{width} grid")
        x = x.transpose(1, 2).reshape(batch, dim, height, width)
        residual = x
        for block in self.blocks:
            x = _run_block(block, x, self.grad_checkpointing and self.training)
            if x.shape[1] == residual.shape[1]:
                x = x + residual
            residual = x
        return self.proj(x.flatten(2).transpose(1, 2))


def _run_block(block: nn.Module, x: Tensor, checkpointed: bool) -> Tensor:
    """block(x), recomputed in the backward pass instead of stored when `checkpointed` (and a
    gradient is being recorded)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False)
    return block(x)
