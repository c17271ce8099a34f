"""DINOv2's losses as its code computes them (facebookresearch/dinov2, dinov2/loss/*.py and the way
train/ssl_meta_arch.py combines them): the oracle of the DINO-family tests, and the reference
backend of nexus_fast.ops.dino, .sinkhorn, .prototype_loss and .koleo.

Written for clarity, differentiable by autograd. Every function computes in float32, or in float64
when its input is float64 (DINOv2 casts to float32; float64 makes the same formula an exact
oracle).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from ... import distributed


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def sinkhorn_knopp(
    teacher_logits: Tensor, temperature: float, iters: int = 3, gather: bool = False
) -> Tensor:
    """DINOLoss.sinkhorn_knopp_teacher: the iterative form, on the whole (K, rows) matrix.

    Q = exp(logits / temperature)^T is normalised to sum 1, then `iters` times each prototype
    (row of Q) is scaled to total 1/K (sums over the global batch when `gather`) and each sample
    (column of Q) to total 1/B; finally Q *= B, so that every sample's column sums to 1.
    B is the global number of samples, all-reduced as iBOTPatchLoss.sinkhorn_knopp_teacher does
    (DINOLoss takes rows * world_size, the same when every rank holds as many rows).

    Returns:
        (rows, K) float32 (float64 for a float64 input) assignment probabilities, without grad.
    """
    with torch.no_grad():
        dtype = compute_dtype(teacher_logits)
        q = torch.exp(teacher_logits.to(dtype) / temperature).t()  # (K, rows)
        prototypes = q.shape[0]
        samples = torch.tensor(float(q.shape[1]), dtype=dtype, device=q.device)
        if gather:
            samples = distributed.all_reduce_sum(samples)
        total = q.sum()
        if gather:
            total = distributed.all_reduce_sum(total)
        q = q / total
        for _ in range(iters):
            per_prototype = q.sum(dim=1, keepdim=True)
            if gather:
                per_prototype = distributed.all_reduce_sum(per_prototype)
            q = q / per_prototype / prototypes
            q = q / q.sum(dim=0, keepdim=True) / samples
        return (q * samples).t()


def softmax_center(teacher_logits: Tensor, center: Tensor, temperature: float) -> Tensor:
    """DINOLoss.softmax_center_teacher: softmax((t - center) / temperature) over prototypes."""
    dtype = compute_dtype(teacher_logits, center)
    return F.softmax((teacher_logits.to(dtype) - center.to(dtype)) / temperature, dim=-1)


def updated_center(center: Tensor, teacher_logits: Tensor, momentum: float = 0.9) -> Tensor:
    """DINOLoss.update_center + apply_center_update on one process: m * center + (1 - m) * mean."""
    dtype = compute_dtype(teacher_logits, center)
    batch_center = teacher_logits.to(dtype).sum(dim=0, keepdim=True) / teacher_logits.shape[0]
    return center.to(dtype) * momentum + batch_center * (1 - momentum)


def cross_entropy(student_logits: Tensor, teacher_probs: Tensor, student_temp: float) -> Tensor:
    """Per row: -sum_k t_k log_softmax(s / student_temp)_k (no reduction over rows)."""
    dtype = compute_dtype(student_logits, teacher_probs)
    log_probs = F.log_softmax(student_logits.to(dtype) / student_temp, dim=-1)
    return -torch.sum(teacher_probs.to(dtype) * log_probs, dim=-1)


def dino_loss_forward(
    student_output_list: list[Tensor], teacher_probs_list: list[Tensor], student_temp: float
) -> Tensor:
    """DINOLoss.forward: every student crop against every teacher crop, row means summed."""
    total = 0
    for student in student_output_list:
        for teacher in teacher_probs_list:
            total = total + cross_entropy(student, teacher, student_temp).mean()
    return total


def dino_loss(
    student_globals: Tensor,
    student_locals: list[Tensor],
    teacher_probs: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """The DINO term of SSLMetaArch.forward_backward, for DINOv2's two global crops.

    Args:
        student_globals: (2 * B, K) logits of both global crops, crop by crop.
        student_locals: (B, K) logits of each local crop.
        teacher_probs: (2 * B, K) teacher probabilities of the global crops, crop by crop (in
            DINOv2's code the teacher crops are swapped before the head; here the swap happens
            inside, so crop i of the student meets crop 1 - i of the teacher).

    Returns:
        (local terms + global terms) / (2 * n_local + 2): each student local crop against both
        teacher crops, each student global crop against the other teacher crop.
    """
    n_local = len(student_locals)
    terms = max(n_local * 2, 1) + 2
    teacher_a, teacher_b = teacher_probs.chunk(2)
    swapped = torch.cat((teacher_b, teacher_a))
    loss = 0
    if n_local > 0:
        loss = dino_loss_forward(student_locals, [teacher_a, teacher_b], student_temp) / terms
    # Both global crops processed together: the mean over 2B rows times 2 is the sum of two means.
    loss = loss + dino_loss_forward([student_globals], [swapped], student_temp) * 2 / terms
    return loss


def ibot_patch_loss(
    student_masked_logits: Tensor,
    teacher_masked_probs: Tensor,
    masks: Tensor,
    student_temp: float = 0.1,
) -> Tensor:
    """iBOTPatchLoss.forward_masked: masked tokens flattened (n_masked, K) in masks' row-major
    order; each image's tokens weigh 1 / its masked count; the sum over tokens divided by the
    number of images (an image without masked tokens contributes 0)."""
    losses = cross_entropy(student_masked_logits, teacher_masked_probs, student_temp)
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return torch.sum(losses * weights.to(losses.dtype)) / masks.shape[0]


def koleo_loss(student_output: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeoLoss.forward: -mean log(distance to the nearest neighbour + eps), L2-normalised.

    As in DINOv2: the neighbour is the largest inner product with the diagonal set to -1, and the
    distance is nn.PairwiseDistance(2, eps=1e-8), i.e. ||x_i - x_j + eps||.
    """
    dtype = compute_dtype(student_output)
    x = F.normalize(student_output.to(dtype), eps=eps, p=2, dim=-1)
    with torch.no_grad():
        dots = torch.mm(x, x.t())
        n = x.shape[0]
        dots.view(-1)[:: (n + 1)].fill_(-1)
        neighbours = torch.max(dots, dim=1).indices
    distances = F.pairwise_distance(x, x[neighbours], p=2, eps=1e-8)
    return -torch.log(distances + eps).mean()


