"""nexus_fast.ops.masked_patch_loss: every backend against the float64 reference (the loss and the
gradient of pred), the official MAE forward_loss, layouts, masks, edges, dispatch, errors, compile.

Criterion (DESIGN.md, "Testing rules": a reduction): the FlashAttention rule of
nexus_fast.testing.assert_within_reference_error. A backend's error against the reference in
float64 is at most twice the error of the reference run on the same inputs in pred's precision.
Shapes are small and odd (patch 3, batch 3, a 5 x 7 grid) because the Triton kernels run in the
interpreter here: one program per patch.
"""

import importlib
import math

import pytest
import torch

from nexus_fast.ops import BackendError, masked_patch_loss
from nexus_fast.ops.reference import patches as reference
from nexus_fast.testing import assert_close, assert_within_reference_error

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
# The module, not the function of the same name that nexus_fast.ops exports.
loss_module = importlib.import_module("nexus_fast.ops.masked_patch_loss")
FUSED_BACKENDS = ["cpu", pytest.param("triton", marks=pytest.mark.interpret)]
# Relative allowance beside the FlashAttention factor: values the low-precision reference happens
# to get exactly right.
FLOOR = 1e-6


def _grad_factor(backend: str, dtype: torch.dtype) -> float:
    """The FlashAttention factor for the gradient of pred.

    Triton's interpreter (3.9) converts float32 to bfloat16 by truncation (its cast passes no
    rounding mode), while the GPU rounds to nearest even: an interpreted bf16 gradient may be one
    ulp off where the reference is half an ulp off. The GPU tests keep the factor 2.
    """
    from nexus_fast import triton_kernels

    interpreted = backend == "triton" and triton_kernels.INTERPRET
    return 4.0 if interpreted and dtype == torch.bfloat16 else 2.0


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _problem(
    batch: int = 3,
    channels: int = 3,
    size: tuple[int, ...] = (15, 21),
    patch: int = 3,
    tubelet: int = 1,
    pred_dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pred, images, mask): images with an offset and a scale (so norm_pix matters) and ~75% of
    the patches masked (the first one always)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, channels, *size, generator=generator) * 2.0 + 0.5
    length = math.prod(reference.grid_shape(size, patch, tubelet))
    volume = tubelet * patch * patch * channels
    pred = torch.randn(batch, length, volume, generator=generator).to(pred_dtype)
    mask = torch.rand(batch, length, generator=generator) < 0.75
    mask[0, 0] = True  # at least one masked patch
    return pred.to(device), images.to(device), mask.to(device)


