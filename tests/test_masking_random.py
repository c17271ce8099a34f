"""nexus_fast.masking.random_mask against the official MAE random_masking, and its properties."""

import pytest
import torch
from test_masking_common import official, seeded

from nexus_fast.masking import random_mask


@pytest.mark.parametrize(
    ("batch", "length", "ratio"), [(64, 196, 0.75), (33, 50, 0.5), (8, 49, 0.0), (5, 17, 0.9)]
)
def test_equals_the_official_algorithm_on_the_same_noise(batch, length, ratio) -> None:
    noise = torch.rand(batch, length, generator=seeded(batch))  # float32, as MAE draws it
    ids_keep, ids_restore, mask = official.mae_random_masking(noise, ratio)
    ours = random_mask(batch, length, ratio, noise=noise)
    assert torch.equal(ours.ids_keep, ids_keep)
    assert torch.equal(ours.ids_restore, ids_restore)
    assert torch.equal(ours.mask, mask.bool())


def test_shapes_counts_and_the_mae_unshuffle() -> None:
    batch, length, ratio = 16, 196, 0.75
    masks = random_mask(batch, length, ratio, generator=seeded(0))
    keep = int(length * (1 - ratio))
    assert masks.ids_keep.shape == (batch, keep) and masks.ids_keep.is_contiguous()
    assert masks.ids_restore.shape == masks.mask.shape == (batch, length)
    assert (masks.mask.sum(1) == length - keep).all()
    # The decoder's unshuffle: kept tokens (here their own indices) then mask tokens (-1),
    # gathered with ids_restore, give every kept patch back in place and -1 where removed.
    appended = torch.cat([masks.ids_keep, torch.full((batch, length - keep), -1)], dim=1)
    rebuilt = appended.gather(1, masks.ids_restore)
    positions = torch.arange(length).expand(batch, -1)
    assert torch.equal(rebuilt, torch.where(masks.mask, -1, positions))


def test_every_patch_is_kept_equally_often() -> None:
    # 4 of 16 kept in 2,000 rows: 500 per patch, standard deviation 19. A bias towards some
    # patches (a non-random order, a shifted index) moves counts by hundreds.
    masks = random_mask(2000, 16, 0.75, generator=seeded(1))
    counts = (~masks.mask).sum(0)
    assert counts.sum() == 2000 * 4
    assert ((counts - 500).abs() < 80).all(), counts


def test_noise_decides_the_kept_patches_and_the_device() -> None:
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]], dtype=torch.float64)
    masks = random_mask(1, 4, 0.5, noise=noise)
    assert masks.ids_keep.tolist() == [[1, 3]]
    assert masks.mask.tolist() == [[True, False, True, False]]
    assert masks.ids_keep.device == noise.device
