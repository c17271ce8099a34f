"""Sample inputs of every registered nexus_fast op, for opcheck and torch.compile tests.

A new op adds an entry here; test_every_registered_op_has_samples fails until it does.
"""

from collections.abc import Callable

import torch


def _ema_samples() -> list[tuple]:
    samples = []
    for student_dtype in (torch.float32, torch.bfloat16):
        teacher = [torch.randn(7), torch.randn(3, 5), torch.randn(1)]
        student = [torch.randn(t.shape).to(student_dtype) for t in teacher]
        samples.append((teacher, student, torch.tensor(0.9)))
    return samples


def _gather_patches_samples() -> list[tuple]:
    images = torch.randn(2, 3, 8, 12, requires_grad=True)
    video = torch.randn(1, 2, 4, 6, 6, requires_grad=True)
    return [
        (images, 4, 1, torch.tensor([[0, 5, 2], [1, 1, 3]])),
        (video.to(torch.bfloat16), 3, 2, torch.tensor([[7, 0]])),
    ]


def _gather_patches_backward_samples() -> list[tuple]:
    return [(torch.randn(2, 3, 48), torch.tensor([[0, 5, 2], [1, 1, 3]]), 4, 1, [2, 3, 8, 12])]


def _gather_tokens_samples() -> list[tuple]:
    ids = torch.tensor([[0, 4, 4], [2, 1, 0]])
    return [
        (torch.randn(2, 5, 7, requires_grad=True), ids),
        (torch.randn(1, 5, 7, requires_grad=True), ids),  # broadcast position embeddings
    ]


def _scatter_tokens_samples() -> list[tuple]:
    ids_restore = torch.tensor([[3, 0, 4, 1, 2], [0, 1, 2, 3, 4]])
    return [
        (torch.randn(2, 2, 6, requires_grad=True), ids_restore, torch.randn(6, requires_grad=True)),
        (torch.randn(2, 2, 6).bfloat16(), ids_restore, torch.randn(1, 1, 6).bfloat16()),
    ]


def _scatter_add_tokens_samples() -> list[tuple]:
    grad = torch.randn(2, 5, 6)
    ids = torch.tensor([[3, 0, 4, 1, 2], [0, 1, 2, 3, 4]])
    return [
        (grad, ids, 2, False),
        (grad, torch.tensor([[0, 2, 2, 1, 0], [1, 1, 0, 2, 2]]), 3, True),
    ]


def _masked_patch_loss_inputs() -> list[tuple]:
    """(pred, images, mask, patch_size, tubelet, norm_pix, eps): tiny, so the interpreter is quick.

    NCHW images with a bool mask; channels-last images, a bf16 pred and a float mask without
    norm_pix; a video with tubelets of 2 frames and a sliced (non-contiguous) pred.
    """
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    images = randn(2, 3, 4, 6)
    channels_last = randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
    video = randn(1, 2, 4, 4, 4)
    return [
        (
            randn(2, 6, 12),
            images,
            torch.tensor([[1, 0, 1, 1, 0, 1], [0, 0, 1, 1, 1, 0]]).bool(),
            2,
            1,
            True,
            1e-6,
        ),
        (
            randn(2, 4, 12).bfloat16(),
            channels_last,
            torch.rand(2, 4, generator=generator),
            2,
            1,
            False,
            1e-6,
        ),
        (randn(1, 8, 20)[:, :, 2:18], video, torch.ones(1, 8), 2, 2, True, 1e-6),
    ]


def _masked_patch_loss_samples() -> list[tuple]:
    return [(pred.requires_grad_(), *rest) for pred, *rest in _masked_patch_loss_inputs()]


def _masked_patch_loss_backward_samples() -> list[tuple]:
    return [(torch.tensor(1.5), *args) for args in _masked_patch_loss_inputs()]


def _attention_samples() -> list[tuple]:
    """(q, k, v, cu_q, cu_k, max_q, max_k, key_padding_mask, scale, causal): a dense padded batch,
    and packed sequences of 3 and 5 tokens (tiny: the Triton interpreter runs them)."""
    generator = torch.Generator().manual_seed(0)

    def qkv(*shape: int) -> list[torch.Tensor]:
        return [torch.randn(*shape, generator=generator).requires_grad_() for _ in range(3)]

    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    return [
        (*qkv(2, 2, 4, 32), None, None, 4, 4, mask, 0.2, False),
        (*qkv(8, 2, 32), cu, cu, 5, 5, None, 0.2, True),
    ]


def _attention_backward_samples() -> list[tuple]:
    from nexus_fast.ops.attention import _attention_triton

    samples = []
    for q, k, v, *rest in _attention_samples():
        with torch.no_grad():
            out, lse = _attention_triton(q, k, v, *rest)
        samples.append((torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, *rest))
    return samples


def _feature_regression_inputs() -> list[tuple]:
    """(pred, targets, index, weights, loss, loss_exp, beta, normalize, eps) for each loss kind;
    a zero weight marks a row the kernel must not read."""
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 8, generator=generator)
    targets = torch.randn(4, 8, generator=generator)
    index = torch.tensor([0, 3, 3, 1, 2, 0])
    weights = torch.tensor([0.5, 0.0, 1.0, 0.25, 1.0, 2.0])
    return [
        (pred, targets, index, weights, "smooth_l1", 1.0, 1.0, True, 1e-5),
        (pred, targets, index, weights, "power", 1.0, 1.0, True, 1e-5),
        (pred.bfloat16(), targets, index, weights, "squared", 2.0, 1.0, False, 1e-5),
    ]


def _feature_regression_samples() -> list[tuple]:
    return [(pred.clone().requires_grad_(), *rest) for pred, *rest in _feature_regression_inputs()]


