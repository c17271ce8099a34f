"""The feature-regression kernels on a GPU (run by benchmarks/device_check.sh): bf16 at I-JEPA
ViT-H and data2vec 2.0 ViT-B shapes against the float64 formulations, and no host sync."""

import pytest
import torch

import nexus_fast as nf
from nexus_fast.ops.reference import regression as reference

pytestmark = pytest.mark.gpu


def test_jepa_loss_at_vit_h_shapes() -> None:
    generator = torch.Generator(device="cuda").manual_seed(0)
    teacher = torch.randn(64, 256, 1280, device="cuda", generator=generator).bfloat16()
    pred = (
        torch.randn(64, 176, 1280, device="cuda", generator=generator).bfloat16().requires_grad_()
    )
    ids = torch.randint(0, 256, (64, 176), device="cuda", generator=generator)
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = nf.ops.jepa_loss(pred, teacher, ids, backend="triton")
        (grad,) = torch.autograd.grad(value, pred)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    exact_pred = pred.detach().double().requires_grad_()
    exact = reference.jepa_loss(exact_pred, teacher.double(), ids)
    (exact_grad,) = torch.autograd.grad(exact, exact_pred)
    torch.testing.assert_close(value.double(), exact, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=2e-2, atol=1e-9)


def test_data2vec_targets_and_loss_at_vit_b_shapes() -> None:
    generator = torch.Generator(device="cuda").manual_seed(1)
    layers = [
        torch.randn(16, 196, 768, device="cuda", generator=generator).bfloat16() for _ in range(10)
    ]
    targets = nf.ops.data2vec_targets(layers, backend="triton")
    expected = reference.data2vec_targets([layer.double() for layer in layers])
    torch.testing.assert_close(targets, expected.float(), rtol=1e-3, atol=1e-3)
    pred = (
        torch.randn(16 * 8, 196, 768, device="cuda", generator=generator)
        .bfloat16()
        .requires_grad_()
    )
    mask = torch.rand(16 * 8, 196, device="cuda", generator=generator) < 0.8
    value = nf.ops.data2vec_loss(pred, targets, mask, 8, backend="triton")
    exact = reference.data2vec_loss(pred.double(), targets.double(), mask, 8)
    torch.testing.assert_close(value.double(), exact, rtol=1e-3, atol=1e-5)
