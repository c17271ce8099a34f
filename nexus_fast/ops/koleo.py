"""The KoLeo regulariser (DINOv2's KoLeoLoss): spread the student's features on the sphere.

loss = -mean_i log(||x_i - x_nn(i)|| + eps) on L2-normalised x, nn(i) the nearest other row by
inner product. As in DINOv2 the distance is torch's pairwise distance with eps inside the norm,
||x_i - x_j + eps||, so duplicate rows give a finite loss and finite gradients. Two rules differ
from DINOv2's code: a row's own entry is excluded from the neighbour search by index (DINOv2 sets
the diagonal of the inner products to -1, which an antipodal neighbour ties), and a batch without
a second row (no neighbour) gives 0, where DINOv2 returns -log(eps * sqrt(D) + eps) ~ 17.
With gather=True the neighbours come from the global batch (every rank's rows, autograd-aware).

One backend: the N x N' inner products are small (N' = the global batch of cls tokens).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed
from ._dino_common import check_floating, check_positive
from ._dispatch import Backend, Operator, register
from .reference import dino as reference


def _koleo(x: Tensor, eps: float, gather: bool) -> Tensor:
    dtype = reference.compute_dtype(x)
    unit = F.normalize(x.to(dtype), eps=eps, p=2, dim=-1)  # (N, D)
    candidates = distributed.gather_batch(unit) if gather else unit  # (N', D)
    total = candidates.shape[0]
    if total < 2:
        return unit.sum() * 0.0  # no neighbour: 0, still attached to the graph
    offset = distributed.rank() * unit.shape[0] if gather else 0
    with torch.no_grad():
        dots = unit @ candidates.t()  # (N, N')
        own = torch.arange(unit.shape[0], device=x.device) + offset
        dots[torch.arange(unit.shape[0], device=x.device), own] = -torch.inf
        neighbours = dots.argmax(dim=1)
    distances = F.pairwise_distance(unit, candidates[neighbours], p=2, eps=eps)
    losses = -torch.log(distances + eps)
    if not gather:
        return losses.mean()
    return distributed.all_reduce_sum(losses.sum()) / total


KOLEO_LOSS = register(Operator("koleo_loss", [Backend("reference", _koleo)]))


def koleo_loss(
    x: Tensor, eps: float = 1e-8, *, gather: bool = False, backend: str | None = None
) -> Tensor:
    """DINOv2's KoLeo loss: -mean_i log(distance to the nearest neighbour + eps).

    Sablayrolles et al., "Spreading vectors for similarity search", 2019; Oquab et al.,
    "DINOv2", 2023 (weight 0.1, on each global crop's student cls tokens separately).

    Args:
        x: (N, D) features (normalised inside, float32 or float64 arithmetic).
        eps: added to the norm in the normalisation, inside the distance and to the distance
            (DINOv2: 1e-8 for all three).
        gather: take neighbours from the rows of every rank of the default process group
            (every rank must pass the same N). Each rank then returns the loss of the global
            batch (the mean over every rank's rows), and its rows' gradient is world_size times
            that of the single-process loss, which DDP's averaging turns into exactly it.
        backend: "reference" (the only one).

    Returns:
        A 0-dim tensor; 0 when the (global) batch has fewer than 2 rows.

    Raises:
        TypeError: a non-tensor or non-floating x. ValueError: x not 2-D, eps not positive.

    Example:
        >>> koleo_loss(torch.randn(16, 384, requires_grad=True)).backward()
    """
    check_floating("x", x, "(N, D)")
    eps = check_positive("eps", eps)
    arguments = (x, eps, bool(gather))
    return KOLEO_LOSS.select(*arguments, backend=backend).run(*arguments)
