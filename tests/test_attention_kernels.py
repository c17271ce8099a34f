"""The Triton flash-attention launchers against the reference (the FlashAttention rule: error at
most 2x that of the reference computed in the same dtype, against float64), forward, lse and
dq/dk/dv: dense self- and cross-attention, packed varlen (with empty sequences), strided views of
a fused qkv, key padding, causal, packed tiles. Interpreter sizes are small; the GPU sizes are in
the `gpu` tests at the end."""

import itertools

import pytest
import torch

from nexus_fast.ops.reference.attention import attention_with_lse as reference
from nexus_fast.testing import assert_within_reference_error

kernels = pytest.importorskip("nexus_fast.triton_kernels.attention")

pytestmark = pytest.mark.interpret

# Per-sequence tiles and a smaller key step: the other code paths the GPU autotuner may pick.
PER_SEQUENCE = kernels.TileConfig(64, 64, pack_tiles=False, num_warps=4, num_stages=3)
SMALL_STEP = kernels.TileConfig(32, 16, pack_tiles=True, num_warps=4, num_stages=2)


def _randn(*shape, dtype, device, generator):
    return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype).to(device)


def _inputs(q_shape, k_shape, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = _randn(*q_shape, dtype=dtype, device=device, generator=generator)
    k = _randn(*k_shape, dtype=dtype, device=device, generator=generator)
    v = _randn(*k_shape, dtype=dtype, device=device, generator=generator)
    return q, k, v


def _cu(lengths, device):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def _run(q, k, v, dout, *, cu_q=None, cu_k=None, max_q=0, max_k=0, mask=None, causal=False,
         config=None):  # fmt: skip
    """The kernels' out, lse and gradients."""
    arguments = {
        "cu_seqlens_q": cu_q,
        "cu_seqlens_k": cu_k,
        "max_seqlen_q": max_q,
        "max_seqlen_k": max_k,
        "key_padding_mask": mask,
        "scale": q.shape[-1] ** -0.5,
        "causal": causal,
        "config": config,
    }
    out, lse = kernels.attention_forward(q, k, v, **arguments)
    grads = kernels.attention_backward(dout, q, k, v, out, lse, **arguments)
    return out, lse, grads


def _reference(q, k, v, dout, compute_dtype, *, cu_q=None, cu_k=None, mask=None, causal=False):
    """Reference out, lse and (dq, dk, dv) by autograd, in compute_dtype (float64: exact)."""
    dtype = torch.float64 if compute_dtype == torch.float64 else q.dtype
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, lse = reference(
        *leaves,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        key_padding_mask=mask,
        causal=causal,
        compute_dtype=compute_dtype,
    )
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))
    return out, lse, grads


def _assert_lse(lse, low_lse, exact_lse) -> None:
    """+inf exactly where the exact lse is, the FlashAttention rule elsewhere."""
    empty = torch.isposinf(exact_lse)
    assert lse.shape == exact_lse.shape and lse.dtype == torch.float32
    assert torch.equal(torch.isposinf(lse), empty), "+inf rows"
    assert_within_reference_error(lse[~empty], low_lse[~empty], exact_lse[~empty], msg="lse")


def _check(q, k, v, *, seed=1, dout=None, config=None, **options):
    """Runs the kernels and asserts the FlashAttention rule on out, lse, dq, dk, dv; returns
    out, lse and the gradients."""
    generator = torch.Generator().manual_seed(seed)
    if dout is None:
        shape = (*q.shape[:-1], v.shape[-1])
        dout = _randn(*shape, dtype=q.dtype, device=q.device, generator=generator)
    reference_options = {n: options.get(n) for n in ("cu_q", "cu_k", "mask")}
    reference_options["causal"] = options.get("causal", False)
    out, lse, grads = _run(q, k, v, dout, config=config, **options)
    exact_out, exact_lse, exact_grads = _reference(
        q, k, v, dout, torch.float64, **reference_options
    )
    low_out, low_lse, low_grads = _reference(q, k, v, dout, q.dtype, **reference_options)
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and out.dtype == q.dtype
    assert_within_reference_error(out, low_out, exact_out, msg="out")
    _assert_lse(lse, low_lse, exact_lse)
    for name, grad, low, exact, like in zip("qkv", grads, low_grads, exact_grads, (q, k, v)):
        assert grad.shape == like.shape and grad.dtype == like.dtype, name
        assert_within_reference_error(grad, low, exact, msg=f"d{name}")
    return out, lse, grads


