"""The DINO-family Triton kernels on a GPU at DINOv2's sizes (run by benchmarks/device_check.sh):
Sinkhorn-Knopp, the fused prototype head + loss and dino_loss with bf16 inputs against float64,
under the FlashAttention rule (a GPU rounds bf16 to nearest even: factor 2 throughout)."""

import pytest
import torch

from nexus_fast.ops.dino import dino_loss
from nexus_fast.ops.prototype_loss import prototype_cross_entropy
from nexus_fast.ops.reference import dino as reference
from nexus_fast.ops.sinkhorn import sinkhorn_knopp
from nexus_fast.testing import assert_within_reference_error

pytestmark = pytest.mark.gpu


def _cosines(rows: int, prototypes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    features = torch.randn(rows, 256, device="cuda", generator=generator)
    weight = torch.randn(prototypes, 256, device="cuda", generator=generator)
    return reference.prototype_logits(features, weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_sinkhorn_at_ibot_scale(dtype: torch.dtype) -> None:
    logits = _cosines(4096, 65536).to(dtype)
    probs = sinkhorn_knopp(logits, 0.05, 3, backend="triton")
    exact = reference.sinkhorn_knopp(logits.double(), 0.05, 3)
    low = reference.sinkhorn_knopp(logits, 0.05, 3)
    assert probs.dtype == torch.float32 and probs.shape == logits.shape
    # ex2.approx on the GPU against expf in DINOv2's form: allow a part per million of the
    # largest probability beside the factor 2.
    assert_within_reference_error(probs, low, exact, floor=0.0, relative_floor=1e-6)


def test_prototype_head_and_loss_bf16() -> None:
    generator = torch.Generator(device="cuda").manual_seed(1)
    features = torch.randn(1024, 256, device="cuda", generator=generator).bfloat16()
    weight = torch.randn(65536, 256, device="cuda", generator=generator).bfloat16()
    teacher = torch.softmax(_cosines(1024, 65536, seed=2) / 0.04, dim=-1)

    def run(f, w, t, backend=None):
        f, w = f.clone().requires_grad_(), w.clone().requires_grad_()
        if backend is None:
            loss = reference.prototype_cross_entropy(f, w, t, 0.1)
        else:
            loss = prototype_cross_entropy(f, w, t, 0.1, chunk_rows=300, backend=backend)
        loss.backward()
        return loss, f.grad, w.grad

    ours = run(features, weight, teacher, "triton")
    exact = run(features.double(), weight.double(), teacher.double())
    low = run(features, weight, teacher)
    for name, o, lo, ex in zip(("loss", "grad features", "grad weight"), ours, low, exact):
        assert_within_reference_error(o, lo, ex, floor=0.0, relative_floor=1e-6, msg=f"{name}:")


def test_dino_loss_bf16_logits() -> None:
    generator = torch.Generator(device="cuda").manual_seed(3)
    students = [
        torch.randn(64, 65536, device="cuda", generator=generator).bfloat16() for _ in range(10)
    ]
    teachers = [torch.softmax(_cosines(64, 65536, seed=s) / 0.04, dim=-1) for s in (4, 5)]

    def run(crops, teacher_probs, backend):
        crops = [c.clone().requires_grad_() for c in crops]
        loss = dino_loss(crops, teacher_probs, backend=backend)
        loss.backward()
        return loss, crops[0].grad, crops[-1].grad

    ours = run(students, teachers, "triton")
    exact = run([s.double() for s in students], [t.double() for t in teachers], "reference")
    low = run(students, teachers, "reference")
    for name, o, lo, ex in zip(("loss", "grad global", "grad local"), ours, low, exact):
        assert_within_reference_error(o, lo, ex, floor=0.0, relative_floor=1e-6, msg=name)
