"""Patch and token kernels on a GPU (run by benchmarks/device_check.sh): MAE ViT-B shapes in bf16,
channels-last images, and the device-side assert for an out-of-range index."""

import subprocess
import sys
import textwrap

import pytest
import torch

import nexus_fast as nf
from nexus_fast.ops.reference import patches as reference

pytestmark = pytest.mark.gpu


def _mae_batch(dtype: torch.dtype = torch.bfloat16):
    generator = torch.Generator(device="cuda").manual_seed(0)
    images = torch.randn(64, 3, 224, 224, device="cuda", generator=generator).to(dtype)
    noise = torch.rand(64, 196, device="cuda", generator=generator)
    ids_shuffle = noise.argsort(dim=1)
    return images, ids_shuffle[:, :49], ids_shuffle.argsort(dim=1)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gather_patches_at_vit_b_shapes(memory_format) -> None:
    images, ids_keep, _ = _mae_batch()
    images = images.contiguous(memory_format=memory_format).requires_grad_()
    out = nf.ops.gather_patches(images, 16, ids_keep, backend="triton")
    expected = reference.gather_patches(images, 16, ids_keep)
    assert torch.equal(out, expected)
    (grad,) = torch.autograd.grad(out.float().square().sum(), images)
    (expected_grad,) = torch.autograd.grad(expected.float().square().sum(), images)
    assert torch.equal(grad, expected_grad)


def test_scatter_and_gather_tokens_at_vit_b_shapes() -> None:
    _, ids_keep, ids_restore = _mae_batch()
    tokens = torch.randn(64, 49, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask_token = torch.randn(1, 1, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = nf.ops.scatter_tokens(tokens, ids_restore, mask_token, backend="triton")
    expected = reference.scatter_tokens(tokens, ids_restore, mask_token)
    assert torch.equal(out, expected)
    grads = torch.autograd.grad(out.float().sum(), (tokens, mask_token))
    assert torch.equal(grads[0], torch.ones_like(tokens))
    assert torch.equal(grads[1], torch.full_like(mask_token, 64 * 147))
    pos_embed = torch.randn(1, 196, 768, device="cuda")
    assert torch.equal(
        nf.ops.gather_tokens(pos_embed, ids_keep, backend="triton"),
        reference.gather_tokens(pos_embed, ids_keep),
    )


def test_out_of_range_index_is_a_device_side_assert() -> None:
    # A device-side assert poisons the CUDA context, so it runs in its own process.
    script = textwrap.dedent(
        """
        import torch, nexus_fast as nf
        ids = torch.tensor([[0, 4]], device="cuda")
        nf.ops.gather_patches(torch.zeros(1, 3, 4, 4, device="cuda"), 2, ids, backend="triton")
        torch.cuda.synchronize()
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode != 0
    assert "device-side assert" in run.stderr or "outside [0, 4)" in run.stderr, run.stderr[-2000:]
