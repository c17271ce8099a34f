"""Pieces several methods share: the BatchNorm MLP projector (Barlow Twins, VICReg) and the
pooling of encoder features."""

import torch
from torch import Tensor, nn

from ..vit import ViTFeatures


def projector(in_dim: int, dims: tuple[int, ...], hidden_bias: bool) -> nn.Sequential:
    """[Linear -> BatchNorm1d -> ReLU] for every hidden layer, then a Linear without bias (the
    official Barlow Twins projector has no hidden biases; VICReg's expander has them)."""
    sizes = (in_dim, *dims)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 2):
        layers += [
            nn.Linear(sizes[i], sizes[i + 1], bias=hidden_bias),
            nn.BatchNorm1d(sizes[i + 1]),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


def pooled(features: ViTFeatures, pool: str) -> Tensor:
    """(B, D): the cls token or the mean of the patch tokens; (B, 2D) for "cls+mean", both."""
    if pool in ("cls", "cls+mean") and features.cls is None:
        raise ValueError(f"pool={pool!r} needs an encoder with a cls token")
    if pool == "cls":
        return features.cls
    if pool == "mean":
        return features.patch_tokens.mean(dim=1)
    if pool == "cls+mean":
        return torch.cat([features.cls, features.patch_tokens.mean(dim=1)], dim=-1)
    raise ValueError(f"pool={pool!r} is not allowed: 'cls', 'mean' or 'cls+mean'")