def _assert_matches_reference(
    backend: str,
    pred: torch.Tensor,
    images: torch.Tensor,
    mask: torch.Tensor,
    patch: int,
    norm_pix: bool = True,
    tubelet: int = 1,
) -> torch.Tensor:
    """Checks the loss and d loss / d pred of `backend`; returns its loss."""
    kwargs = {"tubelet": tubelet}
    pred = pred.detach().requires_grad_()
    loss = masked_patch_loss(pred, images, mask, patch, norm_pix, backend=backend, **kwargs)
    upstream = 1.75  # an upstream gradient other than 1 must scale the gradient
    (loss * upstream).backward()

    exact_pred = pred.detach().cpu().double().requires_grad_()
    exact = reference.masked_patch_loss(
        exact_pred, images.cpu().double(), mask.cpu(), patch, norm_pix, tubelet
    )
    (exact * upstream).backward()
    low_pred = pred.detach().cpu().requires_grad_()
    low = reference.masked_patch_loss(low_pred, images.cpu(), mask.cpu(), patch, norm_pix, tubelet)
    (low * upstream).backward()

    assert loss.shape == () and loss.dtype == low.dtype, (loss.shape, loss.dtype)
    assert pred.grad.shape == pred.shape and pred.grad.dtype == pred.dtype
    assert_within_reference_error(
        loss.cpu(), low, exact, floor=FLOOR, relative_floor=FLOOR, msg="loss:"
    )
    assert_within_reference_error(
        pred.grad.cpu(),
        low_pred.grad,
        exact_pred.grad,
        factor=_grad_factor(backend, pred.dtype),
        floor=0.0,
        relative_floor=FLOOR,
        msg="grad:",
    )
    return loss


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw_pix"])
@pytest.mark.parametrize("pred_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_shapes_match_the_float64_reference(
    backend: str, pred_dtype: torch.dtype, norm_pix: bool, triton_device: str
) -> None:
    # patch 3, batch 3 (prime), a 5 x 7 grid of 27-value patches.
    pred, images, mask = _problem(pred_dtype=pred_dtype, device=_device(backend, triton_device))
    _assert_matches_reference(backend, pred, images, mask, 3, norm_pix)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_float64_pred_gives_a_float64_loss(backend: str) -> None:
    pred, images, mask = _problem(pred_dtype=torch.float64)
    pred.requires_grad_()
    loss = masked_patch_loss(pred, images, mask, 3, backend=backend)
    loss.backward()
    exact_pred = pred.detach().clone().requires_grad_()
    exact = reference.masked_patch_loss(exact_pred, images.double(), mask, 3)
    exact.backward()
    assert loss.dtype == torch.float64
    assert_close(loss.detach(), exact.detach())
    assert_close(pred.grad, exact_pred.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_video_with_tubelets_of_two_frames(backend: str, triton_device: str) -> None:
    # (B, C, T, H, W) = (2, 2, 4, 6, 9): a 2 x 2 x 3 grid of (2, 3, 3, 2) tubelets.
    pred, images, mask = _problem(
        2, 2, (4, 6, 9), patch=3, tubelet=2, device=_device(backend, triton_device)
    )
    assert pred.shape == (2, 12, 36)
    _assert_matches_reference(backend, pred, images, mask, 3, tubelet=2)


def _relayout(
    layout: str, pred: torch.Tensor, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same values in another memory layout."""
    if layout == "channels_last":
        return pred, images.contiguous(memory_format=torch.channels_last)
    if layout == "sliced_images":
        # A crop of a larger canvas, every second column: strides (.., .., 2 * 30, 2).
        batch, channels, height, width = images.shape
        canvas = torch.zeros(batch, channels, height + 3, 2 * width + 4, device=images.device)
        view = canvas[:, :, 2 : 2 + height, 3 : 3 + 2 * width : 2]
        view.copy_(images)
        return pred, view
    if layout == "transposed_pred":
        return pred.transpose(1, 2).contiguous().transpose(1, 2), images
    raise ValueError(layout)


@pytest.mark.parametrize("layout", ["channels_last", "sliced_images", "transposed_pred"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs_are_read_in_place(
    backend: str, layout: str, triton_device: str
) -> None:
    pred, images, mask = _problem(2, 3, (8, 12), patch=4, device=_device(backend, triton_device))
    pred, images = _relayout(layout, pred, images)
    assert not (pred.is_contiguous() and images.is_contiguous())
    _assert_matches_reference(backend, pred, images, mask, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float_mask_weights(backend: str, triton_device: str) -> None:
    pred, images, mask = _problem(2, 3, (9, 12), device=_device(backend, triton_device))
    weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(3)).to(mask.device)
    weights[weights < 0.3] = 0.0  # some patches weigh nothing
    _assert_matches_reference(backend, pred, images, weights, 3)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32], ids=["bool", "float"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mask_without_masked_patches_gives_zero(
    backend: str, mask_dtype: torch.dtype, triton_device: str
) -> None:
    pred, images, mask = _problem(2, 3, (6, 9), device=_device(backend, triton_device))
    pred.requires_grad_()
    loss = masked_patch_loss(
        pred, images, torch.zeros_like(mask, dtype=mask_dtype), 3, backend=backend
    )
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_unmasked_patches_are_not_read(backend: str, triton_device: str) -> None:
    device = _device(backend, triton_device)
    pred, images, mask = _problem(2, 3, (6, 9), device=device)
    mask = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=torch.bool, device=device)
    poisoned_images = reference.unpatchify(
        reference.patchify(images, 3).masked_fill(~mask[..., None], math.nan), 3, (6, 9)
    )
    poisoned_pred = pred.masked_fill(~mask[..., None], math.nan).requires_grad_()
    loss = masked_patch_loss(poisoned_pred, poisoned_images, mask, 3, backend=backend)
    loss.backward()
    expected = reference.masked_patch_loss(pred.cpu(), images.cpu(), mask.cpu(), 3)
    assert math.isfinite(loss.item()), "a NaN in an unmasked patch reached the loss"
    assert_close(loss.detach().cpu(), expected)
    assert torch.equal(poisoned_pred.grad[~mask], torch.zeros_like(poisoned_pred.grad[~mask]))
    assert torch.isfinite(poisoned_pred.grad).all()


@pytest.mark.filterwarnings("ignore:var... degrees of freedom:UserWarning")  # the reference
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch_and_single_patch(backend: str, triton_device: str) -> None:
    device = _device(backend, triton_device)
    empty_pred = torch.zeros(0, 6, 27, device=device, requires_grad=True)
    empty_images = torch.zeros(0, 3, 6, 9, device=device)
    empty_mask = torch.zeros(0, 6, dtype=torch.bool, device=device)
    loss = masked_patch_loss(empty_pred, empty_images, empty_mask, 3, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and empty_pred.grad.shape == (0, 6, 27)
    # One image that is one patch.
    pred, images, mask = _problem(1, 3, (4, 4), patch=4, device=device)
    _assert_matches_reference(backend, pred, images, mask, 4)


def _official_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """models_mae.py MaskedAutoencoderViT.patchify, verbatim but for `self`."""
    assert imgs.shape[2] == imgs.shape[3] and imgs.shape[2] % p == 0
    h = w = imgs.shape[2] // p
    x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
    x = torch.einsum("nchpwq->nhwpqc", x)
    x = x.reshape(shape=(imgs.shape[0], h * w, p**2 * 3))
    return x


def _official_forward_loss(
    imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, p: int, norm_pix_loss: bool
) -> torch.Tensor:
    """models_mae.py MaskedAutoencoderViT.forward_loss, verbatim but for `self`."""
    target = _official_patchify(imgs, p)
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)  # [N, L], mean loss per patch
    loss = (loss * mask).sum() / mask.sum()  # mean loss on removed patches
    return loss


def _official_random_mask(batch: int, length: int, mask_ratio: float, seed: int) -> torch.Tensor:
    """models_mae.py random_masking's mask: 0 is keep, 1 is remove, in the original order."""
    noise = torch.rand(batch, length, generator=torch.Generator().manual_seed(seed))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    len_keep = int(length * (1 - mask_ratio))
    mask = torch.ones([batch, length])
    mask[:, :len_keep] = 0
    return torch.gather(mask, dim=1, index=ids_restore)


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw_pix"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_the_official_mae_forward_loss(
    backend: str, norm_pix: bool, triton_device: str
) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(7)
    imgs = torch.randn(3, 3, 16, 16, generator=generator)  # a 4 x 4 grid of 4 x 4 patches
    pred = torch.randn(3, 16, 48, generator=generator)
    mask = _official_random_mask(3, 16, 0.75, seed=7)

    exact_pred = pred.double().requires_grad_()
    exact = _official_forward_loss(imgs.double(), exact_pred, mask.double(), 4, norm_pix)
    exact.backward()
    low_pred = pred.clone().requires_grad_()
    low = _official_forward_loss(imgs, low_pred, mask, 4, norm_pix)
    low.backward()
    ours_pred = pred.to(device).requires_grad_()
    ours = masked_patch_loss(
        ours_pred, imgs.to(device), mask.to(device), 4, norm_pix, backend=backend
    )
    ours.backward()

    assert_within_reference_error(ours.cpu(), low, exact, floor=FLOOR, msg="loss:")
    assert_within_reference_error(
        ours_pred.grad.cpu(), low_pred.grad, exact_pred.grad, floor=FLOOR * 1e-2, msg="grad:"
    )


def test_images_requiring_grad_take_the_reference() -> None:
    pred, images, mask = _problem(2, 3, (6, 9))
    images.requires_grad_()
    pred.requires_grad_()
    arguments = (pred, images, mask, 3, 1, True, 1e-6)
    assert loss_module.MASKED_PATCH_LOSS.select(*arguments).name == "reference"
    for fused in ("cpu", "triton"):
        with pytest.raises(BackendError, match="images requires grad: the fused kernels treat"):
            masked_patch_loss(pred, images, mask, 3, backend=fused)

    loss = masked_patch_loss(pred, images, mask, 3)
    loss.backward()
    exact_images = images.detach().double().requires_grad_()
    reference.masked_patch_loss(pred.detach().double(), exact_images, mask, 3).backward()
    assert images.grad is not None and images.grad.abs().max() > 0
    assert_close(images.grad, exact_images.grad.float())
    # Without grad mode the fused kernels may run again.
    with torch.no_grad():
        assert loss_module.MASKED_PATCH_LOSS.select(*arguments).name != "reference"


def test_a_float_mask_requiring_grad_takes_the_reference() -> None:
    pred, images, mask = _problem(2, 3, (6, 9))
    weights = mask.float().requires_grad_()
    arguments = (pred, images, weights, 3, 1, True, 1e-6)
    assert loss_module.MASKED_PATCH_LOSS.select(*arguments).name == "reference"
    masked_patch_loss(pred, images, weights, 3).backward()
    exact_weights = weights.detach().double().requires_grad_()
    reference.masked_patch_loss(pred.double(), images.double(), exact_weights, 3).backward()
    assert_close(weights.grad, exact_weights.grad.float())


def test_dispatch_reasons_name_the_obstacle() -> None:
    pred, images, mask = _problem(1, 3, (6, 6), pred_dtype=torch.float64)
    arguments = (pred, images, mask, 3, 1, True, 1e-6)
    triton = loss_module.MASKED_PATCH_LOSS.backend("triton")
    assert loss_module.MASKED_PATCH_LOSS.reasons(triton, *arguments) == [
        "pred dtype torch.float64 is not one of float32, bfloat16, float16"
    ]
    assert loss_module.MASKED_PATCH_LOSS.select(*arguments).name == "cpu"
    big = (torch.zeros(1, 1, 64 * 64 * 3), torch.zeros(1, 3, 64, 64), torch.ones(1, 1))
    assert any(
        "tile of 16384 elements" in r
        for r in loss_module.MASKED_PATCH_LOSS.reasons(triton, *big, 64, 1, True, 1e-6)
    )
    assert loss_module.MASKED_PATCH_LOSS.select(*big, 64, 1, True, 1e-6).name == "cpu"


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw_pix"])
def test_closed_form_reference_backward_equals_autograd(norm_pix: bool) -> None:
    # The Triton op's CPU path without the interpreter uses this formula.
    pred, images, mask = _problem(2, 3, (6, 9), tubelet=1, pred_dtype=torch.float64)
    weights = mask.double() * torch.rand(mask.shape, dtype=torch.float64)
    pred.requires_grad_()
    reference.masked_patch_loss(pred, images.double(), weights, 3, norm_pix).backward(
        torch.tensor(0.5, dtype=torch.float64)
    )
    closed = loss_module._reference_backward(
        torch.tensor(0.5), pred.detach(), images.double(), weights, 3, 1, norm_pix, 1e-6
    )
    assert_close(closed, pred.grad)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"pred": [1.0]}, TypeError, "pred must be a Tensor, got list"),
        ({"patch_size": 0}, ValueError, "patch_size must be a positive int, got 0"),
        ({"patch_size": 3.0}, ValueError, "patch_size must be a positive int, got 3.0"),
        ({"tubelet": 2}, ValueError, "tubelet 2 needs video"),
        ({"eps": 0.0}, ValueError, "eps must be a positive finite number, got 0.0"),
        ({"eps": math.inf}, ValueError, "got inf"),
        ({"patch_size": 4}, ValueError, "image size 6x9 is not divisible by patch_size 4"),
        ({"pred": torch.zeros(2, 6, 26)}, ValueError, r"pred has shape \(2, 6, 26\).*\(2, 6, 27\)"),
        ({"pred": torch.zeros(2, 6, 27, dtype=torch.int32)}, TypeError, "pred has dtype"),
        ({"images": torch.zeros(2, 3, 6, 9).int()}, TypeError, "images has dtype torch.int32"),
        ({"images": torch.zeros(2, 3, 9)}, ValueError, r"images must be \(B, C, H, W\)"),
        ({"mask": torch.zeros(2, 5)}, ValueError, r"mask has shape \(2, 5\); allowed: .*\(2, 6\)"),
        ({"mask": torch.zeros(2, 6, dtype=torch.int64)}, TypeError, "mask has dtype torch.int64"),
        ({"mask": torch.zeros(2, 6, device="meta")}, ValueError, "must be on one device"),
    ],
)
def test_bad_arguments_raise_clear_errors(change: dict, error: type, message: str) -> None:
    pred, images, mask = _problem(2, 3, (6, 9))
    arguments = {"pred": pred, "images": images, "mask": mask, "patch_size": 3}
    arguments |= change
    with pytest.raises(error, match=message):
        masked_patch_loss(**arguments)


