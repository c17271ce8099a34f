"""The official Barlow Twins and VICReg losses, as their repositories compute them, for
benchmarks and as test oracles: facebookresearch/barlowtwins main.py (BarlowTwins.forward after
the projector) and facebookresearch/vicreg main_vicreg.py (VICReg.forward after the expander).

Both build the full D x D matrices (cross-correlation, covariances) with in-place updates and the
strided off-diagonal view. In a distributed run the official Barlow Twins code all-reduces c
without autograd (its gradients come out 1 / world_size too small) and VICReg gathers x and y
with an autograd-aware all-gather after the invariance term; here both run in one process, on
the whole batch.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def off_diagonal(x: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened, as both repositories write it."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class BarlowTwinsLoss(nn.Module):
    """main.py's BarlowTwins.forward from the projector output on: BatchNorm1d(affine=False)
    of each view (a SyncBatchNorm in the official multi-GPU run), c = bn(z1)^T bn(z2) divided in
    place by the global batch size, the diagonal and off-diagonal sums by in-place ops."""

    def __init__(self, num_features: int, batch_size: int, lambd: float = 0.0051) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.lambd = lambd
        self.bn = nn.BatchNorm1d(num_features, affine=False)

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        c = self.bn(z1).T @ self.bn(z2)
        c.div_(self.batch_size)
        # The official code calls torch.distributed.all_reduce(c) here (no autograd).
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        return on_diag + self.lambd * off_diag


def vicreg_loss(
    x: Tensor,
    y: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> Tensor:
    """main_vicreg.py's VICReg.forward from the expander outputs on (args.batch_size is the
    global batch, here the whole of x)."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    # The official code gathers x and y over ranks here (FullGatherLayer).
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(
        2
    ).sum().div(num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