def _feature_regression_backward_samples() -> list[tuple]:
    return [(torch.tensor(1.5), *args) for args in _feature_regression_inputs()]


def _data2vec_targets_samples() -> list[tuple]:
    generator = torch.Generator().manual_seed(0)
    layers = [torch.randn(2, 5, 6, generator=generator) for _ in range(3)]
    return [(layers, 1e-5), ([layer.bfloat16() for layer in layers], 1e-5)]


def _barlow_twins_samples() -> list[tuple]:
    """(z1, z2, lambd, eps, gram, needs_grad) for nexus_fast::barlow_twins_loss[_triton]: the Gram
    and direct forms, a bf16 pair without gradients, a strided view (tiny: the interpreter)."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    z1, z2 = randn(5, 9), randn(5, 9)
    return [
        (z1.requires_grad_(), z2.requires_grad_(), 0.0051, 1e-5, True, True),
        (randn(7, 3).requires_grad_(), randn(7, 3).requires_grad_(), 0.02, 1e-5, False, True),
        (randn(4, 6).bfloat16(), randn(4, 6).bfloat16(), 0.0051, 1e-5, True, False),
        (
            randn(6, 10)[:, ::2].requires_grad_(),
            randn(6, 5).requires_grad_(),
            0.0051,
            1e-5,
            False,
            True,
        ),
    ]


def _vicreg_samples() -> list[tuple]:
    """(x, std_coeff, cov_coeff, eps, gram, needs_grad) for
    nexus_fast::vicreg_regularizer[_triton]."""
    generator = torch.Generator().manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return [
        (randn(5, 9).requires_grad_(), 25.0, 1.0, 1e-4, True, True),
        ((randn(7, 3) * 0.5).requires_grad_(), 25.0, 1.0, 1e-4, False, True),
        (randn(4, 6).bfloat16(), 25.0, 1.0, 1e-4, True, False),
        (randn(10, 6)[::2].requires_grad_(), 10.0, 2.0, 1e-3, False, True),
    ]


def _sinkhorn_knopp_samples() -> list[tuple]:
    """(logits, temperature, iters, gather): float32 cosine-sized logits, and a bf16 column slice
    (a row stride other than K)."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 11, generator=generator) * 0.3
    return [(logits, 0.07, 3, False), (logits[:, 2:9].bfloat16(), 0.05, 1, False)]


def _soft_cross_entropy_samples() -> list[tuple]:
    """(logits, targets, mass, index, temperature, compute_grad): 5 rows against a table of 3
    targets, one of them a sum of two distributions (mass 2)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.softmax(torch.randn(3, 11, generator=generator), dim=-1)
    targets[2] += targets[0]
    mass = targets.sum(dim=-1)
    index = torch.tensor([2, 0, 1, 1, 2])
    logits = torch.randn(5, 11, generator=generator)
    return [
        (logits.clone().requires_grad_(), targets, mass, index, 0.1, True),
        (logits.bfloat16(), targets, mass, index, 0.1, False),
    ]


def _prototype_cross_entropy_samples() -> list[tuple]:
    """(features, weight, targets, index, temperature, chunk_rows, grad_features, grad_weight):
    chunks of 2 and 3 rows over 5; a bf16 head with the weight's gradient not asked for."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(5, 8, generator=generator)
    weight = torch.randn(11, 8, generator=generator)
    targets = torch.softmax(torch.randn(3, 11, generator=generator), dim=-1)
    index = torch.tensor([2, 0, 1, 1, 2])
    return [
        (features.requires_grad_(), weight.requires_grad_(), targets, index, 0.1, 2, True, True),
        (
            features.detach().bfloat16(),
            weight.detach().bfloat16(),
            targets,
            index,
            0.1,
            3,
            True,
            False,
        ),
    ]


# op name (without the namespace) -> a function returning a list of argument tuples.
SAMPLES: dict[str, Callable[[], list[tuple]]] = {
    "ema_update_": _ema_samples,
    "ema_update_triton_": _ema_samples,
    "gather_patches": _gather_patches_samples,
    "gather_patches_triton": _gather_patches_samples,
    "gather_patches_backward": _gather_patches_backward_samples,
    "gather_patches_backward_triton": _gather_patches_backward_samples,
    "gather_tokens": _gather_tokens_samples,
    "gather_tokens_triton": _gather_tokens_samples,
    "scatter_tokens": _scatter_tokens_samples,
    "scatter_tokens_triton": _scatter_tokens_samples,
    "scatter_add_tokens": _scatter_add_tokens_samples,
    "scatter_add_tokens_triton": _scatter_add_tokens_samples,
    "masked_patch_loss": _masked_patch_loss_samples,
    "masked_patch_loss_backward": _masked_patch_loss_backward_samples,
    "masked_patch_loss_triton": _masked_patch_loss_samples,
    "masked_patch_loss_backward_triton": _masked_patch_loss_backward_samples,
    "attention_triton": _attention_samples,
    "attention_backward_triton": _attention_backward_samples,
    "feature_regression_triton": _feature_regression_samples,
    "feature_regression_backward_triton": _feature_regression_backward_samples,
    "data2vec_targets_triton": _data2vec_targets_samples,
    "barlow_twins_loss": _barlow_twins_samples,
    "barlow_twins_loss_triton": _barlow_twins_samples,
    "vicreg_regularizer": _vicreg_samples,
    "vicreg_regularizer_triton": _vicreg_samples,
    "sinkhorn_knopp_triton": _sinkhorn_knopp_samples,
    "soft_cross_entropy_triton": _soft_cross_entropy_samples,
    "prototype_cross_entropy": _prototype_cross_entropy_samples,
    "prototype_cross_entropy_triton": _prototype_cross_entropy_samples,
}
