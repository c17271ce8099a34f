"""nexus_fast.ops.prototype_cross_entropy (DINOHead's last layer fused with the DINO
cross-entropy) and the soft cross-entropy kernel: every backend against head-then-loss in
float64 (loss, gradient of the features, gradient of the raw weight), chunks that do not divide
the rows, shared target tables, low precision, what is kept for the backward, gradcheck, edges,
dispatch, errors, opcheck and compile.

Criterion (DESIGN.md, a reduction): the FlashAttention rule, against the reference (the head in
the inputs' dtype, then the loss in float32) computed in float64.
"""

import importlib

import pytest
import torch

from nexus_fast.ops import BackendError
from nexus_fast.ops.prototype_loss import PROTOTYPE_CROSS_ENTROPY, prototype_cross_entropy
from nexus_fast.ops.reference import dino as reference
from nexus_fast.testing import assert_close, assert_within_reference_error

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
FUSED = ["cpu", pytest.param("triton", marks=pytest.mark.interpret)]
kernels = importlib.import_module("nexus_fast.triton_kernels.prototype_loss")
UPSTREAM = 1.75  # an upstream gradient other than 1 must scale the gradients


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _problem(
    rows: int = 13, prototypes: int = 37, width: int = 16, targets: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, weight, teacher_probs): features and weight rows of varied norms (the op
    normalises both), sharp teacher probabilities (tau_t = 0.04)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, width, generator=generator) * (
        0.5 + torch.rand(rows, 1, generator=generator)
    )
    weight = torch.randn(prototypes, width, generator=generator) * (
        0.2 + torch.rand(prototypes, 1, generator=generator)
    )
    logits = torch.randn(targets or rows, prototypes, generator=generator)
    return features, weight, torch.softmax(logits / 0.4, dim=-1)


def _grad_factor(backend: str, dtype: torch.dtype) -> float:
    """Triton's interpreter (3.9) converts float32 to bfloat16 by truncation, the GPU rounds to
    nearest even: an interpreted bf16 gradient may be one ulp off where the reference is half an
    ulp off (as in test_masked_patch_loss). The GPU keeps the factor 2."""
    from nexus_fast import triton_kernels

    interpreted = backend == "triton" and triton_kernels.INTERPRET
    return 4.0 if interpreted and dtype == torch.bfloat16 else 2.0


def _assert_matches_head_then_loss(
    backend: str,
    features: torch.Tensor,
    weight: torch.Tensor,
    teacher: torch.Tensor,
    device: str,
    target_index: torch.Tensor | None = None,
    chunk_rows: int | None = 4,
) -> torch.Tensor:
    ours_f = features.clone().to(device).requires_grad_()
    ours_w = weight.clone().to(device).requires_grad_()
    index = None if target_index is None else target_index.to(device)
    loss = prototype_cross_entropy(
        ours_f, ours_w, teacher.to(device), 0.1, target_index=index, chunk_rows=chunk_rows,
        backend=backend,
    )  # fmt: skip
    (loss * UPSTREAM).backward()

    def head_then_loss(f, w, t):
        value = reference.prototype_cross_entropy(f, w, t, 0.1, target_index)
        (value * UPSTREAM).backward()
        return value

    exact_f = features.double().requires_grad_()
    exact_w = weight.double().requires_grad_()
    exact = head_then_loss(exact_f, exact_w, teacher.double())
    low_f, low_w = features.clone().requires_grad_(), weight.clone().requires_grad_()
    low = head_then_loss(low_f, low_w, teacher)

    assert loss.shape == () and loss.dtype == torch.float32
    assert ours_f.grad.dtype == features.dtype and ours_w.grad.dtype == weight.dtype
    assert_within_reference_error(loss.cpu(), low, exact, floor=1e-6, msg="loss:")
    factor = _grad_factor(backend, features.dtype)
    for name, ours, lows, exacts in (
        ("features", ours_f, low_f, exact_f),
        ("weight", ours_w, low_w, exact_w),
    ):
        assert_within_reference_error(
            ours.grad.cpu(),
            lows.grad,
            exacts.grad,
            factor,
            floor=0.0,
            relative_floor=1e-6,
            msg=f"grad {name}:",
        )
    return loss


