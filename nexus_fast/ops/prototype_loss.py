"""Soft-target cross-entropy (DINO, iBOT), and the DINO head's last layer fused with it.

soft_cross_entropy: per row, -sum_k t_k log_softmax(s / tau)_k and its gradient in one kernel
(triton_kernels/prototype_loss.py); the gradient, computed in the forward, replaces the
log-softmax that autograd would keep for the backward (the same size), and the backward is one
multiply. dino_loss and ibot_patch_loss (nexus_fast.ops.dino) are sums of it.

prototype_cross_entropy: DINOHead's last layer (weight-normalised with g = 1, on L2-normalised
features) and the cross-entropy, chunk by chunk over rows (Liger-Kernel's chunked loss): each
chunk's logits are computed by a matmul, the kernel overwrites them with d loss / d logits, two
more matmuls turn those into the chunk's gradients of the normalised features and of the
normalised weight (accumulated), and the chunk is dropped. The rows x K logits never exist at
once and nothing of that size is kept for the backward, which only scales the stored gradients
by grad_output. DINOv2 keeps every crop's rows x K logits and log-softmax (1-2 GB each at
4096 rows and K = 131072).

Backends, fastest first: triton (GPU: the kernel for each chunk's softmax, cross-entropy and
gradient; torch matmuls), cpu (the same chunked algorithm with the chunk's softmax in torch),
reference (head then loss, autograd). Teacher probabilities are constants: when they require
grad, the reference runs.
"""

import torch
from torch import Tensor

