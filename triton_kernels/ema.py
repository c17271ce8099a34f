"""In-place multi-tensor EMA in one Triton launch: teacher = m * teacher + (1 - m) * student.

Floor: 12 bytes/param with a float32 student (read 8, write 4), 10 with bfloat16/float16. The
launcher writes a table of teacher/student data pointers and sizes plus a program -> (tensor,
chunk) map, so one launch covers any number of tensors. Tensors whose pointers are 16-byte aligned
and whose sizes are multiples of 4 (every ViT parameter) take the vectorised path; the rest are
masked per element.
Limits: teacher float32; student float32, bfloat16 or float16 (one dtype per launch); teacher and
student dense with equal strides; one device.
"""

import torch
import triton
import triton.language as tl

CHUNK = 1 << 16  # elements per program
BLOCK = 2048  # elements per step of a program: 16 per thread at NUM_WARPS
NUM_WARPS = 4
TORCH_TO_TRITON = {
    torch.float32: tl.float32,
    torch.bfloat16: tl.bfloat16,
    torch.float16: tl.float16,
}


@triton.jit
def ema_kernel(
    table_ptr,  # (3 * tensors,) int64: teacher pointers, student pointers, numels
    program_tensor_ptr,  # (programs,) int64: tensor index of each program
    program_start_ptr,  # (programs,) int64: first element of each program's chunk
    momentum_ptr,  # (,) float32 on the device, read when MOMENTUM_FROM_PTR
    momentum_value,  # float32 scalar, used otherwise
    tensor_count,
    STUDENT_DTYPE: tl.constexpr,
    MOMENTUM_FROM_PTR: tl.constexpr,
    ALIGNED: tl.constexpr,  # pointers 16-byte aligned and numels multiples of 4
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    tensor = tl.load(program_tensor_ptr + program)
    start = tl.multiple_of(tl.load(program_start_ptr + program), CHUNK)
    teacher = tl.load(table_ptr + tensor).to(tl.pointer_type(tl.float32))
    student = tl.load(table_ptr + tensor_count + tensor).to(tl.pointer_type(STUDENT_DTYPE))
    numel = tl.load(table_ptr + 2 * tensor_count + tensor)
    if ALIGNED:
        teacher = tl.multiple_of(teacher, 16)
        student = tl.multiple_of(student, 16)
        numel = tl.multiple_of(numel, 4)
    if MOMENTUM_FROM_PTR:
        momentum = tl.load(momentum_ptr)
    else:
        momentum = momentum_value
    weight = 1.0 - momentum
    # The last chunk of a tensor (and every chunk of a small one) stops early.
    for offset in range(0, tl.minimum(numel - start, CHUNK), BLOCK):
        index = start + offset + tl.arange(0, BLOCK)
        inside = index < numel
        t = tl.load(teacher + index, mask=inside)
        s = tl.load(student + index, mask=inside).to(tl.float32)
        # torch.lerp's form: exact at weight 0 (keeps the teacher) and 1 (copies the student).
        updated = tl.where(weight < 0.5, t + weight * (s - t), s - (s - t) * (1.0 - weight))
        tl.store(teacher + index, updated, mask=inside)


def _is_aligned(tensor: torch.Tensor) -> bool:
    return tensor.data_ptr() % 16 == 0 and tensor.numel() % 4 == 0


def _launch(
    teacher: list[torch.Tensor],
    student: list[torch.Tensor],
    momentum: torch.Tensor,
    aligned: bool,
) -> None:
    device = teacher[0].device
    numels = torch.tensor([t.numel() for t in teacher], dtype=torch.int64)
    table = torch.cat(
        [
            torch.tensor([t.data_ptr() for t in teacher], dtype=torch.int64),
            torch.tensor([s.data_ptr() for s in student], dtype=torch.int64),
            numels,
        ]
    )
    chunks = (numels + CHUNK - 1) // CHUNK
    program_tensor = torch.repeat_interleave(torch.arange(len(teacher)), chunks)
    first_program = torch.cumsum(chunks, 0) - chunks
    program_start = (torch.arange(int(chunks.sum())) - first_program[program_tensor]) * CHUNK
    if program_tensor.numel() == 0:
        return
    # One host-to-device copy carries all three tables (pinned: asynchronous, no sync).
    host = torch.cat([table, program_tensor, program_start])
    if device.type == "cuda":
        host = host.pin_memory()
    on_device = host.to(device, non_blocking=True)
    programs = program_tensor.numel()
    table_d, program_tensor_d, program_start_d = torch.split(
        on_device, [table.numel(), programs, programs]
    )
    from_ptr = momentum.device.type == device.type and device.type == "cuda"
    ema_kernel[(programs,)](
        table_d,
        program_tensor_d,
        program_start_d,
        momentum.to(torch.float32) if from_ptr else None,
        0.0 if from_ptr else float(momentum),
        len(teacher),
        STUDENT_DTYPE=TORCH_TO_TRITON[student[0].dtype],
        MOMENTUM_FROM_PTR=from_ptr,
        ALIGNED=aligned,
        CHUNK=CHUNK,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )


def ema_update_(
    teacher: list[torch.Tensor], student: list[torch.Tensor], momentum: torch.Tensor
) -> None:
    """Updates one group of tensors (one device, teacher float32, one student dtype) in place.

    Args:
        teacher: float32 tensors, updated in place.
        student: tensors of one dtype (float32, bfloat16, float16), shaped like the teacher's.
        momentum: 0-dim tensor; on the tensors' CUDA device it is read by the kernel (no sync).
    """
    if not teacher:
        return
    aligned = [_is_aligned(t) and _is_aligned(s) for t, s in zip(teacher, student)]
    # Two launches at most: ViT parameters are all aligned, so in practice one.
    for want in (True, False):
        group = [i for i, flag in enumerate(aligned) if flag is want]
        if group:
            _launch([teacher[i] for i in group], [student[i] for i in group], momentum, want)


def _compile_specs() -> list:
    from .compile_spec import CompileSpec

    signature = {
        "table_ptr": "*i64",
        "program_tensor_ptr": "*i64",
        "program_start_ptr": "*i64",
        "momentum_ptr": "*fp32",
        "momentum_value": "fp32",
        "tensor_count": "i32",
    }
    return [
        CompileSpec(
            f"ema_kernel[{name}, {'aligned' if aligned else 'unaligned'}]",
            ema_kernel,
            signature,
            {
                "STUDENT_DTYPE": dtype,
                "MOMENTUM_FROM_PTR": True,
                "ALIGNED": aligned,
                "CHUNK": CHUNK,
                "BLOCK": BLOCK,
            },
            num_warps=NUM_WARPS,
        )
        for name, dtype in (("fp32", tl.float32), ("bf16", tl.bfloat16), ("fp16", tl.float16))
        for aligned in (True, False)
    ]


COMPILE_SPECS = _compile_specs()
