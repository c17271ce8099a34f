"""The JEPA block size: a scale (fraction of the grid's cells) and an aspect ratio give a block of
h x w cells, as I-JEPA's and V-JEPA 2's `_sample_block_size` compute it:

    cells = int(H * W * scale);  h = round(sqrt(cells * aspect));  w = round(sqrt(cells / aspect))

clipped to the grid. `block_sides` evaluates it on tensors of draws; `area_bounds` gives the
smallest and largest area it can return for a range of scales and aspects, which sizes the
padded index lists and rejects impossible configurations before anything is drawn.
"""

import functools
import math

import torch
from torch import Tensor


def block_sides(
    u_scale: Tensor,
    u_aspect: Tensor,
    grid: tuple[int, int],
    scale: tuple[float, float],
    aspect: tuple[float, float],
) -> Tensor:
    """(..., 2) int64 block sides (h, w) for uniform draws u_scale, u_aspect of shape (...)."""
    height, width = grid
    # The clamps keep a draw inside its range when rounding would step an ulp outside.
    fraction = (scale[0] + u_scale * (scale[1] - scale[0])).clamp(*scale)
    cells = (height * width * fraction).floor()
    ratio = (aspect[0] + u_aspect * (aspect[1] - aspect[0])).clamp(*aspect)
    h = (cells * ratio).sqrt().round().clamp(max=height)
    w = (cells / ratio).sqrt().round().clamp(max=width)
    return torch.stack([h, w], dim=-1).long()


def _side_pairs(cells: int, grid: tuple[int, int], aspect: tuple[float, float]) -> set:
    """Every (h, w) the formula gives for `cells` and an aspect in the closed range.

    h = k needs (k - 1/2)^2 <= cells * aspect <= (k + 1/2)^2 and w = j needs
    (j - 1/2)^2 <= cells / aspect <= (j + 1/2)^2: a pair occurs when both aspect intervals meet
    the range. Closed intervals (and a relative slack of 1e-9 for float rounding) include both
    neighbours of an exact rounding tie, so the set may hold a pair too many, never one too few.
    """
    if cells == 0:
        return {(0, 0)}
    low, high = aspect
    pairs = set()
    for k in range(round(math.sqrt(cells * low)) - 1, round(math.sqrt(cells * high)) + 2):
        for j in range(round(math.sqrt(cells / high)) - 1, round(math.sqrt(cells / low)) + 2):
            if k < 0 or j < 0:
                continue
            lowest = max(low, (k - 0.5) ** 2 / cells if k else 0.0, cells / (j + 0.5) ** 2)
            highest = min(high, (k + 0.5) ** 2 / cells, cells / (j - 0.5) ** 2 if j else math.inf)
            if lowest <= highest * (1 + 1e-9):
                pairs.add((min(k, grid[0]), min(j, grid[1])))
    return pairs


@functools.lru_cache(maxsize=64)
def area_bounds(
    grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The sides (h, w) of the smallest and of the largest block `block_sides` can return.

    h and w never decrease as the number of cells grows (at a fixed aspect), so the smallest
    block has int(H W scale_low) cells and the largest int(H W scale_high).
    """
    cells = grid[0] * grid[1]
    smallest = min(_side_pairs(math.floor(cells * scale[0]), grid, aspect), key=_area)
    largest = max(_side_pairs(math.floor(cells * scale[1]), grid, aspect), key=_area)
    return smallest, largest


def _area(sides: tuple[int, int]) -> int:
    return sides[0] * sides[1]
