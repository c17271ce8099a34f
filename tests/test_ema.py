"""nexus_fast.ops.ema_update_: every backend against the formula, edges, errors, grouping, compile.

Non-contiguous tensors: the fused backends (cpu, cuda, triton) handle any dense layout that the
teacher and student share (contiguous, channels-last, transposed alike) and refuse the rest with a
reason; the dispatcher then takes foreach or the reference, which handle any layout.
"""

import math

import pytest
import torch
from torch import nn

import nexus_fast.ops.ema as ema_module
from nexus_fast.ops import Backend, BackendError, Operator, ema_update_
from nexus_fast.testing import assert_close

SIZES = (1, 3, 1023, 65537)
STUDENT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPU_BACKENDS = ("reference", "foreach", "cpu")
# foreach needs one dtype (test_foreach_refuses_mixed_dtypes); the others take every student dtype.
BACKEND_DTYPES = [
    pytest.param(backend, dtype, id=f"{backend}-{str(dtype).removeprefix('torch.')}", marks=marks)
    for backend, marks in [(b, ()) for b in CPU_BACKENDS] + [("triton", pytest.mark.interpret)]
    for dtype in STUDENT_DTYPES
    if backend != "foreach" or dtype == torch.float32
]


def _backend_device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _pair(sizes, student_dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(n, generator=generator).to(device) for n in sizes]
    student = [torch.randn(n, generator=generator).to(student_dtype).to(device) for n in sizes]
    return teacher, student


def _expected(teacher, student, momentum):
    """The formula in float64, rounded once to the teacher's dtype."""
    return [
        (momentum * t.double() + (1 - momentum) * s.double()).to(t.dtype)
        for t, s in zip(teacher, student)
    ]


@pytest.mark.parametrize(("backend", "student_dtype"), BACKEND_DTYPES)
def test_backend_matches_formula(
    backend: str, student_dtype: torch.dtype, triton_device: str
) -> None:
    teacher, student = _pair(SIZES, student_dtype, _backend_device(backend, triton_device))
    expected = _expected(teacher, student, 0.9)
    ema_update_(teacher, student, 0.9, backend=backend)
    for index, (actual, wanted) in enumerate(zip(teacher, expected)):
        assert_close(actual, wanted, msg=f"tensor {index} of size {SIZES[index]}")


def test_foreach_refuses_mixed_dtypes() -> None:
    teacher, student = _pair((5,), torch.bfloat16, "cpu")
    with pytest.raises(BackendError, match="_foreach_lerp_ needs one dtype"):
        ema_update_(teacher, student, 0.9, backend="foreach")


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.interpret)])
def test_hundreds_of_tensors(backend: str, triton_device: str) -> None:
    generator = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 700, (300,), generator=generator).tolist()
    teacher, student = _pair(sizes, torch.bfloat16, _backend_device(backend, triton_device))
    expected = _expected(teacher, student, 0.99)
    ema_update_(teacher, student, 0.99, backend=backend)
    for actual, wanted in zip(teacher, expected):
        assert_close(actual, wanted)


@pytest.mark.parametrize(("backend", "student_dtype"), BACKEND_DTYPES)
def test_momentum_edges_are_exact(
    backend: str, student_dtype: torch.dtype, triton_device: str
) -> None:
    # Magnitudes far apart: an inexact formula (t + w * (s - t) at w = 1) would lose the student.
    device = _backend_device(backend, triton_device)
    teacher = [torch.full((1027,), 3.0e4, device=device)]
    student = [(torch.randn(1027) * 1e-3).to(student_dtype).to(device)]
    original = teacher[0].clone()
    ema_update_(teacher, student, 1.0, backend=backend)
    assert torch.equal(teacher[0], original), "momentum 1 must leave the teacher unchanged"
    ema_update_(teacher, student, 0.0, backend=backend)
    assert torch.equal(teacher[0], student[0].float()), "momentum 0 must copy the student exactly"


def test_tensor_momentum_gives_the_same_result_as_a_float() -> None:
    teacher, student = _pair((17, 4096), torch.float32, "cpu")
    copy = [t.clone() for t in teacher]
    ema_update_(teacher, student, 0.75)
    ema_update_(copy, student, torch.tensor(0.75))
    for a, b in zip(teacher, copy):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.interpret)])
def test_fused_backends_handle_a_shared_dense_layout(backend: str, triton_device: str) -> None:
    device = _backend_device(backend, triton_device)
    teacher = [torch.randn(33, 65, device=device).t()]  # transposed, still dense
    student = [torch.randn(33, 65, device=device).t()]
    expected = _expected(teacher, student, 0.5)
    ema_update_(teacher, student, 0.5, backend=backend)
    assert_close(teacher[0], expected[0])


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.interpret)])
def test_fused_backends_refuse_other_layouts(backend: str, triton_device: str) -> None:
    device = _backend_device(backend, triton_device)
    teacher = [torch.randn(8, 10, device=device)[:, ::2]]  # gaps in memory
    student = [torch.randn(8, 5, device=device)]
    with pytest.raises(BackendError, match="do not share one dense layout"):
        ema_update_(teacher, student, 0.5, backend=backend)


def test_non_contiguous_tensors_fall_back_and_stay_correct() -> None:
    teacher = [torch.randn(8, 10)[:, ::2], torch.randn(6, 4)]
    student = [torch.randn(5, 8).t(), torch.randn(6, 4)]
    expected = _expected(teacher, student, 0.3)
    chosen = ema_module.EMA.select(teacher, student, torch.tensor(0.3))
    assert chosen.name == "foreach"
    ema_update_(teacher, student, 0.3)
    for actual, wanted in zip(teacher, expected):
        assert_close(actual, wanted)