def test_video_frames_must_divide_by_the_tubelet_and_norm_pix_needs_two_values() -> None:
    with pytest.raises(ValueError, match="5 frames are not divisible by tubelet 2"):
        masked_patch_loss(
            torch.zeros(1, 4, 8), torch.zeros(1, 1, 5, 4, 4), torch.ones(1, 4), 2, tubelet=2
        )
    with pytest.raises(ValueError, match="norm_pix needs patches of at least 2 values"):
        masked_patch_loss(torch.zeros(1, 4, 1), torch.zeros(1, 1, 2, 2), torch.ones(1, 4), 1)
    loss = masked_patch_loss(
        torch.zeros(1, 4, 1), torch.ones(1, 1, 2, 2), torch.ones(1, 4), 1, False
    )
    assert loss.item() == 1.0


@pytest.mark.parametrize(
    "backend", [None, "reference", "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
)
def test_compiles_without_graph_breaks_with_backward(
    backend: str | None, triton_device: str
) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    device = _device(backend or "cpu", triton_device)
    pred, images, mask = _problem(2, 3, (8, 8), patch=4, device=device)
    counter = CompileCounterWithBackend("aot_eager")

    def step(pred, images, mask):
        return masked_patch_loss(pred, images, mask, 4, backend=backend) * 2.0

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    eager_pred, compiled_pred = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    expected = step(eager_pred, images, mask)
    expected.backward()
    actual = compiled(compiled_pred, images, mask)
    actual.backward()
    assert counter.frame_count == 1
    assert_close(actual.detach(), expected.detach())
    assert_close(compiled_pred.grad, eager_pred.grad)
