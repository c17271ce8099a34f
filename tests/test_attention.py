"""nexus_fast.ops.attention: every backend against a float64 reference with the FlashAttention
rule (forward and gradients of q, k, v), dense, packed varlen and cross-attention, strided views
of a fused qkv, the padding-mask and causal semantics, argument errors, dispatch, compile."""

import pytest
import torch

import nexus_fast as nf
from nexus_fast.ops import BackendError
from nexus_fast.ops.attention import pad_packed, unpad
from nexus_fast.ops.reference.attention import attention as reference
from nexus_fast.testing import assert_within_reference_error

CPU_BACKENDS = ["sdpa", "reference"]
TRITON = pytest.param("triton", marks=pytest.mark.interpret)


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _random(shape, dtype, device, generator, requires_grad=True):
    value = torch.randn(shape, generator=generator).to(dtype).to(device)
    return value.requires_grad_(requires_grad)


def _check_against_float64(backend, q, k, v, **options) -> None:
    """Output and every gradient within 2x the error of the naive computation in q's dtype."""
    out = nf.ops.attention(q, k, v, backend=backend, **options)
    generator = torch.Generator().manual_seed(99)
    weights = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
    grads = torch.autograd.grad((out * weights).float().sum(), (q, k, v))
    reference_options = {
        key.replace("cu_seqlens", "cu_seqlens_q") if key == "cu_seqlens" else key: value
        for key, value in options.items()
        if key not in ("max_seqlen", "max_seqlen_q", "max_seqlen_k")
    }
    if "cu_seqlens" in options:
        reference_options["cu_seqlens_k"] = options["cu_seqlens"]
    exact_inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    exact = reference(*exact_inputs, **reference_options)
    exact_grads = torch.autograd.grad((exact * weights.double()).sum(), exact_inputs)
    naive_inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    naive = reference(*naive_inputs, compute_dtype=q.dtype, **reference_options)
    naive_grads = torch.autograd.grad((naive * weights).float().sum(), naive_inputs)
    assert_within_reference_error(out, naive, exact, msg=f"{backend} output")
    for name, actual, low, high in zip("qkv", grads, naive_grads, exact_grads):
        assert_within_reference_error(actual, low, high, floor=1e-5, msg=f"{backend} d{name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    ("n_q", "n_k", "dim"), [(1, 1, 32), (7, 7, 64), (50, 50, 64), (65, 65, 32), (7, 50, 64)]
)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dense_matches_float64(backend, n_q, n_k, dim, dtype) -> None:
    generator = torch.Generator().manual_seed(n_q * 100 + n_k)
    q = _random((2, 3, n_q, dim), dtype, "cpu", generator)
    k, v = (_random((2, 3, n_k, dim), dtype, "cpu", generator) for _ in range(2))
    _check_against_float64(backend, q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize(("n_q", "n_k", "dim"), [(7, 7, 32), (50, 50, 64), (9, 65, 32)])
def test_triton_dense_matches_float64(n_q, n_k, dim, dtype, triton_device) -> None:
    pytest.importorskip("nexus_fast.triton_kernels.attention")
    generator = torch.Generator().manual_seed(n_q + n_k)
    q = _random((2, 2, n_q, dim), dtype, triton_device, generator)
    k, v = (_random((2, 2, n_k, dim), dtype, triton_device, generator) for _ in range(2))
    _check_against_float64("triton", q, k, v)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, TRITON])
def test_packed_varlen_self_attention(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(5)
    lengths = [1, 17, 50, 3]
    cu = torch.tensor([0, 1, 18, 68, 71], dtype=torch.int32, device=device)
    q, k, v = (_random((sum(lengths), 2, 32), torch.float32, device, generator) for _ in range(3))
    _check_against_float64(backend, q, k, v, cu_seqlens=cu, max_seqlen=50)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, TRITON])
def test_packed_varlen_cross_attention(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(6)
    cu_q = torch.tensor([0, 4, 4, 13], dtype=torch.int32, device=device)  # an empty query set
    cu_k = torch.tensor([0, 20, 23, 24], dtype=torch.int32, device=device)
    q = _random((13, 2, 32), torch.float32, device, generator)
    k, v = (_random((24, 2, 32), torch.float32, device, generator) for _ in range(2))
    out = nf.ops.attention(
        q,
        k,
        v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=9,
        max_seqlen_k=20,
        backend=backend,
    )
    expected = reference(q.double(), k.double(), v.double(), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, TRITON])
def test_strided_views_of_a_fused_qkv(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(7)
    qkv = _random((2, 13, 3, 2, 32), torch.float32, device, generator)  # (B, N, 3, H, d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) views, no copies
    assert not q.is_contiguous()
    out = nf.ops.attention(q, k, v, backend=backend)
    expected = reference(q.detach(), k.detach(), v.detach())
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=2e-5)
    merged = out.transpose(1, 2).reshape(2, 13, 64)  # the ViT block's next step
    (grad,) = torch.autograd.grad(merged.sum(), qkv)
    assert grad.shape == qkv.shape and torch.isfinite(grad).all()


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, TRITON])
def test_key_padding_mask_semantics(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(8)
    q, k, v = (_random((3, 2, 9, 32), torch.float32, device, generator) for _ in range(3))
    mask = torch.ones(3, 9, dtype=torch.bool, device=device)
    mask[0, 5:] = False  # a padded sample
    mask[2] = False  # an entirely padded sample
    out = nf.ops.attention(q, k, v, key_padding_mask=mask, backend=backend)
    assert torch.isfinite(out).all(), "no NaN, even for a sample without real keys"
    assert torch.equal(out[0, :, 5:], torch.zeros_like(out[0, :, 5:])), "padded query rows are zero"
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    # Padded keys get zero weight: changing their values changes nothing.
    with torch.no_grad():
        k_changed, v_changed = k.clone(), v.clone()
        k_changed[0, :, 5:] += 100.0
        v_changed[0, :, 5:] -= 100.0
    moved = nf.ops.attention(q, k_changed, v_changed, key_padding_mask=mask, backend=backend)
    torch.testing.assert_close(moved, out, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    for grad in grads:
        assert torch.equal(grad[0, :, 5:], torch.zeros_like(grad[0, :, 5:])), (
            "padded rows: no gradient"
        )
        assert torch.equal(grad[2], torch.zeros_like(grad[2]))
    _check_against_float64(backend, q, k, v, key_padding_mask=mask)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, TRITON])
