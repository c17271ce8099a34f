"""DINOv2's formulation of the DINO loss path and of Sinkhorn-Knopp, as facebookresearch/dinov2
runs it (dinov2/layers/dino_head.py, dinov2/loss/dino_clstoken_loss.py,
dinov2/train/ssl_meta_arch.py), for benchmarks: the head's weight-normalised last layer on every
student crop at once (one rows x K logits tensor), the teacher's centering and softmax, then the
cross-entropy of each (student crop, teacher crop) pair on full rows x K tensors, autograd
keeping what it needs; Sinkhorn-Knopp normalising the whole K x rows matrix in place.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def last_layer(features: Tensor, weight_v: Tensor, weight_g: Tensor) -> Tensor:
    """DINOHead.forward after the MLP: L2-normalise, then weight_norm(Linear(bias=False))."""
    eps = 1e-6 if features.dtype == torch.float16 else 1e-12
    x = F.normalize(features, dim=-1, p=2, eps=eps)
    return F.linear(x, torch._weight_norm(weight_v, weight_g, 0))


class DINOLoss:
    """DINOLoss: the center buffer, the teacher's softmax or Sinkhorn-Knopp, the cross-entropy."""

    def __init__(self, out_dim: int, device, student_temp: float = 0.1, momentum: float = 0.9):
        self.student_temp = student_temp
        self.center_momentum = momentum
        self.center = torch.zeros(1, out_dim, device=device)
        self.updated = True
        self.reduce_handle = None
        self.len_teacher_output = None
        self.async_batch_center = None

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> Tensor:
        teacher_output = teacher_output.float()
        world_size = dist.get_world_size() if dist.is_initialized() else 1
        q = torch.exp(teacher_output / teacher_temp).t()  # K x B
        samples = q.shape[1] * world_size
        prototypes = q.shape[0]
        sum_q = torch.sum(q)
        if dist.is_initialized():
            dist.all_reduce(sum_q)
        q /= sum_q
        for _ in range(n_iterations):
            sum_of_rows = torch.sum(q, dim=1, keepdim=True)
            if dist.is_initialized():
                dist.all_reduce(sum_of_rows)
            q /= sum_of_rows
            q /= prototypes
            q /= torch.sum(q, dim=0, keepdim=True)
            q /= samples
        q *= samples
        return q.t()

    def forward(self, student_output_list: list[Tensor], teacher_list: list[Tensor]) -> Tensor:
        total_loss = 0
        for s in student_output_list:
            lsm = F.log_softmax(s / self.student_temp, dim=-1)
            for t in teacher_list:
                loss = torch.sum(t * lsm, dim=-1)
                total_loss -= loss.mean()
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        self.updated = False
        self.len_teacher_output = len(teacher_output)
        self.async_batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        if dist.is_initialized():
            self.reduce_handle = dist.all_reduce(self.async_batch_center, async_op=True)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        if self.updated is False:
            world_size = dist.get_world_size() if dist.is_initialized() else 1
            if self.reduce_handle is not None:
                self.reduce_handle.wait()
            batch_center = self.async_batch_center / (self.len_teacher_output * world_size)
            self.center = self.center * self.center_momentum + batch_center * (
                1 - self.center_momentum
            )
            self.updated = True


def dino_loss_path(
    student_features: list[Tensor],
    weight_v: Tensor,
    weight_g: Tensor,
    teacher_logits: Tensor,
    loss: DINOLoss,
    teacher_temp: float,
    n_local: int,
) -> Tensor:
    """SSLMetaArch.forward_backward's DINO term from the bottleneck features on.

    Args:
        student_features: [global crops (2B, D), local crops (n_local * B, D)], DINOv2's two
            head inputs.
        teacher_logits: (2B, K) the teacher head's outputs for the global crops, already in
            DINOv2's swapped crop order (B then A), so that A meets B.
    """
    n_global = 2
    terms = max(n_local * n_global, 1) + (n_global - 1) * n_global
    teacher_probs = loss.softmax_center_teacher(teacher_logits, teacher_temp)
    teacher_probs = teacher_probs.view(n_global, -1, teacher_probs.shape[-1])
    loss.update_center(teacher_logits)
    global_features, local_features = student_features
    logits = last_layer(torch.cat([local_features, global_features]), weight_v, weight_g)
    local_logits, global_logits = logits.split([local_features.shape[0], global_features.shape[0]])
    local_loss = loss.forward(local_logits.chunk(n_local), list(teacher_probs)) / terms
    global_loss = loss.forward([global_logits], [teacher_probs.flatten(0, 1)]) * 2 / terms
    return local_loss + global_loss
