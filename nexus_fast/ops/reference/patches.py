"""Reference patch and token movement, in the official MAE conventions.

Patch order (DESIGN.md, "Patch order"): patch l of an image is grid cell (l // w, l % w) of the
(h, w) = (H / p, W / p) grid, row-major; its elements are laid out (p, q, C), channels last, as the
official MAE `patchify` does. Video (B, C, T, H, W) with tubelets of t frames: patch l is cell
(l // (h w), (l // w) % h, l % w) of the (T / t, h, w) grid, elements (t, p, q, C).
"""

import torch
from torch import Tensor


def grid_shape(size: tuple[int, ...], patch_size: int, tubelet: int = 1) -> tuple[int, ...]:
    """The patch grid of an image (H, W) -> (h, w) or a clip (T, H, W) -> (T / t, h, w)."""
    *time, height, width = size
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not divisible by patch_size {patch_size}")
    grid = (height // patch_size, width // patch_size)
    if not time:
        return grid
    if time[0] % tubelet:
        raise ValueError(f"{time[0]} frames are not divisible by tubelet {tubelet}")
    return (time[0] // tubelet, *grid)


def patchify(x: Tensor, patch_size: int, tubelet: int = 1) -> Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), or (B, C, T, H, W) -> (B, L, t*p*p*C); one copy."""
    p = patch_size
    if x.dim() == 4:
        batch, channels, height, width = x.shape
        h, w = grid_shape((height, width), p)
        x = x.reshape(batch, channels, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(batch, h * w, p * p * channels)
    if x.dim() == 5:
        batch, channels, frames, height, width = x.shape
        s, h, w = grid_shape((frames, height, width), p, tubelet)
        x = x.reshape(batch, channels, s, tubelet, h, p, w, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
        return x.reshape(batch, s * h * w, tubelet * p * p * channels)
    raise ValueError(f"expected images (B, C, H, W) or video (B, C, T, H, W), got {tuple(x.shape)}")


def unpatchify(
    patches: Tensor,
    patch_size: int,
    size: tuple[int, int] | tuple[int, int, int] | None = None,
    tubelet: int = 1,
) -> Tensor:
    """The inverse of `patchify`: (B, L, t*p*p*C) -> (B, C, H, W) or (B, C, T, H, W).

    Args:
        patches: (B, L, t*p*p*C) in the patch order of `patchify`.
        patch_size: p.
        size: (H, W) for images, (T, H, W) for video; None means square images (L = h * h).
        tubelet: t, for video.
    """
    batch, length, width_p = patches.shape
    p = patch_size
    if size is None:
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"{length} patches do not form a square grid: pass size=(H, W)")
        size = (side * p, side * p)
    grid = grid_shape(size, p, tubelet)
    cells = 1
    for extent in grid:
        cells *= extent
    volume = p * p * (tubelet if len(grid) == 3 else 1)
    if cells != length or width_p % volume:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit size {tuple(size)} with "
            f"patch_size {p}" + (f" and tubelet {tubelet}" if len(grid) == 3 else "")
        )
    channels = width_p // volume
    if len(grid) == 2:
        h, w = grid
        x = patches.reshape(batch, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(batch, channels, h * p, w * p)
    s, h, w = grid
    x = patches.reshape(batch, s, h, w, tubelet, p, p, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(batch, channels, s * tubelet, h * p, w * p)


def gather_patches(x: Tensor, patch_size: int, ids: Tensor, tubelet: int = 1) -> Tensor:
    """patchify(x)[b, ids[b, k]] for every b, k: (B, K, t*p*p*C)."""
    patches = patchify(x, patch_size, tubelet)
    return patches.gather(1, ids.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


def gather_tokens(tokens: Tensor, ids: Tensor) -> Tensor:
    """tokens[b, ids[b, k]]: (B or 1, N, D) with ids (B, K) -> (B, K, D); batch 1 broadcasts."""
    tokens = tokens.expand(ids.shape[0], -1, -1)
    return tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def scatter_tokens(tokens: Tensor, ids_restore: Tensor, mask_token: Tensor) -> Tensor:
    """The MAE decoder's unshuffle: (B, K, D) kept tokens -> (B, L, D), removed ones = mask_token.

    Exactly the official sequence: append L - K mask tokens, then gather with ids_restore.
    """
    batch, kept, dim = tokens.shape
    length = ids_restore.shape[1]
    fill = mask_token.reshape(1, 1, dim).to(tokens.dtype).expand(batch, length - kept, dim)
    appended = torch.cat([tokens, fill], dim=1)
    return appended.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """MAE's norm_pix_loss target: each patch standardised by its mean and unbiased variance."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_patch_loss(
    pred: Tensor,
    images: Tensor,
    mask: Tensor,
    patch_size: int,
    norm_pix: bool = True,
    tubelet: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """The official MAE forward_loss: mean squared error per patch, averaged over masked patches.

    Args:
        pred: (B, L, t*p*p*C) predicted patches.
        images: (B, C, H, W) or (B, C, T, H, W), patchified here as the target.
        mask: (B, L), 1/True where the patch was removed (only those count); float weights allowed.
        norm_pix: standardise each target patch (mean, unbiased variance, eps).

    Returns:
        A 0-dim float32 (or float64) tensor. A mask without any masked patch gives 0.
    """
    compute = torch.promote_types(pred.dtype, torch.float32)
    target = patchify(images, patch_size, tubelet).to(compute)
    if norm_pix:
        target = normalize_patches(target, eps)
    per_patch = (pred.to(compute) - target).pow(2).mean(dim=-1)
    weights = mask.to(compute)
    return (per_patch * weights).sum() / weights.sum().clamp_min(torch.finfo(compute).tiny)
