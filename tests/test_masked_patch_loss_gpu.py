"""The Triton masked patch loss on a GPU (run by benchmarks/device_check.sh): MAE ViT-B/16 and
V-JEPA-sized inputs in bf16 against the float64 reference, channels-last images, no host sync."""

import pytest
import torch

from nexus_fast.ops import masked_patch_loss
from nexus_fast.ops.reference import patches as reference
from nexus_fast.testing import assert_within_reference_error

pytestmark = pytest.mark.gpu


def _mae_inputs(
    batch: int, size: tuple[int, ...], patch: int = 16, tubelet: int = 1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pred bf16, images fp32, mask): MAE's 75% random masking."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    images = torch.randn(batch, 3, *size, device="cuda", generator=generator)
    grid = reference.grid_shape(size, patch, tubelet)
    length = 1
    for extent in grid:
        length *= extent
    volume = tubelet * patch * patch * 3
    pred = torch.randn(batch, length, volume, device="cuda", generator=generator).bfloat16()
    noise = torch.rand(batch, length, device="cuda", generator=generator)
    mask = noise.argsort(1).argsort(1) >= int(length * 0.25)  # the 75% with the largest noise
    return pred, images, mask


def _check_against_float64(
    pred: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch: int,
    tubelet: int = 1,
    norm_pix: bool = True,
) -> None:
    pred = pred.detach().requires_grad_()
    loss = masked_patch_loss(pred, images, mask, patch, norm_pix, tubelet=tubelet, backend="triton")
    loss.backward()
    exact_pred = pred.detach().double().requires_grad_()
    exact = reference.masked_patch_loss(exact_pred, images.double(), mask, patch, norm_pix, tubelet)
    exact.backward()
    low_pred = pred.detach().requires_grad_()
    low = reference.masked_patch_loss(low_pred, images, mask, patch, norm_pix, tubelet)
    low.backward()
    assert loss.dtype == torch.float32 and pred.grad.dtype == torch.bfloat16
    assert_within_reference_error(loss, low, exact, floor=1e-6, msg="loss:")
    assert_within_reference_error(
        pred.grad, low_pred.grad, exact_pred.grad, floor=0.0, relative_floor=1e-6
    )


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw_pix"])
def test_mae_vit_b16_batch_256_bf16(norm_pix: bool) -> None:
    pred, images, mask = _mae_inputs(256, (224, 224))
    _check_against_float64(pred, images, mask, 16, norm_pix=norm_pix)


def test_channels_last_images() -> None:
    pred, images, mask = _mae_inputs(64, (224, 224), seed=1)
    _check_against_float64(pred, images.contiguous(memory_format=torch.channels_last), mask, 16)


def test_video_tubelets_of_two_frames() -> None:
    pred, images, mask = _mae_inputs(4, (16, 224, 224), tubelet=2, seed=2)
    _check_against_float64(pred, images, mask, 16, tubelet=2)


def test_forward_and_backward_do_not_sync_the_host() -> None:
    pred, images, mask = _mae_inputs(32, (224, 224), seed=3)
    pred.requires_grad_()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = masked_patch_loss(pred, images, mask, 16, backend="triton")
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()
