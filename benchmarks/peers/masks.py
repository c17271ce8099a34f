"""The official mask generators, restated as their repositories run them: a Python loop over the
samples of a batch, small tensors (or numpy arrays) per sample, retry loops where they retry.

They are the peers of benchmarks/bench_masking.py and the oracles of tests/test_masking_*.py.
Where the official code draws from a global random state, these take an explicit generator
(`torch.Generator` or `random.Random`) so that a draw can be repeated; the kind and order of the
draws is otherwise the official one, quirks included (they are what nexus_fast.masking fixes).
"""

import math
import random

import numpy as np
import torch
from torch import Tensor


def mae_random_masking(noise: Tensor, mask_ratio: float) -> tuple[Tensor, Tensor, Tensor]:
    """facebookresearch/mae, models_mae.py `random_masking`, given its noise (N, L).

    Returns:
        ids_keep (N, K), ids_restore (N, L), and the float mask (N, L): 1 removed, 0 kept.
    """
    batch, length = noise.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones([batch, length], device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    return ids_keep, ids_restore, mask


def _ijepa_block_size(
    generator: torch.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    aspect_ratio: tuple[float, float],
) -> tuple[int, int]:
    # One uniform number sets both the scale and the aspect ratio (quirk c).
    uniform = torch.rand(1, generator=generator).item()
    mask_scale = scale[0] + uniform * (scale[1] - scale[0])
    max_keep = int(height * width * mask_scale)
    aspect = aspect_ratio[0] + uniform * (aspect_ratio[1] - aspect_ratio[0])
    h = round(math.sqrt(max_keep * aspect))
    w = round(math.sqrt(max_keep / aspect))
    # Strictly below the grid, because the position draw below needs height - h >= 1.
    while h >= height:
        h -= 1
    while w >= width:
        w -= 1
    return h, w


def _ijepa_block(
    generator: torch.Generator,
    height: int,
    width: int,
    size: tuple[int, int],
    min_keep: int,
    acceptable_regions: list[Tensor] | None,
) -> tuple[Tensor, Tensor]:
    h, w = size
    tries = 0
    timeout = 20
    while True:
        # randint's upper end is exclusive: the last row and column are never reached (quirk b).
        top = int(torch.randint(0, height - h, (1,), generator=generator))
        left = int(torch.randint(0, width - w, (1,), generator=generator))
        mask = torch.zeros((height, width), dtype=torch.int32)
        mask[top : top + h, left : left + w] = 1
        if acceptable_regions is not None:
            # After every 20 failures one more target stops constraining the context.
            for region in acceptable_regions[: max(len(acceptable_regions) - tries, 0)]:
                mask *= region
        indices = torch.nonzero(mask.flatten())
        if len(indices) > min_keep:
            break
        timeout -= 1
        if timeout == 0:
            tries += 1
            timeout = 20
    complement = torch.ones((height, width), dtype=torch.int32)
    complement[top : top + h, left : left + w] = 0
    return indices.squeeze(), complement


def ijepa_multiblock(
    batch_size: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    num_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2),
    target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0),
    min_keep: int = 10,
) -> tuple[Tensor, Tensor]:
    """facebookresearch/ijepa, src/masks/multiblock.py `MaskCollator.__call__` (nenc = 1).

    Returns:
        the context indices and the target indices, each a list with one (B, N) tensor per
        block (as default_collate arranges them), every mask cut to the shortest of the batch
        (quirk d).
    """
    # One block size for the whole batch (quirk a).
    target_size = _ijepa_block_size(generator, height, width, target_scale, target_aspect)
    context_size = _ijepa_block_size(generator, height, width, context_scale, (1.0, 1.0))
    targets, contexts = [], []
    min_target = min_context = height * width
    for _ in range(batch_size):
        image_targets, complements = [], []
        for _ in range(num_targets):
            indices, complement = _ijepa_block(
                generator, height, width, target_size, min_keep, None
            )
            image_targets.append(indices)
            complements.append(complement)
            min_target = min(min_target, len(indices))
        targets.append(image_targets)
        context, _ = _ijepa_block(generator, height, width, context_size, min_keep, complements)
        contexts.append([context])
        min_context = min(min_context, len(context))
    targets = [[t[:min_target] for t in image] for image in targets]
    contexts = [[c[:min_context] for c in image] for image in contexts]
    return (
        torch.utils.data.default_collate(contexts),
        torch.utils.data.default_collate(targets),
    )


