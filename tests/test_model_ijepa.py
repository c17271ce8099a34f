"""JEPAModel (I-JEPA) at the tiny preset on the CPU: the seed's API, gradients, training, the EMA
teacher and its schedule, padding, backends, the official loss formulation, the official sizes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from model_checks import (
    assert_loss_falls_with_the_teacher_following,
    assert_reference_backends_agree,
    assert_update_teacher_is_the_ema,
)

from nexus_fast.masking import VarlenIndices, multiblock_mask
from nexus_fast.models.ssl.ijepa import JEPAConfig, JEPAModel

BATCH = 4


def _model(**overrides) -> JEPAModel:
    torch.manual_seed(0)
    return JEPAModel(JEPAModel.preset("tiny", **overrides))


def _images(batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _masks(model: JEPAModel, batch: int = BATCH, seed: int = 2, **overrides):
    config = dataclasses.replace(model.config, **overrides)
    masks = config.masks(batch, torch.Generator().manual_seed(seed))
    return dataclasses.replace(
        masks, context=masks.context.trimmed(), targets=masks.targets.trimmed()
    )


def _perturb_teacher(model: JEPAModel) -> None:
    """A teacher that differs from the student, as after some training."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.target_encoder.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))


def test_forward_returns_the_loss_and_metrics() -> None:
    model = _model()
    loss, metrics = model(_images())
    assert loss.dim() == 0 and loss.dtype == torch.float32 and loss.requires_grad
    assert torch.isfinite(loss)
    assert set(metrics) == {"loss", "embedding_std", "context_size", "target_size"}
    assert all(value.dim() == 0 and not value.requires_grad for value in metrics.values())
    assert metrics["loss"] == loss.detach()
    # A 4 x 4 grid: 4 target blocks of 1 to 4 patches, the context the rest of its block.
    assert 1 <= metrics["target_size"] <= 4
    assert 1 <= metrics["context_size"] <= 16 - metrics["target_size"]
    assert metrics["embedding_std"] > 0


def test_every_trainable_parameter_gets_a_gradient_and_the_teacher_none() -> None:
    model = _model()
    loss, _ = model(_images())
    loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    fixed_tables = {"encoder.pos_embed", "predictor.predictor_pos_embed"}
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("encoder.", "predictor.")) and name not in fixed_tables
    }
    assert trainable == expected
    assert "predictor.mask_tokens.0" in trainable
    without = [n for n, p in model.named_parameters() if n in trainable and p.grad is None]
    assert without == []
    zero = [n for n, p in model.named_parameters() if n in trainable and not p.grad.any()]
    assert zero == []
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n in trainable)
    for parameter in model.target_encoder.parameters():
        assert not parameter.requires_grad and parameter.grad is None


def test_loss_falls_with_the_teacher_following() -> None:
    assert_loss_falls_with_the_teacher_following(_model(), (_images(8), _masks(_model(), 8)), 1e-3)


def test_update_teacher_is_the_ema_of_every_tensor() -> None:
    model = _model()
    _perturb_teacher(model)
    assert_update_teacher_is_the_ema(model, 0.9)


def test_momentum_schedule_is_linear_from_0_996_to_1() -> None:
    model = _model()
    assert model.momentum(0, 1000) == pytest.approx(0.996)
    assert model.momentum(250, 1000) == pytest.approx(0.997)
    assert model.momentum(500, 1000) == pytest.approx(0.998)
    assert model.momentum(1000, 1000) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step=1001"):
        model.momentum(1001, 1000)
    with pytest.raises(ValueError, match="total_steps=0"):
        model.momentum(0, 0)


def test_encode_is_the_mean_of_the_target_encoder_tokens() -> None:
    model = _model()
    _perturb_teacher(model)
    images = _images()
    features = model.encode(images)
    assert features.shape == (BATCH, 64)
    tokens = model.target_encoder(images)  # (B, 16, 64): no cls token
    assert tokens.shape == (BATCH, 16, 64)
    torch.testing.assert_close(features, tokens.mean(dim=1))
    assert not torch.allclose(features, model.encoder(images).mean(dim=1))


def _row(indices: VarlenIndices, index: int) -> VarlenIndices:
    """Row `index` alone, cut to its own length (no padding)."""
    return VarlenIndices(
        indices.ids[index : index + 1],
        indices.lengths[index : index + 1],
        indices.valid[index : index + 1],
    ).trimmed()


# A single image's embedding_std is undefined (torch warns); only the losses matter here.
@pytest.mark.filterwarnings("ignore:std\\(\\)")
def test_padded_batch_equals_each_image_alone() -> None:
    """Variable-length masks: padding changes nothing; the loss is the mean over all valid
    target tokens of the batch."""
    model = _model()
    _perturb_teacher(model)
    images, masks = _images(), _masks(model)
    assert masks.context.lengths.unique().numel() > 1  # per-image sizes: padding is exercised
    batch_loss, _ = model(images, masks)
    total, count = 0.0, 0
    for index in range(BATCH):
        alone = dataclasses.replace(
            masks, context=_row(masks.context, index), targets=_row(masks.targets, index)
        )
        assert alone.context.valid.all() and alone.targets.valid.all()
        loss, _ = model(images[index : index + 1], alone)
        tokens = int(alone.targets.lengths.sum())
        total, count = total + loss * tokens, count + tokens
    torch.testing.assert_close(batch_loss, total / count, atol=1e-6, rtol=1e-5)


