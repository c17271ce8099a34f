"""Reference feature-regression losses and targets: I-JEPA, V-JEPA 2 and data2vec 2.0, written as
their official code computes them (facebookresearch/ijepa src/train.py, facebookresearch/vjepa2
app/vjepa/train.py, fairseq examples/data2vec/models/data2vec2.py)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LAYER_NORM_EPS = 1e-5  # F.layer_norm's and F.instance_norm's default, as the official code uses


def elementwise_loss(diff: Tensor, loss: str, loss_exp: float, beta: float) -> Tensor:
    """The per-element loss of a prediction error: smooth L1 (I-JEPA) or |diff|^p / p (V-JEPA)."""
    if loss == "smooth_l1":
        absolute = diff.abs()
        return torch.where(absolute < beta, 0.5 * diff.square() / beta, absolute - 0.5 * beta)
    return diff.abs().pow(loss_exp) / loss_exp


def jepa_loss(
    pred: Tensor,
    target_tokens: Tensor,
    target_ids: Tensor | None = None,
    *,
    valid: Tensor | None = None,
    loss: str = "smooth_l1",
    loss_exp: float = 1.0,
    beta: float = 1.0,
    normalize: bool = True,
) -> Tensor:
    """The JEPA loss, as the official code: layer-norm the teacher's tokens (no affine), select the
    target tokens, average the element loss over every element of the valid predictions.

    Args:
        pred: (B, N, D) predictions of the target tokens.
        target_tokens: (B, L, D) the teacher's output on the full image or clip.
        target_ids: (B, N) indices of the target tokens in L (None: target_tokens is (B, N, D)).
        valid: (B, N) bool, False for padding of variable-length target sets.
        loss: "smooth_l1" (I-JEPA, beta) or "power" (V-JEPA 2: mean |z - h|^loss_exp / loss_exp).
        normalize: layer-norm the teacher's tokens first.
    """
    compute = torch.promote_types(pred.dtype, torch.float32)
    target = target_tokens.to(compute)
    if normalize:
        target = F.layer_norm(target, target.shape[-1:], eps=LAYER_NORM_EPS)
    if target_ids is not None:
        target = target.gather(1, target_ids.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
    per_element = elementwise_loss(pred.to(compute) - target, loss, loss_exp, beta)
    if valid is None:
        return per_element.mean()
    weights = valid.to(compute).unsqueeze(-1)
    return (per_element * weights).sum() / (weights.sum() * pred.shape[-1]).clamp_min(1)


def data2vec_targets(layer_outputs: list[Tensor], eps: float = LAYER_NORM_EPS) -> Tensor:
    """fairseq data2vec 2.0 make_targets for images: instance-normalise each layer's output over
    the tokens (per channel, fp32), average the layers, layer-norm over channels. (B, L, D) fp32."""
    normalised = [
        F.instance_norm(layer.transpose(1, 2).float(), eps=eps).transpose(1, 2)
        for layer in layer_outputs
    ]
    average = torch.stack(normalised).mean(dim=0)
    return F.layer_norm(average, average.shape[-1:], eps=eps)


def data2vec_loss(
    pred: Tensor,
    targets: Tensor,
    mask: Tensor,
    num_clones: int,
    *,
    cls_pred: Tensor | None = None,
    cls_weight: float = 0.01,
) -> Tensor:
    """data2vec 2.0's regression loss with the targets repeated for the clones, as fairseq does.

    Args:
        pred: (B * M, L, D) the decoder's output, clone-major (rows b*M .. b*M + M - 1 are the M
            clones of image b).
        targets: (B, L, D) the teacher's targets of each image.
        mask: (B * M, L) bool, True at the masked positions (the only ones that count).
        num_clones: M.
        cls_pred: (B * M, D) the student's cls token, regressing the token mean of the targets.
        cls_weight: the cls term's weight (0.01), applied to the SUM over the clone rows: fairseq
            scales the per-row cls losses by cls_loss * sample_size and its criterion then
            divides everything by sample_size (the masked-token count).

    Returns:
        The mean over masked tokens of sum_d (pred - target)^2 / sqrt(D), plus cls_weight times
        the sum over rows of sum_d (cls_pred - mean_l target)^2 / sqrt(D).
    """
    scale = 1.0 / math.sqrt(pred.shape[-1])
    # At least float32, and float64 stays float64 (the tests' exact oracle).
    dtype = torch.promote_types(torch.promote_types(pred.dtype, targets.dtype), torch.float32)
    repeated = targets.repeat_interleave(num_clones, dim=0)
    errors = F.mse_loss(pred[mask].to(dtype), repeated[mask].to(dtype), reduction="none").sum(-1)
    loss = errors.sum() * scale / max(int(mask.sum()), 1)
    if cls_pred is not None:
        cls_target = targets.to(dtype).mean(dim=1).repeat_interleave(num_clones, dim=0)
        cls_errors = F.mse_loss(cls_pred.to(dtype), cls_target, reduction="none").sum(dim=-1)
        loss = loss + cls_weight * cls_errors.sum() * scale
    return loss