def vjepa2_multiblock3d(
    batch_size: int,
    duration: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    num_blocks: int = 8,
    spatial_scale: tuple[float, float] = (0.15, 0.15),
    temporal_scale: tuple[float, float] = (1.0, 1.0),
    aspect_ratio: tuple[float, float] = (0.75, 1.5),
) -> tuple[Tensor, Tensor]:
    """facebookresearch/vjepa2, src/masks/multiseq_multiblock3d.py `_MaskGenerator.__call__`.

    Returns:
        context indices (B, Nc) and target indices (B, Nt), cut to the shortest of the batch.
    """
    # One (t, h, w) for the batch, from three separate uniform numbers.
    uniform = torch.rand(1, generator=generator).item()
    t = max(
        1, int(duration * (temporal_scale[0] + uniform * (temporal_scale[1] - temporal_scale[0])))
    )
    uniform = torch.rand(1, generator=generator).item()
    spatial = spatial_scale[0] + uniform * (spatial_scale[1] - spatial_scale[0])
    num_keep = int(height * width * spatial)
    uniform = torch.rand(1, generator=generator).item()
    aspect = aspect_ratio[0] + uniform * (aspect_ratio[1] - aspect_ratio[0])
    h = min(round(math.sqrt(num_keep * aspect)), height)
    w = min(round(math.sqrt(num_keep / aspect)), width)

    contexts, targets = [], []
    min_context = min_target = duration * height * width
    for _ in range(batch_size):
        while True:  # drawn again until the context is not empty
            keep = torch.ones((duration, height, width), dtype=torch.int32)
            for _ in range(num_blocks):
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                start = int(torch.randint(0, duration - t + 1, (1,), generator=generator))
                block = torch.ones((duration, height, width), dtype=torch.int32)
                block[start : start + t, top : top + h, left : left + w] = 0
                keep *= block
            keep = keep.flatten()
            target = torch.argwhere(keep == 0).squeeze()
            context = torch.nonzero(keep).squeeze()
            if len(context) > 0:
                break
        min_target = min(min_target, len(target))
        min_context = min(min_context, len(context))
        targets.append(target)
        contexts.append(context)
    contexts = [c[:min_context] for c in contexts]
    targets = [p[:min_target] for p in targets]
    return torch.utils.data.default_collate(contexts), torch.utils.data.default_collate(targets)


def data2vec2_inverse_block_mask(
    rows: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    mask_prob: float = 0.8,
    mask_length: int = 3,
    mask_prob_adjust: float = 0.07,
) -> Tensor:
    """facebookresearch/fairseq, fairseq/data/data_utils.py `compute_block_mask_2d` with
    inverse_mask=True, require_same_masks=True (no mask_dropout, no expand_adjcent).

    Returns:
        (rows, L) float mask, 1 = masked.
    """
    length = height * width
    keep_prob = 1 - mask_prob  # inverse: the blocks mark what is KEPT
    mask = torch.zeros((rows, height, width))
    num_centres = int(length * ((keep_prob + mask_prob_adjust) / mask_length**2))
    centres = torch.randint(0, length, size=(rows, num_centres), generator=generator)
    mask.view(rows, -1).scatter_(1, centres, 1)
    row_ids, centre_rows, centre_cols = mask.nonzero(as_tuple=True)
    ids = ([], [], [])
    offset = mask_length // 2
    for i in range(mask_length):
        for j in range(mask_length):
            ids[0].append(row_ids)
            ids[1].append(centre_rows + i - offset)
            ids[2].append(centre_cols + j - offset)
    mask[
        (
            torch.cat(ids[0]),
            torch.cat(ids[1]).clamp_(min=0, max=height - 1),
            torch.cat(ids[2]).clamp_(min=0, max=width - 1),
        )
    ] = 1
    mask = mask.reshape(rows, -1)
    counts = mask.sum(dim=-1)
    final_len = int(length * keep_prob)
    for i in range(rows):  # every row to exactly final_len kept patches
        n = counts[i]
        row = mask[i]
        if n > final_len:
            drop = torch.multinomial(
                row, int(n - final_len), replacement=False, generator=generator
            )
            row[drop] = 0
        elif n < final_len:
            add = torch.multinomial(
                1 - row, int(final_len - n), replacement=False, generator=generator
            )
            row[add] = 1
    return 1 - mask


class _BeitMaskingGenerator:
    """facebookresearch/dinov2, dinov2/data/masking.py `MaskingGenerator` (BEiT's)."""

    def __init__(
        self,
        height: int,
        width: int,
        rng: random.Random,
        max_num_patches: float,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
    ) -> None:
        self.height, self.width, self.rng = height, width, rng
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask: np.ndarray, max_mask_patches: float) -> int:
        delta = 0
        for _ in range(10):  # ten failed rectangles in a row end the mask
            target_area = self.rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(self.rng.uniform(*self.log_aspect_ratio))
            h = round(math.sqrt(target_area * aspect_ratio))
            w = round(math.sqrt(target_area / aspect_ratio))
            if w < self.width and h < self.height:
                top = self.rng.randint(0, self.height - h)
                left = self.rng.randint(0, self.width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int = 0) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            delta = self._mask(mask, budget)
            if delta == 0:
                break
            count += delta
        return mask


def dinov2_block_masks(
    batch_size: int,
    height: int,
    width: int,
    *,
    rng: random.Random,
    mask_probability: float = 0.5,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
) -> tuple[Tensor, Tensor]:
    """facebookresearch/dinov2, dinov2/data/collate.py `collate_data_and_cast` (the masks part),
    with the generator that dinov2/train/train.py builds (max_num_patches = half the grid).

    Returns:
        masks (B, L) bool, True = masked, and the per-image target counts (B,) in the same order.
    """
    length = height * width
    generator = _BeitMaskingGenerator(height, width, rng, max_num_patches=0.5 * length)
    num_masked = int(batch_size * mask_probability)
    probs = torch.linspace(*mask_ratio, num_masked + 1)
    masks, budgets = [], []
    for i in range(num_masked):
        budget = int(length * rng.uniform(float(probs[i]), float(probs[i + 1])))
        masks.append(torch.BoolTensor(generator(budget)))
        budgets.append(budget)
    for _ in range(num_masked, batch_size):
        masks.append(torch.BoolTensor(generator(0)))
        budgets.append(0)
    order = list(range(batch_size))
    rng.shuffle(order)
    masks = torch.stack([masks[i] for i in order]).flatten(1)
    return masks, torch.tensor([budgets[i] for i in order])
