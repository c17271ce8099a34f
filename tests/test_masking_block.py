"""nexus_fast.masking.block_mask (DINOv2 / iBOT): which images are masked, budgets in their
strata, counts, weights, and the official distribution (benchmarks/peers/masks.py)."""

import math
import random

import torch
from test_masking_common import assert_varlen_matches, official, seeded

from nexus_fast.masking import block_mask
from nexus_fast.masking.block import BLOCK_ROUNDS

GRID = (16, 16)  # 224 px crops at patch 14


def _right_neighbour_masked(mask: torch.Tensor) -> float:
    """Mean over the masked images of P(the right neighbour of a masked patch is masked)."""
    cells = mask[mask.any(1)].reshape(-1, *GRID)
    pairs = (cells[..., :-1] & cells[..., 1:]).sum((1, 2)).float()
    return (pairs / cells[..., :-1].sum((1, 2)).clamp(min=1)).mean().item()


def _bounding_box_elongation(mask: torch.Tensor) -> float:
    """Mean over the masked images of |log(rows spanned / columns spanned)|."""
    cells = mask[mask.any(1)].reshape(-1, *GRID)
    rows, columns = cells.any(2).sum(1).float(), cells.any(1).sum(1).float()
    return (rows / columns).log().abs().mean().item()


def test_official_configuration() -> None:
    batch, length = 64, 256
    masks = block_mask(batch, GRID, generator=seeded(0))
    counts = masks.mask.sum(1)
    assert masks.mask.shape == (batch, length) and masks.budgets.shape == (batch,)
    assert_varlen_matches(masks.masked, masks.mask)
    assert masks.masked.max_length == int(length * 0.5)
    assert torch.equal(masks.weights, 1 / counts.clamp(min=1).float())

    # Exactly int(B * 0.5) images are masked (positive budget, some patch masked), the rest
    # not at all, and they are not simply the first ones.
    masked_images = masks.budgets > 0
    assert masked_images.sum() == 32 and torch.equal(counts > 0, masked_images)
    assert not masked_images[:32].all()

    # The i-th smallest budget lies in the i-th stratum of linspace(0.1, 0.5, 33): budgets are
    # int(L r) with r in one stratum each, and the strata are ordered.
    strata = torch.linspace(0.1, 0.5, 33, dtype=torch.float64)
    budgets = masks.budgets[masked_images].sort().values
    assert (budgets >= (length * strata[:-1]).floor()).all()
    assert (budgets <= (length * strata[1:]).floor()).all()

    # An image masks at most its budget and, here, reaches it: the official gives up after ten
    # rejected rectangles in a row (about 1 image in 25 ends 1 or 2 patches short); with 64
    # rounds none of 5,120 simulated images ended short. Two patches of slack (1% of the grid,
    # a fraction of a stratum's 3.2 patches) bound a real shortfall, not luck.
    assert (counts <= masks.budgets).all()
    assert (counts >= masks.budgets - 2).all()


def test_masks_match_the_official_distribution() -> None:
    # The masked-neighbour rate (0.81, standard deviation about 0.003 over 256 images) tells
    # rectangles from scattered patches and from rectangles of a wrong aspect or area.
    official_masks, official_budgets = official.dinov2_block_masks(256, *GRID, rng=random.Random(1))
    ours = block_mask(256, GRID, generator=seeded(1))
    assert official_masks.any(1).sum() == ours.mask.any(1).sum() == 128
    assert abs(_right_neighbour_masked(official_masks) - 0.81) < 0.02
    difference = _right_neighbour_masked(ours.mask) - _right_neighbour_masked(official_masks)
    assert abs(difference) < 0.015
    assert (official_masks.sum(1) <= official_budgets).all()


def test_rectangles_never_exceed_max_patches() -> None:
    # With max_patches = 1 every accepted rectangle masks one new patch, so an image masks at
    # most one patch per round, whatever its budget (up to 0.5 L = 128 here).
    masks = block_mask(16, GRID, max_patches=1, min_patches=1, generator=seeded(2))
    counts = masks.mask.sum(1)
    assert (counts <= BLOCK_ROUNDS).all() and (counts > 0).sum() == 8
    assert (masks.budgets[counts > 0] > BLOCK_ROUNDS).any(), "the cap must be what binds"


def test_other_fractions_and_ranges() -> None:
    for fraction, ratio_range in ((1.0, (0.3, 0.3)), (0.25, (0.0, 0.2)), (0.0, (0.1, 0.5))):
        masks = block_mask(
            12, (10, 14), masked_fraction=fraction, ratio_range=ratio_range, generator=seeded(3)
        )
        counts = masks.mask.sum(1)
        assert (masks.budgets > 0).sum() <= int(12 * fraction)
        assert (counts <= masks.budgets).all()
        assert (masks.budgets <= math.floor(140 * ratio_range[1])).all()
        assert_varlen_matches(masks.masked, masks.mask)
    assert (
        block_mask(4, (10, 14), masked_fraction=1.0, ratio_range=(0.3, 0.3)).budgets == 42
    ).all()


def test_aspects_match_the_official_distribution() -> None:
    # Small budgets (10% of 256 patches, every image) leave one or a few rectangles per image,
    # whose bounding boxes show the aspect: |log(rows / columns)| averages 0.34 both here and
    # officially (standard deviation about 0.015), 0.15 if every rectangle were square.
    settings = {"masked_fraction": 1.0, "ratio_range": (0.1, 0.1)}
    official_masks, _ = official.dinov2_block_masks(
        256, *GRID, rng=random.Random(4), mask_probability=1.0, mask_ratio=(0.1, 0.1)
    )
    ours = block_mask(256, GRID, **settings, generator=seeded(4))
    official_elongation = _bounding_box_elongation(official_masks)
    assert abs(official_elongation - 0.34) < 0.06
    assert abs(_bounding_box_elongation(ours.mask) - official_elongation) < 0.07


def test_rectangles_reach_every_position() -> None:
    # One 2 x 2 square per image on a 6 x 6 grid (a budget of int(36 * 0.12) = 4 patches, area
    # exactly 4, aspect 1): 5 positions per axis, about 100 of 500 images at each (standard
    # deviation 9); a position draw one short would never reach the last.
    masks = block_mask(
        500,
        (6, 6),
        masked_fraction=1.0,
        ratio_range=(0.12, 0.12),
        min_patches=4,
        max_patches=4,
        min_aspect=1.0,
        generator=seeded(5),
    )
    cells = masks.mask.reshape(500, 6, 6)
    assert (cells.sum((1, 2)) == 4).all() and (cells.any(2).sum(1) == 2).all()
    for axis in (2, 1):
        first = cells.any(axis).int().argmax(1)
        counts = torch.bincount(first, minlength=5)
        assert counts.numel() == 5 and ((counts - 100).abs() < 40).all(), counts


def test_a_rectangle_never_spans_the_grid() -> None:
    # As the official requires h < H and w < W: on a 2 x 6 grid a 2 x 2 square (area 4, aspect
    # 1) never fits, so nothing is masked.
    masks = block_mask(
        8,
        (2, 6),
        masked_fraction=1.0,
        ratio_range=(0.34, 0.34),
        min_patches=4,
        max_patches=4,
        min_aspect=1.0,
        generator=seeded(6),
    )
    assert (masks.budgets == 4).all() and not masks.mask.any()