def test_reference_backends_give_the_same_loss_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model()
    _perturb_teacher(model)
    images, masks = _images(), _masks(model)
    assert_reference_backends_agree(monkeypatch, model, images, masks)


def _apply_masks(tokens: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """The official apply_masks: gather each mask's rows, concatenate mask-major."""
    dim = tokens.shape[-1]
    return torch.cat([tokens.gather(1, m.unsqueeze(-1).expand(-1, -1, dim)) for m in masks])


def _official_encoder(vit, images: torch.Tensor, masks=None) -> torch.Tensor:
    """The official VisionTransformer.forward: conv patch embedding of the whole image, + the
    sin-cos table, keep the masked rows, blocks, norm."""
    tokens = vit.patch_embed(images) + vit.pos_embed
    if masks is not None:
        tokens = _apply_masks(tokens, masks)
    for block in vit.blocks:
        tokens = block(tokens)
    return vit.norm(tokens)


def _official_loss(model: JEPAModel, images: torch.Tensor, masks) -> torch.Tensor:
    """src/train.py's forward_target, forward_context and loss_fn, with the official
    VisionTransformerPredictor.forward written out (block-major batching of the targets)."""
    batch = images.shape[0]
    masks_enc = [masks.context.ids]
    masks_pred = list(masks.targets.ids.unbind(1))
    with torch.no_grad():
        h = _official_encoder(model.target_encoder, images)
        h = F.layer_norm(h, (h.size(-1),))
        h = _apply_masks(h, masks_pred)  # repeat_interleave_batch with one context: unchanged
    z = _official_encoder(model.encoder, images, masks_enc)
    predictor = model.predictor
    x = predictor.predictor_embed(z)
    table = predictor.predictor_pos_embed.repeat(batch, 1, 1)
    x = x + _apply_masks(table, masks_enc)
    num_context = x.shape[1]
    pos = _apply_masks(table, masks_pred)
    pred_tokens = predictor.mask_tokens[0].repeat(pos.size(0), pos.size(1), 1) + pos
    x = torch.cat([x.repeat(len(masks_pred), 1, 1), pred_tokens], dim=1)
    for block in predictor.predictor_blocks:
        x = block(x)
    x = predictor.predictor_proj(predictor.predictor_norm(x)[:, num_context:])
    return F.smooth_l1_loss(x, h)


def test_loss_equals_the_official_formulation_with_official_masks() -> None:
    model = _model(per_batch_sizes=True, truncate=True)
    _perturb_teacher(model)
    images, masks = _images(), _masks(model)
    assert masks.context.valid.all() and masks.targets.valid.all()  # truncated to dense
    loss, _ = model(images, masks)
    torch.testing.assert_close(loss, _official_loss(model, images, masks), atol=1e-6, rtol=1e-5)


def test_sampled_masks_follow_the_config() -> None:
    model = _model(truncate=True, per_batch_sizes=True)
    torch.manual_seed(5)
    masks = model.sample_masks(8)
    assert masks.context.valid.all() and masks.targets.valid.all()
    assert masks.targets.ids.shape[:2] == (8, 4)
    context = masks.context_mask.gather(1, masks.targets.ids.flatten(1))
    assert not context.any()  # no target patch is in the context
    torch.manual_seed(5)
    again = model.sample_masks(8)
    assert torch.equal(again.context.ids, masks.context.ids)  # torch.manual_seed fixes them


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"predictor_width": 32}, r"unknown key\(s\) 'predictor_width'"),
        ({"predictor_dim": "32"}, r"predictor_dim='32' is not allowed: expected int"),
        ({"truncate": 1}, r"truncate=1 is not allowed: expected bool"),
        ({"min_keep": 10}, r"min_keep: not allowed on the \(4, 4\) patch grid"),
        ({"target_scale": (0.3, 0.2)}, r"target_scale must be a pair"),
        ({"predictor_heads": 5}, r"predictor_heads=5 is not allowed: None \(the encoder's 4\)"),
        ({"predictor_dim": 30, "predictor_heads": 5}, r"predictor_dim=30 is not allowed"),
        ({"img_size": 36}, r"img_size=36 is not allowed: a multiple of patch_size 8"),
        ({"ema_momentum": (1.0, 0.996)}, r"ema_momentum=\(1\.0, 0\.996\) is not allowed"),
        ({"encoder_dim": 100, "encoder_depth": None}, r"encoder_dim=100 is not allowed"),
        (
            {"patch_embed_init": "kaiming"},
            r"patch_embed_init='kaiming' is not allowed: expected one of",
        ),
    ],
)
def test_bad_configs_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        JEPAModel({**JEPAModel.tiny_preset, **overrides})


