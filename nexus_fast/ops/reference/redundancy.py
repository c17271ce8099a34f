"""Reference redundancy-reduction losses, with the D x D matrices of their official code.

Barlow Twins (Zbontar et al., 2021; facebookresearch/barlowtwins main.py): each view is
standardised as BatchNorm1d(affine=False) does in training (biased variance over the batch,
eps 1e-5), C = z1n^T z2n / N, loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2.

VICReg (Bardes et al., 2022; facebookresearch/vicreg main_vicreg.py): invariance F.mse_loss(x, y);
each view centred; std = sqrt(unbiased var + eps); variance term mean(relu(1 - std_x)) / 2 +
mean(relu(1 - std_y)) / 2; cov = X^T X / (N - 1); covariance term sum of the squared
off-diagonal entries of cov_x, over D, plus the same for y.

These functions compute in the dtype of their inputs (float64 for the tests' exact values, bf16
for the "same low precision" error of the FlashAttention criterion) and are differentiable by
autograd. In a distributed run the callers pass the gathered (global) batch.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

BATCH_NORM_EPS = 1e-5  # nn.BatchNorm1d's default, which the official Barlow Twins code keeps


def batch_standardize(z: Tensor, eps: float = BATCH_NORM_EPS) -> Tensor:
    """(z - mean) / sqrt(var + eps) per column, with the biased variance over the batch: what
    BatchNorm1d(affine=False) computes in training mode."""
    mean = z.mean(dim=0)
    var = (z - mean).square().mean(dim=0)
    return (z - mean) / torch.sqrt(var + eps)


def off_diagonal(matrix: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened (the official repositories' trick:
    drop the last entry, view as (n - 1, n + 1), drop the first column)."""
    n = matrix.shape[0]
    return matrix.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = BATCH_NORM_EPS) -> Tensor:
    """C = z1n^T z2n / N, (D, D)."""
    return batch_standardize(z1, eps).T @ batch_standardize(z2, eps) / z1.shape[0]


def barlow_twins_loss(
    z1: Tensor, z2: Tensor, lambd: float = 0.0051, eps: float = BATCH_NORM_EPS
) -> Tensor:
    """The Barlow Twins loss of two (N, D) views (the whole batch), as a 0-dim tensor."""
    c = cross_correlation(z1, z2, eps)
    on_diag = (torch.diagonal(c) - 1).square().sum()
    off_diag = off_diagonal(c).square().sum()
    return on_diag + lambd * off_diag


def vicreg_terms(x: Tensor, y: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's batch terms of two (N, D) views (the whole batch): (variance, covariance,
    mean std), unweighted; the variance term is already the mean over the two views."""
    batch, features = x.shape
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    variance = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cov_x = x.T @ x / (batch - 1)
    cov_y = y.T @ y / (batch - 1)
    covariance = (
        off_diagonal(cov_x).square().sum() / features
        + off_diagonal(cov_y).square().sum() / features
    )
    return variance, covariance, (std_x.mean() + std_y.mean()) / 2


def vicreg_loss(
    x: Tensor,
    y: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The VICReg loss of two (N, D) views in one process, and its unweighted parts."""
    invariance = F.mse_loss(x, y)
    variance, covariance, std = vicreg_terms(x, y, eps)
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    metrics = {"invariance": invariance, "variance": variance, "covariance": covariance}
    return loss, metrics | {"std": std}
