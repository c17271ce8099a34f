"""patchify / unpatchify and gather_patches: every backend against the reference (forward and
gradient), the official MAE patch order, odd sizes, strides, index safety, compile."""

import pytest
import torch

import nexus_fast as nf
from nexus_fast.ops.reference import patches as reference
from nexus_fast.testing import assert_close

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpret)]


def _device(backend: str, triton_device: str) -> str:
    return triton_device if backend == "triton" else "cpu"


def _official_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """facebookresearch/mae models_mae.py patchify, for square images."""
    n, c = imgs.shape[:2]
    h = w = imgs.shape[2] // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p**2 * c)


def test_patchify_is_the_official_mae_order() -> None:
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(nf.ops.patchify(images, 8), _official_patchify(images, 8))


@pytest.mark.parametrize(
    ("shape", "patch", "tubelet", "size"),
    [
        ((2, 3, 12, 20), 4, 1, (12, 20)),
        ((1, 1, 9, 9), 3, 1, None),
        ((2, 2, 4, 6, 9), 3, 2, (4, 6, 9)),
    ],
)
def test_unpatchify_inverts_patchify(shape, patch, tubelet, size) -> None:
    x = torch.randn(shape)
    patches = nf.ops.patchify(x, patch, tubelet)
    assert torch.equal(nf.ops.unpatchify(patches, patch, size, tubelet), x)


def test_video_patch_order_is_t_p_q_c() -> None:
    video = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4, 4)
    patches = nf.ops.patchify(video, 2, tubelet=2)  # grid (2, 2, 2), 8 patches of 2*2*2*2
    # Patch 5 is cell (1, 0, 1): frames 2-3, rows 0-1, columns 2-3; elements (t, p, q, c).
    expected = video[0, :, 2:4, 0:2, 2:4].permute(1, 2, 3, 0).reshape(-1)
    assert torch.equal(patches[0, 5], expected)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: nf.ops.patchify(torch.zeros(1, 3, 10, 12), 4), "not divisible by patch_size 4"),
        (lambda: nf.ops.patchify(torch.zeros(3, 8, 8), 4), "expected images"),
        (lambda: nf.ops.unpatchify(torch.zeros(1, 5, 48), 4), "do not form a square grid"),
        (
            lambda: nf.ops.unpatchify(torch.zeros(1, 4, 48), 4, (8, 12)),
            r"do not fit size \(8, 12\)",
        ),
        (lambda: nf.ops.patchify(torch.zeros(1, 3, 3, 8, 8), 4, 2), "3 frames are not divisible"),
    ],
)
def test_patchify_rejects_bad_shapes(bad, message) -> None:
    with pytest.raises(ValueError, match=message):
        bad()


CASES = [  # (x shape, patch, tubelet, kept)
    ((3, 3, 12, 20), 4, 1, 7),  # prime batch, non-square grid
    ((2, 1, 15, 21), 3, 1, 35),  # every patch of a 5x7 grid
    ((1, 3, 8, 8), 4, 1, 1),
    ((2, 2, 4, 6, 9), 3, 2, 5),  # video, tubelet 2
]