from ._common import (
    check_index_range,
    interpreter_reasons,
    triton_cpu_path,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dino_common import check_floating, check_positive, check_same_device
from ._dispatch import Backend, Operator, register
from .reference import dino as reference

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Logits per chunk at most, by default. Each chunk adds its (K, D) product to the weight's
# gradient (a read and a write of a float32 K x D accumulator), so chunks are as large as memory
# allows: 1024 rows at K = 131072 on a GPU (256 MB of bf16 logits; DINOv2 holds all the
# logits and a float32 log-softmax per crop, ~3 GB at 4160 rows), 512 rows at K = 16384 on CPU.
CHUNK_ELEMENTS = {"cuda": 1 << 27, "cpu": 1 << 23}


# --- soft cross-entropy: the per-row loss and its gradient ---------------------------------------


def target_mass(targets: Tensor) -> Tensor:
    """(T,) float32 row sums of the targets (1 for probabilities, 2 for two teachers' sum)."""
    return targets.sum(dim=-1, dtype=torch.float32)


def _soft_cross_entropy_torch(
    logits: Tensor,
    targets: Tensor,
    mass: Tensor,
    index: Tensor,
    temperature: float,
    grad: Tensor | None,
    grad_scale: float = 1.0,
) -> Tensor:
    """The kernel's contract in torch: per-row losses, and d loss[b] / d logits[b] * grad_scale
    written into `grad` (which may be `logits`) when given. float32 or float64 arithmetic (the
    row masses are recomputed in that precision). When `grad` is `logits` (the fused head's
    temporary chunk) the arithmetic runs in place in it: one chunk-sized temporary (the
    gathered targets) in all."""
    with torch.autocast(logits.device.type, enabled=False):  # float32 stays float32 inside
        return _soft_cross_entropy_body(logits, targets, index, temperature, grad, grad_scale)


def _soft_cross_entropy_body(logits, targets, index, temperature, grad, grad_scale) -> Tensor:
    dtype = reference.compute_dtype(logits, targets)
    in_place = grad is logits and logits.dtype == dtype
    scaled = logits.div_(temperature) if in_place else logits.to(dtype) / temperature
    chosen = torch.index_select(targets, 0, index).to(dtype)  # 6x faster than targets[index]
    row_mass = chosen.sum(dim=-1)
    dot = torch.einsum("rk,rk->r", chosen, scaled)  # sum_k t s / tau, without a (rows, K) product
    maximum = scaled.amax(dim=-1, keepdim=True)
    exps = scaled.sub_(maximum).exp_()  # softmax as exp(x - max) / total: see the kernel
    total = exps.sum(dim=-1, keepdim=True)
    losses = row_mass * (maximum.squeeze(-1) + total.squeeze(-1).log()) - dot
    if grad is not None:
        probs = exps.div_(total)
        gradient = probs.mul_(row_mass.unsqueeze(-1)).sub_(chosen).mul_(grad_scale / temperature)
        if gradient is not grad:
            grad.copy_(gradient)
    return losses


def _soft_cross_entropy_pair(
    logits: Tensor,
    targets: Tensor,
    mass: Tensor,
    index: Tensor,
    temperature: float,
    compute_grad: bool,
    launcher,
) -> tuple[Tensor, Tensor]:
    """(per-row losses float32, gradient or an empty tensor) from the per-row routine."""
    grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else None
    losses = launcher(logits, targets, mass, index, temperature, grad)
    return losses.to(torch.float32), grad if compute_grad else logits.new_empty(0)


# The Triton kernel as a torch.library op (DESIGN.md, "The operator contract"): its CPU
# implementation is the interpreted kernel under TRITON_INTERPRET=1, else the torch routine.
@torch.library.custom_op("nexus_fast::soft_cross_entropy_triton", mutates_args=())
def _soft_cross_entropy_triton_op(
    logits: Tensor,
    targets: Tensor,
    mass: Tensor,
    index: Tensor,
    temperature: float,
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    launcher = triton_cpu_path(
        triton_function("prototype_loss", "soft_cross_entropy_"), _soft_cross_entropy_torch
    )
    return _soft_cross_entropy_pair(
        logits, targets, mass, index, temperature, compute_grad, launcher
    )


@_soft_cross_entropy_triton_op.register_kernel("cuda")
def _(logits, targets, mass, index, temperature, compute_grad):
    launcher = triton_function("prototype_loss", "soft_cross_entropy_")
    return _soft_cross_entropy_pair(
        logits, targets, mass, index, temperature, compute_grad, launcher
    )


@_soft_cross_entropy_triton_op.register_fake
def _(logits, targets, mass, index, temperature, compute_grad):
    losses = logits.new_empty(logits.shape[:1], dtype=torch.float32)
    return losses, logits.new_empty(logits.shape if compute_grad else (0,))


def _soft_cross_entropy_setup(ctx, inputs: tuple, output: tuple) -> None:
    _, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.save_for_backward(grad)


def _soft_cross_entropy_backward(ctx, grad_losses: Tensor, _grad_of_grad: Tensor) -> tuple:
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0 and grad_losses.numel() != 0:
        raise RuntimeError("soft_cross_entropy ran without compute_grad: no gradient was stored")
    grad_logits = (grad_losses.unsqueeze(-1) * grad).to(grad.dtype)
    return grad_logits, None, None, None, None, None


_soft_cross_entropy_triton_op.register_autograd(
    _soft_cross_entropy_backward, setup_context=_soft_cross_entropy_setup
)


def soft_cross_entropy_rows(
    logits: Tensor,
    targets: Tensor,
    temperature: float,
    *,
    use_triton: bool,
    mass: Tensor | None = None,
) -> Tensor:
    """Per-row -sum_k t log_softmax(logits / temperature), (rows,) float32 (the Triton op) or in
    the reference's precision. targets: (rows, K), aligned with logits; mass: target_mass(targets)
    when already known (several crops share one target). Unchecked: the public functions of
    nexus_fast.ops.dino check their arguments."""
    if not use_triton:
        return reference.cross_entropy(logits, targets, temperature)
    if mass is None:
        mass = target_mass(targets)
    index = torch.arange(logits.shape[0], device=logits.device)
    compute_grad = torch.is_grad_enabled() and logits.requires_grad
    losses, _ = _soft_cross_entropy_triton_op(
        logits, targets, mass, index, temperature, compute_grad
    )
    return losses


def soft_cross_entropy_reasons(*tensors: Tensor) -> list[str]:
    """Why the Triton soft cross-entropy cannot take these (logits and targets) tensors."""
    unavailable = triton_reasons(tensors[0])
    if unavailable:
        return unavailable
    reasons = []
    allowed = ", ".join(str(d).removeprefix("torch.") for d in TRITON_DTYPES)
    for tensor in tensors:
        if tensor.dtype not in TRITON_DTYPES:
            reasons.append(f"dtype {tensor.dtype} is not one of {allowed}")
            break
    return reasons


# --- the fused head's last layer + cross-entropy ---------------------------------------------


def _feature_eps(features: Tensor) -> float:
    """DINOHead's F.normalize eps: 1e-6 for float16 features, else 1e-12."""
    return 1e-6 if features.dtype == torch.float16 else 1e-12


def _add_product(accumulator: Tensor, left: Tensor, right: Tensor) -> None:
    """accumulator += left @ right, accumulating in the accumulator's (float32) precision."""
    if left.dtype == accumulator.dtype:
        accumulator.addmm_(left, right)
    else:
        accumulator.add_(left @ right)


def prototype_chunked(
    features: Tensor,
    weight: Tensor,
    targets: Tensor,
    index: Tensor,
    temperature: float,
    chunk_rows: int,
    grad_features: bool,
    grad_weight: bool,
    chunk_loss=_soft_cross_entropy_torch,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, d loss / d features, d loss / d weight) of the head's last layer + cross-entropy,
    averaged over rows, chunk by chunk; a gradient not asked for is an empty tensor.

    chunk_loss(logits, targets, mass, index, temperature, grad, grad_scale) returns the chunk's
    per-row losses and overwrites its logits with their gradient (the kernel, or its torch
    equivalent). Matmuls run in the common dtype of features and weight, normalisation and
    accumulation in float32 (float64 for float64 inputs), autocast or not.
    """
    arguments = (features, weight, targets, index, temperature, chunk_rows)
    with torch.autocast(features.device.type, enabled=False):
        return _prototype_body(*arguments, grad_features, grad_weight, chunk_loss)


def _prototype_body(
    features,
    weight,
    targets,
    index,
    temperature,
    chunk_rows,
    grad_features,
    grad_weight,
    chunk_loss,
) -> tuple[Tensor, Tensor, Tensor]:
    rows, width = features.shape
    accumulate = reference.compute_dtype(features, weight)
    matmul_dtype = torch.promote_types(features.dtype, weight.dtype)
    # Weight-sized (K, D) tensors are kept few: at small batches they, not the logits, set the
    # peak memory.
    weight_acc = weight.to(accumulate)
    weight_norm = torch.linalg.vector_norm(weight_acc, dim=1, keepdim=True)  # weight_norm, g = 1
    weight_unit = weight_acc / weight_norm
    weight_mm = weight_unit.to(matmul_dtype)
    features_acc = features.to(accumulate)
    feature_norm = features_acc.norm(dim=1, keepdim=True)
    eps = _feature_eps(features)
    denominator = feature_norm.clamp_min(eps)  # F.normalize: x / max(||x||, eps)
    features_unit = features_acc / denominator
    features_mm = features_unit.to(matmul_dtype)

    if targets.stride(-1) != 1:  # the kernel reads rows of targets with unit stride: copy once
        targets = targets.contiguous()
    mass = target_mass(targets)  # once per table, not once per chunk
    need_grad = grad_features or grad_weight
    total = torch.zeros((), dtype=accumulate, device=features.device)
    grad_unit_features = features_acc.new_empty(rows, width) if grad_features else None
    grad_unit_weight = None  # the first chunk's product, then the sum of every chunk's
    grad_scale = 1.0 / max(rows, 1)
    for start in range(0, rows, chunk_rows):
        stop = min(start + chunk_rows, rows)
        chunk = features_mm[start:stop]
        logits = chunk @ weight_mm.t()  # (chunk, K), then its gradient in place
        losses = chunk_loss(
            logits, targets, mass, index[start:stop], temperature,
            logits if need_grad else None, grad_scale,
        )  # fmt: skip
        total += losses.sum()
        if grad_features:
            grad_unit_features[start:stop] = logits @ weight_mm
        if grad_weight:
            if grad_unit_weight is None:
                grad_unit_weight = (logits.t() @ chunk).to(accumulate)
            else:
                _add_product(grad_unit_weight, logits.t(), chunk)
    loss = total * grad_scale
    grad_x = features.new_empty(0)
    if grad_features:
        # Through x / max(||x||, eps): the radial part is removed only where ||x|| > eps.
        radial = (features_unit * grad_unit_features).sum(dim=1, keepdim=True)
        radial = torch.where(feature_norm > eps, radial, torch.zeros_like(radial))
        grad_x = ((grad_unit_features - features_unit * radial) / denominator).to(features.dtype)
    grad_w = weight.new_empty(0)
    if grad_weight and grad_unit_weight is None:  # no rows: a zero gradient
        grad_w = torch.zeros_like(weight)
    elif grad_weight:
        # (g - w_unit (w_unit . g)) / ||w||, in place in the accumulator.
        radial = torch.einsum("kd,kd->k", weight_unit, grad_unit_weight).unsqueeze(1)
        grad_unit_weight.addcmul_(weight_unit, radial, value=-1.0).div_(weight_norm)
        grad_w = grad_unit_weight.to(weight.dtype)
    return loss, grad_x, grad_w


def _triton_chunk_loss(*arguments) -> Tensor:
    return triton_function("prototype_loss", "soft_cross_entropy_")(*arguments)


def _prototype_triton_cpu(*arguments) -> tuple[Tensor, Tensor, Tensor]:
    chunk_loss = triton_cpu_path(_triton_chunk_loss, _soft_cross_entropy_torch)
    loss, grad_x, grad_w = prototype_chunked(*arguments, chunk_loss=chunk_loss)
    return loss.to(torch.float32), grad_x, grad_w


@torch.library.custom_op("nexus_fast::prototype_cross_entropy", mutates_args=())
def _prototype_cross_entropy_op(
    features: Tensor,
    weight: Tensor,
    targets: Tensor,
    index: Tensor,
    temperature: float,
    chunk_rows: int,
    grad_features: bool,
    grad_weight: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return prototype_chunked(
        features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight
    )


@torch.library.custom_op("nexus_fast::prototype_cross_entropy_triton", mutates_args=())
def _prototype_cross_entropy_triton_op(
    features: Tensor,
    weight: Tensor,
    targets: Tensor,
    index: Tensor,
    temperature: float,
    chunk_rows: int,
    grad_features: bool,
    grad_weight: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _prototype_triton_cpu(
        features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight
    )


@_prototype_cross_entropy_triton_op.register_kernel("cuda")
def _(features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight):
    loss, grad_x, grad_w = prototype_chunked(
        features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight,
        chunk_loss=_triton_chunk_loss,
    )  # fmt: skip
    return loss.to(torch.float32), grad_x, grad_w


def _prototype_setup(ctx, inputs: tuple, output: tuple) -> None:
    _, grad_x, grad_w = output
    ctx.mark_non_differentiable(grad_x, grad_w)
    ctx.save_for_backward(grad_x, grad_w)


def _prototype_backward(ctx, grad_loss: Tensor, _grad_x: Tensor, _grad_w: Tensor) -> tuple:
    grad_x, grad_w = ctx.saved_tensors
    grad_features = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_features = (grad_loss * grad_x).to(grad_x.dtype)
    if ctx.needs_input_grad[1]:
        grad_weight = (grad_loss * grad_w).to(grad_w.dtype)
    return grad_features, grad_weight, None, None, None, None, None, None


def _register(op, loss_dtype) -> None:
    def fake(features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight):
        loss = features.new_empty((), dtype=loss_dtype(features, weight))
        grad_x = features.new_empty(features.shape if grad_features else (0,))
        grad_w = weight.new_empty(weight.shape if grad_weight else (0,))
        return loss, grad_x, grad_w

    torch.library.register_fake(op)(fake)
    torch.library.register_autograd(op, _prototype_backward, setup_context=_prototype_setup)


_register(_prototype_cross_entropy_op, reference.compute_dtype)
_register(_prototype_cross_entropy_triton_op, lambda *tensors: torch.float32)


def _fused_runner(op):
    def run(features, weight, targets, index, temperature, chunk_rows) -> Tensor:
        grad_mode = torch.is_grad_enabled()
        grad_features = grad_mode and features.requires_grad
        grad_weight = grad_mode and weight.requires_grad
        loss, _, _ = op(
            features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight
        )
        return loss

    return run


def _reference_run(features, weight, targets, index, temperature, chunk_rows) -> Tensor:
    return reference.prototype_cross_entropy(features, weight, targets, temperature, index)


def _constant_targets_reasons(targets: Tensor) -> list[str]:
    if torch.is_grad_enabled() and targets.requires_grad:
        return [
            "teacher_probs requires grad: the fused backends treat the teacher as a constant "
            "(only the reference differentiates it)"
        ]
    return []


def _triton_input_reasons(features, weight, targets, *rest) -> list[str]:
    reasons = soft_cross_entropy_reasons(features, weight, targets)
    return reasons or _constant_targets_reasons(targets)


def _cpu_input_reasons(features, weight, targets, *rest) -> list[str]:
    if features.device.type != "cpu":
        return [f"tensors are on {features.device}, this backend runs CPU tensors"]
    return _constant_targets_reasons(targets)


PROTOTYPE_CROSS_ENTROPY = register(
    Operator(
        "prototype_cross_entropy",
        [
            Backend(
                "triton",
                _fused_runner(_prototype_cross_entropy_triton_op),
                triton_machine_reason,
                _triton_input_reasons,
                lambda features, *rest: interpreter_reasons(features),
            ),
            Backend(
                "cpu", _fused_runner(_prototype_cross_entropy_op), input_reasons=_cpu_input_reasons
            ),
            Backend("reference", _reference_run),
        ],
    )
)


def default_chunk_rows(device: torch.device, rows: int, prototypes: int) -> int:
    """Rows per chunk when chunk_rows is None: at most CHUNK_ELEMENTS logits per chunk, the rows
    split evenly (640 rows in chunks of at most 512: two of 320, not 512 + 128)."""
    limit = max(1, CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"] // max(prototypes, 1))
    chunks = max(1, -(-rows // limit))
    return max(1, -(-rows // chunks))


def check_target_index(target_index: object, rows: int, targets: int, device) -> Tensor:
    if not isinstance(target_index, Tensor):
        raise TypeError(f"target_index must be a Tensor or None, got {type(target_index).__name__}")
    if target_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"target_index has dtype {target_index.dtype}; allowed: int64 or int32")
    if tuple(target_index.shape) != (rows,):
        raise ValueError(
            f"target_index has shape {tuple(target_index.shape)}; allowed: (rows,) = ({rows},)"
        )
    if target_index.device != device:
        raise ValueError(f"target_index is on {target_index.device}, features on {device}")
    check_index_range(target_index, targets, "target_index", "rows of teacher_probs")
    return target_index.long()


def prototype_cross_entropy(
    features: Tensor,
    weight: Tensor,
    teacher_probs: Tensor,
    student_temp: float = 0.1,
    *,
    target_index: Tensor | None = None,
    chunk_rows: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """DINOHead's last layer and the DINO cross-entropy in one op, without the rows x K logits.

    Computes, averaged over rows (DINOLoss on head outputs):
        logits = normalize(features) @ (weight / ||weight||_row)^T       (rows, K)
        loss = mean_b -sum_k t[b, k] log_softmax(logits[b] / student_temp)_k
    the last layer being DINOv2's weight_norm(Linear(bottleneck, K, bias=False)) with g fixed to
    1 (its weight_v is `weight`), chunk by chunk (see nexus_fast.ops.prototype_loss). Equal to
    the head then the loss; the gradients of features and of the raw weight are computed in the
    forward and scaled by grad_output in the backward.

    Args:
        features: (rows, D) bottleneck outputs (DINOv2: D = 256), before normalisation.
        weight: (K, D) the last layer's weight (weight_v; g = 1).
        teacher_probs: (T, K) teacher probabilities (or any non-negative targets: a row may sum
            to 2, e.g. the sum of both global crops' probabilities for a local crop).
        student_temp: tau_s (DINOv2: 0.1).
        target_index: (rows,) int64 row of teacher_probs for each feature row (default: row b
            against row b, T = rows): several crops can share one table of targets.
        chunk_rows: rows per chunk (default: the rows split evenly into chunks of at most
            2^27 logits on a GPU, 2^23 on the CPU).
        backend: force "triton", "cpu" or "reference".

    Under torch.autocast the matmuls run in the autocast dtype, as DINOHead's F.linear would.

    Returns:
        A 0-dim float32 tensor (float64 for float64 inputs on the cpu and reference backends);
        0 for no rows. Differentiable with respect to features and weight.

    Raises:
        TypeError: non-tensor or non-floating inputs, a non-integer target_index.
        ValueError: shapes that do not match, a non-positive student_temp or chunk_rows, an
            index out of range (IndexError), tensors on different devices.
        BackendError: a forced backend cannot run these inputs (the error says why).

    Example:
        >>> features = torch.randn(6, 256, requires_grad=True)
        >>> weight = torch.randn(1000, 256, requires_grad=True)
        >>> teacher = torch.softmax(torch.randn(6, 1000) / 0.04, dim=-1)
        >>> prototype_cross_entropy(features, weight, teacher).backward()
    """
    check_floating("features", features, "(rows, D)")
    check_floating("weight", weight, "(K, D)")
    check_floating("teacher_probs", teacher_probs, "(T, K)")
    student_temp = check_positive("student_temp", student_temp)
    check_same_device(features=features, weight=weight, teacher_probs=teacher_probs)
    rows, width = features.shape
    if weight.shape[1] != width:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}; features {tuple(features.shape)} need "
            f"(K, {width})"
        )
    if teacher_probs.shape[1] != weight.shape[0]:
        raise ValueError(
            f"teacher_probs has shape {tuple(teacher_probs.shape)}; weight {tuple(weight.shape)} "
            f"needs (T, {weight.shape[0]})"
        )
    if target_index is None:
        if teacher_probs.shape[0] != rows:
            raise ValueError(
                f"teacher_probs has {teacher_probs.shape[0]} rows, features {rows}: pass "
                "target_index to score rows against other rows of teacher_probs"
            )
        index = torch.arange(rows, device=features.device)
    else:
        index = check_target_index(target_index, rows, teacher_probs.shape[0], features.device)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(features.device, rows, weight.shape[0])
    elif isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be a positive int or None, got {chunk_rows!r}")
    device_type = features.device.type
    if torch.is_autocast_enabled(device_type):
        # As autocast runs DINOHead's F.linear: both operands in the autocast dtype (the casts
        # are differentiable, so a float32 weight still gets its gradient).
        dtype = torch.get_autocast_dtype(device_type)
        features, weight = features.to(dtype), weight.to(dtype)
    arguments = (features, weight, teacher_probs, index, student_temp, chunk_rows)
    return PROTOTYPE_CROSS_ENTROPY.select(*arguments, backend=backend).run(*arguments)