def _dense(batch, heads, n_q, n_k, dim, dtype, device, seed=0):
    return _inputs((batch, heads, n_q, dim), (batch, heads, n_k, dim), dtype, device, seed)


def _packed(lengths_q, lengths_k, heads, dim, dtype, device, seed=0):
    q, k, v = _inputs(
        (sum(lengths_q), heads, dim), (sum(lengths_k), heads, dim), dtype, device, seed
    )
    options = {
        "cu_q": _cu(lengths_q, device),
        "cu_k": _cu(lengths_k, device),
        "max_q": max(lengths_q, default=0),
        "max_k": max(lengths_k, default=0),
    }
    return q, k, v, options


def _exact_lse(q, k, allowed):
    """float64 log-sum-exp of the allowed scaled scores, +inf for empty rows: an oracle written
    apart from the reference."""
    scores = (q.double() @ k.double().transpose(-2, -1)) * q.shape[-1] ** -0.5
    lse = scores.masked_fill(~allowed, float("-inf")).logsumexp(-1)
    return lse.masked_fill(~allowed.any(-1), float("inf"))


DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [32, 64])
@pytest.mark.parametrize("length", [1, 7, 50, 65, 197])
def test_dense_self_attention(length, dim, dtype, triton_device) -> None:
    batch = 1 if length == 197 else 2
    q, k, v = _dense(batch, 2, length, length, dim, dtype, triton_device)
    _check(q, k, v, max_q=length, max_k=length)


@pytest.mark.parametrize("dim", [80, 96])
def test_padded_head_dims(dim, triton_device) -> None:
    q, k, v = _dense(2, 1, 50, 50, dim, torch.float16, triton_device)
    _check(q, k, v, max_q=50, max_k=50)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n_q", "n_k"), [(7, 50), (65, 13), (1, 197)])
def test_dense_cross_attention(n_q, n_k, dtype, triton_device) -> None:
    q, k, v = _dense(2, 2, n_q, n_k, 32, dtype, triton_device)
    _check(q, k, v, max_q=n_q, max_k=n_k)