def test_empty_lists_and_empty_tensors() -> None:
    ema_update_([], [], 0.5)
    teacher, student = [torch.zeros(0), torch.ones(4)], [torch.zeros(0), torch.zeros(4)]
    ema_update_(teacher, student, 0.5, backend="cpu")
    assert torch.equal(teacher[1], torch.full((4,), 0.5))


def test_modules_are_updated_by_parameter_name() -> None:
    torch.manual_seed(0)
    teacher, student = (
        nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)),
        nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)),
    )
    teacher.requires_grad_(False)
    expected = _expected(list(teacher.parameters()), list(student.parameters()), 0.9)
    ema_update_(teacher, student, 0.9)
    for actual, wanted in zip(teacher.parameters(), expected):
        assert_close(actual, wanted)


def test_each_dtype_group_is_one_backend_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def record(teacher, student, momentum):
        calls.append((len(teacher), teacher[0].dtype, student[0].dtype))
        ema_module.reference.ema_update_(teacher, student, momentum)

    monkeypatch.setattr(ema_module, "EMA", Operator("ema_update_", [Backend("spy", record)]))
    teacher = [torch.zeros(2), torch.zeros(3), torch.zeros(4, dtype=torch.float64), torch.zeros(5)]
    student = [
        torch.ones(2),
        torch.ones(3, dtype=torch.bfloat16),
        torch.ones(4, dtype=torch.float64),
        torch.ones(5),
    ]
    ema_update_(teacher, student, 0.5)
    assert sorted(calls, key=str) == sorted(
        [
            (2, torch.float32, torch.float32),
            (1, torch.float32, torch.bfloat16),
            (1, torch.float64, torch.float64),
        ],
        key=str,
    )
    assert all(torch.equal(t, torch.full_like(t, 0.5)) for t in teacher)


@pytest.mark.parametrize(
    ("teacher", "student", "momentum", "error", "message"),
    [
        (
            [torch.zeros(2)] * 3,
            [torch.zeros(2)] * 2,
            0.5,
            ValueError,
            "teacher has 3 tensors but student has 2",
        ),
        (
            [torch.zeros(2, 3)],
            [torch.zeros(3, 2)],
            0.5,
            ValueError,
            r"teacher\[0\] has shape \(2, 3\) but student\[0\] has shape \(3, 2\)",
        ),
        (
            [torch.zeros(2)],
            [torch.zeros(2, device="meta")],
            0.5,
            ValueError,
            r"teacher\[0\] is on cpu but student\[0\] on meta",
        ),
        (
            [torch.zeros(2)],
            [torch.zeros(2)],
            1.5,
            ValueError,
            r"momentum must lie in \[0, 1\], got 1.5",
        ),
        ([torch.zeros(2)], [torch.zeros(2)], -0.1, ValueError, "got -0.1"),
        ([torch.zeros(2)], [torch.zeros(2)], math.nan, ValueError, "got nan"),
        ([torch.zeros(2)], [torch.zeros(2)], torch.tensor(2.0), ValueError, "got 2.0"),
        ([torch.zeros(2)], [torch.zeros(2)], torch.zeros(2), ValueError, "0-dim floating tensor"),
        (
            [torch.zeros(2, dtype=torch.int64)],
            [torch.zeros(2)],
            0.5,
            TypeError,
            r"teacher\[0\] has dtype torch.int64",
        ),
        ([torch.zeros(2)], [[0.0, 0.0]], 0.5, TypeError, r"student\[0\] is a list, not a Tensor"),
    ],
)
def test_bad_input_raises_a_clear_error(teacher, student, momentum, error, message) -> None:
    with pytest.raises(error, match=message):
        ema_update_(teacher, student, momentum)


def test_teacher_requiring_grad_outside_no_grad_is_refused() -> None:
    teacher, student = [torch.zeros(2, requires_grad=True)], [torch.ones(2)]
    with pytest.raises(RuntimeError, match=r"teacher\[0\] requires grad and grad mode is on"):
        ema_update_(teacher, student, 0.5)
    with torch.no_grad():
        ema_update_(teacher, student, 0.5)
    assert torch.equal(teacher[0].detach(), torch.full((2,), 0.5))


def test_module_name_mismatch_and_mixed_arguments() -> None:
    teacher, student = nn.Sequential(nn.Linear(2, 2)), nn.Sequential()
    student.add_module("other", nn.Linear(2, 2))
    teacher.requires_grad_(False)
    with pytest.raises(
        ValueError, match=r"parameter 0 is '0\.weight' in the teacher but 'other\.weight'"
    ):
        ema_update_(teacher, student, 0.5)
    with pytest.raises(TypeError, match=r"must both be nn\.Modules or both sequences"):
        ema_update_(teacher, list(student.parameters()), 0.5)


@pytest.mark.parametrize(
    "backend",
    [None, "cpu", "foreach", "reference", pytest.param("triton", marks=pytest.mark.interpret)],
)
def test_compiles_without_graph_breaks_or_recompiles(
    backend: str | None, triton_device: str
) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    device = _backend_device(backend or "cpu", triton_device)
    teacher, student = _pair((5, 300), torch.float32, device)
    expected = _expected(_expected(teacher, student, 0.9), student, 0.5)
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(
        lambda t, s, m: ema_update_(t, s, m, backend=backend), backend=counter, fullgraph=True
    )
    if backend == "foreach":
        # _foreach_lerp_ takes its weight as a Python number: compile with a float momentum.
        step(teacher, student, 0.9)
        step(teacher, student, 0.5)
    else:
        step(teacher, student, torch.tensor(0.9))
        step(teacher, student, torch.tensor(0.5))
        assert counter.frame_count == 1, "a new momentum value must not recompile"
    for actual, wanted in zip(teacher, expected):
        assert_close(actual, wanted)
