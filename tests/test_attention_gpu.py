"""nexus_fast.ops.attention on a GPU (run by benchmarks/device_check.sh): dispatch, bf16 at ViT
lengths against float64 with the FlashAttention rule, packed batches without host syncs."""

import pytest
import torch

import nexus_fast as nf
from nexus_fast.ops.reference.attention import attention as reference
from nexus_fast.testing import assert_within_reference_error

pytestmark = pytest.mark.gpu


def _qkv(shape, dtype=torch.bfloat16, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return [
        torch.randn(shape, device="cuda", generator=generator).to(dtype).requires_grad_()
        for _ in range(3)
    ]


def test_triton_is_chosen_for_cuda_tensors() -> None:
    q, k, v = _qkv((2, 4, 197, 64))
    chosen = nf.ops.OPERATORS["attention"].select(q, k, v, None, None, 197, 197, None, 0.125, False)
    assert chosen.name == "triton"


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("length", [50, 197, 257, 1568])
def test_bf16_at_vit_lengths(backend: str, length: int) -> None:
    q, k, v = _qkv((2, 6, length, 64), seed=length)
    out = nf.ops.attention(q, k, v, backend=backend)
    exact = reference(q.double(), k.double(), v.double())
    naive = reference(q, k, v, compute_dtype=torch.bfloat16)
    assert_within_reference_error(out, naive, exact, msg=f"{backend} N={length}")
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    exact_grads = torch.autograd.grad(reference(*exact_inputs).sum(), exact_inputs)
    naive_inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    naive_out = reference(*naive_inputs, compute_dtype=torch.bfloat16)
    naive_grads = torch.autograd.grad(naive_out.float().sum(), naive_inputs)
    for actual, low, high in zip(grads, naive_grads, exact_grads):
        assert_within_reference_error(actual, low, high, floor=1e-4)


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_packed_dinov2_mix_without_host_sync(backend: str) -> None:
    lengths = [257, 257] + [50] * 8
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32).cuda()
    q, k, v = _qkv((sum(lengths), 6, 64))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = nf.ops.attention(q, k, v, cu_seqlens=cu, max_seqlen=257, backend=backend)
        torch.autograd.grad(out.float().sum(), (q, k, v))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    exact = reference(q.double(), k.double(), v.double(), cu_seqlens_q=cu, cu_seqlens_k=cu)
    naive = reference(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, compute_dtype=torch.bfloat16)
    assert_within_reference_error(out, naive, exact)