@pytest.mark.parametrize("chunk_rows", [4, 13, None], ids=["chunks_of_4", "one_chunk", "default"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_head_then_loss(backend: str, chunk_rows: int | None, triton_device: str) -> None:
    # 13 rows (prime) in chunks of 4: the last chunk holds one row; K = 37.
    features, weight, teacher = _problem()
    device = _device(backend, triton_device)
    _assert_matches_head_then_loss(backend, features, weight, teacher, device, None, chunk_rows)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_share_a_table_of_targets(backend: str, triton_device: str) -> None:
    # Two teacher crops and their sum (mass 2: a local crop against both globals) as one table.
    features, weight, teacher = _problem(rows=11, targets=6, seed=1)
    table = torch.cat([teacher[:3], teacher[3:], teacher[:3] + teacher[3:]])
    index = torch.tensor([3, 4, 5, 0, 1, 2, 6, 7, 8, 6, 8])
    device = _device(backend, triton_device)
    _assert_matches_head_then_loss(backend, features, weight, table, device, index)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_head_with_float32_accumulation(
    backend: str, dtype: torch.dtype, triton_device: str
) -> None:
    features, weight, teacher = _problem(rows=9, prototypes=29, seed=2)
    features, weight = features.to(dtype), weight.to(dtype)
    _assert_matches_head_then_loss(
        backend, features, weight, teacher, _device(backend, triton_device)
    )


@pytest.mark.parametrize("kind", ["uniform", "one_hot"])
@pytest.mark.parametrize("backend", FUSED)
def test_near_collapsed_teacher(backend: str, kind: str, triton_device: str) -> None:
    features, weight, _ = _problem(rows=7, prototypes=23, seed=3)
    if kind == "uniform":
        teacher = torch.full((7, 23), 1.0 / 23)
    else:
        teacher = torch.nn.functional.one_hot(torch.arange(7) * 3, 23).float() * (1 - 1e-6)
        teacher += 1e-6 / 23
    device = _device(backend, triton_device)
    _assert_matches_head_then_loss(backend, features, weight, teacher, device)


def _saved_sizes(fn) -> list[int]:
    """The element count of every tensor autograd saves for the backward while fn runs."""
    sizes: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sizes


@pytest.mark.parametrize("backend", FUSED)
def test_no_rows_by_prototypes_tensor_is_kept_for_the_backward(
    backend: str, triton_device: str
) -> None:
    rows, prototypes, width = 24, 97, 8
    features, weight, teacher = _problem(rows, prototypes, width, seed=4)
    device = _device(backend, triton_device)
    features, weight = features.to(device).requires_grad_(), weight.to(device).requires_grad_()
    teacher = teacher.to(device)

    def run(name: str) -> None:
        prototype_cross_entropy(features, weight, teacher, chunk_rows=5, backend=name)

    fused = _saved_sizes(lambda: run(backend))
    assert fused and max(fused) <= prototypes * width < rows * prototypes, fused
    # The check can fail: head-then-loss keeps the logits' size.
    assert max(_saved_sizes(lambda: run("reference"))) >= rows * prototypes


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_last_layer_and_no_grad(backend: str, triton_device: str) -> None:
    # DINOv2 freezes the last layer during the first epoch.
    device = _device(backend, triton_device)
    features, weight, teacher = (t.to(device) for t in _problem(rows=6, prototypes=19, seed=5))
    features.requires_grad_()
    prototype_cross_entropy(features, weight, teacher, backend=backend).backward()
    exact_f = features.detach().cpu().double().requires_grad_()
    reference.prototype_cross_entropy(
        exact_f, weight.cpu().double(), teacher.cpu().double()
    ).backward()
    assert weight.grad is None
    torch.testing.assert_close(features.grad.cpu().double(), exact_f.grad, atol=1e-6, rtol=1e-4)
    with torch.no_grad():
        loss = prototype_cross_entropy(features, weight, teacher, backend=backend)
    assert not loss.requires_grad


def test_autocast_runs_the_head_in_the_autocast_dtype() -> None:
    features, weight, teacher = _problem(rows=6, prototypes=11, width=8, seed=11)
    leaves = [features.clone().requires_grad_(), weight.clone().requires_grad_()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = prototype_cross_entropy(*leaves, teacher, backend="cpu")
    loss.backward()
    cast = [features.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()]
    expected = prototype_cross_entropy(*cast, teacher, backend="cpu")
    expected.backward()
    assert_close(loss.detach(), expected.detach())
    for leaf, cast_leaf in zip(leaves, cast):
        assert leaf.grad.dtype == torch.float32  # the float32 parameters get their gradient
        assert_close(leaf.grad, cast_leaf.grad.float())


def test_gradcheck_in_float64() -> None:
    features, weight, teacher = (t.double() for t in _problem(rows=5, prototypes=7, width=4))

    def fused(f, w):
        return prototype_cross_entropy(f, w, teacher, chunk_rows=2, backend="cpu")

    assert torch.autograd.gradcheck(
        fused, (features.requires_grad_(), weight.requires_grad_()), eps=1e-6, atol=1e-7
    )


def test_float64_inputs_equal_the_reference_closely() -> None:
    features, weight, teacher = (t.double() for t in _problem(rows=10, prototypes=31, seed=6))
    features[3] = 0.0  # a zero feature: F.normalize's eps branch (gradient g / eps)
    fused_f, fused_w = features.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = prototype_cross_entropy(fused_f, fused_w, teacher, chunk_rows=3, backend="cpu")
    loss.backward()
    exact_f, exact_w = features.clone().requires_grad_(), weight.clone().requires_grad_()
    exact = reference.prototype_cross_entropy(exact_f, exact_w, teacher)
    exact.backward()
    assert loss.dtype == torch.float64
    assert_close(loss.detach(), exact.detach())
    assert_close(fused_f.grad, exact_f.grad)
    assert_close(fused_w.grad, exact_w.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_gives_zero(backend: str, triton_device: str) -> None:
    device = _device(backend, triton_device)
    features = torch.zeros(0, 8, device=device, requires_grad=True)
    weight = torch.randn(5, 8, device=device, requires_grad=True)
    loss = prototype_cross_entropy(
        features, weight, torch.zeros(0, 5, device=device), backend=backend
    )
    loss.backward()
    assert loss.item() == 0.0 and features.grad.shape == (0, 8)
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_soft_cross_entropy_kernel_over_several_tiles(
    dtype: torch.dtype, triton_device: str
) -> None:
    # K = 2 * BLOCK_K + 5: the running maximum crosses tiles; the gradient overwrites the logits.
    prototypes = 2 * kernels.BLOCK_K + 5
    generator = torch.Generator().manual_seed(7)
    logits = (3 * torch.randn(4, prototypes, generator=generator)).to(dtype)
    targets = torch.softmax(torch.randn(3, prototypes, generator=generator) / 0.05, dim=-1)
    index = torch.tensor([2, 0, 1, 2])
    exact_logits = logits.double().requires_grad_()
    exact = reference.cross_entropy(exact_logits, targets.double()[index], 0.1)
    exact.sum().backward()
    low_logits = logits.float().requires_grad_()
    low = reference.cross_entropy(low_logits, targets[index], 0.1)
    low.sum().backward()
    in_place = logits.to(triton_device)
    targets = targets.to(triton_device)
    mass = targets.sum(dim=-1)
    losses = kernels.soft_cross_entropy_(
        in_place, targets, mass, index.to(triton_device), 0.1, in_place
    )
    assert_within_reference_error(losses.cpu(), low, exact, floor=1e-6, msg="loss:")
    low_grad = low_logits.grad.to(dtype) if dtype != torch.float32 else low_logits.grad
    assert_within_reference_error(in_place.cpu(), low_grad, exact_logits.grad, floor=1e-7)


def test_dispatch_reasons_name_the_obstacle() -> None:
    features, weight, teacher = _problem(rows=3, prototypes=5)
    index = torch.arange(3)
    arguments = (features.double(), weight, teacher, index, 0.1, 2)
    triton = PROTOTYPE_CROSS_ENTROPY.backend("triton")
    assert PROTOTYPE_CROSS_ENTROPY.reasons(triton, *arguments) == [
        "dtype torch.float64 is not one of float32, bfloat16, float16"
    ]
    assert PROTOTYPE_CROSS_ENTROPY.select(*arguments).name == "cpu"
    learned = teacher.clone().requires_grad_()
    arguments = (features, weight, learned, index, 0.1, 2)
    assert PROTOTYPE_CROSS_ENTROPY.select(*arguments).name == "reference"
    with pytest.raises(BackendError, match="teacher_probs requires grad"):
        prototype_cross_entropy(features, weight, learned, backend="cpu")


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"features": [1.0]}, TypeError, "features must be a Tensor, got list"),
        ({"features": torch.zeros(3, 8).long()}, TypeError, "features has dtype torch.int64"),
        ({"weight": torch.zeros(5, 7)}, ValueError, r"weight has shape \(5, 7\); .* need \(K, 8\)"),
        ({"teacher_probs": torch.zeros(3, 4)}, ValueError, r"needs \(T, 5\)"),
        ({"teacher_probs": torch.zeros(4, 5)}, ValueError, "4 rows, features 3: pass target_index"),
        ({"student_temp": -0.1}, ValueError, "student_temp must be a positive finite number"),
        ({"chunk_rows": 0}, ValueError, "chunk_rows must be a positive int or None, got 0"),
        ({"target_index": torch.zeros(3)}, TypeError, "target_index has dtype torch.float32"),
        ({"target_index": torch.zeros(2).long()}, ValueError, r"target_index has shape \(2,\)"),
        ({"target_index": torch.tensor([0, 3, 1])}, IndexError, r"target_index\[1\] = 3 is out of"),
        ({"weight": torch.zeros(5, 8, device="meta")}, ValueError, "must be on one device"),
    ],
)
def test_bad_arguments_raise_clear_errors(change: dict, error: type, message: str) -> None:
    arguments = {
        "features": torch.zeros(3, 8),
        "weight": torch.ones(5, 8),
        "teacher_probs": torch.ones(3, 5) / 5,
    }
    with pytest.raises(error, match=message):
        prototype_cross_entropy(**(arguments | change))


