"""gather_tokens and scatter_tokens: every backend against the reference and the official MAE
unshuffle, gradients (to tokens and to the mask token), broadcasting, strides, index safety."""

import pytest
import torch

import nexus_fast as nf
from nexus_fast.ops.reference import patches as reference
from nexus_fast.testing import assert_close

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
DTYPES = [torch.float32, torch.bfloat16]


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _official_unshuffle(x: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor):
    """facebookresearch/mae models_mae.py forward_decoder, without the cls token."""
    mask_tokens = mask_token.repeat(x.shape[0], ids_restore.shape[1] - x.shape[1], 1)
    x_ = torch.cat([x, mask_tokens], dim=1)
    return torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))


def _restore_ids(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(batch, length, generator=generator)
    return torch.argsort(torch.argsort(noise, dim=1), dim=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("batch", "kept", "length", "dim"), [(3, 5, 17, 7), (2, 0, 4, 8), (1, 6, 6, 33)]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_tokens_is_the_official_unshuffle(
    backend, batch, kept, length, dim, dtype, triton_device
) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(1)
    tokens = (
        torch.randn(batch, kept, dim, generator=generator).to(dtype).to(device).requires_grad_()
    )
    mask_token = torch.randn(1, 1, dim, generator=generator).to(dtype).to(device).requires_grad_()
    ids_restore = _restore_ids(batch, length, generator).to(device)
    out = nf.ops.scatter_tokens(tokens, ids_restore, mask_token, backend=backend)
    expected = _official_unshuffle(tokens, ids_restore, mask_token)
    assert torch.equal(out, expected)
    weights = torch.randn(out.shape, generator=generator).to(dtype).to(device)
    grads = torch.autograd.grad((out * weights).sum(), (tokens, mask_token))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (tokens, mask_token))
    assert torch.equal(grads[0], expected_grads[0]), "each kept token is copied exactly once"
    assert grads[1].shape == mask_token.shape
    # The mask token's gradient sums L - K rows: float32 accumulation in every backend.
    exact = (weights.double() * (ids_restore >= kept).unsqueeze(-1)).sum((0, 1)).reshape(1, 1, dim)
    assert_close(grads[1], exact.to(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_tokens_matches_reference_with_repeats(backend, dtype, triton_device) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(3, 11, 9, generator=generator).to(dtype).to(device).requires_grad_()
    ids = torch.randint(0, 11, (3, 13), generator=generator).to(device)  # repeats on purpose
    out = nf.ops.gather_tokens(tokens, ids, backend=backend)
    assert torch.equal(out, reference.gather_tokens(tokens, ids))
    weights = torch.randn(out.shape, generator=generator).to(dtype).to(device)
    (grad,) = torch.autograd.grad((out * weights).sum(), tokens)
    exact = torch.zeros(3, 11, 9, dtype=torch.float64, device=device)
    exact.scatter_add_(1, ids.unsqueeze(-1).expand(-1, -1, 9), weights.double())
    assert_close(grad, exact.to(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_tokens_broadcasts_a_batch_of_one(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    pos_embed = torch.randn(1, 10, 6, device=device, requires_grad=True)
    ids = torch.tensor([[0, 9, 3], [3, 3, 1]], device=device)
    out = nf.ops.gather_tokens(pos_embed, ids, backend=backend)
    assert torch.equal(out, pos_embed.detach()[0][ids])
    (grad,) = torch.autograd.grad(out.sum(), pos_embed)
    counts = torch.bincount(ids.flatten().cpu(), minlength=10).float().to(device)
    assert grad.shape == (1, 10, 6)
    assert torch.equal(grad[0], counts.unsqueeze(-1).expand(10, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tokens_with_strided_features(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    tokens = torch.randn(2, 8, 5, device=device).transpose(1, 2)  # (2, 5, 8), feature stride 5
    ids = torch.tensor([[4, 0], [1, 1]], device=device)
    assert torch.equal(
        nf.ops.gather_tokens(tokens, ids, backend=backend), reference.gather_tokens(tokens, ids)
    )
    restore = torch.tensor([[1, 4, 0, 2, 3], [0, 1, 2, 3, 4]], device=device)
    mask_token = torch.randn(8, device=device)
    assert torch.equal(
        nf.ops.scatter_tokens(tokens[:, :2], restore, mask_token, backend=backend),
        reference.scatter_tokens(tokens[:, :2], restore, mask_token),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_token_ids(backend, triton_device) -> None:
    if _device(backend, triton_device) == "cuda":
        pytest.skip("on the GPU this is a device-side assert: tests/test_patches_gpu.py")
    with pytest.raises(IndexError, match=r"ids\[0, 1\] = 5 is out of range for 5 tokens"):
        nf.ops.gather_tokens(torch.zeros(1, 5, 2), torch.tensor([[0, 5]]), backend=backend)
    with pytest.raises(IndexError, match=r"ids_restore\[1, 2\] = -1 is out of range for 3"):
        restore = torch.tensor([[0, 1, 2], [2, 0, -1]])
        nf.ops.scatter_tokens(torch.zeros(2, 1, 2), restore, torch.zeros(2), backend=backend)


def _scatter(kept_shape, restore_shape, mask_numel):
    restore = torch.zeros(restore_shape, dtype=torch.int64)
    return lambda: nf.ops.scatter_tokens(torch.zeros(kept_shape), restore, torch.zeros(mask_numel))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: nf.ops.gather_tokens(torch.zeros(2, 5, 3), torch.zeros(3, 1, dtype=torch.long)),
            r"tokens must be \(B, N, D\) or \(1, N, D\)",
        ),
        (_scatter((2, 5, 3), (2, 4), 3), "5 kept tokens do not fit 4 positions"),
        (_scatter((2, 1, 3), (2, 4), 4), "mask_token must have 3 elements"),
        (_scatter((2, 1, 3), (1, 4), 3), "with the same B"),
    ],
)
def test_token_ops_reject_bad_shapes(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "backend", [None, "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
)
def test_mae_decoder_unshuffle_compiles_with_gradients(backend, triton_device) -> None:
    device = _device(backend or "cpu", triton_device)
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(2, 3, 4, generator=generator).to(device).requires_grad_()
    mask_token = torch.zeros(1, 1, 4, device=device, requires_grad=True)
    pos_embed = torch.randn(1, 8, 4, generator=generator).to(device)
    ids_restore = _restore_ids(2, 8, generator).to(device)

    def decoder_input(tokens, mask_token):
        full = nf.ops.scatter_tokens(tokens, ids_restore, mask_token, backend=backend)
        kept_pos = nf.ops.gather_tokens(pos_embed, ids_restore[:, :3], backend=backend)
        return full.square().sum() + (kept_pos * tokens).sum()

    compiled = torch.compile(decoder_input, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(tokens, mask_token), (tokens, mask_token))
    expected = torch.autograd.grad(decoder_input(tokens, mask_token), (tokens, mask_token))
    for actual, wanted in zip(grads, expected):
        assert_close(actual, wanted)
