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
