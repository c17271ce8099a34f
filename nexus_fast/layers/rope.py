"""3D rotary position embedding (V-JEPA 2): the head dimension split in three parts rotated by the
token's frame, row and column, as facebookresearch/vjepa2 src/models/utils/modules.py
(RoPEAttention) does, so official weights see the positions they were trained with."""

import torch
from torch import Tensor, nn


def _rotate(x: Tensor, positions: Tensor) -> Tensor:
    """Rotates x (..., N, d) by positions (..., N): frequencies 1 / 10000^(2i / d), the sin and cos
    tables repeated twice along d, pairs (2i, 2i + 1) rotated (the official layout)."""
    dim = x.shape[-1]
    omega = torch.arange(dim // 2, dtype=torch.float32, device=x.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.float().unsqueeze(-1) * omega  # (..., N, d/2)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)  # (..., N, d)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class RotaryEmbedding3D(nn.Module):
    """Rotates q and k (B, H, N, d) by the (frame, row, column) of each token of a patch grid."""

    def __init__(self, head_dim: int, grid: tuple[int, int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.part = 2 * ((head_dim // 3) // 2)  # channels per axis; the rest is not rotated
        if self.part == 0:
            raise ValueError(f"head_dim {head_dim} is too small for 3D RoPE")

    def positions(self, ids: Tensor, grid: tuple[int, int, int] | None = None) -> Tensor:
        """(B, N) token indices of a (t, h, w) grid (default: the configured one) -> (B, N, 3)
        frame, row, column."""
        _, h, w = grid if grid is not None else self.grid
        return torch.stack([ids // (h * w), (ids // w) % h, ids % w], dim=-1)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x (B, H, N, d) rotated by positions (B, N, 3)."""
        parts, start = [], 0
        for axis in range(3):
            stop = start + self.part
            parts.append(_rotate(x[..., start:stop], positions[..., axis].unsqueeze(1)))
            start = stop
        if start < x.shape[-1]:
            parts.append(x[..., start:])
        return torch.cat(parts, dim=-1)