@pytest.mark.interpret
def test_opcheck(triton_device: str) -> None:
    features, weight, teacher = (
        t.to(triton_device) for t in _problem(rows=5, prototypes=11, width=8)
    )
    index = torch.arange(5, device=triton_device)
    for name in ("prototype_cross_entropy", "prototype_cross_entropy_triton"):
        op = getattr(torch.ops.nexus_fast, name).default
        torch.library.opcheck(
            op,
            (
                features.requires_grad_(),
                weight.requires_grad_(),
                teacher,
                index,
                0.1,
                2,
                True,
                True,
            ),
        )
        torch.library.opcheck(
            op, (features.detach().bfloat16(), weight.detach(), teacher, index, 0.1, 3, True, False)
        )
    op = torch.ops.nexus_fast.soft_cross_entropy_triton.default
    logits = torch.randn(5, 11, device=triton_device, requires_grad=True)
    mass = teacher.sum(dim=-1)
    torch.library.opcheck(op, (logits, teacher, mass, index, 0.1, True))
    torch.library.opcheck(op, (logits.detach().half(), teacher, mass, index.flip(0), 0.1, False))


@pytest.mark.parametrize("backend", [None, pytest.param("triton", marks=pytest.mark.interpret)])
def test_compiles_without_graph_breaks_with_backward(
    backend: str | None, triton_device: str
) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    device = _device(backend or "cpu", triton_device)
    features, weight, teacher = (t.to(device) for t in _problem(rows=6, prototypes=9, width=4))
    counter = CompileCounterWithBackend("aot_eager")

    def step(f, w):
        return prototype_cross_entropy(f, w, teacher, chunk_rows=4, backend=backend) * 2.0

    eager = [features.clone().requires_grad_(), weight.clone().requires_grad_()]
    compiled = [features.clone().requires_grad_(), weight.clone().requires_grad_()]
    expected = step(*eager)
    expected.backward()
    actual = torch.compile(step, backend=counter, fullgraph=True)(*compiled)
    actual.backward()
    assert counter.frame_count == 1
    assert_close(actual.detach(), expected.detach())
    for ours, theirs in zip(compiled, eager):
        assert_close(ours.grad, theirs.grad)
