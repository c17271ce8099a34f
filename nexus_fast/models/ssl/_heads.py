"""Pieces several methods share: the BatchNorm MLP projector (Barlow Twins, VICReg), pooling of
encoder features, and the collapse indicator every method reports."""

import torch
import torch.nn.functional as F
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
    """(B, D): the cls token, or the mean of the patch tokens."""
    if pool == "cls":
        if features.cls is None:
            raise ValueError("pool='cls' needs an encoder with a cls token")
        return features.cls
    return features.patch_tokens.mean(dim=1)


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """The collapse indicator: mean per-dimension std of the L2-normalised embeddings (about
    1 / sqrt(D) when healthy, 0 when every embedding is the same)."""
    return F.normalize(z.float(), dim=-1).std(dim=0).mean()
