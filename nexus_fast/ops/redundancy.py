"""Barlow Twins and VICReg losses without the D x D matrices of their official code.

Both losses are functions of feature-by-feature matrices: Barlow Twins' cross-correlation
C = A^T B / N of the standardised views A, B (N, D), VICReg's covariances X^T X / (N - 1) of the
centred views. Only sums of their squared entries enter the loss, and those can be computed
without ever holding a D x D matrix:

- Gram form: sum_ij C_ij^2 = sum((A A^T) * (B B^T)) / N^2, with two N x N Gram matrices; the
  off-diagonal sum is that total minus sum_i C_ii^2 (the diagonal is O(N D): C_ii = sum_n A_ni
  B_ni / N). The gradient of ||A^T B||_F^2 with respect to A is 2 (B B^T) A. Barlow Twins costs
  8 N^2 D FLOPs forward and backward together, VICReg 4 N^2 D per view; memory O(N D + N^2).
- Direct form: C in tiles of DIRECT_TILE columns (D x 512), each squared and summed with its
  diagonal entries set to 0 (no subtraction), and used at once for the gradient (B C_off^T and
  A C_off, tile by tile). Barlow Twins costs 6 N D^2 FLOPs, VICReg 4 N D^2 per view (C is
  symmetric there); memory O(N D + 512 D).
- "auto" takes the form with fewer FLOPs: for Barlow Twins Gram when 8 N^2 D < 6 N D^2, i.e.
  4 N < 3 D; for VICReg Gram when N < D. At the official 8192-wide projector and per-GPU batches of
  256..2048 that is the Gram form.

The gradient is computed in closed form during the forward, while the Gram matrices or tiles
are at hand (as Liger's fused linear cross-entropy does), and the backward only scales it by the
upstream gradient: no N x N or D x D tensor lives from the forward to the backward, and the
direct form does not recompute its tiles. The forward skips that work when no input needs a
gradient. Second derivatives are not supported (an error says so). The chain through the
batch standardisation is exact: dz = rstd * (g - mean(g) - (A - mean(A)) * mean(g * A)) for
Barlow Twins (BatchNorm's training-mode backward; mean(A) is 0 but for rounding, which matters on
nearly constant columns), dx = g - mean(g) for VICReg's centring.

Numerics: statistics and sums in float32 (float64 for float64 inputs); half-precision inputs give
a float32 loss. The Gram form's subtraction is benign when N < D: rank(C) <= N gives
||C||_F^2 >= (sum_i C_ii)^2 / N, so with a diagonal near 1 (a trained model) the off-diagonal
sum is at least about D (D - N) / N, against a diagonal sum of at most D. When N >= D and C is
nearly diagonal (an almost decorrelated Barlow Twins), the subtraction loses relative precision;
"auto" takes the direct form there. Tests hold both forms to the FlashAttention rule against the
float64 reference on random, rank-deficient, nearly constant and collapsed embeddings.

Backends, fastest first: triton (GPU: Triton kernels for the column passes, cuBLAS for the
products, bf16/fp16 operands with float32 results), cpu (the same algorithm in plain torch ops,
float32 products; also the fallback on CUDA: a C++ kernel would not beat the BLAS matrix
products that dominate the cost), reference (the official D x D formulation, by autograd).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed
from .. import triton_kernels as triton_support
from ._common import interpreter_reasons, triton_function, triton_machine_reason, triton_reasons
from ._dispatch import Backend, Operator, register
from .reference import redundancy as reference

METHODS = ("auto", "gram", "direct")
DIRECT_TILE = 512  # columns of C per tile of the direct form
HALF_DTYPES = (torch.float16, torch.bfloat16)
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 inputs: the precision of statistics, sums and the loss."""
    return torch.promote_types(dtype, torch.float32)


def barlow_twins_uses_gram(rows: int, cols: int) -> bool:
    """The "auto" rule of Barlow Twins: the Gram form when its 8 N^2 D FLOPs are fewer than
    the direct form's 6 N D^2, i.e. 4 N < 3 D (N the global batch)."""
    return 4 * rows < 3 * cols


def vicreg_uses_gram(rows: int, cols: int) -> bool:
    """The "auto" rule of VICReg: the Gram form (4 N^2 D FLOPs per view) when N < D (the direct
    form costs 4 N D^2)."""
    return rows < cols