def test_causal_dense_and_packed(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(9)
    q, k, v = (_random((2, 2, 11, 32), torch.float32, device, generator) for _ in range(3))
    _check_against_float64(backend, q, k, v, causal=True)
    cu = torch.tensor([0, 5, 16], dtype=torch.int32, device=device)
    qp, kp, vp = (_random((16, 2, 32), torch.float32, device, generator) for _ in range(3))
    _check_against_float64(backend, qp, kp, vp, cu_seqlens=cu, max_seqlen=11, causal=True)


def test_pad_and_unpad_are_inverse() -> None:
    cu = torch.tensor([0, 3, 3, 10], dtype=torch.int32)
    packed = torch.randn(10, 2, 4)
    padded, valid = pad_packed(packed, cu, 7)
    assert padded.shape == (3, 2, 7, 4) and valid.sum() == 10
    assert torch.equal(padded[1], torch.zeros(2, 7, 4)), "the empty sequence is all padding"
    assert torch.equal(unpad(padded, cu, 10), packed)


def _attend(**overrides):
    arguments = {
        "q": torch.zeros(2, 3, 5, 8),
        "k": torch.zeros(2, 3, 6, 8),
        "v": torch.zeros(2, 3, 6, 8),
    }
    arguments.update(overrides)
    return lambda: nf.ops.attention(**arguments)


CU = torch.tensor([0, 2, 5], dtype=torch.int32)


def _packed(**overrides):
    packed = torch.zeros(5, 3, 8)
    return _attend(q=packed, k=packed, v=packed, **overrides)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (_attend(k=torch.zeros(2, 4, 6, 8)), ValueError, "batch and heads must match"),
        (_attend(k=torch.zeros(2, 3, 6, 4)), ValueError, "head dims differ: 8 and 4"),
        (_attend(v=torch.zeros(2, 3, 6, 8).half()), ValueError, "must share dtype"),
        (_attend(q=torch.zeros(2, 3, 5, 8).long()), TypeError, "floating Tensor"),
        (_attend(causal=True), ValueError, "causal attention needs Nq == Nk, got 5 and 6"),
        (
            _attend(key_padding_mask=torch.ones(2, 5, dtype=torch.bool)),
            ValueError,
            r"bool \(B, Nk\) = \(2, 6\)",
        ),
        (_packed(cu_seqlens=torch.tensor([0, 3, 2])), ValueError, "must rise from 0"),
        (_packed(cu_seqlens=torch.tensor([0, 2, 4])), ValueError, "to the 5 packed tokens"),
        (_packed(cu_seqlens=CU, cu_seqlens_q=CU), ValueError, "not both"),
        (_packed(cu_seqlens_q=CU), ValueError, "needs both cu_seqlens_q and cu_seqlens_k"),
        (
            _packed(cu_seqlens=CU, key_padding_mask=torch.ones(2, 3).bool()),
            ValueError,
            "packed inputs have no padding",
        ),
        (
            _packed(cu_seqlens_q=CU, cu_seqlens_k=CU.clone(), causal=True),
            ValueError,
            "pass cu_seqlens",
        ),
        (_packed(), ValueError, r"expected \(B, H, N, d\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_dispatch_on_cpu_and_forced_backends() -> None:
    q = torch.zeros(1, 1, 4, 32)
    chosen = nf.ops.OPERATORS["attention"].select(q, q, q, None, None, 4, 4, None, 1.0, False)
    assert chosen.name == "sdpa", "on the CPU the interpreted Triton kernel is not chosen unforced"
    with pytest.raises(BackendError, match="xformers"):
        nf.ops.attention(q, q, q, backend="xformers")
    with pytest.raises(BackendError, match=r"dtype torch\.float64"):
        nf.ops.attention(q.double(), q.double(), q.double(), backend="triton")


@pytest.mark.parametrize("backend", ["sdpa", "reference", TRITON])
def test_compiles_with_gradients(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(10)
    qkv = _random((2, 9, 3, 2, 32), torch.float32, device, generator)
    mask = torch.ones(2, 9, dtype=torch.bool, device=device)
    mask[1, 6:] = False

    def block(qkv):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = nf.ops.attention(q, k, v, key_padding_mask=mask, backend=backend)
        return out.transpose(1, 2).reshape(2, 9, 64).square().sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(qkv), qkv)
    (expected,) = torch.autograd.grad(block(qkv), qkv)
    torch.testing.assert_close(grad, expected, atol=1e-5, rtol=1e-5)


def test_packed_sdpa_compiles_without_host_syncs() -> None:
    generator = torch.Generator().manual_seed(11)
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    packed = _random((10, 2, 32), torch.float32, "cpu", generator)

    def step(packed):
        return nf.ops.attention(
            packed, packed, packed, cu_seqlens=cu, max_seqlen=7, backend="sdpa"
        ).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(packed), step(packed))
