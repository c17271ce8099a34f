"""MAE's per-sample uniform random mask (facebookresearch/mae, models_mae.py `random_masking`)."""

import torch
from torch import Tensor

from ._common import (
    MaskedIndices,
    check_fraction,
    check_int,
    resolve_generator,
    to_device,
    uniform,
)


def random_mask(
    batch_size: int,
    num_patches: int,
    mask_ratio: float = 0.75,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> MaskedIndices:
    """Keeps int(L (1 - mask_ratio)) patches per sample, uniformly at random, as MAE does.

    Exactly the official algorithm on the same noise: `ids_shuffle = argsort(noise)` (the
    patches of smallest noise are kept), `ids_restore = argsort(ids_shuffle)`,
    `ids_keep = ids_shuffle[:, :K]`, mask True where removed, in patch order. The sort is stable
    and the drawn noise float64, so CPU and CUDA sort alike (the official float32 noise ties in
    about one row in a thousand at L = 196, where an unstable sort may order them either way).

    Randomness and devices: see `nexus_fast.masking`.

    Args:
        batch_size: B >= 1.
        num_patches: L >= 1.
        mask_ratio: the removed fraction, in [0, 1); K = int(L (1 - mask_ratio)) must be >= 1.
        noise: (B, L) floating keys to use instead of drawing them (parity tests, replays).
        generator: the source of the noise when it is drawn (default: torch's default CPU
            generator).
        device: where the results live (default: the noise's device, else the generator's).

    Returns:
        MaskedIndices with ids_keep (B, K) in the order of increasing noise.

    Raises:
        ValueError: an argument outside its range, or noise of another shape.

    Example:
        >>> masks = random_mask(2, 196, generator=torch.Generator().manual_seed(0))
        >>> masks.ids_keep.shape, int(masks.mask.sum())
        (torch.Size([2, 49]), 294)
    """
    batch_size = check_int("batch_size", batch_size, 1)
    num_patches = check_int("num_patches", num_patches, 1)
    mask_ratio = check_fraction("mask_ratio", mask_ratio, low_open=False, high_open=True)
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps int({num_patches} * {1 - mask_ratio:g}) = 0 of "
            f"{num_patches} patches; the encoder needs at least one"
        )
    if noise is not None:
        if tuple(noise.shape) != (batch_size, num_patches) or not noise.is_floating_point():
            raise ValueError(
                f"noise must be a floating tensor of shape ({batch_size}, {num_patches}), got "
                f"{noise.dtype} of shape {tuple(noise.shape)}"
            )
        device = torch.device(device) if device is not None else noise.device
    else:
        generator, device = resolve_generator(generator, device)
        noise = uniform(generator, batch_size, num_patches)
    noise = to_device(noise, device)

    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    # The inverse permutation: the same as argsort(ids_shuffle), in one scatter.
    positions = torch.arange(num_patches, device=device).expand(batch_size, -1)
    ids_restore = torch.empty_like(ids_shuffle).scatter_(1, ids_shuffle, positions)
    return MaskedIndices(
        ids_keep=ids_shuffle[:, :num_keep].contiguous(),
        ids_restore=ids_restore,
        mask=ids_restore >= num_keep,
    )
