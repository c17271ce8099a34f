"""nexus_fast.masking.tube_multiblock_mask (V-JEPA 2): tubes through time, the union and its
complement, the presets, positions, the non-empty context, truncation."""

import torch
from test_masking_common import assert_sides_follow_formula, assert_varlen_matches, seeded

from nexus_fast.masking import (
    VJEPA2_LONG_RANGE,
    VJEPA2_SHORT_RANGE,
    tube_multiblock_mask,
    vjepa2_tube_masks,
)

GRID = (8, 16, 16)  # 16 frames at 256 px in tubelets of 2 x 16 x 16


def _cells(mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    return mask.reshape(mask.shape[0], *grid)


def test_presets_are_the_official_mask_configs() -> None:
    assert dict(VJEPA2_SHORT_RANGE) == {
        "num_blocks": 8,
        "spatial_scale": (0.15, 0.15),
        "aspect": (0.75, 1.5),
    }
    assert dict(VJEPA2_LONG_RANGE) == {
        "num_blocks": 2,
        "spatial_scale": (0.7, 0.7),
        "aspect": (0.75, 1.5),
    }


def test_both_presets_on_the_official_grid() -> None:
    batch = 32
    short, long = vjepa2_tube_masks(batch, GRID, generator=seeded(0))
    for masks, preset in ((short, VJEPA2_SHORT_RANGE), (long, VJEPA2_LONG_RANGE)):
        length = 8 * 16 * 16
        assert masks.target_mask.shape == masks.context_mask.shape == (batch, length)
        assert torch.equal(masks.context_mask, ~masks.target_mask)
        assert_varlen_matches(masks.target, masks.target_mask)
        assert_varlen_matches(masks.context, masks.context_mask)
        assert (masks.context.lengths > 0).all()
        # Tubes span every time step: each spatial column is masked at all steps or none.
        cells = _cells(masks.target_mask, GRID)
        assert torch.equal(cells.all(1), cells.any(1))
        # One size per batch (official), spanning all 8 steps, from the formula.
        assert (masks.block_sides == masks.block_sides[0]).all()
        assert (masks.block_sides[:, 0] == 8).all()
        assert_sides_follow_formula(masks.block_sides[:, 1:], (16, 16), **_ranges(preset))
        # The union holds at least one block and at most num_blocks of them.
        volume = masks.block_sides.prod(-1)
        assert (masks.target.lengths >= volume).all()
        assert (masks.target.lengths <= preset["num_blocks"] * volume).all()
    assert short.target.lengths.float().mean() < long.target.lengths.float().mean()


def _ranges(preset) -> dict:
    return {"scale": preset["spatial_scale"], "aspect": preset["aspect"]}


def test_partial_time_blocks_and_every_position() -> None:
    # One 2 x 2 x 2 block on a 4 x 6 x 6 grid: the target is the block itself, and its start
    # must take all 3 values in time and all 5 per spatial axis (about 240 and 144 of 720 each,
    # standard deviations 13 and 11).
    grid = (4, 6, 6)
    masks = tube_multiblock_mask(
        720,
        grid,
        num_blocks=1,
        spatial_scale=(0.115, 0.115),  # int(36 * 0.115) = 4 cells, aspect 1: 2 x 2
        aspect=(1.0, 1.0),
        temporal_scale=(0.5, 0.5),
        per_batch_sizes=False,
        generator=seeded(1),
    )
    assert (masks.block_sides == torch.tensor([2, 2, 2])).all()
    assert (masks.target.lengths == 8).all()
    cells = _cells(masks.target_mask, grid)
    for axis, (positions, expected) in enumerate(((3, 240), (5, 144), (5, 144))):
        others = [d for d in (1, 2, 3) if d != axis + 1]
        first = cells.any(others[1]).any(others[0]).int().argmax(-1)
        counts = torch.bincount(first, minlength=positions)
        assert counts.numel() == positions, counts
        assert ((counts - expected).abs() < 60).all(), (axis, counts)


def test_sizes_per_clip_on_request() -> None:
    masks = tube_multiblock_mask(
        64, GRID, spatial_scale=(0.1, 0.3), per_batch_sizes=False, generator=seeded(2)
    )
    assert len({tuple(s) for s in masks.block_sides.tolist()}) > 5
    assert_sides_follow_formula(masks.block_sides[:, 1:], (16, 16), (0.1, 0.3), (0.75, 1.5))
    assert_varlen_matches(masks.target, masks.target_mask)


def test_context_is_never_empty_even_when_placements_cover_the_clip() -> None:
    # 2 x 1 blocks on a 1 x 2 x 2 grid: two blocks in different columns cover the clip (half
    # of the placements), eight do so unless all fall in one column (254 in 256). Every clip
    # must still keep a context: a placement that leaves one, else a lone block, i.e. exactly
    # one column as target and the other as context.
    for num_blocks in (2, 8):
        masks = tube_multiblock_mask(
            256,
            (1, 2, 2),
            num_blocks=num_blocks,
            spatial_scale=(0.5, 0.5),
            aspect=(2.0, 2.0),
            generator=seeded(3),
        )
        assert (masks.block_sides == torch.tensor([1, 2, 1])).all()
        assert (masks.context.lengths == 2).all() and (masks.target.lengths == 2).all()
        columns = masks.target_mask.reshape(256, 2, 2)
        assert torch.equal(columns.all(1), columns.any(1))
        assert_varlen_matches(masks.context, masks.context_mask)


def test_truncate_cuts_every_row_to_the_batch_minimum() -> None:
    full = tube_multiblock_mask(16, GRID, generator=seeded(4))
    cut = tube_multiblock_mask(16, GRID, truncate=True, generator=seeded(4))
    for whole, part, part_mask in (
        (full.context, cut.context, cut.context_mask),
        (full.target, cut.target, cut.target_mask),
    ):
        shortest = int(whole.lengths.min())
        assert shortest < int(whole.lengths.max()), "the test needs rows of different lengths"
        assert (part.lengths == shortest).all()
        assert torch.equal(part.ids[:, :shortest], whole.ids[:, :shortest])
        assert_varlen_matches(part, part_mask)
    assert not (cut.context_mask & cut.target_mask).any()
