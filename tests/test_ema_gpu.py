"""The CUDA and Triton EMA kernels on a GPU (run by benchmarks/device_check.sh): ViT-sized lists,
unaligned tensors, a momentum that lives on the device, and the one-launch claim."""

import pytest
import torch

from nexus_fast.ops import ema_update_
from nexus_fast.testing import assert_close

pytestmark = pytest.mark.gpu
GPU_BACKENDS = ("cuda", "triton")


def _vit_like(student_dtype: torch.dtype) -> tuple[list, list]:
    shapes = [(768, 3, 16, 16), (1, 197, 768)] + [(2304, 768), (2304,), (3072, 768), (768,)] * 12
    teacher = [torch.randn(s, device="cuda") for s in shapes]
    student = [torch.randn(s, device="cuda").to(student_dtype) for s in shapes]
    return teacher, student


@pytest.mark.parametrize("student_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_vit_sized_lists_match_the_formula(backend: str, student_dtype: torch.dtype) -> None:
    teacher, student = _vit_like(student_dtype)
    expected = [(0.996 * t.double() + 0.004 * s.double()).float() for t, s in zip(teacher, student)]
    ema_update_(teacher, student, 0.996, backend=backend)
    for actual, wanted in zip(teacher, expected):
        assert_close(actual, wanted)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_unaligned_and_odd_sized_tensors(backend: str) -> None:
    base_t, base_s = torch.randn(70001, device="cuda"), torch.randn(70001, device="cuda")
    teacher = [base_t[1:], base_t[:3], torch.randn(65537, device="cuda")]  # offset, tiny, odd
    student = [base_s[1:], base_s[:3], torch.randn(65537, device="cuda")]
    expected = [(0.5 * t.double() + 0.5 * s.double()).float() for t, s in zip(teacher, student)]
    ema_update_(teacher, student, 0.5, backend=backend)
    for actual, wanted in zip(teacher, expected):
        assert_close(actual, wanted)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_device_momentum_is_read_without_a_sync(backend: str) -> None:
    teacher, student = _vit_like(torch.bfloat16)
    expected = [(0.9 * t.double() + 0.1 * s.double()).float() for t, s in zip(teacher, student)]
    momentum = torch.tensor(0.9, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        ema_update_(teacher, student, momentum, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for actual, wanted in zip(teacher, expected):
        assert_close(actual, wanted)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_one_kernel_launch_per_group(backend: str) -> None:
    teacher, student = _vit_like(torch.float32)
    ema_update_(teacher, student, 0.99, backend=backend)  # warm-up: compile, allocate
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ema_update_(teacher, student, 0.99, backend=backend)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [e for e in kernels if "ema" in e.name.lower()]
    assert len(kernels) == 1, [e.name for e in kernels]
