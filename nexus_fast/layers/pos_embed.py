"""Fixed sin-cos position embeddings (MAE's 2D, V-JEPA's 3D) and their interpolation to another
patch grid (DINOv2's bicubic resize, used for other image sizes and small crops)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(N,) positions -> (N, dim): sin of every frequency, then cos (MAE's 1D embedding)."""
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed(dim: int, grid: tuple[int, ...], cls_token: bool = False) -> Tensor:
    """Sin-cos embedding of a (h, w) or (t, h, w) patch grid, row-major like the patches: (L, dim).

    2D, as MAE's get_2d_sincos_pos_embed: the first half of the channels encodes the column
    (w), the second half the row (h). 3D, as V-JEPA: a quarter of the channels for time, three
    eighths each for rows and columns. With cls_token, a zero row is prepended (MAE's layout).
    """
    if len(grid) == 2:
        if dim % 4:
            raise ValueError(f"2D sin-cos needs a dim divisible by 4, got {dim}")
        h, w = grid
        rows, columns = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        embed = torch.cat([_sincos_1d(dim // 2, columns), _sincos_1d(dim // 2, rows)], dim=1)
    elif len(grid) == 3:
        time_dim = dim // 4
        space_dim = (dim - time_dim) // 2
        if time_dim % 2 or space_dim % 2 or time_dim + 2 * space_dim != dim:
            raise ValueError(f"3D sin-cos cannot split dim {dim} into even time/space parts")
        t, h, w = grid
        times, rows, columns = torch.meshgrid(
            torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"
        )
        embed = torch.cat(
            [
                _sincos_1d(time_dim, times),
                _sincos_1d(space_dim, rows),
                _sincos_1d(space_dim, columns),
            ],
            dim=1,
        )
    else:
        raise ValueError(f"grid must be (h, w) or (t, h, w), got {grid}")
    embed = embed.float()
    if cls_token:
        embed = torch.cat([torch.zeros(1, dim), embed])
    return embed


def interpolate_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """(1, h*w, D) patch position embeddings resized to another (h', w') grid, bicubically
    (DINOv2's interpolate_pos_encoding). Returned unchanged when the grid is the same."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    resized = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    return resized.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
