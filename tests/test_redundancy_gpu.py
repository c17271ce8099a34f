"""Barlow Twins and VICReg on a GPU (run by benchmarks/device_check.sh): the Triton backend with
bf16 embeddings at the official 8192-wide projector (Gram form) and at N = D (direct form) against
the float64 reference, the torch path on CUDA, no host sync, and peak memory under one D x D
matrix."""

import pytest
import torch

from nexus_fast.ops.redundancy import barlow_twins_loss, vicreg_loss
from nexus_fast.ops.reference import redundancy as reference
from nexus_fast.testing import assert_within_reference_error

pytestmark = pytest.mark.gpu


def _views(rows: int, cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device="cuda").manual_seed(0)
    z1 = torch.randn(rows, cols, device="cuda", generator=generator) * 2 + 0.5
    z2 = z1 + torch.randn(rows, cols, device="cuda", generator=generator)
    return z1.to(dtype), z2.to(dtype)


def _loss(name: str, z1: torch.Tensor, z2: torch.Tensor, **options) -> torch.Tensor:
    if name == "barlow_twins":
        if "backend" not in options:
            return reference.barlow_twins_loss(z1, z2)
        return barlow_twins_loss(z1, z2, **options)
    if "backend" not in options:
        return reference.vicreg_loss(z1, z2)[0]
    return vicreg_loss(z1, z2, **options)[0]


def _run(name: str, z1: torch.Tensor, z2: torch.Tensor, **options) -> list[torch.Tensor]:
    z1 = z1.detach().clone().requires_grad_()
    z2 = z2.detach().clone().requires_grad_()
    loss = _loss(name, z1, z2, **options)
    loss.backward()
    return [loss.detach(), z1.grad, z2.grad]


@pytest.mark.parametrize("loss", ["barlow_twins", "vicreg"])
@pytest.mark.parametrize("rows, cols", [(256, 8192), (2048, 2048)], ids=["gram", "direct"])
def test_triton_bf16_against_float64(loss: str, rows: int, cols: int) -> None:
    z1, z2 = _views(rows, cols, torch.bfloat16)
    actual = _run(loss, z1, z2, backend="triton")
    exact = _run(loss, z1.double(), z2.double())
    low = _run(loss, z1, z2)  # the official formulation in bf16
    assert actual[0].dtype == torch.float32 and actual[1].dtype == torch.bfloat16
    for name, value, low_value, exact_value in zip(
        ("loss", "grad z1", "grad z2"), actual, low, exact
    ):
        assert_within_reference_error(
            value, low_value, exact_value, floor=0.0, relative_floor=1e-6, msg=name
        )


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("loss", ["barlow_twins", "vicreg"])
def test_float32_on_cuda_against_float64(
    loss: str, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # float32 products in float32 (the yardstick, the reference, is float32 too).
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    z1, z2 = _views(512, 1536, torch.float32)
    actual = _run(loss, z1, z2, backend=backend)
    exact = _run(loss, z1.double(), z2.double())
    low = _run(loss, z1, z2)
    for name, value, low_value, exact_value in zip(
        ("loss", "grad z1", "grad z2"), actual, low, exact
    ):
        assert_within_reference_error(
            value, low_value, exact_value, floor=0.0, relative_floor=1e-6, msg=name
        )


@pytest.mark.parametrize("method", ["gram", "direct"])
def test_no_host_sync(method: str) -> None:
    z1, z2 = (z.requires_grad_() for z in _views(256, 1024, torch.bfloat16))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = barlow_twins_loss(z1, z2, method=method, backend="triton")
        loss = loss + vicreg_loss(z1, z2, method=method, backend="triton")[0]
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("loss", ["barlow_twins", "vicreg"])
def test_peak_memory_under_one_d_by_d_matrix(loss: str) -> None:
    rows, cols = 256, 8192
    z1, z2 = (z.requires_grad_() for z in _views(rows, cols, torch.bfloat16))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    _loss(loss, z1, z2, backend="triton").backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < cols * cols * 4 // 8, f"{extra / 2**20:.0f} MiB"
