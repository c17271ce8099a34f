"""BEiT's block masking as DINOv2 applies it to the global crops for iBOT (facebookresearch/dinov2,
dinov2/data/masking.py `MaskingGenerator` and dinov2/data/collate.py `collate_data_and_cast`)."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._common import (
    TensorFields,
    VarlenIndices,
    check_fraction,
    check_grid,
    check_int,
    check_interval,
    check_positive,
    grid_tensor,
    resolve_generator,
    to_device,
    uniform,
    varlen_from_mask,
)

# Candidate rectangles per image, one per round. With the official configuration (16 x 16, ratios
# 0.1-0.5) an image meets its budget after 8 rounds on average; of 5,120 masked images, 23 were
# still one patch short after 32 rounds, 3 after 48, none after 64.
BLOCK_ROUNDS = 64


@dataclass(frozen=True)
class BlockMask(TensorFields):
    """The iBOT masks of a batch (tensors on the requested device).

    Attributes:
        mask: (B, L) bool, True for masked patches.
        masked: (B, N) indices of the masked patches.
        weights: (B,) float32, 1 / max(masked count, 1): iBOT weighs each image's loss by it.
        budgets: (B,) int64, the number of patches each image was to mask (0 for the unmasked
            ones); an image masks at most its budget.
    """

    mask: Tensor
    masked: VarlenIndices
    weights: Tensor
    budgets: Tensor


def block_mask(
    batch_size: int,
    grid: tuple[int, int],
    *,
    masked_fraction: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    min_patches: int = 4,
    max_patches: float | None = None,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> BlockMask:
    """DINOv2's iBOT masks for a batch of global crops, without a Python loop over the images.

    As the official collator: n = int(B masked_fraction) images are masked, the i-th of them
    with a budget of int(L r) patches, r uniform in the i-th of the n strata
    linspace(low, high, n + 1); the others are not masked; the order is shuffled. An image is
    masked with rectangles: area uniform in [min_patches, its remaining budget capped at
    max_patches], aspect log-uniform in [min_aspect, max_aspect], h = round(sqrt(area aspect)),
    w = round(sqrt(area / aspect)), h < H and w < W, position uniform; a rectangle is accepted
    when it masks between 1 and the remaining (capped) budget of new patches.

    Difference: the official draws rectangles for one image after another and gives up on an
    image after 10 rejected rectangles in a row (so about one image in 25 ends a patch or two
    below its budget). Here every image draws one rectangle per round, for BLOCK_ROUNDS rounds,
    accepted or not; an image stops when its budget is met, not after a run of rejections, so
    it ends at its budget more often.

    The rounds run on the generator's device and the finished masks are copied to `device`:
    with a CPU generator they cost CPU time, not GPU launches, and stop once every image is
    done (checking costs nothing on the CPU; with a CUDA generator all rounds run, since
    checking would synchronise). All draws are made before the first round, so stopping early
    changes nothing.

    Randomness, devices and padded widths: see `nexus_fast.masking`.

    Args:
        batch_size: B >= 1 crops (DINOv2 masks its 2 x batch global crops together).
        grid: (H, W) patch grid; L = H W.
        masked_fraction: the fraction of images masked, in [0, 1] (DINOv2's mask_probability).
        ratio_range: (low, high) range of the masked fraction of a masked image,
            0 <= low <= high <= 1 (DINOv2's mask_ratio_min_max).
        min_patches: the smallest area drawn for a rectangle, >= 1.
        max_patches: the largest budget of one rectangle, > 0 (default L / 2, as DINOv2 sets).
        min_aspect: the smallest aspect ratio, > 0.
        max_aspect: the largest aspect ratio, >= min_aspect (default 1 / min_aspect).
        generator: the source of every random draw (default: torch's default CPU generator).
        device: where the results live (default: the generator's device).

    Returns:
        A BlockMask.

    Raises:
        ValueError: an argument outside its range.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    grid = check_grid(grid, ("H", "W"))
    masked_fraction = check_fraction(
        "masked_fraction", masked_fraction, low_open=False, high_open=False
    )
    low, high = check_interval("ratio_range", ratio_range, upper=1.0, zero_ok=True)
    min_patches = check_int("min_patches", min_patches, 1)
    length = grid[0] * grid[1]
    max_patches = 0.5 * length if max_patches is None else max_patches
    max_patches = check_positive("max_patches", max_patches)
    min_aspect = check_positive("min_aspect", min_aspect)
    max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
    if check_positive("max_aspect", max_aspect) < min_aspect:
        raise ValueError(f"max_aspect must be >= min_aspect {min_aspect}, got {max_aspect!r}")
    num_masked = int(batch_size * masked_fraction)
    generator, device = resolve_generator(generator, device)

    # The rounds are many small sequential steps: they run where the draws are made (for a CPU
    # generator the CPU, where a step costs microseconds and the loop may stop once every image
    # is done, instead of thousands of GPU launches), and only the finished masks are copied.
    work = generator.device
    strata = torch.linspace(low, high, num_masked + 1, dtype=torch.float64, device=work)
    draws = uniform(generator, batch_size + num_masked + 4 * BLOCK_ROUNDS * batch_size)
    order, u_ratio, u_rounds = draws.split([batch_size, num_masked, 4 * BLOCK_ROUNDS * batch_size])
    ratios = torch.minimum(strata[:-1] + u_ratio * (strata[1:] - strata[:-1]), strata[1:])
    budgets = torch.zeros(batch_size, dtype=torch.float64, device=work)
    budgets[:num_masked] = (length * ratios).floor()
    budgets = budgets[torch.argsort(order, stable=True)]  # the official shuffle
    u_area, u_aspect, u_starts = u_rounds.reshape(BLOCK_ROUNDS, batch_size, 4).split([1, 1, 2], -1)
    log_aspect = math.log(min_aspect) + u_aspect * (math.log(max_aspect) - math.log(min_aspect))
    root_aspect = (0.5 * log_aspect).exp()
    factors = torch.cat([root_aspect, 1 / root_aspect], -1)  # h = round(sqrt(area) * factor)

    grid_size = grid_tensor(grid, work).double()
    rows = torch.arange(grid[0], dtype=torch.float64, device=work)
    columns = torch.arange(grid[1], dtype=torch.float64, device=work)
    mask = torch.zeros(batch_size, *grid, dtype=torch.bool, device=work)
    remaining = budgets.clone()
    for step in range(BLOCK_ROUNDS):
        cap = remaining.clamp(max=max_patches)[:, None]  # 0 once an image is done
        root_area = (min_patches + u_area[step] * (cap - min_patches)).sqrt()
        sides = (root_area * factors[step]).round()  # (B, 2): h, w
        # As the official, a rectangle never spans the grid; one that would is made empty,
        # and so rejected.
        sides *= (sides < grid_size).all(1, keepdim=True)
        starts = (u_starts[step] * (grid_size + 1 - sides)).floor()
        ends = starts + sides
        in_rows = (rows >= starts[:, :1]) & (rows < ends[:, :1])  # (B, H)
        in_columns = (columns >= starts[:, 1:]) & (columns < ends[:, 1:])  # (B, W)
        rectangle = in_rows[:, :, None] & in_columns[:, None, :]
        new = (rectangle & ~mask).sum((1, 2))[:, None]
        accepted = (new >= 1) & (new <= cap)
        mask |= rectangle & accepted[:, :, None]
        remaining -= (new * accepted)[:, 0]
        if work.type == "cpu" and not bool(remaining.any()):
            break

    mask = to_device(mask.flatten(1), device)
    budgets = to_device(budgets.long(), device)
    count = mask.sum(1)
    masked, _ = varlen_from_mask(mask, int(length * high), truncate=False)
    weights = 1 / count.clamp(min=1).float()
    return BlockMask(mask=mask, masked=masked, weights=weights, budgets=budgets)
