"""Fine-tuning (nexus_fast.eval.finetune): layer-wise learning-rate decay in closed form, the
settings' validation, the input model left untouched, and learning a separable task."""

import pytest
import torch

from nexus_fast.eval.finetune import (
    FinetuneConfig,
    _parameter_groups,
    finetune,
    finetune_config,
    layer_index,
)
from nexus_fast.models.ssl import JEPAModel, VICRegModel


def _model() -> VICRegModel:
    torch.manual_seed(0)
    return VICRegModel(
        VICRegModel.preset(
            "tiny", img_size=16, patch_size=8, in_chans=1, encoder_dim=32, encoder_depth=3,
            encoder_heads=2, expander_dims=(32, 32, 32), pool="mean",
        )
    )  # fmt: skip


def _left_or_right(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with a bright bar on the left (class 0) or the right (class 1) half."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (count, 1, 16, 16), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % 2
    for index, label in enumerate(labels.tolist()):
        columns = slice(1, 6) if label == 0 else slice(10, 15)
        images[index, 0, 3:13, columns] = 230
    return images, labels


def test_layer_index_of_the_vit_parameters() -> None:
    assert layer_index("patch_embed.proj.weight", 12) == 0
    assert layer_index("cls_token", 12) == 0
    assert layer_index("pos_embed", 12) == 0
    assert layer_index("blocks.0.attn.qkv.weight", 12) == 1
    assert layer_index("blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_index("norm.weight", 12) == 13


def test_layer_wise_decay_scales_and_no_decay_on_biases_and_norms() -> None:
    model = _model()
    encoder = model.evaluation_encoder()
    head = torch.nn.Linear(32, 2)
    config = FinetuneConfig(layer_decay=0.5, weight_decay=0.1)
    groups = _parameter_groups(encoder, head, config)
    depth = len(encoder.blocks)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    # Block i (layer i + 1) gets 0.5 ** (depth + 1 - (i + 1)); the head and final norm get 1.
    for index, block in enumerate(encoder.blocks):
        assert scale_of[id(block.attn.qkv.weight)] == 0.5 ** (depth - index)
    assert scale_of[id(encoder.patch_embed.proj.weight)] == 0.5 ** (depth + 1)
    assert scale_of[id(head.weight)] == 1.0
    assert decay_of[id(head.weight)] == 0.1 and decay_of[id(head.bias)] == 0.0
    assert decay_of[id(encoder.blocks[0].norm1.weight)] == 0.0
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) + 2


def test_jepa_fine_tunes_the_encoder_it_evaluates() -> None:
    model = JEPAModel(JEPAModel.preset("tiny"))
    assert model.evaluation_encoder() is model.target_encoder


def test_learns_a_separable_task_and_leaves_the_model_untouched() -> None:
    model = _model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    train_images, train_labels = _left_or_right(96, seed=1)
    test_images, test_labels = _left_or_right(40, seed=2)
    config = FinetuneConfig(epochs=6, batch_size=32, lr=3e-3, warmup_epochs=0.5)
    result = finetune(model, train_images, train_labels, test_images, test_labels, config)
    assert result["top1"] >= 0.9, result
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed: finetune must work on a copy"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"epochs": 0}, "epochs"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"drop_path": "high"}, "drop_path"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale"),
    ],
)
def test_bad_settings_name_the_value(settings: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        finetune_config(settings)


def test_unknown_setting_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="layer_decay") as error:
        finetune_config({"layer_decays": 0.7})
    assert "layer_decays" in str(error.value)