# --- the algorithm, shared by the torch path and the Triton path --------------------------------


@dataclass(frozen=True)
class _ColumnPasses:
    """The O(N D) passes an implementation brings; the matrix products are shared.

    Attributes:
        matmul_dtype: the dtype of the standardised matrices that the products read.
        standardize: (z1, z2, eps, matmul_dtype) -> (A, B, mean1, rstd1, mean2, rstd2, diag),
            diag = sum_n A_ni B_ni.
        center: (x, matmul_dtype) -> (x - mean, mean, unbiased var).
        backward: (m, scale, weight, z, mean, rstd, partner, partner_mean, partner_rstd) -> the
            gradient of z when d loss / d output = scale * m + weight * P (P the partner's
            output); rstd None means the output was a centring. May overwrite m.
    """

    matmul_dtype: Callable[[Tensor], torch.dtype]
    standardize: Callable[..., tuple[Tensor, ...]]
    center: Callable[..., tuple[Tensor, Tensor, Tensor]]
    backward: Callable[..., Tensor]


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with a float32 (float64 for float64 operands) result; half-precision operands are
    multiplied by cuBLAS with float32 accumulation and output."""
    if a.dtype in HALF_DTYPES:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.mm(a, b)


def _direct_products(
    a: Tensor, b: Tensor, want_a: bool, want_b: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """K = A^T B tile by tile (DIRECT_TILE columns), never held whole.

    Returns sum_{i != j} K_ij^2, and (when asked) B K_off^T and A K_off, K_off being K with its
    diagonal set to 0.
    """
    rows, cols = a.shape
    accumulate = _compute_dtype(a.dtype)
    off_diagonal = torch.zeros((), dtype=accumulate, device=a.device)
    m_a = torch.zeros((rows, cols), dtype=accumulate, device=a.device) if want_a else None
    m_b = torch.empty((rows, cols), dtype=accumulate, device=a.device) if want_b else None
    for start in range(0, cols, DIRECT_TILE):
        end = min(start + DIRECT_TILE, cols)
        tile = _matmul(a.T, b[:, start:end])  # (D, T): columns start..end of K
        tile[start:end].diagonal().zero_()
        off_diagonal += torch.dot(tile.flatten(), tile.flatten())
        if m_a is None and m_b is None:
            continue
        operand = tile.to(a.dtype)
        if m_a is not None:
            m_a += _matmul(b[:, start:end], operand.T)
        if m_b is not None:
            m_b[:, start:end] = _matmul(a, operand)
    return off_diagonal, m_a, m_b


def _gram_square_sum(gram_a: Tensor, gram_b: Tensor) -> Tensor:
    """sum((A A^T) * (B B^T)) = ||A^T B||_F^2, without an N x N temporary."""
    return torch.dot(gram_a.flatten(), gram_b.flatten())


def _no_gradient(z: Tensor) -> Tensor:
    return z.new_empty(0)


def _barlow_twins(
    passes: _ColumnPasses,
    z1: Tensor,
    z2: Tensor,
    lambd: float,
    eps: float,
    gram: bool,
    needs_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, d loss / d z1, d loss / d z2); the gradients are empty when not needs_grad."""
    rows = z1.shape[0]
    matmul_dtype = passes.matmul_dtype(z1)
    a, b, mean1, rstd1, mean2, rstd2, diag = passes.standardize(z1, z2, eps, matmul_dtype)
    c = diag / rows  # C_ii
    on_diagonal = (1 - c).square().sum()
    m_a = m_b = None
    if gram:
        gram_a, gram_b = _matmul(a, a.T), _matmul(b, b.T)  # (N, N) each
        off_diagonal = _gram_square_sum(gram_a, gram_b) / rows**2 - c.square().sum()
        if needs_grad:
            m_a = _matmul(gram_b.to(matmul_dtype), a)  # B B^T A
            m_b = _matmul(gram_a.to(matmul_dtype), b)  # A A^T B
            # d/dC_ii of (1 - C_ii)^2 - lambd C_ii^2: the diagonal that M counts is removed here.
            weight = (-2 * (1 - c) - 2 * lambd * c) / rows
        del gram_a, gram_b
    else:
        square_sum, m_a, m_b = _direct_products(a, b, needs_grad, needs_grad)
        off_diagonal = square_sum / rows**2
        weight = -2 * (1 - c) / rows  # M holds C_off only
    loss = on_diagonal + lambd * off_diagonal
    if not needs_grad:
        return loss, _no_gradient(z1), _no_gradient(z2)
    del a, b
    scale = 2 * lambd / rows**2
    grad_1 = passes.backward(m_a, scale, weight, z1, mean1, rstd1, z2, mean2, rstd2)
    del m_a
    grad_2 = passes.backward(m_b, scale, weight, z2, mean2, rstd2, z1, mean1, rstd1)
    return loss, grad_1, grad_2


