"""nexus_fast.ops.redundancy (barlow_twins_loss, vicreg_loss): every backend and both forms (Gram,
direct tiles) against the float64 D x D reference (loss, metrics and the gradients of both views)
on random and near-collapsed inputs, odd sizes, half-precision inputs, the official code, the
global batch over two gloo ranks, torch.compile, opcheck, tensor sizes, dispatch, errors.

Criterion (DESIGN.md, "Testing rules": a reduction): the FlashAttention rule of
nexus_fast.testing.assert_within_reference_error, with the reference (the official D x D
formulation) run in the input precision as the yardstick; float64 inputs are compared with the
float64 reference at the float64 tolerance. The Gram form is held to the rule where "auto" takes
it (N < D); where N >= D its subtraction may cost a few ulps more, and it is compared at a
tolerance instead. Sizes are small and odd: the Triton kernels run in the interpreter here.
"""

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from nexus_fast.ops import BackendError
from nexus_fast.ops.redundancy import (
    barlow_twins_loss,
    barlow_twins_uses_gram,
    vicreg_loss,
    vicreg_uses_gram,
)
from nexus_fast.ops.reference import redundancy as reference
from nexus_fast.testing import assert_close, assert_within_reference_error, run_distributed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from peers import redundancy as official

# The module, not the functions of the same names that it exports.
redundancy = importlib.import_module("nexus_fast.ops.redundancy")

