"""I-JEPA's multi-block mask (facebookresearch/ijepa, src/masks/multiblock.py): per image, a few
target blocks that the predictor must predict, and one large context block that the encoder sees,
with every target patch removed from it."""

from dataclasses import dataclass

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

# Context positions drawn per image at once, in place of the official retry loop. With the
# official configuration the first one keeps min_keep patches nearly always.
CONTEXT_CANDIDATES = 8


@dataclass(frozen=True)
class MultiBlockMask(TensorFields):
    """The context and target sets of a batch (tensors on the requested device).

    Attributes:
        context: (B, Nc) indices of the context patches.
        targets: (B, num_targets, Nt) indices of each target block's patches.
        context_mask: (B, L) bool, True for context patches.
        target_masks: (B, num_targets, L) bool, True for the patches of each target block.
        context_sides: (B, 2) int64, (h, w) of each image's context block (before the targets
            are removed from it).
        target_sides: (B, 2) int64, (h, w) shared by the target blocks of each image.
    """

    context: VarlenIndices
    targets: VarlenIndices
    context_mask: Tensor
    target_masks: Tensor
    context_sides: Tensor
    target_sides: Tensor


def first_sufficient(counts: Tensor, min_keep: int) -> Tensor:
    """(B,) the first candidate per row with counts >= min_keep, else the row's largest count.

    argmax returns the first of equal maxima, on the CPU and on CUDA alike.
    """
    enough = counts >= min_keep
    return torch.where(enough.any(-1), enough.int().argmax(-1), counts.argmax(-1))


