"""Collapse indicators, logged during training: when every input maps to the same embedding the
per-dimension spread goes to 0 and the embeddings span fewer and fewer directions."""

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def embedding_std(z: Tensor) -> Tensor:
    """Mean per-dimension std of the L2-normalised embeddings (N, D): about 1 / sqrt(D) when
    the embeddings spread over the sphere, 0 when they have collapsed to one point."""
    return F.normalize(z.float(), dim=-1).std(dim=0).mean()


@torch.no_grad()
def effective_rank(z: Tensor, eps: float = 1e-12) -> Tensor:
    """RankMe (Garrido et al., 2023): exp of the entropy of the normalised singular values of the
    centred embeddings (N, D); between 1 (collapsed to a line) and min(N, D)."""
    centred = z.float() - z.float().mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(centred)
    p = singular / (singular.sum() + eps)
    return torch.exp(-(p * (p + eps).log()).sum())
