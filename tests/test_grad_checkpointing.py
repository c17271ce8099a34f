"""Gradient checkpointing (`grad_checkpointing=True`) recomputes every block of every encoder,
predictor and decoder in the backward pass: the loss and every gradient must be what they are
without it."""

import pytest
import torch

from nexus_fast.models.ssl import (
    MAE,
    BarlowTwinsModel,
    Data2VecModel,
    DINOv2Model,
    JEPAModel,
    VICRegModel,
    VJEPAModel,
)

METHODS = [MAE, JEPAModel, VJEPAModel, DINOv2Model, Data2VecModel, BarlowTwinsModel, VICRegModel]


def _inputs(model) -> tuple:
    config = model.config
    generator = torch.Generator().manual_seed(1)
    size, channels = config.img_size, config.in_chans
    if isinstance(model, VJEPAModel):
        return (torch.randn(2, channels, config.num_frames, size, size, generator=generator),)
    if isinstance(model, DINOv2Model):
        global_shape, local_shapes = model.crop_shapes(2)
        crops = [torch.randn(shape, generator=generator) for shape in local_shapes]
        return torch.randn(global_shape, generator=generator), crops
    images = torch.randn(4, channels, size, size, generator=generator)
    if isinstance(model, (BarlowTwinsModel, VICRegModel)):
        return images, images.flip(-1)
    return (images,)


def _loss_and_gradients(cls, checkpointing: bool) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(0)
    model = cls(cls.preset("tiny", grad_checkpointing=checkpointing)).train()
    inputs = _inputs(model)
    torch.manual_seed(2)  # the masks drawn inside the step
    loss = model(*inputs)[0]
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.__name__)
def test_checkpointing_gives_the_same_loss_and_gradients(cls) -> None:
    plain_loss, plain = _loss_and_gradients(cls, False)
    checkpointed_loss, checkpointed = _loss_and_gradients(cls, True)
    torch.testing.assert_close(checkpointed_loss, plain_loss)
    assert plain and set(checkpointed) == set(plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_every_stack_of_blocks_is_checkpointed() -> None:
    """The flag reaches the decoders and predictors, not only the encoder."""
    mae = MAE(MAE.preset("tiny", grad_checkpointing=True))
    data2vec = Data2VecModel(Data2VecModel.preset("tiny", grad_checkpointing=True))
    jepa = JEPAModel(JEPAModel.preset("tiny", grad_checkpointing=True))
    assert mae.encoder.config.grad_checkpointing and mae.decoder.grad_checkpointing
    assert data2vec.decoder.grad_checkpointing
    assert jepa.predictor.grad_checkpointing