def _vicreg_regularizer(
    passes: _ColumnPasses,
    x: Tensor,
    std_coeff: float,
    cov_coeff: float,
    eps: float,
    gram: bool,
    needs_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """VICReg's variance and covariance terms of one view (N, D):
    (std_coeff * variance / 2 + cov_coeff * covariance, variance, covariance, mean std, d / dx),
    with variance = mean(relu(1 - std)) and covariance = sum_{i != j} cov_ij^2 / D."""
    rows, cols = x.shape
    matmul_dtype = passes.matmul_dtype(x)
    centered, mean, var = passes.center(x, matmul_dtype)
    std = torch.sqrt(var + eps)
    variance = F.relu(1 - std).mean()
    m = None
    if gram:
        gram_x = _matmul(centered, centered.T)  # (N, N)
        total = _gram_square_sum(gram_x, gram_x) / (rows - 1) ** 2
        off_diagonal = total - var.square().sum()
        if needs_grad:
            m = _matmul(gram_x.to(matmul_dtype), centered)  # X X^T X
            weight = -4 * cov_coeff * var / (cols * (rows - 1))  # the diagonal M counts
        del gram_x
    else:
        square_sum, _, m = _direct_products(centered, centered, False, needs_grad)
        off_diagonal = square_sum / (rows - 1) ** 2
        weight = torch.zeros_like(var)
    covariance = off_diagonal / cols
    weighted = std_coeff * variance / 2 + cov_coeff * covariance
    if not needs_grad:
        return weighted, variance, covariance, std.mean(), _no_gradient(x)
    del centered
    # d/dx of std_coeff * mean(relu(1 - std)) / 2; relu'(0) = 0, as autograd has it.
    weight = weight - std_coeff * (std < 1).to(std.dtype) / (2 * cols * (rows - 1) * std)
    scale = 4 * cov_coeff / (cols * (rows - 1) ** 2)
    grad = passes.backward(m, scale, weight, x, mean, None, x, mean, None)
    return weighted, variance, covariance, std.mean(), grad


# --- the column passes in torch ops (the cpu backend) -------------------------------------------


def _torch_standardize(z1: Tensor, z2: Tensor, eps: float, matmul_dtype: torch.dtype) -> tuple:
    compute = _compute_dtype(z1.dtype)
    outputs = []
    for z in (z1, z2):
        z = z.to(compute)
        var, mean = torch.var_mean(z, dim=0, correction=0)
        rstd = torch.rsqrt(var + eps)
        outputs.append(((z - mean).mul_(rstd), mean, rstd))
    (a, mean1, rstd1), (b, mean2, rstd2) = outputs
    diag = torch.linalg.vecdot(a, b, dim=0)
    return a.to(matmul_dtype), b.to(matmul_dtype), mean1, rstd1, mean2, rstd2, diag


def _torch_center(x: Tensor, matmul_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    x = x.to(_compute_dtype(x.dtype))
    var, mean = torch.var_mean(x, dim=0, correction=1)
    return (x - mean).to(matmul_dtype), mean, var


def _torch_backward(
    m: Tensor,
    scale: float,
    weight: Tensor,
    z: Tensor,
    mean: Tensor,
    rstd: Tensor | None,
    partner: Tensor,
    partner_mean: Tensor,
    partner_rstd: Tensor | None,
) -> Tensor:
    compute = m.dtype
    output_grad = partner.to(compute) - partner_mean  # the partner's output P ...
    if partner_rstd is not None:
        output_grad.mul_(partner_rstd)
    output_grad.mul_(weight).add_(m, alpha=scale)  # ... becomes g = scale * m + weight * P
    del m
    rows = z.shape[0]
    mean_g = output_grad.mean(dim=0)
    if rstd is None:
        return output_grad.sub_(mean_g).to(z.dtype)
    own = (z.to(compute) - mean).mul_(rstd)  # A
    mean_ga = torch.linalg.vecdot(output_grad, own, dim=0) / rows
    # A - mean(A), not A: the rounding of `mean` leaves A a column mean that is 0 only in exact
    # arithmetic, and on nearly constant columns (rstd large) it would not cancel otherwise.
    own.sub_(own.mean(dim=0)).mul_(mean_ga)
    output_grad.sub_(mean_g).sub_(own).mul_(rstd)
    return output_grad.to(z.dtype)


TORCH_PASSES = _ColumnPasses(
    matmul_dtype=lambda z: _compute_dtype(z.dtype),
    standardize=_torch_standardize,
    center=_torch_center,
    backward=_torch_backward,
)


# --- the column passes in Triton (the triton backend) -------------------------------------------


def _triton_matmul_dtype(z: Tensor) -> torch.dtype:
    """bf16/fp16 operands for cuBLAS on a GPU (float32 results, see _matmul); float32 in the
    interpreter, where the CPU has no half-precision product with a float32 output."""
    return z.dtype if z.is_cuda and z.dtype in HALF_DTYPES else torch.float32


def _triton_center(x: Tensor, matmul_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    return triton_function("redundancy", "vicreg_center")(x, matmul_dtype)


TRITON_PASSES = _ColumnPasses(
    matmul_dtype=_triton_matmul_dtype,
    standardize=lambda *args: triton_function("redundancy", "barlow_twins_standardize")(*args),
    center=_triton_center,
    backward=lambda *args: triton_function("redundancy", "standardization_backward")(*args),
)


def _triton_cpu_passes() -> _ColumnPasses:
    """The CPU implementation of the Triton ops: the interpreted kernels under
    TRITON_INTERPRET=1 (what CI tests), else the torch passes."""
    return TRITON_PASSES if triton_support.INTERPRET else TORCH_PASSES


# --- the custom ops -----------------------------------------------------------------------------
# Each returns the loss (or the weighted terms), then detached metrics, then the gradients it
# computed (empty when needs_grad is False). DESIGN.md ("The operator contract") explains the
# custom_op form with a CPU default beside the CUDA kernel.


@torch.library.custom_op("nexus_fast::barlow_twins_loss", mutates_args=())
def _barlow_twins_op(
    z1: Tensor, z2: Tensor, lambd: float, eps: float, gram: bool, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _barlow_twins(TORCH_PASSES, z1, z2, lambd, eps, gram, needs_grad)


@torch.library.custom_op("nexus_fast::barlow_twins_loss_triton", mutates_args=())
def _barlow_twins_triton_op(
    z1: Tensor, z2: Tensor, lambd: float, eps: float, gram: bool, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _barlow_twins(_triton_cpu_passes(), z1, z2, lambd, eps, gram, needs_grad)


@_barlow_twins_triton_op.register_kernel("cuda")
def _(z1, z2, lambd, eps, gram, needs_grad):
    return _barlow_twins(TRITON_PASSES, z1, z2, lambd, eps, gram, needs_grad)


@torch.library.custom_op("nexus_fast::vicreg_regularizer", mutates_args=())
def _vicreg_op(
    x: Tensor, std_coeff: float, cov_coeff: float, eps: float, gram: bool, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _vicreg_regularizer(TORCH_PASSES, x, std_coeff, cov_coeff, eps, gram, needs_grad)


@torch.library.custom_op("nexus_fast::vicreg_regularizer_triton", mutates_args=())
def _vicreg_triton_op(
    x: Tensor, std_coeff: float, cov_coeff: float, eps: float, gram: bool, needs_grad: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    passes = _triton_cpu_passes()
    return _vicreg_regularizer(passes, x, std_coeff, cov_coeff, eps, gram, needs_grad)


@_vicreg_triton_op.register_kernel("cuda")
def _(x, std_coeff, cov_coeff, eps, gram, needs_grad):
    return _vicreg_regularizer(TRITON_PASSES, x, std_coeff, cov_coeff, eps, gram, needs_grad)


def _fake_gradient(z: Tensor, needs_grad: bool) -> Tensor:
    return z.new_empty(z.shape if needs_grad else (0,))


def _barlow_twins_fake(z1, z2, lambd, eps, gram, needs_grad):
    loss = z1.new_empty((), dtype=_compute_dtype(z1.dtype))
    return loss, _fake_gradient(z1, needs_grad), _fake_gradient(z2, needs_grad)


def _vicreg_fake(x, std_coeff, cov_coeff, eps, gram, needs_grad):
    scalars = [x.new_empty((), dtype=_compute_dtype(x.dtype)) for _ in range(4)]
    return (*scalars, _fake_gradient(x, needs_grad))


def _register_autograd(op, name: str, fake: Callable, arguments: int, gradients: int) -> None:
    """Fake kernel and autograd of an op whose first output is differentiable and whose last
    `gradients` outputs are d output / d (its first `gradients` tensor inputs), computed in
    the forward; the outputs between are detached metrics."""

    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        saved = output[-gradients:]
        ctx.save_for_backward(*saved)
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad: Tensor, *unused: Tensor) -> tuple:
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{name}: second derivatives are not supported (the gradient is computed in "
                "closed form during the forward)"
            )
        saved = ctx.saved_tensors
        if any(tensor.numel() == 0 for tensor in saved):
            raise RuntimeError(f"{name} ran with needs_grad=False: no gradient was computed")
        return (*(tensor * grad for tensor in saved), *([None] * (arguments - gradients)))

    torch.library.register_fake(op)(fake)
    torch.library.register_autograd(op, backward, setup_context=setup_context)


for _op, _name in (
    (_barlow_twins_op, "barlow_twins_loss"),
    (_barlow_twins_triton_op, "barlow_twins_loss_triton"),
):
    _register_autograd(_op, _name, _barlow_twins_fake, arguments=6, gradients=2)
for _op, _name in (
    (_vicreg_op, "vicreg_regularizer"),
    (_vicreg_triton_op, "vicreg_regularizer_triton"),
):
    _register_autograd(_op, _name, _vicreg_fake, arguments=6, gradients=1)


# --- the operators ------------------------------------------------------------------------------


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _barlow_twins_runner(op) -> Callable[..., Tensor]:
    def run(z1: Tensor, z2: Tensor, lambd: float, gram: bool) -> Tensor:
        eps = reference.BATCH_NORM_EPS
        loss, _, _ = op(z1, z2, lambd, eps, gram, _needs_grad(z1, z2))
        return loss

    return run


def _barlow_twins_reference(z1: Tensor, z2: Tensor, lambd: float, gram: bool) -> Tensor:
    compute = _compute_dtype(z1.dtype)
    return reference.barlow_twins_loss(z1.to(compute), z2.to(compute), lambd)


def _vicreg_runner(op) -> Callable[..., tuple[Tensor, ...]]:
    def run(x: Tensor, y: Tensor, std_coeff: float, cov_coeff: float, eps: float, gram: bool):
        parts = [op(v, std_coeff, cov_coeff, eps, gram, _needs_grad(v)) for v in (x, y)]
        (weighted_x, variance_x, cov_x, std_x, _), (weighted_y, variance_y, cov_y, std_y, _) = parts
        return (
            weighted_x + weighted_y,
            (variance_x + variance_y) / 2,
            cov_x + cov_y,
            (std_x + std_y) / 2,
        )

    return run


def _vicreg_reference(x, y, std_coeff, cov_coeff, eps, gram) -> tuple[Tensor, ...]:
    compute = _compute_dtype(x.dtype)
    variance, covariance, std = reference.vicreg_terms(x.to(compute), y.to(compute), eps)
    weighted = std_coeff * variance + cov_coeff * covariance
    return weighted, variance.detach(), covariance.detach(), std.detach()


def _dtype_reasons(z: Tensor, dtypes: tuple[torch.dtype, ...]) -> list[str]:
    if z.dtype in dtypes:
        return []
    allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
    return [f"dtype {z.dtype} is not one of {allowed}"]


def _cpu_reasons(z: Tensor, *rest) -> list[str]:
    reasons = _dtype_reasons(z, CPU_DTYPES)
    if z.device.type not in ("cpu", "cuda"):
        reasons.append(f"tensors are on {z.device}; the torch path is tested on cpu and cuda")
    return reasons


def _triton_reasons(z: Tensor, *rest) -> list[str]:
    return triton_reasons(z) or _dtype_reasons(z, TRITON_DTYPES)


def _operator(name: str, runner: Callable, ops: tuple, reference_run: Callable) -> Operator:
    triton_op, torch_op = ops
    return register(
        Operator(
            name,
            [
                Backend(
                    "triton",
                    runner(triton_op),
                    triton_machine_reason,
                    _triton_reasons,
                    lambda z, *rest: interpreter_reasons(z),
                ),
                Backend("cpu", runner(torch_op), input_reasons=_cpu_reasons),
                Backend("reference", reference_run),
            ],
        )
    )


BARLOW_TWINS_LOSS = _operator(
    "barlow_twins_loss",
    _barlow_twins_runner,
    (_barlow_twins_triton_op, _barlow_twins_op),
    _barlow_twins_reference,
)
VICREG_LOSS = _operator(
    "vicreg_loss", _vicreg_runner, (_vicreg_triton_op, _vicreg_op), _vicreg_reference
)


# --- the public functions -----------------------------------------------------------------------


def _check_views(z1: Tensor, z2: Tensor, gather: bool) -> int:
    """Checks the two views; returns the global batch size."""
    for name, value in (("z1", z1), ("z2", z2)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} has dtype {value.dtype}; allowed: a floating dtype")
        if value.dim() != 2:
            raise ValueError(f"{name} must be (N, D), got shape {tuple(value.shape)}")
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have one shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.dtype != z2.dtype or z1.device != z2.device:
        raise ValueError(
            f"z1 and z2 must share dtype and device, got {z1.dtype} on {z1.device} and "
            f"{z2.dtype} on {z2.device}"
        )
    if not isinstance(gather, bool):
        raise TypeError(f"gather must be a bool, got {gather!r}")
    if z1.shape[1] == 0:
        raise ValueError(f"the embeddings have no feature: shape {tuple(z1.shape)}")
    ranks = distributed.world_size() if gather else 1
    rows = z1.shape[0] * ranks
    if rows < 2:
        where = f"{z1.shape[0]} per rank x {ranks} ranks" if gather else f"{z1.shape[0]}"
        raise ValueError(
            f"a batch-statistics loss needs a global batch of at least 2 samples, got {where} "
            f"(shape {tuple(z1.shape)}, gather={gather})"
        )
    return rows


def _check_number(name: str, value: float, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        allowed = "a positive finite number" if positive else "a finite number"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)


def _use_gram(method: str, rule: Callable[[int, int], bool], rows: int, cols: int) -> bool:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return rule(rows, cols) if method == "auto" else method == "gram"


def barlow_twins_loss(
    z1: Tensor,
    z2: Tensor,
    lambd: float = 0.0051,
    *,
    gather: bool = False,
    method: str = "auto",
    backend: str | None = None,
) -> Tensor:
    """The Barlow Twins loss, without the D x D cross-correlation matrix.

    Each view is standardised as BatchNorm1d(affine=False) in training mode does (biased variance
    over the global batch, eps 1e-5); C = z1n^T z2n / N; loss = sum_i (1 - C_ii)^2 + lambd *
    sum_{i != j} C_ij^2. Zbontar et al., "Barlow Twins: Self-Supervised Learning via Redundancy
    Reduction", 2021 (facebookresearch/barlowtwins main.py).

    Args:
        z1, z2: (N, D) embeddings of the two views, any floating dtype, any strides.
        lambd: weight of the off-diagonal (redundancy) term.
        gather: the loss of the global batch over torch.distributed ranks (autograd-aware
            all-gather of the embeddings): with DDP's gradient averaging the gradients equal
            those of one process holding the whole batch (the official code's all-reduce of C
            scales them by 1 / world_size instead).
        method: "gram" (N x N Gram matrices, 8 N^2 D FLOPs), "direct" (C in column tiles,
            6 N D^2 FLOPs) or "auto" (gram when 4 N < 3 D, N the global batch).
        backend: force "triton", "cpu" or "reference" (see NEXUS_FAST_BACKEND in
            nexus_fast.ops._dispatch).

    Returns:
        A 0-dim float32 tensor (float64 for float64 inputs), differentiable with respect to z1
        and z2 (first derivatives).

    Raises:
        TypeError: a non-tensor or non-floating view, a non-real lambd, a non-bool gather.
        ValueError: views that are not (N, D) of one shape, dtype and device; a global batch
            under 2; a non-finite lambd; an unknown method.
        BackendError: a forced backend cannot run these inputs (the error says why).

    Example:
        >>> z1 = torch.randn(256, 8192, requires_grad=True)
        >>> z2 = torch.randn(256, 8192, requires_grad=True)
        >>> barlow_twins_loss(z1, z2).backward()
    """
    rows = _check_views(z1, z2, gather)
    lambd = _check_number("lambd", lambd)
    gram = _use_gram(method, barlow_twins_uses_gram, rows, z1.shape[1])
    if gather:
        z1, z2 = distributed.gather_batch(z1), distributed.gather_batch(z2)
    arguments = (z1, z2, lambd, gram)
    return BARLOW_TWINS_LOSS.select(*arguments, backend=backend).run(*arguments)


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    eps: float = 1e-4,
    *,
    gather: bool = False,
    method: str = "auto",
    backend: str | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The VICReg loss, without the D x D covariance matrices.

    As facebookresearch/vicreg main_vicreg.py: invariance = F.mse_loss(z1, z2) on the local
    batch; then (with gather) both views gathered over ranks and centred; std = sqrt(unbiased
    var + eps); variance = mean(relu(1 - std_1)) / 2 + mean(relu(1 - std_2)) / 2; cov =
    X^T X / (N - 1); covariance = sum_{i != j} cov_1,ij^2 / D + the same for z2; loss =
    sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance. Bardes et al.,
    "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning", 2022.

    Args:
        z1, z2: (N, D) embeddings of the two views, any floating dtype, any strides.
        sim_coeff, std_coeff, cov_coeff: weights of the invariance, variance and covariance terms.
        eps: added to the variance under the square root.
        gather: batch terms over the global batch of all torch.distributed ranks (autograd-
            aware all-gather), the invariance on the local batch, as the official code.
        method: "gram" (N x N Gram matrix per view), "direct" (covariance in column tiles) or
            "auto" (gram when N < D, N the global batch).
        backend: force "triton", "cpu" or "reference".

    Returns:
        (loss, metrics): the 0-dim float32 loss (float64 for float64 inputs), differentiable with
        respect to z1 and z2 (first derivatives), and the detached unweighted parts "invariance",
        "variance", "covariance", and "std", the mean per-feature std of both views (a collapse
        indicator: it falls towards 0 when the embeddings collapse).

    Raises:
        TypeError: a non-tensor or non-floating view, a non-real coefficient or eps, a non-bool
            gather.
        ValueError: views that are not (N, D) of one shape, dtype and device; a global batch
            under 2; a non-finite coefficient; eps not positive; an unknown method.
        BackendError: a forced backend cannot run these inputs (the error says why).

    Example:
        >>> z1 = torch.randn(256, 8192, requires_grad=True)
        >>> z2 = torch.randn(256, 8192, requires_grad=True)
        >>> loss, metrics = vicreg_loss(z1, z2)
        >>> loss.backward()
    """
    rows = _check_views(z1, z2, gather)
    sim_coeff = _check_number("sim_coeff", sim_coeff)
    std_coeff = _check_number("std_coeff", std_coeff)
    cov_coeff = _check_number("cov_coeff", cov_coeff)
    eps = _check_number("eps", eps, positive=True)
    gram = _use_gram(method, vicreg_uses_gram, rows, z1.shape[1])
    compute = _compute_dtype(z1.dtype)
    invariance = F.mse_loss(z1.to(compute), z2.to(compute))
    if gather:
        z1, z2 = distributed.gather_batch(z1), distributed.gather_batch(z2)
    arguments = (z1, z2, std_coeff, cov_coeff, eps, gram)
    weighted, variance, covariance, std = VICREG_LOSS.select(*arguments, backend=backend).run(
        *arguments
    )
    loss = sim_coeff * invariance + weighted
    metrics = {"invariance": invariance.detach(), "variance": variance, "covariance": covariance}
    return loss, metrics | {"std": std}
