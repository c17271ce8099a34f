"""V-JEPA 2's 3D multi-block mask (facebookresearch/vjepa2, src/masks/multiseq_multiblock3d.py):
the target is the union of a few spatio-temporal blocks (tubes through every time step by
default), the context is the rest of the clip."""

from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from ._blocks import area_bounds, block_sides
from ._common import (
    TensorFields,
    VarlenIndices,
    box_masks,
    check_grid,
    check_int,
    check_interval,
    grid_tensor,
    resolve_generator,
    scaled_index,
    to_device,
    uniform,
    varlen_from_mask,
)

# Block placements drawn per image at once, in place of the official redraw of a mask whose
# blocks cover the whole clip. The long-range preset covers it in about one draw in a hundred.
TUBE_CANDIDATES = 4

# The two mask generators of V-JEPA 2 pretraining (its configs' "mask" list), as keyword
# arguments of tube_multiblock_mask. Read-only: a preset is not a place to keep settings.
VJEPA2_SHORT_RANGE = MappingProxyType(
    {"num_blocks": 8, "spatial_scale": (0.15, 0.15), "aspect": (0.75, 1.5)}
)
VJEPA2_LONG_RANGE = MappingProxyType(
    {"num_blocks": 2, "spatial_scale": (0.7, 0.7), "aspect": (0.75, 1.5)}
)


@dataclass(frozen=True)
class TubeMask(TensorFields):
    """The context and target of a batch of clips (tensors on the requested device).

    Patch l of a (t, h, w) grid is cell (l // (h w), (l // w) % h, l % w), as `patchify` orders
    tubelets.

    Attributes:
        context: (B, Nc) indices of the context patches.
        target: (B, Nt) indices of the target patches (the union of the blocks).
        context_mask: (B, L) bool, True for context patches.
        target_mask: (B, L) bool, True for target patches.
        block_sides: (B, 3) int64, (t, h, w) shared by the blocks of each clip.
    """

    context: VarlenIndices
    target: VarlenIndices
    context_mask: Tensor
    target_mask: Tensor
    block_sides: Tensor