@pytest.mark.parametrize(
    "config", [None, PER_SEQUENCE, SMALL_STEP], ids=["packed", "per-seq", "32x16"]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lengths", [[1, 17, 50, 3], [5, 0, 64, 9, 0]], ids=["mixed", "empty"])
def test_varlen_self_attention(lengths, dtype, config, triton_device) -> None:
    q, k, v, options = _packed(lengths, lengths, 2, 32, dtype, triton_device)
    _check(q, k, v, config=config, **options)


@pytest.mark.parametrize("config", [None, PER_SEQUENCE], ids=["packed", "per-seq"])
@pytest.mark.parametrize(
    ("lengths_q", "lengths_k"),
    [([1, 17, 50, 3], [30, 2, 7, 65]), ([4, 0, 9], [0, 6, 11])],
    ids=["mixed", "empty"],
)
def test_varlen_cross_attention(lengths_q, lengths_k, config, triton_device) -> None:
    q, k, v, options = _packed(lengths_q, lengths_k, 2, 32, torch.float32, triton_device)
    out, lse, (dq, dk, dv) = _check(q, k, v, config=config, **options)
    cu_q, cu_k = options["cu_q"].tolist(), options["cu_k"].tolist()
    for i in range(len(lengths_q)):
        rows, keys = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        if lengths_k[i] == 0:  # queries that see no key: zero rows, +inf lse, no gradient
            assert torch.equal(out[rows], torch.zeros_like(out[rows]))
            assert torch.equal(dq[rows], torch.zeros_like(dq[rows]))
            assert torch.isposinf(lse[:, rows]).all()
        if lengths_q[i] == 0:  # keys no query sees: zero gradients
            assert torch.equal(dk[keys], torch.zeros_like(dk[keys]))
            assert torch.equal(dv[keys], torch.zeros_like(dv[keys]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_views_of_a_fused_qkv(dtype, triton_device) -> None:
    generator = torch.Generator().manual_seed(0)
    batch, length, heads, dim = 2, 50, 3, 32
    qkv = _randn(batch, length, 3, heads, dim, dtype=dtype, device=triton_device,
                 generator=generator)  # fmt: skip
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, d) views
    dout = _randn(batch, length, heads, 2 * dim, dtype=dtype, device=triton_device,
                  generator=generator)[..., ::2].transpose(1, 2)  # fmt: skip
    out, _, grads = _check(q, k, v, dout=dout, max_q=length, max_k=length)
    # The outputs are (B, N, H, d) memory: the merge of the heads is a free view.
    for tensor in (out, *grads):
        assert tensor.transpose(1, 2).is_contiguous()
    packed = qkv.reshape(batch * length, 3, heads, dim)
    lengths = [length] * batch
    _, _, _, options = _packed(lengths, lengths, heads, dim, dtype, triton_device)
    packed_dout = dout.transpose(1, 2).reshape(batch * length, heads, dim)  # strided too
    packed_out, _, packed_grads = _check(
        packed[:, 0], packed[:, 1], packed[:, 2], dout=packed_dout, **options
    )
    assert torch.allclose(packed_out, out.transpose(1, 2).reshape(packed_out.shape))
    for dense_grad, packed_grad in zip(grads, packed_grads):
        assert packed_grad.is_contiguous()
        assert torch.allclose(packed_grad, dense_grad.transpose(1, 2).reshape(packed_grad.shape))


def _padding_mask(lengths, n, device):
    return torch.arange(n, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_key_padding_mask_self_attention(dtype, triton_device) -> None:
    # Sample 2 is all padding; tokens are real at the front (and one real token at the back).
    mask = _padding_mask([50, 13, 0], 50, triton_device)
    mask[1, 40] = True
    q, k, v = _dense(3, 2, 50, 50, 32, dtype, triton_device)
    generator = torch.Generator().manual_seed(1)
    dout = _randn(3, 2, 50, 32, dtype=dtype, device=triton_device, generator=generator)
    out, lse, grads = _check(q, k, v, dout=dout, mask=mask, max_q=50, max_k=50)
    padded = ~mask[:, None, :, None].expand_as(out)
    assert torch.equal(out[padded], torch.zeros_like(out[padded]))
    assert torch.equal(grads[0][padded], torch.zeros_like(grads[0][padded]))
    assert torch.equal(grads[1][padded], torch.zeros_like(grads[1][padded]))  # padded keys
    lse = lse.view(2, 3, 50)  # (H, B, N)
    assert torch.isfinite(lse[:, :2]).all(), "padded queries still have the lse of their scores"
    assert torch.isposinf(lse[:, 2]).all(), "the all-padded sample sees no key"
    # Padded query rows contribute nothing: their upstream gradient does not matter.
    _, _, changed = _run(q, k, v, dout.masked_fill(padded, 1e3), mask=mask, max_q=50, max_k=50)
    for grad, grad_changed in zip(grads, changed):
        assert torch.equal(grad, grad_changed)


def test_key_padding_mask_cross_attention(triton_device) -> None:
    # Nq != Nk: the mask marks keys only; every query row is computed.
    mask = _padding_mask([9, 30], 30, triton_device)
    q, k, v = _dense(2, 2, 7, 30, 32, torch.float32, triton_device)
    out, _, grads = _check(q, k, v, mask=mask, max_q=7, max_k=30)
    assert (out.abs().sum(-1) > 0).all()
    for grad in grads[1:]:  # dk, dv of the padded keys of sample 0
        assert torch.equal(grad[0, :, 9:], torch.zeros_like(grad[0, :, 9:]))


@pytest.mark.parametrize(
    "config", [None, PER_SEQUENCE, SMALL_STEP], ids=["packed", "per-seq", "32x16"]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_causal_dense(dtype, config, triton_device) -> None:
    q, k, v = _dense(3, 2, 65, 65, 32, dtype, triton_device)
    _check(q, k, v, causal=True, config=config, max_q=65, max_k=65)


def test_causal_with_key_padding(triton_device) -> None:
    mask = _padding_mask([7, 3, 0], 7, triton_device)
    q, k, v = _dense(3, 2, 7, 7, 32, torch.float32, triton_device)
    _check(q, k, v, causal=True, mask=mask, max_q=7, max_k=7)


@pytest.mark.parametrize(
    "config", [None, PER_SEQUENCE, SMALL_STEP], ids=["packed", "per-seq", "32x16"]
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_causal_varlen(dtype, config, triton_device) -> None:
    q, k, v, options = _packed([1, 17, 50, 0, 3], [1, 17, 50, 0, 3], 2, 32, dtype, triton_device)
    _check(q, k, v, causal=True, config=config, **options)


def test_lse_dense_with_padding_and_causal(triton_device) -> None:
    mask = _padding_mask([20, 0], 20, triton_device)
    q, k, v = _dense(2, 3, 20, 20, 32, torch.float32, triton_device)
    for causal in (False, True):
        _, lse, _ = _run(q, k, v, torch.zeros_like(q), mask=mask, causal=causal)
        allowed = mask[:, None, None, :].expand(2, 3, 20, 20)
        if causal:
            allowed = allowed & torch.ones(20, 20, dtype=torch.bool, device=q.device).tril()
        expected = _exact_lse(q, k, allowed).permute(1, 0, 2).reshape(3, 40)  # (H, B * N)
        assert torch.isposinf(lse[:, 20:]).all()
        torch.testing.assert_close(lse.double(), expected, rtol=1e-6, atol=1e-6)


def test_lse_varlen_cross_attention(triton_device) -> None:
    lengths_q, lengths_k = [3, 5, 2], [4, 0, 6]
    q, k, v, options = _packed(lengths_q, lengths_k, 2, 32, torch.float32, triton_device)
    _, lse = kernels.attention_forward(
        q, k, v,
        cu_seqlens_q=options["cu_q"], cu_seqlens_k=options["cu_k"],
        max_seqlen_q=5, max_seqlen_k=6, key_padding_mask=None, scale=32**-0.5, causal=False,
    )  # fmt: skip
    assert lse.shape == (2, 10) and lse.dtype == torch.float32
    sequence_q = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths_q))
    sequence_k = torch.repeat_interleave(torch.arange(3), torch.tensor(lengths_k))
    allowed = (sequence_q[:, None] == sequence_k[None, :]).to(q.device)  # (total_q, total_k)
    expected = _exact_lse(q.transpose(0, 1), k.transpose(0, 1), allowed)  # (H, total_q)
    assert torch.isposinf(lse[:, 3:8]).all()
    torch.testing.assert_close(lse.double(), expected, rtol=1e-6, atol=1e-6)


class _GridRecorder:
    """Stands in for a kernel: records each launch grid, then launches the kernel."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_a_tile_packs_several_short_sequences(monkeypatch, triton_device) -> None:
    forward = _GridRecorder(kernels.attention_forward_kernel)
    dkdv = _GridRecorder(kernels.attention_dkdv_kernel)
    dq = _GridRecorder(kernels.attention_dq_kernel)
    monkeypatch.setattr(kernels, "attention_forward_kernel", forward)
    monkeypatch.setattr(kernels, "attention_dkdv_kernel", dkdv)
    monkeypatch.setattr(kernels, "attention_dq_kernel", dq)
    packed = kernels.default_config(32)
    assert packed.pack_tiles and packed.block_m == packed.block_n == 64
    # Five 50-token sequences are 250 tokens: 4 tiles of 64 rows each side, not 5.
    q, k, v = _dense(5, 2, 50, 50, 32, torch.float32, triton_device)
    _check(q, k, v, config=packed, max_q=50, max_k=50)
    assert forward.grids == dq.grids == dkdv.grids == [(4, 2)]
    lengths = [3, 9, 1, 20, 7, 14]  # 54 tokens of six sequences: one tile
    q, k, v, options = _packed(lengths, lengths, 2, 32, torch.float32, triton_device)
    _check(q, k, v, config=packed, **options)
    assert forward.grids[-1] == dq.grids[-1] == dkdv.grids[-1] == (1, 2)
    _check(q, k, v, config=PER_SEQUENCE, **options)  # one tile per sequence
    assert forward.grids[-1] == dq.grids[-1] == dkdv.grids[-1] == (6, 2)


def test_empty_inputs(triton_device) -> None:
    q, k, v, options = _packed([0, 0], [0, 0], 2, 32, torch.float32, triton_device)
    out, lse, (dq, dk, dv) = _run(q, k, v, torch.zeros_like(q), **options)
    assert out.shape == (0, 2, 32) and lse.shape == (2, 0) and dk.shape == (0, 2, 32)
    # Queries without keys (Nk = 0): zero rows, +inf lse, zero dq.
    q, k, v = _dense(2, 2, 5, 0, 32, torch.float32, triton_device)
    out, lse, (dq, dk, dv) = _run(q, k, v, torch.ones_like(q), max_q=5)
    assert torch.equal(out, torch.zeros_like(q)) and torch.equal(dq, torch.zeros_like(q))
    assert torch.isposinf(lse).all() and dk.shape == (2, 2, 0, 32)
    # Keys without queries (Nq = 0): zero dk, dv.
    q, k, v = _dense(2, 2, 0, 5, 32, torch.float32, triton_device)
    out, lse, (dq, dk, dv) = _run(q, k, v, torch.ones_like(q), max_k=5)
    assert out.shape == (2, 2, 0, 32) and torch.equal(dk, torch.zeros_like(k))
    assert torch.equal(dv, torch.zeros_like(v))


# --- on the GPU (benchmarks/device_check.sh): ViT and video lengths in bfloat16 ----------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("batch", "heads", "length", "dim"),
    [(64, 12, 197, 64), (32, 16, 257, 80), (4, 12, 1568, 64)],  # ViT-B/16, ViT-H/14, video
)
def test_gpu_vit_lengths_bf16(batch, heads, length, dim) -> None:
    q, k, v = _dense(batch, heads, length, length, dim, torch.bfloat16, "cuda")
    _check(q, k, v, max_q=length, max_k=length)


@pytest.mark.gpu
def test_gpu_dinov2_crops_packed_bf16() -> None:
    lengths = [257, 257, *[50] * 8] * 16  # DINOv2: 2 global + 8 local crops per image
    q, k, v, options = _packed(lengths, lengths, 12, 64, torch.bfloat16, "cuda")
    _check(q, k, v, **options)


def _config_id(config) -> str:
    tiles = "packed" if config.pack_tiles else "per-seq"
    return f"{config.block_m}x{config.block_n}-{tiles}-w{config.num_warps}-s{config.num_stages}"


@pytest.mark.gpu
@pytest.mark.parametrize(
    "config",
    sorted(set(kernels.QUERY_TILE_CONFIGS + kernels.KEY_TILE_CONFIGS), key=_config_id),
    ids=_config_id,
)
def test_gpu_every_tuned_config_bf16(config) -> None:
    # Every configuration the autotuner may pick, in all three kernels.
    q, k, v = _dense(16, 8, 197, 197, 64, torch.bfloat16, "cuda")
    _check(q, k, v, config=config, max_q=197, max_k=197)
    q, k, v = _dense(16, 8, 197, 197, 128, torch.bfloat16, "cuda")
    mask = _padding_mask([197, 100, 0, *[150] * 13], 197, "cuda")
    _check(q, k, v, config=config, mask=mask, causal=True, max_q=197, max_k=197)


@pytest.mark.gpu
def test_gpu_cross_attention_probe_bf16() -> None:
    # An attentive probe: one query token per sample over a video's 1568 tokens.
    q, k, v = _dense(64, 16, 1, 1568, 64, torch.bfloat16, "cuda")
    _check(q, k, v, max_q=1, max_k=1568)