def test_wrong_image_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 32, 32\).*\(2, 3, 48, 48\)"):
        _model()(torch.randn(2, 3, 48, 48))


def _official_vit_parameters(dim: int, depth: int, patch: int, channels: int = 3) -> int:
    """The official VisionTransformer's trainable parameters (mlp_ratio 4, qkv bias)."""
    block = (
        2 * dim  # norm1
        + dim * 3 * dim + 3 * dim  # attn.qkv
        + dim * dim + dim  # attn.proj
        + 2 * dim  # norm2
        + dim * 4 * dim + 4 * dim  # mlp.fc1
        + 4 * dim * dim + dim  # mlp.fc2
    )  # fmt: skip
    return channels * patch * patch * dim + dim + depth * block + 2 * dim


def _official_predictor_parameters(encoder_dim: int, dim: int, depth: int, tokens: int) -> int:
    """The official VisionTransformerPredictor's trainable parameters."""
    return (
        encoder_dim * dim + dim  # predictor_embed
        + tokens * dim  # mask token(s)
        + _official_vit_parameters(dim, depth, 0) - dim  # blocks and predictor_norm, no patches
        + dim * encoder_dim + encoder_dim  # predictor_proj
    )  # fmt: skip


def test_official_size_on_the_meta_device() -> None:
    model = JEPAModel(device="meta")
    config = model.config
    assert (config.img_size, config.patch_size, config.encoder_dim) == (224, 14, 1280)
    assert len(model.encoder.blocks) == 32 and model.encoder.blocks[0].attn.num_heads == 16
    assert model.predictor.predictor_blocks[0].attn.num_heads == 16  # the encoder's heads

    def count(module, trainable=True):
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

    encoder = _official_vit_parameters(1280, 32, 14)
    assert encoder == 630_434_560  # ViT-H/14 without a head: 630.4M (+ 0.33M fixed sin-cos)
    assert count(model.encoder) == encoder
    assert count(model.encoder, trainable=False) == encoder + 256 * 1280
    predictor = _official_predictor_parameters(1280, 384, 12, tokens=1)
    assert predictor == 22_279_424
    assert count(model.predictor) == predictor
    assert count(model.target_encoder) == 0
    assert count(model.target_encoder, trainable=False) == encoder + 256 * 1280
    assert all(p.is_meta for p in model.parameters())


def test_tiny_preset_and_config_types() -> None:
    config = JEPAModel.preset("tiny")
    assert isinstance(config, JEPAConfig)
    assert (config.img_size, config.patch_size, config.encoder_dim) == (32, 8, 64)
    assert (config.predictor_dim, config.predictor_depth, config.min_keep) == (32, 2, 1)
    assert JEPAModel(config).config == JEPAModel(dataclasses.asdict(config)).config
    masks = multiblock_mask(2, config.grid(), min_keep=config.min_keep)
    assert masks.targets.ids.shape[1] == config.num_targets


def test_meta_build_then_init_weights_trains() -> None:
    model = JEPAModel(JEPAModel.preset("tiny"), device="meta")
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    for (name, teacher), student in zip(
        model.target_encoder.named_parameters(), model.encoder.parameters()
    ):
        assert torch.equal(teacher, student), name
    torch.testing.assert_close(model.encoder.pos_embed, _model().encoder.pos_embed)
    loss, _ = model(_images())
    assert torch.isfinite(loss)
    model.train()
    assert model.encoder.training and not model.target_encoder.training


@pytest.mark.parametrize("device", [None, "meta"])
def test_xavier_patch_embedding_keeps_content_at_the_scale_of_the_positions(device) -> None:
    """The official truncated normal (std 0.02) gives a token's content a std of 0.02 * sqrt(
    inputs per patch); xavier-uniform a weight std of sqrt(2 / (inputs + dim)). On 4 x 4
    greyscale patches (16 inputs) into 64 channels: 0.158 against 0.02."""
    settings = {"img_size": 28, "patch_size": 4, "in_chans": 1, "min_keep": 4}
    stds = {}
    for init in ("official", "xavier"):
        torch.manual_seed(0)
        model = JEPAModel(
            JEPAModel.preset("tiny", **settings, patch_embed_init=init), device=device
        )
        if device == "meta":
            model.to_empty(device="cpu")
            model.init_weights()
        weight = model.encoder.patch_embed.proj.weight
        fan_in, fan_out = weight[0].numel(), weight.shape[0]
        stds[init] = weight.std().item()
        expected = 0.02 if init == "official" else (2 / (fan_in + fan_out)) ** 0.5
        assert abs(stds[init] / expected - 1) < 0.15, (init, stds[init], expected)
        assert torch.equal(model.target_encoder.patch_embed.proj.weight, weight)
    assert stds["xavier"] > 3 * stds["official"]