def multiblock_mask(
    batch_size: int,
    grid: tuple[int, int],
    *,
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    context_aspect: tuple[float, float] = (1.0, 1.0),
    min_keep: int = 10,
    per_batch_sizes: bool = False,
    truncate: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MultiBlockMask:
    """I-JEPA's context and target blocks for a batch, without a Python loop over the images.

    A block of a scale s and an aspect a has h x w cells, cells = int(H W s),
    h = round(sqrt(cells a)), w = round(sqrt(cells / a)), clipped to the grid. The targets of an
    image share one size and are placed uniformly and independently (they may overlap); the context
    is one block of context_scale, placed uniformly, with every target patch removed.

    Differences from the official collator, each a known quirk fixed:
        (a) it draws one target size and one context size per batch; here each image draws its
            own (`per_batch_sizes=True` restores one per batch).
        (b) its position draw `randint(0, H - h)` never reaches the last row or column
            (ijepa PR #40), and it clips a side to H - 1 so that draw stays valid; here every
            position of a block is equally likely and a block may span the grid.
        (c) it derives scale and aspect from one uniform number; here they are independent.
        (d) it cuts every mask of the batch to the shortest (ijepa issues #38, #60); here rows
            keep their lengths, padded (`truncate=True` cuts each row to its first entries, the
            batch minimum, as the official does).
    The official redraws the context position until the context keeps more than min_keep
    patches (here: at least min_keep, for targets too), and after every 20 failures lets one
    more target overlap it. Here
    CONTEXT_CANDIDATES positions are drawn per image at once and the first keeping at least
    min_keep patches is taken; if none does, the one keeping the most (never an overlap, never a
    loop). Targets need no retry: their size alone decides their count, so sizes that could fall
    below min_keep are refused when called.

    Randomness, devices and padded widths: see `nexus_fast.masking`.

    Args:
        batch_size: B >= 1.
        grid: (H, W) patch grid; L = H W patches, numbered row-major.
        num_targets: target blocks per image.
        target_scale: range of the fraction of the grid covered by a target block, in (0, 1].
        target_aspect: range of a target block's height / width, > 0.
        context_scale: range of the fraction covered by the context block, in (0, 1].
        context_aspect: range of the context block's height / width, > 0.
        min_keep: the fewest patches of a target block and of a context.
        per_batch_sizes: one target size and one context size for the whole batch (official).
        truncate: cut the context rows to the shortest context and the target rows to the
            shortest target of the batch (official); the masks are cut alike.
        generator: the source of every random draw (default: torch's default CPU generator).
        device: where the results live (default: the generator's device).

    Returns:
        A MultiBlockMask; the context never overlaps a target.

    Raises:
        ValueError: an argument outside its range, or a configuration that cannot keep
            min_keep patches (a target block that can be smaller, a context that can never
            be large enough).

    Example:
        >>> masks = multiblock_mask(256, (14, 14), generator=torch.Generator().manual_seed(0))
        >>> masks.context.ids.shape, masks.targets.ids.shape
        (torch.Size([256, 172]), torch.Size([256, 4, 42]))
    """
    batch_size = check_int("batch_size", batch_size, 1)
    grid = check_grid(grid, ("H", "W"))
    num_targets = check_int("num_targets", num_targets, 1)
    target_scale = check_interval("target_scale", target_scale, upper=1.0)
    target_aspect = check_interval("target_aspect", target_aspect)
    context_scale = check_interval("context_scale", context_scale, upper=1.0)
    context_aspect = check_interval("context_aspect", context_aspect)
    min_keep = check_int("min_keep", min_keep, 0)
    length = grid[0] * grid[1]
    smallest_target, largest_target = area_bounds(grid, target_scale, target_aspect)
    target_floor = smallest_target[0] * smallest_target[1]
    if target_floor < max(min_keep, 1):
        raise ValueError(
            f"target blocks can be {smallest_target[0]}x{smallest_target[1]} = {target_floor} "
            f"patches on the {grid[0]}x{grid[1]} grid (target_scale {target_scale}, "
            f"target_aspect {target_aspect}), fewer than max(min_keep, 1) = {max(min_keep, 1)}"
        )
    _, largest_context = area_bounds(grid, context_scale, context_aspect)
    # A context lies in its block and outside the targets, which cover at least one block.
    context_width = min(largest_context[0] * largest_context[1], length - target_floor)
    if context_width < max(min_keep, 1):
        raise ValueError(
            f"a context can keep at most {context_width} patches on the {grid[0]}x{grid[1]} grid "
            f"(context_scale {context_scale}, context_aspect {context_aspect}, targets of at "
            f"least {target_floor} patches), fewer than max(min_keep, 1) = {max(min_keep, 1)}"
        )
    generator, device = resolve_generator(generator, device)

    # Sizes and positions are drawn and computed on the generator's device, then copied at once.
    u_sizes = uniform(generator, 1 if per_batch_sizes else batch_size, 4)
    target_sides = block_sides(u_sizes[:, 0], u_sizes[:, 1], grid, target_scale, target_aspect)
    context_sides = block_sides(u_sizes[:, 2], u_sizes[:, 3], grid, context_scale, context_aspect)
    sides = torch.cat(
        [
            target_sides[:, None].expand(batch_size, num_targets, 2),
            context_sides[:, None].expand(batch_size, CONTEXT_CANDIDATES, 2),
        ],
        dim=1,
    )  # (B, num_targets + CONTEXT_CANDIDATES, 2)
    u_starts = uniform(generator, batch_size, num_targets + CONTEXT_CANDIDATES, 2)
    starts = scaled_index(u_starts, grid_tensor(grid, sides.device) - sides + 1)
    blocks = to_device(torch.cat([sides, starts], dim=-1), device)

    boxes = box_masks(blocks[..., 2:], blocks[..., :2], grid)  # (B, targets + candidates, L)
    target_masks = boxes[:, :num_targets]
    candidates = boxes[:, num_targets:] & ~target_masks.any(1, keepdim=True)
    choice = first_sufficient(candidates.sum(-1), min_keep)
    context_mask = candidates.gather(1, choice[:, None, None].expand(-1, 1, length)).squeeze(1)

    targets, target_masks = varlen_from_mask(
        target_masks, largest_target[0] * largest_target[1], truncate
    )
    context, context_mask = varlen_from_mask(context_mask, context_width, truncate)
    return MultiBlockMask(
        context=context,
        targets=targets,
        context_mask=context_mask,
        target_masks=target_masks,
        context_sides=blocks[:, num_targets, :2],
        target_sides=blocks[:, 0, :2],
    )
