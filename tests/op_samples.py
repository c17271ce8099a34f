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
}
