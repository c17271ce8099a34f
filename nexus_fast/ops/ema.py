"""In-place EMA of a teacher's parameters towards a student's: the update every teacher-student
method (I-JEPA, V-JEPA 2, DINOv2, data2vec 2.0) runs after each optimizer step.

    teacher = momentum * teacher + (1 - momentum) * student

Tensors are grouped by (device, teacher dtype, student dtype) and each group is updated by ONE
call of the chosen backend: one kernel launch for `cuda`, `triton` and `cpu`, without per-tensor
temporaries. Backends, fastest first: cuda (CUDA C++), triton, cpu (C++), foreach
(torch._foreach_lerp_, one dtype only), reference (the seed's loop).
"""

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .. import _extension
from ._common import (
    cpu_kernel_reason,
    device_reasons,
    interpreter_reasons,
    triton_cpu_path,
    triton_function,
    triton_machine_reason,
    triton_reasons,
)
from ._dispatch import Backend, Operator, register
from .reference import ema as reference

FUSED_STUDENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _is_dense(tensor: Tensor) -> bool:
    """No gaps and no overlap in memory, in any dimension order (contiguous, channels-last)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride()), key=lambda pair: pair[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _fused_reasons(teacher: list[Tensor], student: list[Tensor], device_type: str) -> list[str]:
    """Why a fused kernel (cuda, triton, cpu) cannot update this group; empty if it can."""
    reasons = device_reasons(teacher[0], device_type)
    if teacher[0].dtype != torch.float32:
        reasons.append(f"teacher dtype {teacher[0].dtype} is not float32 (keep the teacher fp32)")
    if student[0].dtype not in FUSED_STUDENT_DTYPES:
        reasons.append(f"student dtype {student[0].dtype} is not float32, bfloat16 or float16")
    for index, (t, s) in enumerate(zip(teacher, student)):
        if t.is_contiguous() and s.is_contiguous():
            continue
        if not _is_dense(t) or t.stride() != s.stride():
            reasons.append(
                f"teacher[{index}] (strides {t.stride()}) and student[{index}] (strides "
                f"{s.stride()}) do not share one dense layout"
            )
            break
    return reasons


def _run_foreach(teacher: list[Tensor], student: list[Tensor], momentum: float | Tensor) -> None:
    # _foreach_lerp_ takes the weight as a Python number: a CUDA momentum costs a sync here.
    torch._foreach_lerp_(teacher, student, 1.0 - float(momentum))


def _foreach_reasons(teacher: list[Tensor], student: list[Tensor], momentum: Tensor) -> list[str]:
    if teacher[0].dtype != student[0].dtype:
        return [
            f"_foreach_lerp_ needs one dtype, got teacher {teacher[0].dtype} and student "
            f"{student[0].dtype}"
        ]
    return []


# The Triton kernel as a torch.library op, so torch.compile and opcheck see an opaque op. Its
# CPU implementation is the interpreted kernel under TRITON_INTERPRET=1 (what CI tests), else the
# reference; DESIGN.md ("The operator contract") explains why this form and not triton_op.
@torch.library.custom_op("nexus_fast::ema_update_triton_", mutates_args=("teacher",))
def _ema_update_triton_op(teacher: list[Tensor], student: list[Tensor], momentum: Tensor) -> None:
    launcher = triton_function("ema", "ema_update_")
    triton_cpu_path(launcher, reference.ema_update_)(teacher, student, momentum)


@_ema_update_triton_op.register_kernel("cuda")
def _(teacher: list[Tensor], student: list[Tensor], momentum: Tensor) -> None:
    triton_function("ema", "ema_update_")(teacher, student, momentum)


@_ema_update_triton_op.register_fake
def _(teacher: list[Tensor], student: list[Tensor], momentum: Tensor) -> None:
    return None


def _run_compiled(teacher: list[Tensor], student: list[Tensor], momentum: float | Tensor) -> None:
    torch.ops.nexus_fast.ema_update_(teacher, student, _as_tensor(momentum))


def _run_triton(teacher: list[Tensor], student: list[Tensor], momentum: float | Tensor) -> None:
    _ema_update_triton_op(teacher, student, _as_tensor(momentum))


if _extension.is_built():

    @torch.library.register_fake("nexus_fast::ema_update_")
    def _(teacher: list[Tensor], student: list[Tensor], momentum: Tensor) -> None:
        return None


def _cuda_machine_reason() -> str | None:
    missing = _extension.missing_kernel_reason("ema_update_", "CUDA")
    if missing is not None:
        return missing
    return None if torch.cuda.is_available() else "built, but no CUDA device"


EMA = register(
    Operator(
        "ema_update_",
        [
            Backend(
                "cuda",
                _run_compiled,
                _cuda_machine_reason,
                lambda t, s, m: _fused_reasons(t, s, "cuda"),
            ),
            Backend(
                "triton",
                _run_triton,
                triton_machine_reason,
                lambda t, s, m: triton_reasons(t[0]) or _fused_reasons(t, s, t[0].device.type),
                lambda t, s, m: interpreter_reasons(t[0]),
            ),
            Backend(
                "cpu",
                _run_compiled,
                cpu_kernel_reason("ema_update_"),
                lambda t, s, m: _fused_reasons(t, s, "cpu"),
            ),
            Backend("foreach", _run_foreach, input_reasons=_foreach_reasons),
            Backend("reference", reference.ema_update_),
        ],
    )
)


def _tensor_lists(
    teacher: nn.Module | Iterable[Tensor], student: nn.Module | Iterable[Tensor]
) -> tuple[list[Tensor], list[Tensor]]:
    """Both arguments as lists of tensors; two modules must have the same parameter names."""
    if isinstance(teacher, nn.Module) != isinstance(student, nn.Module):
        raise TypeError(
            "teacher and student must both be nn.Modules or both sequences of tensors, got "
            f"{type(teacher).__name__} and {type(student).__name__}"
        )
    if isinstance(teacher, nn.Module):
        teacher_named = list(teacher.named_parameters())
        student_named = list(student.named_parameters())
        for index, ((t_name, _), (s_name, _)) in enumerate(zip(teacher_named, student_named)):
            if t_name != s_name:
                raise ValueError(
                    f"parameter {index} is {t_name!r} in the teacher but {s_name!r} in the student"
                )
        return [p for _, p in teacher_named], [p for _, p in student_named]
    return list(teacher), list(student)


def _pair_error(index: int, t: object, s: object) -> Exception | None:
    """What is wrong with the pair (teacher[index], student[index]), if anything."""
    for name, value in (("teacher", t), ("student", s)):
        if not isinstance(value, Tensor):
            return TypeError(f"{name}[{index}] is a {type(value).__name__}, not a Tensor")
        if not value.is_floating_point():
            return TypeError(f"{name}[{index}] has dtype {value.dtype}; EMA needs floating tensors")
    if t.shape != s.shape:
        return ValueError(
            f"teacher[{index}] has shape {tuple(t.shape)} but student[{index}] has shape "
            f"{tuple(s.shape)}"
        )
    if t.device != s.device:
        return ValueError(f"teacher[{index}] is on {t.device} but student[{index}] on {s.device}")
    if t.requires_grad and torch.is_grad_enabled():
        return RuntimeError(
            f"teacher[{index}] requires grad and grad mode is on: update the teacher under "
            "torch.no_grad(), or call teacher.requires_grad_(False) once"
        )
    return None


def _checked_groups(
    teacher: Sequence[Tensor], student: Sequence[Tensor]
) -> dict[tuple, tuple[list[Tensor], list[Tensor]]]:
    """The pairs grouped by (device, teacher dtype, student dtype), every pair checked.

    This runs every step over every parameter, so the common case costs a few attribute reads
    per pair; the pair that fails a quick test is examined again to name what is wrong.
    """
    if len(teacher) != len(student):
        raise ValueError(f"teacher has {len(teacher)} tensors but student has {len(student)}")
    grad_mode = torch.is_grad_enabled()
    groups: dict[tuple, tuple[list[Tensor], list[Tensor]]] = {}
    for index, (t, s) in enumerate(zip(teacher, student)):
        if not (
            isinstance(t, Tensor)
            and isinstance(s, Tensor)
            and t.shape == s.shape
            and t.device == s.device
            and not (grad_mode and t.requires_grad)
        ):
            raise _pair_error(index, t, s)
        key = (t.device, t.dtype, s.dtype)
        group = groups.get(key)
        if group is None:
            error = _pair_error(index, t, s)  # once per group: the dtypes are floating
            if error is not None:
                raise error
            group = groups[key] = ([], [])
        group[0].append(t)
        group[1].append(s)
    return groups


def _checked_momentum(momentum: float | Tensor) -> float | Tensor:
    """momentum, range-checked: a float always, a CPU tensor unless torch.compile is tracing."""
    if isinstance(momentum, Tensor):
        if momentum.dim() != 0 or not momentum.is_floating_point():
            raise ValueError(
                f"momentum must be a float or a 0-dim floating tensor, got a tensor of shape "
                f"{tuple(momentum.shape)} and dtype {momentum.dtype}"
            )
        # Reading a CUDA value would sync the device, and a traced value is unknown: those are
        # trusted, as a schedule produces them.
        if momentum.is_cuda or torch.compiler.is_compiling():
            return momentum
        value = float(momentum)
    else:
        value = momentum = float(momentum)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {value}")
    return momentum


def _as_tensor(momentum: float | Tensor) -> Tensor:
    """The registered ops take momentum as a 0-dim tensor (one schema for floats and tensors)."""
    if isinstance(momentum, Tensor):
        return momentum
    return torch.tensor(momentum, dtype=torch.float64)


def ema_update_(
    teacher: nn.Module | Iterable[Tensor],
    student: nn.Module | Iterable[Tensor],
    momentum: float | Tensor,
    *,
    backend: str | None = None,
) -> None:
    """In place, teacher = momentum * teacher + (1 - momentum) * student, for every tensor.

    Args:
        teacher: a module (its parameters) or a sequence of floating tensors, updated in place.
            Keep it float32: at momentum >= 0.994 a bfloat16 teacher loses the update to rounding.
        student: a module with the same parameter names, or a sequence of tensors shaped like the
            teacher's (float32, bfloat16 or float16 for the fused kernels).
        momentum: in [0, 1]; a float or a 0-dim tensor (a tensor lets a schedule change it without
            recompiling a torch.compile graph; a CUDA tensor is read on the device).
        backend: force one of "cuda", "triton", "cpu", "foreach", "reference" (see
            NEXUS_FAST_BACKEND in nexus_fast.ops._dispatch).

    Raises:
        ValueError: different lengths, shapes, devices or parameter names; momentum out of range.
        TypeError: a non-floating or non-tensor element.
        RuntimeError: a teacher tensor requires grad while grad mode is on.
        BackendError: a forced backend cannot run a group (the error says why).

    Example:
        >>> teacher, student = nn.Linear(4, 4), nn.Linear(4, 4)
        >>> teacher.requires_grad_(False)
        >>> ema_update_(teacher, student, 0.996)
    """
    groups = _checked_groups(*_tensor_lists(teacher, student))
    momentum = _checked_momentum(momentum)
    with torch.no_grad():
        for group_teacher, group_student in groups.values():
            chosen = EMA.select(group_teacher, group_student, momentum, backend=backend)
            chosen.run(group_teacher, group_student, momentum)
