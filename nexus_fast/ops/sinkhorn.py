"""Sinkhorn-Knopp teacher assignments (DINOv2's sinkhorn_knopp_teacher) in scaling-vector form.

DINOv2 turns the teacher's logits into balanced soft assignments by normalising
Q = exp(L / tau)^T (K prototypes x B samples) alternately over samples and over prototypes,
dividing the whole matrix in place each time (~40 passes over a rows x K float32 matrix at
iters = 3). The fused backends keep only the scalings, Q[b, k] = E[b, k] u[k] v[b] with
E = exp(L / tau - mu[k]) and mu[k] the largest logit of prototype k, and recompute E from the
logits on each pass: (2 * iters + 1) reads of the logits and one write (triton_kernels/sinkhorn.py
explains the form, its accuracy and its range).

Backends, fastest first: triton (GPU; <= 2 launches per iteration), cpu (the same form in torch:
E computed once into the output buffer, then per iteration two sums over each cache-sized chunk
of it; one exponential per element, as DINOv2), reference (DINOv2's iterative form). No
gradient: the teacher side.
"""

import torch
from torch import Tensor

from .. import distributed
from ._common import (
    interpreter_reasons,
    triton_cpu_path,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dino_common import check_floating, check_positive
from ._dispatch import Backend, Operator, register
from .reference import dino as reference

TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Elements of one chunk of the cpu backend: 4 MB of float32, so a chunk stays in cache while it
# feeds both the sample sums and the next prototype sums.
CPU_CHUNK_ELEMENTS = 1 << 20


def _column_maxima(logits: Tensor, rows_per_chunk: int, dtype: torch.dtype, gather: bool):
    """The largest logit of each prototype, max_b L[b, k] (over every rank when gathering), in
    `dtype`. Divided by tau it is exactly the largest L / tau: the division is monotonic and
    correctly rounded."""
    shift = torch.full((logits.shape[1],), -torch.inf, dtype=dtype, device=logits.device)
    for start in range(0, logits.shape[0], rows_per_chunk):
        torch.maximum(shift, logits[start : start + rows_per_chunk].amax(dim=0), out=shift)
    if gather and distributed.world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    return shift


def sinkhorn_scaling(
    logits: Tensor,
    temperature: float,
    iters: int,
    gather: bool,
    chunk_elements: int = CPU_CHUNK_ELEMENTS,
) -> Tensor:
    """The scaling-vector form in torch (the cpu backend; any device): float32, or float64 for a
    float64 input.

    On a CPU the exponential, not memory, is the expensive step, so E = exp(L / tau - mu) is
    computed once, into the output buffer (no other rows x K memory), and each iteration is two
    sums per cache-sized chunk of it: sum_k E u for the chunk's samples, then sum_b E v of the
    chunk's rows for the next prototype scalings; the last iteration scales E in place. The
    sums are torch reductions (cascade summation), as accurate as DINOv2's torch.sum; a BLAS
    matrix-vector product was 3-4x less accurate at K = 16384.
    """
    dtype = reference.compute_dtype(logits)
    rows, prototypes = logits.shape
    rows_per_chunk = max(1, chunk_elements // max(prototypes, 1))
    out = torch.empty(rows, prototypes, dtype=dtype, device=logits.device)
    if prototypes == 0:
        return out
    shift = _column_maxima(logits, rows_per_chunk, dtype, gather).div_(temperature)
    starts = range(0, rows, rows_per_chunk)
    sums = torch.zeros(prototypes, dtype=dtype, device=logits.device)
    for start in starts:
        exps = out[start : start + rows_per_chunk]  # E, written in place
        exps.copy_(logits[start : start + rows_per_chunk]).div_(temperature)
        sums.add_(exps.sub_(shift).exp_().sum(dim=0))
    if gather:
        sums = distributed.all_reduce_sum(sums)
    u = sums.reciprocal_()
    scratch = torch.empty(min(rows_per_chunk, rows), prototypes, dtype=dtype, device=out.device)
    for iteration in range(iters):
        last = iteration == iters - 1
        next_sums = torch.zeros_like(u)
        for start in starts:
            exps = out[start : start + rows_per_chunk]
            weighted = scratch[: exps.shape[0]]
            v = torch.mul(exps, u, out=weighted).sum(dim=1).reciprocal_()
            if last:
                torch.mul(weighted, v.unsqueeze(1), out=exps)
            else:
                next_sums.add_(torch.mul(exps, v.unsqueeze(1), out=weighted).sum(dim=0))
        if not last:
            if gather:
                next_sums = distributed.all_reduce_sum(next_sums)
            u = next_sums.reciprocal_()
    return out


def _reference(logits: Tensor, temperature: float, iters: int, gather: bool) -> Tensor:
    return reference.sinkhorn_knopp(logits, temperature, iters, gather)


# The Triton kernels as a torch.library op, so torch.compile sees one opaque op. Its CPU
# implementation is the interpreted kernels under TRITON_INTERPRET=1 (what CI tests), else the
# torch scaling form; DESIGN.md ("The operator contract") explains why this form.
@torch.library.custom_op("nexus_fast::sinkhorn_knopp_triton", mutates_args=())
def _sinkhorn_knopp_triton_op(
    logits: Tensor, temperature: float, iters: int, gather: bool
) -> Tensor:
    launcher = triton_function("sinkhorn", "sinkhorn_knopp")
    probs = triton_cpu_path(launcher, sinkhorn_scaling)(logits, temperature, iters, gather)
    return probs.to(torch.float32)


@_sinkhorn_knopp_triton_op.register_kernel("cuda")
def _(logits, temperature, iters, gather):
    return triton_function("sinkhorn", "sinkhorn_knopp")(logits, temperature, iters, gather)


@torch.library.register_fake("nexus_fast::sinkhorn_knopp_triton")
def _(logits, temperature, iters, gather):
    return logits.new_empty(logits.shape, dtype=torch.float32)


def _triton_input_reasons(logits: Tensor, *rest) -> list[str]:
    unavailable = triton_reasons(logits)
    if unavailable:
        return unavailable
    if logits.dtype not in TRITON_DTYPES:
        return [f"logits dtype {logits.dtype} is not one of float32, bfloat16, float16"]
    return []


def _cpu_input_reasons(logits: Tensor, *rest) -> list[str]:
    if logits.device.type != "cpu":
        return [f"logits are on {logits.device}, this backend runs CPU tensors"]
    return []


SINKHORN_KNOPP = register(
    Operator(
        "sinkhorn_knopp",
        [
            Backend(
                "triton",
                _sinkhorn_knopp_triton_op,
                triton_machine_reason,
                _triton_input_reasons,
                lambda logits, *rest: interpreter_reasons(logits),
            ),
            Backend("cpu", sinkhorn_scaling, input_reasons=_cpu_input_reasons),
            Backend("reference", _reference),
        ],
    )
)


def sinkhorn_knopp(
    teacher_logits: Tensor,
    temperature: float,
    iters: int = 3,
    *,
    gather: bool = False,
    backend: str | None = None,
) -> Tensor:
    """DINOv2's Sinkhorn-Knopp teacher assignments (sinkhorn_knopp_teacher).

    Balances the teacher's softmax over the batch: the result is what DINOv2 computes, Q =
    exp(L / tau)^T normalised to sum 1, then `iters` times each prototype scaled to total 1/K over
    the (global) batch and each sample to total 1/B, finally times B, transposed back. Here in
    scaling-vector form (see nexus_fast.ops.sinkhorn): (2 * iters + 1) reads of the logits on
    the GPU, float32 accumulation, no overflow for any logits (DINOv2's exp overflows above
    L / tau = 88). Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments" (SwAV), 2020; Oquab et al., "DINOv2", 2023.

    Args:
        teacher_logits: (rows, K) teacher head outputs, any floating dtype.
        temperature: the teacher temperature tau (DINOv2: 0.04 -> 0.07).
        iters: normalisation rounds, >= 1 (DINOv2: 3).
        gather: sum over the samples of every rank of the default process group (DINOv2 does
            when distributed); each rank gets the rows of its own samples. Ranks may hold
            different numbers of rows (the result does not depend on B).
        backend: force "triton", "cpu" or "reference" (see NEXUS_FAST_BACKEND in
            nexus_fast.ops._dispatch).

    Returns:
        (rows, K) float32 probabilities (float64 for a float64 input on the cpu and reference
        backends), each row summing to 1. No gradient.

    Raises:
        TypeError: a non-tensor or non-floating teacher_logits, a non-number temperature, a
            non-int iters.
        ValueError: teacher_logits not 2-D, a non-positive temperature, iters < 1.
        BackendError: a forced backend cannot run these inputs (the error says why).

    Example:
        >>> probs = sinkhorn_knopp(torch.randn(8, 100), temperature=0.07)
        >>> probs.shape, probs.sum(-1)[0].item()  # doctest: +SKIP
        (torch.Size([8, 100]), 1.0)
    """
    check_floating("teacher_logits", teacher_logits, "(rows, K)")
    temperature = check_positive("temperature", temperature)
    if isinstance(iters, bool) or not isinstance(iters, int):
        raise TypeError(f"iters must be an int, got {type(iters).__name__}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    arguments = (teacher_logits.detach(), temperature, iters, bool(gather))
    with torch.no_grad():
        return SINKHORN_KNOPP.select(*arguments, backend=backend).run(*arguments)
