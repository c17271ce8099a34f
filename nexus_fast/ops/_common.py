"""Pieces every operator module shares: index checks, and the plumbing of Triton-backed ops."""

import importlib
from collections.abc import Callable

import torch
from torch import Tensor

from .. import _extension
from .. import triton_kernels as triton_support


def check_index_range(ids: Tensor, limit: int, name: str, what: str) -> None:
    """Every index in [0, limit): IndexError naming the first bad one (CPU), or a device-side
    assert (CUDA: no host sync). Under torch.compile the CPU check is left to the kernels, which
    check before any access, because reading a value would break the graph."""
    if ids.is_cuda:
        torch._assert_async(
            ((ids >= 0) & (ids < limit)).all(), f"{name} has indices outside [0, {limit}) {what}"
        )
        return
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= limit)
    if bool(bad.any()):
        position = tuple(int(i) for i in bad.nonzero()[0])
        raise IndexError(
            f"{name}{list(position)} = {int(ids[position])} is out of range for {limit} {what}"
        )


def as_index_tensor(ids: Tensor, name: str) -> Tensor:
    """ids as int64 (kernels index with int64); other integer dtypes are converted."""
    if ids.dtype == torch.int64:
        return ids
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    return ids.long()


def triton_function(module: str, name: str) -> Callable:
    """A launcher of nexus_fast.triton_kernels.<module>, imported on first use (imports triton)."""
    return getattr(importlib.import_module(f"nexus_fast.triton_kernels.{module}"), name)


def interpreting() -> bool:
    """Whether Triton kernels run through the interpreter (TRITON_INTERPRET=1 at import)."""
    return triton_support.INTERPRET


def triton_cpu_path(launcher: Callable, reference: Callable) -> Callable:
    """The CPU implementation of a Triton-backed custom op: the interpreted kernel under
    TRITON_INTERPRET=1 (so CI tests the kernel itself), else the reference."""
    return launcher if triton_support.INTERPRET else reference


# machine_reason of every Triton backend: triton missing, or neither a GPU nor the interpreter.
triton_machine_reason = triton_support.machine_reason


def triton_reasons(*tensors: Tensor) -> list[str]:
    """Why Triton kernels cannot run on these tensors' device here; empty if they can."""
    reason = triton_support.unavailable_reason(tensors[0].device.type)
    return [] if reason is None else [reason]


def interpreter_reasons(tensor: Tensor) -> list[str]:
    """automatic_reasons of a Triton backend: the interpreter (CPU tensors) runs only when forced,
    so TRITON_INTERPRET=1 in a test session does not slow every other CPU call down."""
    if tensor.device.type == "cpu":
        return ["the Triton interpreter runs only when forced (backend='triton'): a test tool"]
    return []


def cpu_kernel_reason(op_name: str) -> Callable[[], str | None]:
    """machine_reason of a backend that runs the compiled CPU kernel of op_name."""
    return lambda: _extension.missing_kernel_reason(op_name, "CPU")


def device_reasons(tensor: Tensor, device_type: str) -> list[str]:
    if tensor.device.type != device_type:
        return [f"tensors are on {tensor.device}, this kernel needs {device_type}"]
    return []


def resolve_op(name_or_op: str | Callable) -> Callable:
    """A registered op from its qualified name ("nexus_fast::gather_tokens"), or the op itself.

    Registration helpers take either, so the C++ ops (known by name, defined in csrc/ops.cpp)
    and the Triton custom ops (Python objects) share one code path.
    """
    if isinstance(name_or_op, str):
        namespace, name = name_or_op.split("::")
        return getattr(getattr(torch.ops, namespace), name)
    return name_or_op
