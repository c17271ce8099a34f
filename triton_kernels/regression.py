"""Feature regression in Triton: the JEPA and data2vec 2.0 losses, and data2vec 2.0's targets.

feature_regression: loss = sum_r weight[r] * sum_d l(pred[r, d] - t[r, d]) with t the row
index[r] of the targets, layer-normed on the fly when NORMALIZE (the JEPA targets), and l smooth
L1, |x|^p / p or x^2. One program per prediction row; rows of weight 0 read nothing (unmasked
tokens, padding). Floor: read each weighted prediction row and its target row once, write one
float per row (backward: write the gradient row). The target is never materialised: not the
layer-normed teacher output, not data2vec's targets repeated for the clones.
data2vec_targets: the mean over K layers of each layer instance-normalised over the tokens, then
layer-normed over the channels. A statistics kernel reads each layer once (per-channel mean and
inverse std over the L tokens), a combining kernel reads each layer once more and writes the
float32 targets: 2 K B L D reads and B L D writes, with no normalised copy of any layer.
Limits: D up to 4096 (one row per program).
"""

import torch
import triton
import triton.language as tl

NUM_WARPS = 4
LOSS_KINDS = {"smooth_l1": 0, "power": 1, "squared": 2}


@triton.jit
def _target_row(
    target_ptr, index, stride_target, columns, bound, dim, NORMALIZE: tl.constexpr, eps
):
    """The target row `index`, float32, layer-normed when NORMALIZE (biased variance)."""
    target = tl.load(target_ptr + index * stride_target + columns, mask=columns < bound, other=0.0)
    target = target.to(tl.float32)
    if NORMALIZE:
        mean = tl.sum(target, axis=0) / dim
        centred = tl.where(columns < dim, target - mean, 0.0)
        variance = tl.sum(centred * centred, axis=0) / dim
        target = centred * tl.rsqrt(variance + eps)
    return target