@pytest.mark.parametrize(("shape", "patch", "tubelet", "kept"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_patches_matches_reference(
    backend, dtype, shape, patch, tubelet, kept, triton_device
) -> None:
    device = _device(backend, triton_device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(dtype).to(device).requires_grad_()
    num_patches = nf.ops.patchify(x.detach(), patch, tubelet).shape[1]
    ids = torch.stack(
        [torch.randperm(num_patches, generator=generator)[:kept] for _ in range(shape[0])]
    )
    ids = ids.to(device)
    out = nf.ops.gather_patches(x, patch, ids, tubelet, backend=backend)
    expected = reference.gather_patches(x, patch, ids, tubelet)
    assert torch.equal(out, expected), "a gather must be exact"
    weights = torch.randn(out.shape, generator=generator).to(dtype).to(device)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x)
    assert torch.equal(grad, expected_grad), "distinct patches: each gradient is one copy"


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_patches_reads_strided_inputs(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    base = torch.randn(2, 3, 12, 17, device=device)
    views = {
        "channels_last": base[..., :16].contiguous(memory_format=torch.channels_last),
        "sliced": base[..., 1:13],
    }
    ids = torch.tensor([[0, 8, 5], [2, 2, 7]], device=device)
    for name, x in views.items():
        out = nf.ops.gather_patches(x, 4, ids, backend=backend)
        assert torch.equal(out, reference.gather_patches(x.contiguous(), 4, ids)), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_ids_accumulate_gradients(backend, triton_device) -> None:
    device = _device(backend, triton_device)
    x = torch.randn(1, 2, 4, 4, device=device, requires_grad=True)
    ids = torch.tensor([[3, 3, 0]], device=device)
    out = nf.ops.gather_patches(x, 2, ids, backend=backend)
    (grad,) = torch.autograd.grad(out.sum(), x)
    expected = torch.zeros(1, 2, 4, 4, device=device)
    expected[:, :, 2:4, 2:4] = 2.0  # patch 3 gathered twice
    expected[:, :, 0:2, 0:2] = 1.0
    assert torch.equal(grad, expected)


def test_gather_patches_of_uint8_images_and_no_patches() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ids = torch.tensor([[1, 2], [3, 0]])
    assert torch.equal(
        nf.ops.gather_patches(images, 4, ids, backend="cpu"),
        reference.gather_patches(images, 4, ids),
    )
    empty = nf.ops.gather_patches(images, 4, torch.zeros(2, 0, dtype=torch.int64), backend="cpu")
    assert empty.shape == (2, 0, 48)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_index", [4, -1])
def test_out_of_range_ids_raise_index_error(backend, bad_index, triton_device) -> None:
    device = _device(backend, triton_device)
    if device == "cuda":
        pytest.skip("on the GPU this is a device-side assert: tests/test_patches_gpu.py")
    ids = torch.tensor([[0, 1], [bad_index, 2]])
    with pytest.raises(IndexError, match=rf"ids_keep\[1, 0\] = {bad_index} is out of range for 4"):
        nf.ops.gather_patches(torch.zeros(2, 1, 4, 4), 2, ids, backend=backend)


def test_the_cpu_kernel_checks_indices_itself() -> None:
    # Under torch.compile the wrapper leaves the check to the kernel: call the op directly.
    with pytest.raises(IndexError, match=r"ids\[0, 1\] = 9 is out of range for 4 patches"):
        torch.ops.nexus_fast.gather_patches(torch.zeros(1, 1, 4, 4), 2, 1, torch.tensor([[0, 9]]))


def _gather(x_shape, patch, ids, tubelet=1):
    return lambda: nf.ops.gather_patches(torch.zeros(x_shape), patch, ids, tubelet)


LONG = torch.zeros(2, 1, dtype=torch.int64)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (_gather((2, 3, 8, 8), 4, LONG[:1].expand(3, 1)), ValueError, r"\(B, K\) with B = 2"),
        (_gather((2, 3, 8, 8), 4, LONG.float()), TypeError, "must be an integer tensor"),
        (_gather((2, 3, 8, 8), 4, LONG, 2), ValueError, "tubelet 2 needs video"),
        (_gather((2, 3, 8, 8), 0, LONG), ValueError, "must be positive"),
        (_gather((2, 3, 8, 9), 4, LONG), ValueError, "not divisible by patch_size"),
    ],
)
def test_gather_patches_rejects_bad_arguments(call, error, message) -> None:
    with pytest.raises(error, match=message):
        call()


def test_int32_ids_are_accepted() -> None:
    x = torch.randn(1, 3, 8, 8)
    ids = torch.tensor([[2, 0]], dtype=torch.int32)
    assert torch.equal(nf.ops.gather_patches(x, 4, ids), reference.gather_patches(x, 4, ids.long()))


@pytest.mark.parametrize(
    "backend", [None, "cpu", pytest.param("triton", marks=pytest.mark.interpret)]
)
def test_gather_patches_compiles_with_its_gradient(backend, triton_device) -> None:
    device = _device(backend or "cpu", triton_device)
    x = torch.randn(2, 3, 8, 12, device=device, requires_grad=True)
    ids = torch.tensor([[0, 5, 3], [1, 1, 4]], device=device)

    def step(x, ids):
        return nf.ops.gather_patches(x, 4, ids, backend=backend).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(x, ids), x)
    (expected,) = torch.autograd.grad(step(x, ids), x)
    assert_close(grad, expected)
