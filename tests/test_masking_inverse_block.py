"""nexus_fast.masking.inverse_block_mask (data2vec 2.0): exact counts, index layout, clones, and
the distribution of the official compute_block_mask_2d (benchmarks/peers/masks.py)."""

import torch
from test_masking_common import official, seeded

from nexus_fast.masking import inverse_block_mask


def _right_neighbour_kept(kept: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean over rows of P(the right neighbour of a kept patch is kept): about 0.67 for 3 x 3
    blocks, the kept fraction (0.2) for patches kept at random."""
    cells = kept.reshape(-1, *grid)
    pairs = (cells[..., :-1] & cells[..., 1:]).sum((1, 2)).float()
    return (pairs / cells[..., :-1].sum((1, 2)).clamp(min=1)).mean().item()


def test_official_configuration_counts_and_layout() -> None:
    batch, clones, grid = 8, 16, (14, 14)
    masks = inverse_block_mask(batch, grid, num_clones=clones, generator=seeded(0))
    length, keep = 196, int(196 * (1 - 0.8))
    assert keep == 39
    assert masks.ids_keep.shape == (batch * clones, keep)
    assert masks.ids_restore.shape == masks.mask.shape == (batch * clones, length)
    # Exactly 1 - int(L (1 - ratio)) / L of every row is masked.
    assert (masks.mask.sum(1) == length - keep).all()
    # ids_keep lists the unmasked patches in ascending order.
    assert (masks.ids_keep[:, 1:] > masks.ids_keep[:, :-1]).all()
    kept = torch.zeros_like(masks.mask).scatter_(1, masks.ids_keep, True)
    assert torch.equal(kept, ~masks.mask)
    # ids_restore points into cat([kept ascending, masked ascending]).
    masked = torch.argsort(kept.long(), dim=1, stable=True)[:, : length - keep]  # masked, ascending
    order = torch.cat([masks.ids_keep, masked], 1)
    assert torch.equal(order.gather(1, masks.ids_restore), torch.arange(length).expand_as(order))


def test_clones_of_an_image_have_their_own_masks() -> None:
    masks = inverse_block_mask(4, (14, 14), num_clones=16, generator=seeded(1))
    per_image = masks.mask.reshape(4, 16, 196)
    distinct = {tuple(row.tolist()) for row in per_image.flatten(0, 1)}
    assert len(distinct) == 64


def test_blocks_match_the_official_distribution() -> None:
    # Same statistics over 512 official rows and 512 of ours: the kept-neighbour rate (standard
    # deviation about 0.002 per estimate) and, on a 7 x 7 grid where the clipping at the border
    # shows, each cell's keep rate (4,000 rows: about 0.009 per estimate).
    official_rows = official.data2vec2_inverse_block_mask(512, 14, 14, generator=seeded(2)) == 0
    ours = ~inverse_block_mask(32, (14, 14), generator=seeded(2)).mask
    assert abs(_right_neighbour_kept(official_rows, (14, 14)) - 0.67) < 0.02
    assert (
        abs(_right_neighbour_kept(ours, (14, 14)) - _right_neighbour_kept(official_rows, (14, 14)))
        < 0.015
    )

    official_rows = official.data2vec2_inverse_block_mask(4000, 7, 7, generator=seeded(3)) == 0
    ours = ~inverse_block_mask(250, (7, 7), generator=seeded(3)).mask
    difference = (ours.float().mean(0) - official_rows.float().mean(0)).abs()
    assert difference.max() < 0.04, difference.reshape(7, 7)


def test_other_block_sizes_and_ratios() -> None:
    for block_size, ratio, adjust in ((2, 0.75, 0.1), (1, 0.5, 0.0), (5, 0.6, 0.0)):
        masks = inverse_block_mask(
            3,
            (9, 11),
            mask_ratio=ratio,
            num_clones=2,
            block_size=block_size,
            adjust=adjust,
            generator=seeded(block_size),
        )
        keep = int(99 * (1 - ratio))
        assert masks.ids_keep.shape == (6, keep)
        assert (masks.mask.sum(1) == 99 - keep).all()
