"""nexus_fast.ops.sinkhorn_knopp: the scaling-vector form of every backend against DINOv2's
iterative sinkhorn_knopp_teacher in float64 (iters 1..3, odd sizes, near-collapsed and extreme
logits, low-precision inputs), its launch count, edges, dispatch, errors, opcheck and compile.

Criterion (DESIGN.md, a reduction): the FlashAttention rule. A backend's error against DINOv2's
form in float64 is at most twice the error of DINOv2's own float32 form on the same logits.
"""

import importlib

import pytest
import torch

from nexus_fast.ops import BackendError
from nexus_fast.ops.reference import dino as reference
from nexus_fast.ops.sinkhorn import SINKHORN_KNOPP, sinkhorn_knopp
from nexus_fast.testing import assert_close, assert_within_reference_error

kernels = importlib.import_module("nexus_fast.triton_kernels.sinkhorn")
BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
FUSED = ["cpu", pytest.param("triton", marks=pytest.mark.interpret)]


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _cosine_logits(rows: int, prototypes: int, seed: int = 0, width: int = 16) -> torch.Tensor:
    """Logits of a weight-normalised head: cosines between features and prototypes."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(rows, width, generator=generator), dim=1)
    weight = torch.nn.functional.normalize(
        torch.randn(prototypes, width, generator=generator), dim=1
    )
    return features @ weight.t()


def _check(
    backend: str, logits: torch.Tensor, temperature: float, iters: int, device: str
) -> torch.Tensor:
    probs = sinkhorn_knopp(logits.to(device), temperature, iters, backend=backend).cpu()
    exact = reference.sinkhorn_knopp(logits.double(), temperature, iters)
    low = reference.sinkhorn_knopp(logits, temperature, iters)
    assert probs.shape == logits.shape and probs.dtype == torch.float32
    assert torch.isfinite(probs).all()
    # The floor: a part in 10^7 of the largest probability (values DINOv2's form gets exactly).
    assert_within_reference_error(probs, low, exact, floor=0.0, relative_floor=1e-7)
    return probs


@pytest.mark.parametrize("iters", [1, 2, 3])
@pytest.mark.parametrize("shape", [(37, 101), (5, 263)], ids=["37x101", "5x263"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_scaling_form_equals_dinov2_iterative_form(
    backend: str, shape: tuple[int, int], iters: int, triton_device: str
) -> None:
    logits = _cosine_logits(*shape, seed=iters)
    probs = _check(backend, logits, 0.04, iters, _device(backend, triton_device))
    # Every sample's assignment is a distribution.
    assert_close(probs.sum(dim=1), torch.ones(shape[0]))


def _uniform(rows: int, prototypes: int) -> torch.Tensor:
    noise = torch.randn(rows, prototypes, generator=torch.Generator().manual_seed(1))
    return 0.5 + 1e-3 * noise


def _one_hot(rows: int, prototypes: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    winners = torch.randint(prototypes, (rows,), generator=generator)
    logits = -1.0 + 0.01 * torch.rand(rows, prototypes, generator=generator)
    logits[torch.arange(rows), winners] = 1.0
    return logits


def _collapsed(rows: int, prototypes: int) -> torch.Tensor:
    return _cosine_logits(1, prototypes, seed=3).expand(rows, prototypes)


@pytest.mark.interpret
@pytest.mark.parametrize("rows", [257, 1031])
def test_sample_pass_tilings_for_larger_batches(rows: int, triton_device: str) -> None:
    # 2 and 4 rows per program of the sample pass (kernels.sample_blocks), with a partial block.
    assert kernels.sample_blocks(rows)[0] == (2 if rows < 1024 else 4)
    _check("triton", _cosine_logits(rows, 7, seed=rows), 0.04, 2, triton_device)


@pytest.mark.parametrize("make", [_uniform, _one_hot, _collapsed], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("backend", BACKENDS)
def test_near_collapsed_logits(backend: str, make, triton_device: str) -> None:
    _check(backend, make(23, 67), 0.04, 3, _device(backend, triton_device))


@pytest.mark.parametrize("backend", FUSED)
def test_logits_beyond_float32_exp_range(backend: str, triton_device: str) -> None:
    # L / tau ~ 100 +- 12: DINOv2's float32 exp overflows to inf (then NaN); the shifted form
    # stays finite and equals the float64 result.
    logits = 4.0 + 0.5 * _cosine_logits(19, 41, seed=4)
    assert torch.isnan(reference.sinkhorn_knopp(logits, 0.04, 3)).any()
    probs = sinkhorn_knopp(logits.to(_device(backend, triton_device)), 0.04, backend=backend)
    exact = reference.sinkhorn_knopp(logits.double(), 0.04, 3)
    torch.testing.assert_close(probs.cpu().double(), exact, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_logits_accumulate_in_float32(
    backend: str, dtype: torch.dtype, triton_device: str
) -> None:
    logits = _cosine_logits(29, 97, seed=5).to(dtype)
    # DINOv2 casts to float32 first; the float64 oracle sees the same rounded logits.
    _check(backend, logits, 0.07, 3, _device(backend, triton_device))


def test_float64_logits_on_the_cpu_backend_are_exact() -> None:
    logits = _cosine_logits(31, 89, seed=6).double()
    probs = sinkhorn_knopp(logits, 0.05, backend="cpu")
    assert probs.dtype == torch.float64
    assert_close(probs, reference.sinkhorn_knopp(logits, 0.05, 3))


@pytest.mark.parametrize("backend", FUSED)
def test_many_prototypes(backend: str, triton_device: str) -> None:
    # Sums over K = 4099 prototypes per sample: as accurate as DINOv2's torch.sum (a BLAS
    # matrix-vector product in the cpu backend was 3-4x less accurate at this size).
    logits = _cosine_logits(48, 4099, seed=11, width=64)
    _check(backend, logits, 0.04, 3, _device(backend, triton_device))


def test_cpu_chunks_that_do_not_divide_the_rows() -> None:
    from nexus_fast.ops.sinkhorn import sinkhorn_scaling

    logits = _cosine_logits(37, 50, seed=7).double()
    chunked = sinkhorn_scaling(logits, 0.04, 3, False, chunk_elements=50 * 8)  # 8-row chunks
    assert_close(chunked, reference.sinkhorn_knopp(logits, 0.04, 3))


class _CountingKernel:
    """Stands in for a @triton.jit kernel and records each launch."""

    def __init__(self, kernel, name: str, launches: list[str]) -> None:
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        self.launches.append(self.name)
        return self.kernel[grid]


@pytest.mark.interpret
@pytest.mark.parametrize("iters", [1, 3])
def test_at_most_two_launches_per_iteration(
    iters: int, triton_device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    launches: list[str] = []
    for name in ("sinkhorn_prototype_kernel", "sinkhorn_sample_kernel", "sinkhorn_write_kernel"):
        monkeypatch.setattr(kernels, name, _CountingKernel(getattr(kernels, name), name, launches))
    logits = _cosine_logits(9, 33, seed=8).to(triton_device)
    kernels.sinkhorn_knopp(logits, 0.04, iters, False)
    per_iteration = ["sinkhorn_prototype_kernel", "sinkhorn_sample_kernel"]
    assert launches == per_iteration * iters + ["sinkhorn_write_kernel"]


@pytest.mark.parametrize(
    "shape", [(1, 17), (13, 1), (0, 5)], ids=["one_row", "one_prototype", "empty"]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_edges(backend: str, shape: tuple[int, int], triton_device: str) -> None:
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(9))
    probs = sinkhorn_knopp(logits.to(_device(backend, triton_device)), 0.1, backend=backend).cpu()
    assert probs.shape == shape
    if shape[0] > 0:
        assert_close(probs, reference.sinkhorn_knopp(logits.double(), 0.1, 3).float())
        assert_close(probs.sum(dim=1), torch.ones(shape[0]))


def test_non_contiguous_logits_and_no_gradient() -> None:
    base = _cosine_logits(41, 30, seed=10).t().requires_grad_()  # (30, 41) column-major view
    probs = sinkhorn_knopp(base, 0.06, backend="cpu")
    assert not probs.requires_grad
    assert_close(probs, reference.sinkhorn_knopp(base.detach().double(), 0.06, 3).float())


def test_dispatch_reasons_name_the_obstacle() -> None:
    logits = torch.zeros(3, 4, dtype=torch.float64)
    triton = SINKHORN_KNOPP.backend("triton")
    assert SINKHORN_KNOPP.reasons(triton, logits, 0.1, 3, False) == [
        "logits dtype torch.float64 is not one of float32, bfloat16, float16"
    ]
    assert SINKHORN_KNOPP.select(logits, 0.1, 3, False).name == "cpu"
    with pytest.raises(BackendError, match="backend='triton' cannot run"):
        sinkhorn_knopp(logits, 0.1, backend="triton")
    with pytest.raises(BackendError, match="runs CPU tensors"):
        SINKHORN_KNOPP.select(torch.zeros(3, 4, device="meta"), 0.1, 3, False, backend="cpu")


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ((torch.zeros(3, 4, dtype=torch.int64), 0.1), TypeError, "teacher_logits has dtype"),
        (([[1.0]], 0.1), TypeError, "teacher_logits must be a Tensor, got list"),
        ((torch.zeros(3), 0.1), ValueError, r"must be \(rows, K\), got shape \(3,\)"),
        ((torch.zeros(3, 4), 0.0), ValueError, "temperature must be a positive finite number"),
        ((torch.zeros(3, 4), "0.1"), TypeError, "temperature must be a number, got str"),
        ((torch.zeros(3, 4), 0.1, 0), ValueError, "iters must be >= 1, got 0"),
        ((torch.zeros(3, 4), 0.1, 2.0), TypeError, "iters must be an int, got float"),
    ],
)
def test_bad_arguments_raise_clear_errors(arguments: tuple, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        sinkhorn_knopp(*arguments)


@pytest.mark.interpret
def test_opcheck(triton_device: str) -> None:
    op = torch.ops.nexus_fast.sinkhorn_knopp_triton.default
    for logits in (_cosine_logits(5, 11), _cosine_logits(3, 7).bfloat16()):
        torch.library.opcheck(op, (logits.to(triton_device), 0.07, 2, False))


@pytest.mark.parametrize("backend", [None, pytest.param("triton", marks=pytest.mark.interpret)])
def test_compiles_without_graph_breaks(backend: str | None, triton_device: str) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    logits = _cosine_logits(7, 19).to(_device(backend or "cpu", triton_device))
    counter = CompileCounterWithBackend("aot_eager")

    def teacher(logits):
        return sinkhorn_knopp(logits, 0.05, 3, backend=backend) * 2.0

    actual = torch.compile(teacher, backend=counter, fullgraph=True)(logits)
    assert counter.frame_count == 1
    assert_close(actual, teacher(logits))
