"""Feature-regression losses and targets of the predictive methods:

- `jepa_loss`: I-JEPA (smooth L1) and V-JEPA 2 (mean |z - h|^p / p) on the teacher's tokens,
  layer-normed and selected at the target indices inside the kernel;
- `data2vec_targets`: data2vec 2.0's targets (top-K layers instance-normalised, averaged,
  layer-normed);
- `data2vec_loss`: data2vec 2.0's regression on the masked tokens of M clones per image, the
  targets indexed per clone instead of repeated, plus the cls term.

The losses share one operator, `feature_regression`: loss = sum_r w_r sum_d l(pred_r - t_r) with
t_r a (layer-normed) row of the targets and w_r a per-row weight (0 for unmasked or padded rows,
which the kernel does not read). Backends: triton (GPU; forced-only on CPU tensors, through the
interpreter), reference (plain torch over the rows that carry weight).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    interpreter_reasons,
    interpreting,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dispatch import Backend, Operator, register
from .reference import regression as reference
from .reference.regression import LAYER_NORM_EPS

LOSSES = ("smooth_l1", "power", "squared")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TRITON_MAX_DIM = 4096


# --- feature_regression: the shared operator -----------------------------------------------------


def _regression_reference(pred, targets, index, weights, loss, loss_exp, beta, normalize, eps):
    """The row-level loss in plain torch, over the rows whose weight is not zero."""
    if pred.device.type == "cpu" and not torch.compiler.is_compiling():
        # Reading which rows count is free on the CPU: skip the others entirely.
        active = weights != 0
        if not bool(active.all()):
            rows = active.nonzero().squeeze(1)
            pred, index, weights = pred[rows], index[rows], weights[rows]
    target = targets[index].float()
    if normalize:
        target = F.layer_norm(target, target.shape[-1:], eps=eps)
    per_element = _elementwise(pred.float(), target, loss, loss_exp, beta)
    return (per_element.sum(dim=-1) * weights.float()).sum()


def _elementwise(pred: Tensor, target: Tensor, loss: str, loss_exp: float, beta: float) -> Tensor:
    """The element loss with torch's fused kernels where one exists (the CPU path's speed)."""
    if loss == "squared":
        return F.mse_loss(pred, target, reduction="none")
    if loss == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    if loss_exp == 1.0:
        return F.l1_loss(pred, target, reduction="none")
    return reference.elementwise_loss(pred - target, loss, loss_exp, beta)


@torch.library.custom_op("nexus_fast::feature_regression_triton", mutates_args=())
def _regression_triton(
    pred: Tensor,
    targets: Tensor,
    index: Tensor,
    weights: Tensor,
    loss: str,
    loss_exp: float,
    beta: float,
    normalize: bool,
    eps: float,
) -> Tensor:
    arguments = (pred, targets, index, weights, loss, loss_exp, beta, normalize, eps)
    if interpreting():
        return triton_function("regression", "feature_regression")(*arguments)
    return _regression_reference(*arguments).float()


@_regression_triton.register_kernel("cuda")
def _(pred, targets, index, weights, loss, loss_exp, beta, normalize, eps):
    launcher = triton_function("regression", "feature_regression")
    return launcher(pred, targets, index, weights, loss, loss_exp, beta, normalize, eps)


@torch.library.custom_op("nexus_fast::feature_regression_backward_triton", mutates_args=())
def _regression_backward_triton(
    grad: Tensor,
    pred: Tensor,
    targets: Tensor,
    index: Tensor,
    weights: Tensor,
    loss: str,
    loss_exp: float,
    beta: float,
    normalize: bool,
    eps: float,
) -> Tensor:
    arguments = (grad, pred, targets, index, weights, loss, loss_exp, beta, normalize, eps)
    if interpreting():
        return triton_function("regression", "feature_regression_backward")(*arguments)
    with torch.enable_grad():
        leaf = pred.detach().requires_grad_()
        total = _regression_reference(leaf, *arguments[2:])
        (grad_pred,) = torch.autograd.grad(total, leaf, grad)
    return grad_pred


@_regression_backward_triton.register_kernel("cuda")
def _(grad, pred, targets, index, weights, loss, loss_exp, beta, normalize, eps):
    launcher = triton_function("regression", "feature_regression_backward")
    return launcher(grad, pred, targets, index, weights, loss, loss_exp, beta, normalize, eps)


@_regression_triton.register_fake
def _(pred, targets, index, weights, loss, loss_exp, beta, normalize, eps):
    return pred.new_empty((), dtype=torch.float32)


@_regression_backward_triton.register_fake
def _(grad, pred, targets, index, weights, loss, loss_exp, beta, normalize, eps):
    return pred.new_empty(pred.shape)


def _setup_context(ctx, inputs, output) -> None:
    pred, targets, index, weights, *options = inputs
    ctx.save_for_backward(pred, targets, index, weights)
    ctx.options = options


def _backward(ctx, grad: Tensor):
    pred, targets, index, weights = ctx.saved_tensors
    grad_pred = _regression_backward_triton(grad, pred, targets, index, weights, *ctx.options)
    return grad_pred, None, None, None, None, None, None, None, None


_regression_triton.register_autograd(_backward, setup_context=_setup_context)


def _triton_regression_reasons(pred, targets, *rest) -> list[str]:
    reasons = triton_reasons(pred)
    if pred.dtype not in TRITON_DTYPES or targets.dtype not in TRITON_DTYPES:
        reasons.append(f"dtypes {pred.dtype}/{targets.dtype}: the kernel takes fp32, fp16, bf16")
    if pred.shape[-1] > TRITON_MAX_DIM:
        reasons.append(f"feature dim {pred.shape[-1]} > {TRITON_MAX_DIM} (one row per program)")
    if torch.is_grad_enabled() and targets.requires_grad:
        reasons.append("targets require grad: the kernel treats the teacher's targets as constant")
    return reasons


FEATURE_REGRESSION = register(
    Operator(
        "feature_regression",
        [
            Backend(
                "triton",
                _regression_triton,
                triton_machine_reason,
                _triton_regression_reasons,
                lambda pred, *rest: interpreter_reasons(pred),
            ),
            Backend("reference", _regression_reference),
        ],
    )
)


def _regression(pred, targets, index, weights, loss, loss_exp, beta, normalize, eps, backend):
    arguments = (pred, targets, index, weights, loss, float(loss_exp), float(beta), normalize, eps)
    return FEATURE_REGRESSION.select(*arguments, backend=backend).run(*arguments)


# --- data2vec_targets ----------------------------------------------------------------------------


@torch.library.custom_op("nexus_fast::data2vec_targets_triton", mutates_args=())
def _data2vec_targets_triton(layers: list[Tensor], eps: float) -> Tensor:
    if interpreting():
        return triton_function("regression", "data2vec_targets")(layers, eps)
    return _data2vec_targets_reference(layers, eps)


@_data2vec_targets_triton.register_kernel("cuda")
def _(layers: list[Tensor], eps: float) -> Tensor:
    return triton_function("regression", "data2vec_targets")(layers, eps)


@_data2vec_targets_triton.register_fake
def _(layers: list[Tensor], eps: float) -> Tensor:
    return layers[0].new_empty(layers[0].shape, dtype=torch.float32)


def _data2vec_targets_reference(layers: list[Tensor], eps: float) -> Tensor:
    """One float32 accumulator and one normalised layer at a time, instead of K normalised copies
    stacked as the official code does."""
    average = torch.zeros(layers[0].shape, dtype=torch.float32, device=layers[0].device)
    for layer in layers:
        average += F.instance_norm(layer.transpose(1, 2).float(), eps=eps).transpose(1, 2)
    average /= len(layers)
    return F.layer_norm(average, average.shape[-1:], eps=eps)


DATA2VEC_TARGETS = register(
    Operator(
        "data2vec_targets",
        [
            Backend(
                "triton",
                _data2vec_targets_triton,
                triton_machine_reason,
                lambda layers, eps: (
                    triton_reasons(layers[0])
                    + ([] if layers[0].dtype in TRITON_DTYPES else [f"dtype {layers[0].dtype}"])
                ),
                lambda layers, eps: interpreter_reasons(layers[0]),
            ),
            Backend("reference", _data2vec_targets_reference),
        ],
    )
)


# --- the public losses ---------------------------------------------------------------------------


def _check_loss(loss: str, loss_exp: float, beta: float) -> None:
    if loss not in LOSSES[:2]:
        raise ValueError(f"loss must be 'smooth_l1' (I-JEPA) or 'power' (V-JEPA 2), got {loss!r}")
    if not (math.isfinite(loss_exp) and loss_exp > 0):
        raise ValueError(f"loss_exp must be a positive number, got {loss_exp}")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive number, got {beta}")


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
    backend: str | None = None,
) -> Tensor:
    """The JEPA loss: predictions against the teacher's layer-normed tokens at the target indices.

    I-JEPA: `loss="smooth_l1"` (beta 1). V-JEPA 2: `loss="power", loss_exp=1` (mean |z - h|^p / p,
    an L1 loss). The teacher's tokens are layer-normed (no affine, eps 1e-5) and selected inside
    the kernel: neither the normalised (B, L, D) teacher output nor the selected targets are held.

    Args:
        pred: (B, N, D) predictions of the target tokens.
        target_tokens: (B, L, D) the teacher's output on the whole image or clip (no gradient
            flows to it through the fused kernel; the reference differentiates it).
        target_ids: (B, N) indices into L of each prediction's target; None when target_tokens
            already holds the targets, shaped like pred.
        valid: (B, N) bool, False for padded entries of variable-length target sets.
        loss: "smooth_l1" or "power".
        loss_exp: p of the power loss.
        beta: the smooth L1 threshold.
        normalize: layer-norm the teacher's tokens (the official targets).
        backend: force "triton" or "reference".

    Returns:
        The mean element loss over the valid predictions, a 0-dim float32 tensor.
    """
    _check_loss(loss, loss_exp, beta)
    if pred.dim() != 3 or target_tokens.dim() != 3 or pred.shape[-1] != target_tokens.shape[-1]:
        raise ValueError(
            f"pred (B, N, D) and target_tokens (B, L, D) must share B and D, got "
            f"{tuple(pred.shape)} and {tuple(target_tokens.shape)}"
        )
    batch, count, dim = pred.shape
    length = target_tokens.shape[1]
    if target_ids is None:
        if target_tokens.shape != pred.shape:
            raise ValueError(
                f"without target_ids, target_tokens must be shaped like pred {tuple(pred.shape)}, "
                f"got {tuple(target_tokens.shape)}"
            )
        index = torch.arange(batch * count, device=pred.device)
    else:
        if tuple(target_ids.shape) != (batch, count):
            raise ValueError(
                f"target_ids must be (B, N) = ({batch}, {count}), got {tuple(target_ids.shape)}"
            )
        index = (
            target_ids.long() + length * torch.arange(batch, device=pred.device)[:, None]
        ).reshape(-1)
    if valid is None:
        weights = torch.full(
            (batch * count,), 1.0 / max(batch * count * dim, 1), device=pred.device
        )
    else:
        if tuple(valid.shape) != (batch, count):
            raise ValueError(f"valid must be (B, N) = ({batch}, {count}), got {tuple(valid.shape)}")
        flat = valid.reshape(-1).float()
        weights = flat / (flat.sum() * dim).clamp_min(1)
    return _regression(
        pred.reshape(batch * count, dim),
        target_tokens.reshape(batch * length, dim),
        index,
        weights,
        loss,
        loss_exp,
        beta,
        normalize,
        LAYER_NORM_EPS,
        backend,
    )


def data2vec_targets(
    layer_outputs: list[Tensor], *, eps: float = LAYER_NORM_EPS, backend: str | None = None
) -> Tensor:
    """data2vec 2.0's targets: the top-K layer outputs, each instance-normalised over the tokens
    (per channel, float32), averaged, then layer-normed over the channels.

    Args:
        layer_outputs: the K chosen layers' outputs (the teacher's FFN outputs of its top K
            blocks: K = 10 for ViT-B), each (B, L, D), one dtype.
        eps: of both normalisations (1e-5, as F.instance_norm and F.layer_norm).
        backend: force "triton" or "reference".

    Returns:
        (B, L, D) float32 targets, computed without stacking or normalising copies of the layers.
    """
    layers = list(layer_outputs)
    if not layers or any(layer.dim() != 3 or layer.shape != layers[0].shape for layer in layers):
        shapes = [tuple(layer.shape) for layer in layers]
        raise ValueError(
            f"layer_outputs must be one or more (B, L, D) tensors of one shape, got {shapes}"
        )
    if any(layer.dtype != layers[0].dtype for layer in layers):
        raise ValueError("layer_outputs must share one dtype")
    return DATA2VEC_TARGETS.select(layers, float(eps), backend=backend).run(layers, float(eps))


def data2vec_loss(
    pred: Tensor,
    targets: Tensor,
    mask: Tensor,
    num_clones: int,
    *,
    cls_pred: Tensor | None = None,
    cls_weight: float = 0.01,
    backend: str | None = None,
) -> Tensor:
    """data2vec 2.0's loss: MSE / sqrt(D) on the masked tokens of every clone, plus the cls term.

    Each image's targets serve its M clones by index (row b * M + m reads targets[b]), so the
    targets are never repeated M times as the official code does.

    Args:
        pred: (B * M, L, D) the decoder's output, clone-major.
        targets: (B, L, D) the teacher's targets (data2vec_targets).
        mask: (B * M, L) bool, True where the clone's patch was masked.
        num_clones: M.
        cls_pred: (B * M, D) the student's cls token; it regresses the token mean of the targets.
        cls_weight: the cls term's weight (official: 0.01), on the sum over the clone rows as
            fairseq's criterion has it (see nexus_fast.ops.reference.regression).
        backend: force "triton" or "reference".

    Returns:
        mean over masked tokens of sum_d (pred - target)^2 / sqrt(D), plus cls_weight times the
        sum over clones of sum_d (cls_pred - mean_l target)^2 / sqrt(D): a 0-dim float32 tensor.
    """
    if pred.dim() != 3 or targets.dim() != 3 or num_clones < 1:
        raise ValueError(
            f"pred (B*M, L, D), targets (B, L, D) and num_clones >= 1 expected, got "
            f"{tuple(pred.shape)}, {tuple(targets.shape)}, {num_clones}"
        )
    batch, length, dim = targets.shape
    if tuple(pred.shape) != (batch * num_clones, length, dim):
        raise ValueError(
            f"pred must be (B * M, L, D) = ({batch * num_clones}, {length}, {dim}), got "
            f"{tuple(pred.shape)}"
        )
    if tuple(mask.shape) != (batch * num_clones, length) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (B * M, L), got {mask.dtype} {tuple(mask.shape)}")
    scale = 1.0 / math.sqrt(dim)
    rows = torch.arange(batch * num_clones * length, device=pred.device)
    # Row (clone c, token l) reads the targets of image c // M at token l.
    index = (rows // (num_clones * length)) * length + rows % length
    flat_mask = mask.reshape(-1).float()
    weights = flat_mask * (scale / flat_mask.sum().clamp_min(1))
    loss = _regression(
        pred.reshape(-1, dim), targets.reshape(-1, dim), index, weights, "squared", 2.0, 1.0,
        False, LAYER_NORM_EPS, backend,
    )  # fmt: skip
    if cls_pred is None:
        return loss
    if tuple(cls_pred.shape) != (batch * num_clones, dim):
        raise ValueError(f"cls_pred must be (B * M, D), got {tuple(cls_pred.shape)}")
    token_mean = targets.float().mean(dim=1)  # (B, D)
    clone_image = torch.arange(batch * num_clones, device=pred.device) // num_clones
    cls_weights = torch.full((batch * num_clones,), cls_weight * scale, device=pred.device)
    return loss + _regression(
        cls_pred, token_mean, clone_image, cls_weights, "squared", 2.0, 1.0, False,
        LAYER_NORM_EPS, backend,
    )  # fmt: skip