def weight_normalized(weight: Tensor) -> Tensor:
    """torch.nn.utils.weight_norm's weight with g = 1 (DINOHead's last layer): each row of the
    (K, D) weight divided by its norm (no eps, as weight_norm)."""
    dtype = compute_dtype(weight)
    weight = weight.to(dtype)
    return weight / weight.norm(dim=1, keepdim=True)


def normalize_features(features: Tensor) -> Tensor:
    """DINOHead.forward's normalisation before the last layer, in the features' dtype (eps 1e-6
    for float16, else 1e-12)."""
    eps = 1e-6 if features.dtype == torch.float16 else 1e-12
    return F.normalize(features, dim=-1, p=2, eps=eps)


def prototype_logits(features: Tensor, weight: Tensor) -> Tensor:
    """DINOHead's last step: normalise(features) @ weight_normalized(weight)^T, (rows, K), in the
    common dtype of features and weight (bfloat16 under autocast-like inputs, float64 exact)."""
    dtype = torch.promote_types(features.dtype, weight.dtype)
    return normalize_features(features.to(dtype)) @ weight_normalized(weight).to(dtype).t()


def prototype_cross_entropy(
    features: Tensor,
    weight: Tensor,
    teacher_probs: Tensor,
    student_temp: float = 0.1,
    target_index: Tensor | None = None,
) -> Tensor:
    """The head's last layer, then the cross-entropy, averaged over rows (0 for no rows).

    target_index: the row of teacher_probs that each feature row is scored against (default:
    row i against row i).
    """
    logits = prototype_logits(features, weight)
    targets = teacher_probs if target_index is None else teacher_probs[target_index]
    losses = cross_entropy(logits, targets, student_temp)
    return losses.sum() / max(losses.shape[0], 1)
