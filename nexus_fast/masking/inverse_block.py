"""data2vec 2.0's inverse block mask (facebookresearch/fairseq, fairseq/data/data_utils.py
`compute_block_mask_2d` with inverse_mask=True and require_same_masks=True): square blocks mark
the patches the student KEEPS, each image is cloned several times with a mask per clone, and
every clone keeps the same number of patches."""

import torch

from ._common import (
    MaskedIndices,
    check_fraction,
    check_grid,
    check_int,
    indices_from_kept,
    resolve_generator,
    scaled_index,
    to_device,
    uniform,
)


def inverse_block_mask(
    batch_size: int,
    grid: tuple[int, int],
    *,
    mask_ratio: float = 0.8,
    num_clones: int = 16,
    block_size: int = 3,
    adjust: float = 0.07,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskedIndices:
    """Masks for B * num_clones rows, each keeping exactly K = int(L (1 - mask_ratio)) patches.

    As the official: int(L ((1 - mask_ratio) + adjust) / block_size^2) block centres are drawn
    uniformly (repeats allowed); each keeps the block_size x block_size square around it, clipped
    at the border (offsets -(block_size // 2) .. block_size - 1 - block_size // 2); then each row
    is brought to exactly K kept patches, by releasing uniformly chosen kept patches when it has
    too many or keeping uniformly chosen others when it has too few; everything else is masked.
    The official corrects each row in a Python loop (`torch.multinomial`); here the K largest of
    `kept + uniform` keys per row make the same choice for every row at once: kept patches rank
    first, each group in random order.

    Rows are clone-major per image, as data2vec 2.0 clones with `repeat_interleave`: rows
    i * num_clones .. (i + 1) * num_clones - 1 are the clones of image i.

    Randomness and devices: see `nexus_fast.masking`.

    Args:
        batch_size: B >= 1 images.
        grid: (H, W) patch grid; L = H W.
        mask_ratio: the masked fraction, in [0, 1) (0.8 for ViT-B, 0.75 for ViT-L and ViT-H).
        num_clones: masks per image (data2vec 2.0's clone_batch).
        block_size: the side of a kept square, >= 1.
        adjust: extra kept fraction for the blocks, >= 0, so that overlaps still reach about K
            before the correction (0.07 for ViT-B, 0.1 for ViT-L and ViT-H).
        generator: the source of every random draw (default: torch's default CPU generator).
        device: where the results live (default: the generator's device).

    Returns:
        MaskedIndices of B * num_clones rows: ids_keep (rows, K) ascending, ids_restore (rows, L)
        into cat([kept ascending, masked ascending]), mask (rows, L) True where masked.

    Raises:
        ValueError: an argument outside its range, or a ratio that keeps no patch.
    """
    batch_size = check_int("batch_size", batch_size, 1)
    height, width = check_grid(grid, ("H", "W"))
    mask_ratio = check_fraction("mask_ratio", mask_ratio, low_open=False, high_open=True)
    num_clones = check_int("num_clones", num_clones, 1)
    block_size = check_int("block_size", block_size, 1)
    adjust = check_fraction("adjust", adjust, low_open=False, high_open=True)
    length = height * width
    keep_fraction = 1 - mask_ratio
    num_keep = int(length * keep_fraction)
    if num_keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps int({length} * {keep_fraction:g}) = 0 of {length} "
            "patches; the student needs at least one"
        )
    num_centres = int(length * ((keep_fraction + adjust) / block_size**2))
    rows = batch_size * num_clones
    generator, device = resolve_generator(generator, device)

    # Centres (small integers, exact in float64) and the ranking keys travel in one copy.
    draws = uniform(generator, rows, num_centres + length)
    centres = scaled_index(draws[:, :num_centres], length).double()
    draws = to_device(torch.cat([centres, draws[:, num_centres:]], dim=1), device)
    centres, keys = draws[:, :num_centres].long(), draws[:, num_centres:]

    offsets = torch.arange(block_size, device=device) - block_size // 2
    block_rows = (centres[:, :, None] // width + offsets).clamp(0, height - 1)  # (rows, n, s)
    block_cols = (centres[:, :, None] % width + offsets).clamp(0, width - 1)
    cells = (block_rows[..., :, None] * width + block_cols[..., None, :]).flatten(1)
    kept = torch.zeros(rows, length, dtype=torch.bool, device=device).scatter_(1, cells, True)

    # float64 keys are distinct but with a chance of about L^2 / 2^53 per row, so the K largest
    # form the same set on every device (their order, which topk leaves open, is not used).
    chosen = torch.topk(kept + keys, num_keep, dim=1, sorted=False).indices
    kept = torch.zeros_like(kept).scatter_(1, chosen, True)
    return indices_from_kept(kept, num_keep)