def tube_multiblock_mask(
    batch_size: int,
    grid: tuple[int, int, int],
    *,
    num_blocks: int = 8,
    spatial_scale: tuple[float, float] = (0.15, 0.15),
    aspect: tuple[float, float] = (0.75, 1.5),
    temporal_scale: tuple[float, float] = (1.0, 1.0),
    per_batch_sizes: bool = True,
    truncate: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TubeMask:
    """V-JEPA 2's target blocks and context for a batch of clips, without a loop over the clips.

    A block spans t = max(1, int(T s_t)) time steps and an h x w area given by spatial_scale and
    aspect with I-JEPA's formula (see `multiblock_mask`), clipped to the grid; its position is
    uniform over every place it fits. The blocks of a clip share one size and may overlap; the
    target is their union and the context everything else. Defaults: the short-range preset.

    The official draws one size per batch (kept: per_batch_sizes=True) from three independent
    numbers (temporal scale, spatial scale, aspect), and redraws a clip whose blocks cover every
    patch. Here TUBE_CANDIDATES placements are drawn per clip at once and the first that leaves a
    context is kept (the same distribution as redrawing, unless all of them cover the clip);
    when all of them do, the target is the first block of the last placement alone. A single
    block always leaves a context: sizes that could fill the grid are refused when called.

    Randomness, devices and padded widths: see `nexus_fast.masking`.

    Args:
        batch_size: B >= 1.
        grid: (T, H, W) grid of tubelets; L = T H W patches.
        num_blocks: blocks per clip.
        spatial_scale: range of the fraction of the H x W area a block covers, in (0, 1].
        aspect: range of a block's height / width, > 0.
        temporal_scale: range of the fraction of the T steps a block spans, in (0, 1].
        per_batch_sizes: one block size for the whole batch (official); else one per clip.
        truncate: cut the context rows to the shortest context of the batch and the target rows
            to the shortest target, keeping their first entries (official); masks cut alike.
        generator: the source of every random draw (default: torch's default CPU generator).
        device: where the results live (default: the generator's device).

    Returns:
        A TubeMask whose context is never empty.

    Raises:
        ValueError: an argument outside its range, blocks that can be empty, or blocks that can
            cover the whole grid.

    Example:
        >>> masks = tube_multiblock_mask(4, (8, 16, 16), **VJEPA2_LONG_RANGE)
        >>> masks.context.ids.shape, masks.target.ids.shape
        (torch.Size([4, 704]), torch.Size([4, 2047]))
    """
    batch_size = check_int("batch_size", batch_size, 1)
    steps, height, width = check_grid(grid, ("T", "H", "W"))
    num_blocks = check_int("num_blocks", num_blocks, 1)
    spatial_scale = check_interval("spatial_scale", spatial_scale, upper=1.0)
    aspect = check_interval("aspect", aspect)
    temporal_scale = check_interval("temporal_scale", temporal_scale, upper=1.0)
    area = (height, width)
    smallest, largest = area_bounds(area, spatial_scale, aspect)
    if smallest[0] * smallest[1] == 0:
        raise ValueError(
            f"blocks can be {smallest[0]}x{smallest[1]}, empty, on the {height}x{width} area "
            f"(spatial_scale {spatial_scale}, aspect {aspect}): raise spatial_scale"
        )
    shortest = max(1, int(steps * temporal_scale[0]))
    longest = max(1, int(steps * temporal_scale[1]))
    if longest == steps and largest == area:
        raise ValueError(
            f"a block can cover the whole {steps}x{height}x{width} grid (spatial_scale "
            f"{spatial_scale}, aspect {aspect}, temporal_scale {temporal_scale}), leaving no "
            "context: lower spatial_scale or temporal_scale"
        )
    length = steps * height * width
    smallest_volume = shortest * smallest[0] * smallest[1]
    target_width = min(length - 1, num_blocks * longest * largest[0] * largest[1])
    context_width = length - smallest_volume
    generator, device = resolve_generator(generator, device)

    # Sizes and positions are drawn and computed on the generator's device, then copied at once.
    u_sizes = uniform(generator, 1 if per_batch_sizes else batch_size, 3)
    fraction = temporal_scale[0] + u_sizes[:, :1] * (temporal_scale[1] - temporal_scale[0])
    span = (steps * fraction.clamp(*temporal_scale)).floor().long().clamp(min=1)
    sides = torch.cat(
        [span, block_sides(u_sizes[:, 1], u_sizes[:, 2], area, spatial_scale, aspect)], 1
    )
    sides = sides.expand(batch_size, 3)
    u_starts = uniform(generator, batch_size, TUBE_CANDIDATES * num_blocks, 3)
    grid_size = grid_tensor(grid, sides.device)
    starts = scaled_index(u_starts, grid_size - sides[:, None] + 1)
    blocks = to_device(torch.cat([sides[:, None], starts], dim=1), device)  # (B, 1 + R K, 3)
    sides = blocks[:, 0]
    starts = blocks[:, 1:].reshape(batch_size, TUBE_CANDIDATES, num_blocks, 3)

    # A block is a time interval x a row interval x a column interval. When every block spans
    # every step, one step's coverage stands for all (T_c = 1 below, else T_c = T).
    sides = sides[:, None, None].expand_as(starts)
    in_time = box_masks(starts[..., :1], sides[..., :1], (steps,))  # (B, R, K, T)
    in_time = in_time[..., :1] if shortest == steps else in_time
    in_rows = box_masks(starts[..., 1:2], sides[..., 1:2], (height,))  # (B, R, K, H)
    in_columns = box_masks(starts[..., 2:], sides[..., 2:], (width,))  # (B, R, K, W)

    def block(placement: slice | int, index: int) -> Tensor:
        """(B, [R,] T_c, H W) cells of one block of the chosen placement(s)."""
        rectangle = in_rows[:, placement, index, :, None] & in_columns[:, placement, index, None]
        return in_time[:, placement, index, :, None] & rectangle.flatten(-2).unsqueeze(-2)

    covered = block(slice(None), 0)  # (B, R, T_c, H W): a loop of ORs beats any() over K
    for index in range(1, num_blocks):
        covered |= block(slice(None), index)
    full = covered.flatten(-2).all(-1)  # (B, R): no context left
    choice = (~full).int().argmax(-1)  # the first placement leaving a context
    target_mask = covered[torch.arange(batch_size, device=device), choice]
    target_mask = torch.where(full.all(-1)[:, None, None], block(-1, 0), target_mask)
    target_mask = target_mask.expand(-1, steps, -1).reshape(batch_size, length)

    target, cut_target_mask = varlen_from_mask(target_mask, target_width, truncate)
    context, context_mask = varlen_from_mask(~target_mask, context_width, truncate)
    return TubeMask(context, target, context_mask, cut_target_mask, blocks[:, 0])


def vjepa2_tube_masks(
    batch_size: int,
    grid: tuple[int, int, int] = (8, 16, 16),
    *,
    truncate: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[TubeMask, TubeMask]:
    """Both masks of a V-JEPA 2 step: (short-range, long-range), drawn in that order.

    The model predicts each with its own mask token and averages the two losses. The default
    grid is 16 frames of 256 x 256 pixels in tubelets of 2 x 16 x 16.
    """
    return tuple(
        tube_multiblock_mask(
            batch_size, grid, **preset, truncate=truncate, generator=generator, device=device
        )
        for preset in (VJEPA2_SHORT_RANGE, VJEPA2_LONG_RANGE)
    )