@triton.jit
def feature_regression_kernel(
    pred_ptr,  # (R, D), feature dimension contiguous
    target_ptr,  # (T, D), feature dimension contiguous
    index_ptr,  # (R,) int64: the target row of each prediction row
    weight_ptr,  # (R,) float32
    loss_ptr,  # (R,) float32 out: weight * sum_d l(diff)
    dim,
    stride_pred,
    stride_target,
    loss_exp,
    beta,
    eps,
    LOSS: tl.constexpr,  # 0 smooth L1, 1 |x|^p / p, 2 x^2
    NORMALIZE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    weight = tl.load(weight_ptr + row)
    columns = tl.arange(0, BLOCK_D)
    bound = tl.where(weight != 0.0, dim, 0)  # a row of weight 0 reads nothing
    index = tl.load(index_ptr + row)
    target = _target_row(target_ptr, index, stride_target, columns, bound, dim, NORMALIZE, eps)
    pred = tl.load(pred_ptr + row * stride_pred + columns, mask=columns < bound, other=0.0)
    diff = tl.where(columns < bound, pred.to(tl.float32) - target, 0.0)
    absolute = tl.abs(diff)
    if LOSS == 0:
        loss = tl.where(absolute < beta, 0.5 * diff * diff / beta, absolute - 0.5 * beta)
    elif LOSS == 1:
        positive = tl.where(absolute > 0.0, absolute, 1.0)  # log2(0) stays out of the sum
        loss = tl.where(absolute > 0.0, tl.exp2(loss_exp * tl.log2(positive)), 0.0) / loss_exp
    else:
        loss = diff * diff
    tl.store(loss_ptr + row, weight * tl.sum(loss, axis=0))


@triton.jit
def feature_regression_backward_kernel(
    grad_ptr,  # (,) float32: d total / d loss
    pred_ptr,  # (R, D)
    target_ptr,  # (T, D)
    index_ptr,  # (R,) int64
    weight_ptr,  # (R,) float32
    grad_pred_ptr,  # (R, D) out, contiguous, pred's dtype
    dim,
    stride_pred,
    stride_target,
    loss_exp,
    beta,
    eps,
    LOSS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    weight = tl.load(weight_ptr + row) * tl.load(grad_ptr)
    columns = tl.arange(0, BLOCK_D)
    bound = tl.where(weight != 0.0, dim, 0)
    index = tl.load(index_ptr + row)
    target = _target_row(target_ptr, index, stride_target, columns, bound, dim, NORMALIZE, eps)
    pred = tl.load(pred_ptr + row * stride_pred + columns, mask=columns < bound, other=0.0)
    diff = tl.where(columns < bound, pred.to(tl.float32) - target, 0.0)
    absolute = tl.abs(diff)
    sign = tl.where(diff > 0.0, 1.0, tl.where(diff < 0.0, -1.0, 0.0))
    if LOSS == 0:
        slope = tl.where(absolute < beta, diff / beta, sign)
    elif LOSS == 1:
        positive = tl.where(absolute > 0.0, absolute, 1.0)
        slope = sign * tl.where(absolute > 0.0, tl.exp2((loss_exp - 1.0) * tl.log2(positive)), 0.0)
    else:
        slope = 2.0 * diff
    grad = (weight * slope).to(grad_pred_ptr.dtype.element_ty)
    tl.store(grad_pred_ptr + row * dim + columns, grad, mask=columns < dim)


@triton.jit
def data2vec_statistics_kernel(
    layers_ptr,  # (K,) int64: data pointers of K contiguous (B, L, D) layer outputs
    mean_ptr,  # (K, B, D) float32 out
    rstd_ptr,  # (K, B, D) float32 out
    length,
    dim,
    batch,
    eps,
    LAYER_DTYPE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    layer = tl.program_id(0).to(tl.int64)
    sample = tl.program_id(1).to(tl.int64)
    columns = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    base = tl.load(layers_ptr + layer).to(tl.pointer_type(LAYER_DTYPE)) + sample * length * dim
    total = tl.zeros([BLOCK_D], dtype=tl.float32)
    squares = tl.zeros([BLOCK_D], dtype=tl.float32)
    # Two passes over the tokens (mean, then centred squares) for an accurate variance.
    for start in range(0, length, BLOCK_L):
        tokens = start + tl.arange(0, BLOCK_L)
        inside = (tokens < length)[:, None] & (columns < dim)[None, :]
        values = tl.load(base + tokens[:, None] * dim + columns[None, :], mask=inside, other=0.0)
        total += tl.sum(values.to(tl.float32), axis=0)
    mean = total / length
    for start in range(0, length, BLOCK_L):
        tokens = start + tl.arange(0, BLOCK_L)
        inside = (tokens < length)[:, None] & (columns < dim)[None, :]
        values = tl.load(base + tokens[:, None] * dim + columns[None, :], mask=inside, other=0.0)
        centred = tl.where(inside, values.to(tl.float32) - mean[None, :], 0.0)
        squares += tl.sum(centred * centred, axis=0)
    offset = (layer * batch + sample) * dim + columns
    tl.store(mean_ptr + offset, mean, mask=columns < dim)
    tl.store(rstd_ptr + offset, tl.rsqrt(squares / length + eps), mask=columns < dim)


@triton.jit
def data2vec_combine_kernel(
    layers_ptr,  # (K,) int64: data pointers of the layer outputs
    mean_ptr,  # (K, B, D) float32
    rstd_ptr,  # (K, B, D) float32
    out_ptr,  # (B, L, D) float32 out
    layer_count,
    length,
    dim,
    batch,
    eps,
    LAYER_DTYPE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)  # b * L + l
    sample = token // length
    columns = tl.arange(0, BLOCK_D)
    inside = columns < dim
    average = tl.zeros([BLOCK_D], dtype=tl.float32)
    for layer in range(0, layer_count):
        base = tl.load(layers_ptr + layer).to(tl.pointer_type(LAYER_DTYPE))
        values = tl.load(base + token * dim + columns, mask=inside, other=0.0).to(tl.float32)
        offset = (layer * batch + sample) * dim + columns
        mean = tl.load(mean_ptr + offset, mask=inside, other=0.0)
        rstd = tl.load(rstd_ptr + offset, mask=inside, other=0.0)
        average += (values - mean) * rstd
    average = average / layer_count
    centre = tl.sum(average, axis=0) / dim
    centred = tl.where(inside, average - centre, 0.0)
    variance = tl.sum(centred * centred, axis=0) / dim
    tl.store(out_ptr + token * dim + columns, centred * tl.rsqrt(variance + eps), mask=inside)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def feature_regression(
    pred, targets, index, weights, loss, loss_exp, beta, normalize, eps
) -> torch.Tensor:
    """sum_r weights[r] * sum_d l(pred[r] - norm(targets[index[r]])); a 0-dim float32 tensor."""
    pred, targets = _rows(pred), _rows(targets)
    rows, dim = pred.shape
    per_row = torch.empty(rows, dtype=torch.float32, device=pred.device)
    if rows > 0:
        feature_regression_kernel[(rows,)](
            pred, targets, index.contiguous(), weights.float().contiguous(), per_row,
            dim, pred.stride(0), targets.stride(0), float(loss_exp), float(beta), float(eps),
            LOSS=LOSS_KINDS[loss], NORMALIZE=normalize, BLOCK_D=triton.next_power_of_2(dim),
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return per_row.sum()


def feature_regression_backward(
    grad, pred, targets, index, weights, loss, loss_exp, beta, normalize, eps
) -> torch.Tensor:
    """The gradient of feature_regression with respect to pred (rows of weight 0 get zeros)."""
    pred, targets = _rows(pred), _rows(targets)
    rows, dim = pred.shape
    grad_pred = torch.empty(rows, dim, dtype=pred.dtype, device=pred.device)
    if rows > 0:
        feature_regression_backward_kernel[(rows,)](
            grad.float().reshape(1), pred, targets, index.contiguous(),
            weights.float().contiguous(), grad_pred, dim, pred.stride(0), targets.stride(0),
            float(loss_exp), float(beta), float(eps),
            LOSS=LOSS_KINDS[loss], NORMALIZE=normalize, BLOCK_D=triton.next_power_of_2(dim),
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return grad_pred


TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


def data2vec_targets(layers: list[torch.Tensor], eps: float) -> torch.Tensor:
    """K contiguous (B, L, D) layer outputs of one dtype -> (B, L, D) float32 targets."""
    layers = [layer.contiguous() for layer in layers]
    batch, length, dim = layers[0].shape
    device = layers[0].device
    pointers = torch.tensor([layer.data_ptr() for layer in layers], dtype=torch.int64)
    if device.type == "cuda":
        pointers = pointers.pin_memory()
    pointers = pointers.to(device, non_blocking=True)
    mean = torch.empty(len(layers), batch, dim, dtype=torch.float32, device=device)
    rstd = torch.empty_like(mean)
    out = torch.empty(batch, length, dim, dtype=torch.float32, device=device)
    if out.numel() == 0:
        return out
    dtype = TORCH_TO_TRITON[layers[0].dtype]
    block_d = min(128, triton.next_power_of_2(dim))
    data2vec_statistics_kernel[(len(layers), batch, triton.cdiv(dim, block_d))](
        pointers, mean, rstd, length, dim, batch, float(eps),
        LAYER_DTYPE=dtype, BLOCK_D=block_d, BLOCK_L=32, num_warps=NUM_WARPS,
    )  # fmt: skip
    data2vec_combine_kernel[(batch * length,)](
        pointers, mean, rstd, out, len(layers), length, dim, batch, float(eps),
        LAYER_DTYPE=dtype, BLOCK_D=triton.next_power_of_2(dim), num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    specs = []
    regression_signature = {
        "index_ptr": "*i64", "weight_ptr": "*fp32", "dim": "i64", "stride_pred": "i64",
        "stride_target": "i64", "loss_exp": "fp32", "beta": "fp32", "eps": "fp32",
    }  # fmt: skip
    for label, dtype in (("fp32", "*fp32"), ("bf16", "*bf16")):
        for loss, kind in LOSS_KINDS.items():
            constexprs = {"LOSS": kind, "NORMALIZE": loss != "squared", "BLOCK_D": 1024}
            specs.append(
                CompileSpec(
                    f"feature_regression_kernel[{label}, {loss}, D<=1024]",
                    feature_regression_kernel,
                    {
                        "pred_ptr": dtype,
                        "target_ptr": dtype,
                        "loss_ptr": "*fp32",
                        **regression_signature,
                    },
                    constexprs,
                    num_warps=NUM_WARPS,
                )
            )
            specs.append(
                CompileSpec(
                    f"feature_regression_backward_kernel[{label}, {loss}, D<=1024]",
                    feature_regression_backward_kernel,
                    {
                        "grad_ptr": "*fp32",
                        "pred_ptr": dtype,
                        "target_ptr": dtype,
                        "grad_pred_ptr": dtype,
                        **regression_signature,
                    },
                    constexprs,
                    num_warps=NUM_WARPS,
                )
            )
        common = {"layers_ptr": "*i64", "mean_ptr": "*fp32", "rstd_ptr": "*fp32"}
        sizes = {"length": "i64", "dim": "i64", "batch": "i64", "eps": "fp32"}
        layer_dtype = tl.float32 if label == "fp32" else tl.bfloat16
        specs.append(
            CompileSpec(
                f"data2vec_statistics_kernel[{label}]",
                data2vec_statistics_kernel,
                {**common, **sizes},
                {"LAYER_DTYPE": layer_dtype, "BLOCK_D": 128, "BLOCK_L": 32},
                num_warps=NUM_WARPS,
            )
        )
        specs.append(
            CompileSpec(
                f"data2vec_combine_kernel[{label}, D<=1024]",
                data2vec_combine_kernel,
                {**common, "out_ptr": "*fp32", "layer_count": "i64", **sizes},
                {"LAYER_DTYPE": layer_dtype, "BLOCK_D": 1024},
                num_warps=NUM_WARPS,
            )
        )
    return specs


COMPILE_SPECS = _compile_specs()
