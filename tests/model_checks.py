"""Checks shared by the SSL models' tests."""

import pytest
import torch

import nexus_fast as nf


def assert_reference_backends_agree(
    monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, *inputs: object
) -> None:
    """The model's loss and every trainable gradient on the default backends equal those with
    every op forced to its plain-PyTorch reference (NEXUS_FAST_BACKEND=reference)."""

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        loss, _ = model(*inputs)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    default_loss, default_grads = loss_and_grads()
    monkeypatch.setenv(nf.ops.BACKEND_ENV, "reference")
    reference_loss, reference_grads = loss_and_grads()
    torch.testing.assert_close(reference_loss, default_loss, atol=1e-6, rtol=1e-5)
    assert len(reference_grads) == len(default_grads)
    for reference, default in zip(reference_grads, default_grads):
        torch.testing.assert_close(reference, default, atol=1e-6, rtol=1e-4)


def assert_loss_falls_with_the_teacher_following(
    model: torch.nn.Module, inputs: tuple[object, ...], lr: float, steps: int = 20
) -> None:
    """`steps` AdamW steps on a JEPA model (I-JEPA, V-JEPA 2), each followed by its EMA update:
    the loss ends below 0.6x its start and the target encoder has moved."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    teacher_before = model.target_encoder.blocks[0].attn.qkv.weight.clone()
    losses = []
    for step in range(steps):
        loss, _ = model(*inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(model.momentum(step, steps))
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses
    assert not torch.equal(model.target_encoder.blocks[0].attn.qkv.weight, teacher_before)


def assert_update_teacher_is_the_ema(model: torch.nn.Module, momentum: float) -> None:
    """`update_teacher(m)` sets every target-encoder tensor to m * teacher + (1 - m) * student
    and leaves the student untouched (perturb the teacher first, or the check is trivial)."""
    students = dict(model.encoder.named_parameters())
    expected = {
        name: momentum * teacher + (1 - momentum) * students[name]
        for name, teacher in model.target_encoder.named_parameters()
    }
    student_before = {name: p.clone() for name, p in students.items()}
    model.update_teacher(momentum)
    teachers = dict(model.target_encoder.named_parameters())
    assert teachers.keys() == expected.keys() and len(teachers) > 0
    for name, value in expected.items():
        torch.testing.assert_close(teachers[name], value, atol=1e-7, rtol=1e-6, msg=name)
    for name, value in student_before.items():
        assert torch.equal(students[name], value), name