BACKENDS = ["cpu", pytest.param("triton", marks=pytest.mark.interpret)]
LOSSES = ["barlow_twins", "vicreg"]
KINDS = ["random", "rank_deficient", "nearly_constant", "collapsed"]
# Relative allowance beside the FlashAttention factor: ~8 float32 ulps of the largest value, for
# values the low-precision reference happens to get exactly right.
FLOOR = 1e-6
UPSTREAM = 1.75  # an upstream gradient other than 1 must scale the gradients


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _views(
    rows: int, cols: int, kind: str = "random", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float64 views whose values are float32 numbers (float32 inputs carry them exactly).

    random: offset and scaled, the second view a noisy copy of the first. rank_deficient: rank 2
    plus 1e-3 noise. nearly_constant: every second feature 5 + 1e-3 noise (a variance far under
    BatchNorm's eps). collapsed: every sample nearly the same vector.
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if kind == "random":
        z1 = randn(rows, cols) * 2 + 0.5
        z2 = z1 + randn(rows, cols)
    elif kind == "rank_deficient":
        z1 = randn(rows, 2) @ randn(2, cols) + 1e-3 * randn(rows, cols)
        z2 = z1 + 1e-3 * randn(rows, cols)
    elif kind == "nearly_constant":
        z1 = randn(rows, cols)
        z1[:, ::2] = 5 + 1e-3 * randn(rows, (cols + 1) // 2)
        z2 = z1 + 0.1 * randn(rows, cols)
    elif kind == "collapsed":
        z1 = randn(1, cols) + 1e-3 * randn(rows, cols)
        z2 = z1 + 1e-4 * randn(rows, cols)
    else:
        raise ValueError(kind)
    return z1.float().double(), z2.float().double()


def _on(device: str, dtype: torch.dtype, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device, dtype) for t in tensors]


@dataclass
class Result:
    """What a loss gives: its value, its metrics (empty for Barlow Twins), both gradients."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    grad_1: torch.Tensor
    grad_2: torch.Tensor

    def named(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss, **self.metrics, "grad z1": self.grad_1, "grad z2": self.grad_2}


def _nexus(loss: str, **options) -> Callable:
    """The public loss with options, as fn(z1, z2) -> (loss, metrics)."""
    if loss == "barlow_twins":
        return lambda z1, z2: (barlow_twins_loss(z1, z2, **options), {})
    return lambda z1, z2: vicreg_loss(z1, z2, **options)


def _reference(loss: str) -> Callable:
    if loss == "barlow_twins":
        return lambda z1, z2: (reference.barlow_twins_loss(z1, z2), {})
    return reference.vicreg_loss


def _run(fn: Callable, z1: torch.Tensor, z2: torch.Tensor) -> Result:
    """fn's loss, metrics and gradients on fresh leaves (upstream gradient UPSTREAM)."""
    z1 = z1.detach().clone().requires_grad_()
    z2 = z2.detach().clone().requires_grad_()
    loss, metrics = fn(z1, z2)
    (loss * UPSTREAM).backward()
    metrics = {name: value.detach() for name, value in metrics.items()}
    return Result(loss.detach(), metrics, z1.grad, z2.grad)


def _assert_close_scaled(actual: Result, expected: Result, atol: float, label: str) -> None:
    """Every value within atol times the largest magnitude of its expected value (at least 1)."""
    expected_values = expected.named()
    assert set(actual.named()) == set(expected_values)
    for name, value in actual.named().items():
        want = expected_values[name]
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(
            value.cpu().to(want.dtype), want, atol=atol * scale, rtol=0, msg=f"{label} {name}"
        )


def _assert_matches_reference(
    loss: str, z1: torch.Tensor, z2: torch.Tensor, dtype: torch.dtype, device: str, **options
) -> None:
    """The FlashAttention rule for the loss, the metrics and both gradients of the run on (z1, z2)
    cast to dtype, against the float64 reference; the yardstick is the reference run in dtype."""
    actual = _run(_nexus(loss, **options), z1.to(device, dtype), z2.to(device, dtype))
    exact = _run(_reference(loss), z1, z2)
    low = _run(_reference(loss), z1.to(dtype), z2.to(dtype))
    assert actual.loss.shape == () and actual.loss.dtype == torch.promote_types(
        dtype, torch.float32
    )
    assert actual.grad_1.dtype == dtype and actual.grad_2.dtype == dtype
    exact_values, low_values = exact.named(), low.named()
    assert set(actual.named()) == set(exact_values)
    for name, value in actual.named().items():
        assert_within_reference_error(
            value.cpu(),
            low_values[name],
            exact_values[name],
            floor=FLOOR,
            relative_floor=FLOOR,
            msg=f"{loss} {name}:",
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["gram", "direct"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_matches_the_float64_reference(
    backend: str, loss: str, method: str, kind: str, triton_device: str
) -> None:
    # N = 17 < D = 33, where "auto" takes the Gram form.
    assert barlow_twins_uses_gram(17, 33) and vicreg_uses_gram(17, 33)
    z1, z2 = _views(17, 33, kind)
    device = _device(backend, triton_device)
    _assert_matches_reference(loss, z1, z2, torch.float32, device, method=method, backend=backend)


@pytest.mark.parametrize("kind", ["random", "nearly_constant", "collapsed"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tall_batches_take_the_direct_form(
    backend: str, loss: str, kind: str, triton_device: str
) -> None:
    # N = 150 > D = 7: "auto" takes the direct form. 150 rows are three chunks of the Triton
    # kernels' loops (64, 64, 22): their merged column moments are checked here.
    assert not barlow_twins_uses_gram(150, 7) and not vicreg_uses_gram(150, 7)
    z1, z2 = _views(150, 7, kind)
    device = _device(backend, triton_device)
    _assert_matches_reference(loss, z1, z2, torch.float32, device, backend=backend)
    # The Gram form, forced where its subtraction is not benign, still holds 1e-5.
    gram = _run(_nexus(loss, method="gram", backend=backend), *_on(device, torch.float32, z1, z2))
    exact = _run(_reference(loss), z1, z2)
    _assert_close_scaled(gram, exact, 1e-5, f"{loss} gram N > D")


@pytest.mark.parametrize("method", ["gram", "direct"])
@pytest.mark.parametrize("loss", LOSSES)
def test_float64_equals_the_reference_at_odd_sizes(loss: str, method: str) -> None:
    for rows, cols in ((2, 1), (2, 5), (3, 33), (17, 5), (17, 1), (3, 2)):
        for kind in ("random", "collapsed"):
            z1, z2 = _views(rows, cols, kind, seed=rows * cols)
            actual = _run(_nexus(loss, method=method, backend="cpu"), z1, z2)
            exact = _run(_reference(loss), z1, z2)
            assert actual.loss.dtype == torch.float64
            _assert_close_scaled(actual, exact, 1e-12, f"{loss} {method} {rows}x{cols} {kind}")


@pytest.mark.parametrize("method", ["gram", "direct"])
@pytest.mark.parametrize("loss", LOSSES)
def test_gradcheck(loss: str, method: str) -> None:
    z1, z2 = (z.requires_grad_() for z in _views(4, 3))
    fn = _nexus(loss, method=method, backend="cpu")
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b)[0], (z1, z2))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gram_and_direct_agree_over_several_tiles(
    backend: str, loss: str, triton_device: str
) -> None:
    # D = 1100: the direct form runs three tiles (512, 512 and 76 columns).
    z1, z2 = _views(9, 1100)
    inputs = _on(_device(backend, triton_device), torch.float32, z1, z2)
    exact = _run(_reference(loss), z1, z2)
    for method in ("gram", "direct"):
        actual = _run(_nexus(loss, method=method, backend=backend), *inputs)
        _assert_close_scaled(actual, exact, 1e-5, f"{loss} {method}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_inputs_accumulate_in_float32(
    backend: str, loss: str, dtype: torch.dtype, triton_device: str
) -> None:
    z1, z2 = (z.to(dtype).double() for z in _views(12, 40))  # values the half dtype holds
    device = _device(backend, triton_device)
    _assert_matches_reference(loss, z1, z2, dtype, device, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_views(backend: str, triton_device: str) -> None:
    device = _device(backend, triton_device)
    z1, z2 = _on(device, torch.float32, *_views(11, 20))
    column_major = z1.T.contiguous().T
    canvas = torch.zeros(11, 45, device=device)
    canvas[:, 3:43:2] = z2
    strided = canvas[:, 3:43:2]
    assert not column_major.is_contiguous() and not strided.is_contiguous()
    for loss in LOSSES:
        for method in ("gram", "direct"):
            fn = _nexus(loss, method=method, backend=backend)
            actual, expected = _run(fn, column_major, strided), _run(fn, z1, z2)
            _assert_close_scaled(actual, expected, 1e-6, f"{loss} {method}")


@pytest.mark.parametrize("kind", ["random", "collapsed"])
def test_equals_the_official_code(kind: str) -> None:
    """benchmarks/peers/redundancy.py restates facebookresearch/barlowtwins main.py and
    facebookresearch/vicreg main_vicreg.py; same inputs (float64), same losses and gradients."""
    z1, z2 = _views(16, 24, kind)
    official_barlow_twins = official.BarlowTwinsLoss(24, batch_size=16).double()
    expected_barlow_twins = _run(lambda a, b: (official_barlow_twins(a, b), {}), z1, z2)
    expected_vicreg = _run(lambda a, b: (official.vicreg_loss(a, b), {}), z1, z2)
    for method in ("gram", "direct"):
        actual = _run(_nexus("barlow_twins", method=method), z1, z2)
        _assert_close_scaled(actual, expected_barlow_twins, 1e-12, f"barlow twins {method}")
        actual = _run(_nexus("vicreg", method=method), z1, z2)
        actual.metrics = {}
        _assert_close_scaled(actual, expected_vicreg, 1e-12, f"vicreg {method}")


# --- the global batch over two ranks -------------------------------------------------------------

WORLD_SIZE = 2
SIM_COEFF = 25.0
GATHER_CASES = {
    "barlow_twins gram": lambda a, b, gather: (
        barlow_twins_loss(a, b, method="gram", gather=gather),
        {},
    ),
    "barlow_twins direct": lambda a, b, gather: (
        barlow_twins_loss(a, b, method="direct", gather=gather),
        {},
    ),
    "vicreg": lambda a, b, gather: vicreg_loss(a, b, sim_coeff=SIM_COEFF, gather=gather),
}


def _gather_worker(rank: int, world_size: int, z1: torch.Tensor, z2: torch.Tensor) -> dict:
    """Each rank's Result (as a dict: torch.load reads plain containers) with gather=True."""
    rows = z1.shape[0] // world_size
    own = slice(rank * rows, (rank + 1) * rows)
    return {
        name: vars(_run(lambda a, b, fn=fn: fn(a, b, True), z1[own], z2[own]))
        for name, fn in GATHER_CASES.items()
    }


def test_gather_gives_the_global_batch_loss_and_gradients() -> None:
    """With gather=True each rank computes the loss of the concatenated batch, and the gradient
    of its own rows is world_size times the single-process gradient of those rows (gather_batch's
    backward sums every rank's gradient for them); DDP's averaging over ranks then gives exactly
    the single-process gradient. VICReg's invariance term is local, as in the official code: a
    rank's loss differs from the single-process loss by sim_coeff * (its invariance - the global
    one), and the ranks' mean loss is the single-process loss."""
    z1, z2 = _views(2 * 5, 12)  # 5 rows per rank, N = 10 < D = 12
    ranks = run_distributed(_gather_worker, WORLD_SIZE, z1, z2)
    rows = z1.shape[0] // WORLD_SIZE
    for name, fn in GATHER_CASES.items():
        single = _run(lambda a, b, fn=fn: fn(a, b, False), z1, z2)
        for rank, results in enumerate(ranks):
            result = Result(**results[name])
            own = slice(rank * rows, (rank + 1) * rows)
            expected_loss = single.loss
            if name == "vicreg":
                local = result.metrics["invariance"] - single.metrics["invariance"]
                expected_loss = single.loss + SIM_COEFF * local
                for metric in ("variance", "covariance", "std"):
                    assert_close(result.metrics[metric], single.metrics[metric], msg=metric)
            assert_close(result.loss, expected_loss, msg=f"{name} rank {rank} loss")
            assert_close(result.grad_1 / WORLD_SIZE, single.grad_1[own], msg=f"{name} grad z1")
            assert_close(result.grad_2 / WORLD_SIZE, single.grad_2[own], msg=f"{name} grad z2")
        mean_loss = sum(results[name]["loss"] for results in ranks) / WORLD_SIZE
        assert_close(mean_loss, single.loss, msg=f"{name} mean loss over ranks")


# --- compile, registered ops, sizes, dispatch, errors ---------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiles_fullgraph(backend: str, triton_device: str) -> None:
    def both(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict]:
        vicreg, metrics = vicreg_loss(z1, z2, backend=backend)
        return barlow_twins_loss(z1, z2, backend=backend) + vicreg, metrics

    torch._dynamo.reset()
    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    inputs = _on(_device(backend, triton_device), torch.float32, *_views(6, 10))
    _assert_close_scaled(_run(compiled, *inputs), _run(both, *inputs), 1e-6, "compiled")


@pytest.mark.parametrize("loss", LOSSES)
def test_no_d_by_d_tensor_is_made(loss: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every matrix product of both forms, forward and gradient, has fewer than D x D entries:
    the Gram form (N x N) and the direct form (D x 512 tiles) at N = 24, D = 1100."""
    shapes = []
    matmul = redundancy._matmul

    def recording_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        product = matmul(a, b)
        shapes.append(tuple(product.shape))
        return product

    monkeypatch.setattr(redundancy, "_matmul", recording_matmul)
    z1, z2 = _on("cpu", torch.float32, *_views(24, 1100))
    for method in ("gram", "direct"):
        shapes.clear()
        _run(_nexus(loss, method=method, backend="cpu"), z1, z2)
        assert all(rows * cols < 1100 * 1100 for rows, cols in shapes), shapes
        if method == "gram":
            assert (24, 24) in shapes
        else:
            assert (1100, 512) in shapes and (1100, 76) in shapes


def test_auto_rule() -> None:
    # Barlow Twins: Gram when 8 N^2 D < 6 N D^2, i.e. 4 N < 3 D.
    assert barlow_twins_uses_gram(256, 8192) and barlow_twins_uses_gram(2048, 8192)
    assert barlow_twins_uses_gram(767, 1024) and not barlow_twins_uses_gram(768, 1024)
    assert not barlow_twins_uses_gram(2048, 2048)
    # VICReg: Gram when N < D.
    assert vicreg_uses_gram(2047, 2048) and not vicreg_uses_gram(2048, 2048)


def test_no_gradient_work_without_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    backward = redundancy.TORCH_PASSES.backward
    passes = redundancy.TORCH_PASSES.__class__(
        redundancy.TORCH_PASSES.matmul_dtype,
        redundancy.TORCH_PASSES.standardize,
        redundancy.TORCH_PASSES.center,
        lambda *args: calls.append(1) or backward(*args),
    )
    monkeypatch.setattr(redundancy, "TORCH_PASSES", passes)
    z1, z2 = (z.float().requires_grad_() for z in _views(6, 10))
    with torch.no_grad():
        loss = barlow_twins_loss(z1, z2, backend="cpu")
        vicreg, _ = vicreg_loss(z1, z2, backend="cpu")
    assert not calls and not loss.requires_grad and not vicreg.requires_grad
    assert_close(loss, reference.barlow_twins_loss(z1, z2).detach())
    loss, _, grad_2 = torch.ops.nexus_fast.barlow_twins_loss(z1, z2, 0.0051, 1e-5, True, False)
    assert grad_2.numel() == 0
    barlow_twins_loss(z1, z2, backend="cpu").backward()
    assert len(calls) == 2  # one per view, when a gradient is wanted


def test_second_derivatives_raise() -> None:
    z1, z2 = (z.requires_grad_() for z in _views(5, 8))
    loss = barlow_twins_loss(z1, z2, backend="cpu")
    with pytest.raises(RuntimeError, match="second derivatives are not supported"):
        torch.autograd.grad(loss, z1, create_graph=True)


def test_metrics_are_detached_and_std_tracks_collapse() -> None:
    spread, _ = _views(32, 16, "random")
    collapsed, _ = _views(32, 16, "collapsed")
    _, metrics = vicreg_loss(spread.requires_grad_(), spread + 0.1)
    _, collapsed_metrics = vicreg_loss(collapsed, collapsed + 0.1)
    assert all(not value.requires_grad for value in metrics.values())
    assert metrics["std"] > 1.0 and collapsed_metrics["std"] < 0.05
    assert collapsed_metrics["variance"] > 0.9  # relu(1 - std) is nearly 1 per feature


def test_dispatch_takes_the_torch_path_on_cpu() -> None:
    z1, z2 = _on("cpu", torch.float32, *_views(4, 6))
    arguments = (z1, z2, 0.0051, True)
    assert redundancy.BARLOW_TWINS_LOSS.select(*arguments).name == "cpu"
    vicreg_arguments = (z1, z2, 25.0, 1.0, 1e-4, True)
    assert redundancy.VICREG_LOSS.select(*vicreg_arguments).name == "cpu"
    with pytest.raises(BackendError, match=r"dtype torch\.float64 is not one of"):
        barlow_twins_loss(z1.double(), z2.double(), backend="triton")


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda z: barlow_twins_loss(z, z.numpy()), TypeError, "z2 must be a Tensor"),
        (lambda z: barlow_twins_loss(z.long(), z.long()), TypeError, "floating dtype"),
        (lambda z: barlow_twins_loss(z[0], z[0]), ValueError, r"must be \(N, D\)"),
        (lambda z: barlow_twins_loss(z, z[:, :3]), ValueError, "must have one shape"),
        (lambda z: barlow_twins_loss(z, z.double()), ValueError, "share dtype and device"),
        (lambda z: barlow_twins_loss(z[:1], z[:1]), ValueError, "global batch of at least 2"),
        (lambda z: vicreg_loss(z[:1], z[:1], gather=True), ValueError, "1 per rank x 1 ranks"),
        (lambda z: barlow_twins_loss(z[:, :0], z[:, :0]), ValueError, "no feature"),
        (lambda z: barlow_twins_loss(z, z, method="dense"), ValueError, "auto, gram, direct"),
        (lambda z: barlow_twins_loss(z, z, float("nan")), ValueError, "lambd must be a finite"),
        (lambda z: barlow_twins_loss(z, z, "0.1"), TypeError, "lambd must be a real number"),
        (lambda z: barlow_twins_loss(z, z, gather=1), TypeError, "gather must be a bool"),
        (lambda z: vicreg_loss(z, z, eps=0.0), ValueError, "eps must be a positive finite"),
        (lambda z: vicreg_loss(z, z, sim_coeff=float("inf")), ValueError, "sim_coeff"),
        (lambda z: vicreg_loss(z, z, cov_coeff=True), TypeError, "cov_coeff"),
        (lambda z: barlow_twins_loss(z, z, backend="cuda"), ValueError, "unknown backend"),
    ],
)
def test_errors_name_the_value_and_what_is_allowed(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call(torch.randn(4, 5))
