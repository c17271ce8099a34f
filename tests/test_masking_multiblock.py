"""nexus_fast.masking.multiblock_mask (I-JEPA): block geometry, the context rules, the fixed
quirks of the official collator (checked against benchmarks/peers/masks.py), truncation."""

import math

import torch
from test_masking_common import (
    assert_sides_follow_formula,
    assert_varlen_matches,
    official,
    seeded,
)

from nexus_fast.masking import multiblock_mask

GRID = (14, 14)  # ViT at 224 px, patch 16


def _extent(masks: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns touched by each (..., L) mask, and the first of each."""
    cells = masks.reshape(*masks.shape[:-1], *grid)
    rows, cols = cells.any(-1), cells.any(-2)
    return torch.stack([rows.sum(-1), cols.sum(-1)], -1), torch.stack(
        [rows.int().argmax(-1), cols.int().argmax(-1)], -1
    )


def test_official_configuration() -> None:
    batch = 256
    masks = multiblock_mask(batch, GRID, generator=seeded(0))
    length = GRID[0] * GRID[1]
    assert masks.context_mask.shape == (batch, length)
    assert masks.target_masks.shape == (batch, 4, length)
    assert masks.targets.ids.shape[:2] == (batch, 4)
    assert_varlen_matches(masks.context, masks.context_mask)
    assert_varlen_matches(masks.targets, masks.target_masks)
    assert not (masks.context_mask[:, None] & masks.target_masks).any(), "context meets a target"
    assert (masks.context.lengths >= 10).all(), "min_keep"

    # Each target is a full h x w rectangle of its image's sampled sides, which the formula
    # can give; the context lies inside a block of the context's sides.
    spans, _ = _extent(masks.target_masks, GRID)
    assert torch.equal(spans, masks.target_sides[:, None].expand(-1, 4, 2))
    assert torch.equal(masks.targets.lengths, masks.target_sides.prod(-1)[:, None].expand(-1, 4))
    assert_sides_follow_formula(masks.target_sides, GRID, (0.15, 0.2), (0.75, 1.5))
    assert_sides_follow_formula(masks.context_sides, GRID, (0.85, 1.0), (1.0, 1.0))
    context_spans, _ = _extent(masks.context_mask, GRID)
    assert (context_spans <= masks.context_sides).all()


def test_blocks_reach_every_position_unlike_the_official_draw() -> None:
    # 2 x 2 targets on a 6 x 6 grid have 5 positions per axis; 800 targets put about 160 at
    # each (standard deviation 11). The official randint(0, H - h) never reaches the last one
    # (ijepa PR #40), which this check catches on its peer.
    scale, grid = (0.115, 0.115), (6, 6)  # int(36 * 0.115) = 4 cells, aspect 1: 2 x 2
    masks = multiblock_mask(
        200, grid, target_scale=scale, target_aspect=(1.0, 1.0), min_keep=4, generator=seeded(1)
    )
    assert (masks.target_sides == 2).all()
    _, starts = _extent(masks.target_masks, grid)
    for axis in (0, 1):
        counts = torch.bincount(starts[..., axis].flatten(), minlength=5)
        assert counts.numel() == 5 and (counts > 100).all() and (counts < 220).all(), counts

    _, targets = official.ijepa_multiblock(
        200, 6, 6, generator=seeded(1), target_scale=scale, target_aspect=(1.0, 1.0), min_keep=3
    )
    official_tops = torch.stack(targets).min(-1).values // 6
    assert official_tops.max() == 3, "the official draw stops one row short"


def _coupled_sides(grid, scale, aspect) -> set:
    """The sides the official gets when one uniform number sets both scale and aspect."""
    sides = set()
    for u in torch.linspace(0, 1, 20001, dtype=torch.float64).tolist():
        cells = math.floor(grid[0] * grid[1] * (scale[0] + u * (scale[1] - scale[0])))
        ratio = aspect[0] + u * (aspect[1] - aspect[0])
        sides.add((round(math.sqrt(cells * ratio)), round(math.sqrt(cells / ratio))))
    return sides


def test_scale_and_aspect_are_drawn_independently() -> None:
    coupled = _coupled_sides(GRID, (0.15, 0.2), (0.75, 1.5))
    ours = {tuple(s) for s in multiblock_mask(300, GRID, generator=seeded(2)).target_sides.tolist()}
    assert len(ours - coupled) >= 2, (ours, coupled)
    # The check is able to fail: the official's sizes all lie on the coupled curve.
    generator = seeded(2)
    for _ in range(20):
        _, targets = official.ijepa_multiblock(1, *GRID, generator=generator)
        assert targets[0].shape[-1] in {h * w for h, w in coupled}


def test_sizes_per_image_by_default_per_batch_on_request() -> None:
    per_image = multiblock_mask(64, GRID, generator=seeded(3))
    per_batch = multiblock_mask(64, GRID, per_batch_sizes=True, generator=seeded(3))
    assert len({tuple(s) for s in per_image.target_sides.tolist()}) > 3
    assert len({tuple(s) for s in per_image.context_sides.tolist()}) > 1
    assert (per_batch.target_sides == per_batch.target_sides[0]).all()
    assert (per_batch.context_sides == per_batch.context_sides[0]).all()
    assert_varlen_matches(per_batch.targets, per_batch.target_masks)


def test_truncate_cuts_every_row_to_the_batch_minimum() -> None:
    full = multiblock_mask(32, GRID, generator=seeded(4))
    cut = multiblock_mask(32, GRID, truncate=True, generator=seeded(4))
    for whole, part, part_mask in (
        (full.context, cut.context, cut.context_mask),
        (full.targets, cut.targets, cut.target_masks),
    ):
        shortest = int(whole.lengths.min())
        assert shortest < int(whole.lengths.max()), "the test needs rows of different lengths"
        assert (part.lengths == shortest).all()
        assert torch.equal(part.ids[..., :shortest], whole.ids[..., :shortest])
        assert_varlen_matches(part, part_mask)
        assert part.trimmed().ids.shape[-1] == shortest
    assert not (cut.context_mask[:, None] & cut.target_masks).any()


def test_context_candidates_replace_the_retry_loop() -> None:
    # A 5 x 5 context among four 20-patch targets on a 10 x 10 grid: one random position keeps
    # min_keep = 10 patches for 47% of the images, the best of CONTEXT_CANDIDATES = 8 for 97.5%
    # (every image has some position that would). Taking any but the first sufficient
    # candidate falls far below 90%.
    masks = multiblock_mask(
        400,
        (10, 10),
        target_scale=(0.2, 0.2),
        target_aspect=(1.0, 1.0),
        context_scale=(0.3, 0.3),
        min_keep=10,
        generator=seeded(0),
    )
    assert (masks.context.lengths >= 10).float().mean() > 0.9
    assert (masks.context.lengths > 0).all()
    assert not (masks.context_mask[:, None] & masks.target_masks).any()
