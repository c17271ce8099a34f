"""VJEPAModel (V-JEPA 2) at the tiny preset on the CPU: the seed's video API, gradients, training,
the EMA teacher and its schedules, padding, backends, the official loss formulation (sorted
predictor tokens), the official sizes."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from model_checks import (
    assert_loss_falls_with_the_teacher_following,
    assert_reference_backends_agree,
    assert_update_teacher_is_the_ema,
)

from nexus_fast.masking import VarlenIndices
from nexus_fast.models.ssl.vjepa2 import MASK_GENERATORS, VJEPAConfig, VJEPAModel

BATCH = 4


def _model(**overrides) -> VJEPAModel:
    torch.manual_seed(0)
    return VJEPAModel(VJEPAModel.preset("tiny", **overrides))


def _video(batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


def _masks(model: VJEPAModel, batch: int = BATCH, seed: int = 2):
    return tuple(
        dataclasses.replace(mask, context=mask.context.trimmed(), target=mask.target.trimmed())
        for mask in model.config.masks(batch, torch.Generator().manual_seed(seed))
    )


def _perturb(model: VJEPAModel) -> None:
    """A teacher that differs from the student and non-zero mask tokens, as after training."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in [*model.target_encoder.parameters(), *model.predictor.mask_tokens]:
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))


def test_the_seed_video_example_at_a_small_size() -> None:
    model = _model()
    video = torch.randn(4, 3, 4, 32, 32)  # the seed's (4, 3, 16, 224, 224), tiny
    loss, metrics = model(video)
    assert isinstance(loss, torch.Tensor) and isinstance(metrics, dict)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and loss.requires_grad
    assert torch.isfinite(loss)
    names = [
        f"{kind}_{g}" for g in MASK_GENERATORS for kind in ("loss", "context_size", "target_size")
    ]
    assert set(metrics) == {"loss", "embedding_std", *names}
    assert all(value.dim() == 0 and not value.requires_grad for value in metrics.values())
    # The loss is the mean of the two generators' losses.
    torch.testing.assert_close(
        loss.detach(), (metrics["loss_short_range"] + metrics["loss_long_range"]) / 2
    )
    # A (2, 4, 4) grid of 32 tubelets: context and target partition it.
    for name in MASK_GENERATORS:
        size = metrics[f"context_size_{name}"] + metrics[f"target_size_{name}"]
        assert size == 32 and metrics[f"context_size_{name}"] >= 1


def test_every_trainable_parameter_gets_a_gradient_and_the_teacher_none() -> None:
    model = _model()
    loss, _ = model(_video())
    loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    expected = {
        name for name, _ in model.named_parameters() if name.startswith(("encoder.", "predictor."))
    }
    assert trainable == expected  # RoPE everywhere: no fixed position tables
    assert {"predictor.mask_tokens.0", "predictor.mask_tokens.1"} <= trainable
    without = [n for n, p in model.named_parameters() if n in trainable and p.grad is None]
    assert without == []
    zero = [n for n, p in model.named_parameters() if n in trainable and not p.grad.any()]
    assert zero == []
    assert all(torch.isfinite(p.grad).all() for n, p in model.named_parameters() if n in trainable)
    for parameter in model.target_encoder.parameters():
        assert not parameter.requires_grad and parameter.grad is None


def test_loss_falls_with_the_teacher_following() -> None:
    """Clips of one colour each plus a little noise: the target features are predictable from
    the context, so the loss must fall fast (on white noise an L1 JEPA loss barely moves in 20
    steps: the targets carry no positional signal under RoPE)."""
    generator = torch.Generator().manual_seed(4)
    colours = torch.randn(BATCH, 3, 1, 1, 1, generator=generator)
    video = colours + 0.1 * torch.randn(BATCH, 3, 4, 32, 32, generator=generator)
    assert_loss_falls_with_the_teacher_following(_model(), (video, _masks(_model())), 3e-3)


def test_update_teacher_is_the_ema_of_every_tensor() -> None:
    model = _model()
    _perturb(model)
    momentum = model.momentum(0, 10)
    assert momentum == pytest.approx(0.99925)
    assert_update_teacher_is_the_ema(model, momentum)


def test_momentum_schedules() -> None:
    model = _model()
    assert [model.momentum(step, 100) for step in (0, 50, 100)] == [0.99925] * 3
    vjepa1 = _model(ema_momentum=(0.998, 1.0))
    assert vjepa1.momentum(0, 100) == pytest.approx(0.998)
    assert vjepa1.momentum(50, 100) == pytest.approx(0.999)
    assert vjepa1.momentum(100, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step=-1"):
        model.momentum(-1, 100)


def test_encode_is_the_mean_of_the_target_encoder_tokens() -> None:
    model = _model()
    _perturb(model)
    video = _video()
    features = model.encode(video)
    assert features.shape == (BATCH, 64)
    tokens = model.target_encoder(video)
    assert tokens.shape == (BATCH, 32, 64)
    torch.testing.assert_close(features, tokens.mean(dim=1))


def _row(indices: VarlenIndices, index: int) -> VarlenIndices:
    return VarlenIndices(
        indices.ids[index : index + 1],
        indices.lengths[index : index + 1],
        indices.valid[index : index + 1],
    ).trimmed()


# A single clip's embedding_std is undefined (torch warns); only the losses matter here.
@pytest.mark.filterwarnings("ignore:std\\(\\)")
def test_padded_batch_equals_each_clip_alone() -> None:
    model = _model()
    _perturb(model)
    video, masks = _video(), _masks(model)
    assert any(mask.context.lengths.unique().numel() > 1 for mask in masks)  # padding is used
    _, metrics = model(video, masks)
    for group, name in enumerate(MASK_GENERATORS):
        total, count = 0.0, 0
        for index in range(BATCH):
            alone = [
                dataclasses.replace(m, context=_row(m.context, index), target=_row(m.target, index))
                for m in masks
            ]
            _, clip_metrics = model(video[index : index + 1], alone)
            tokens = int(alone[group].target.lengths.sum())
            total, count = total + clip_metrics[f"loss_{name}"] * tokens, count + tokens
        torch.testing.assert_close(metrics[f"loss_{name}"], total / count, atol=1e-6, rtol=1e-5)


def test_reference_backends_give_the_same_loss_and_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _model()
    _perturb(model)
    video, masks = _video(), _masks(model)
    assert_reference_backends_agree(monkeypatch, model, video, masks)


def _apply_masks(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return tokens.gather(1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def _official_encoder(vit, video: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """The official RoPE VisionTransformer.forward: Conv3d tubelet embedding of the whole clip,
    keep the masked rows, blocks rotating q and k by each kept token's (t, h, w), norm."""
    tokens = vit.patch_embed(video)
    if ids is None:
        ids = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
    tokens = _apply_masks(tokens, ids)
    positions = vit.blocks[0].attn.rope.positions(ids)
    for block in vit.blocks:
        tokens = block(tokens, positions=positions)
    return vit.norm(tokens)


def _official_loss(model: VJEPAModel, video: torch.Tensor, masks) -> torch.Tensor:
    """app/vjepa/train.py's step with the official predictor.forward written out: context and
    mask tokens concatenated, sorted by position, blocks, norm, unsorted, mask rows projected;
    loss mean |z - h|^p / p per generator, averaged."""
    predictor, p = model.predictor, model.config.loss_exp
    with torch.no_grad():
        h = _official_encoder(model.target_encoder, video)
        h = F.layer_norm(h, (h.size(-1),))
    loss = 0.0
    for index, mask in enumerate(masks):
        context_ids, target_ids = mask.context.ids, mask.target.ids
        z = _official_encoder(model.encoder, video, context_ids)
        x = predictor.predictor_embed(z)
        num_context = x.shape[1]
        pred_tokens = predictor.mask_tokens[index].repeat(x.shape[0], target_ids.shape[1], 1)
        x = torch.cat([x, pred_tokens], dim=1)
        positions = torch.cat([context_ids, target_ids], dim=1)
        argsort = positions.argsort(dim=1)
        x = x.gather(1, argsort.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        rope_positions = predictor.rope.positions(positions.gather(1, argsort))
        for block in predictor.predictor_blocks:
            x = block(x, positions=rope_positions)
        x = predictor.predictor_norm(x)
        x = x.gather(1, argsort.argsort(dim=1).unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        z = predictor.predictor_proj(x[:, num_context:])
        loss = loss + torch.mean(torch.abs(z - _apply_masks(h, target_ids)) ** p) / p
    return loss / len(masks)


@pytest.mark.parametrize("loss_exp", [1.0, 2.0])
def test_loss_equals_the_official_formulation_with_official_masks(loss_exp: float) -> None:
    model = _model(truncate=True, loss_exp=loss_exp)
    _perturb(model)
    video, masks = _video(), _masks(model)
    assert all(m.context.valid.all() and m.target.valid.all() for m in masks)  # dense
    loss, _ = model(video, masks)
    torch.testing.assert_close(loss, _official_loss(model, video, masks), atol=1e-6, rtol=1e-5)


def test_sampled_masks_partition_the_clip() -> None:
    model = _model()
    torch.manual_seed(5)
    masks = model.sample_masks(BATCH)
    assert len(masks) == 2
    for mask in masks:
        assert (mask.context_mask ^ mask.target_mask).all()
        assert torch.equal(mask.context.lengths + mask.target.lengths, torch.full((BATCH,), 32))
    torch.manual_seed(5)
    assert torch.equal(model.sample_masks(BATCH)[1].target.ids, masks[1].target.ids)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"predictor_widht": 32}, r"unknown key\(s\) 'predictor_widht'"),
        ({"num_frames": 4.0}, r"num_frames=4\.0 is not allowed: expected int"),
        ({"ema_momentum": 0.99925}, r"ema_momentum=0\.99925 is not allowed: expected a sequence"),
        ({"num_frames": 3}, r"num_frames=3 is not allowed: a multiple of tubelet 2"),
        ({"predictor_heads": 8}, r"predictor_heads=8 is not allowed: .* at least 6"),
        ({"predictor_heads": 5}, r"predictor_heads=5 is not allowed"),
        ({"encoder_heads": 16}, r"encoder_heads=16 is not allowed: .* at least 6"),
        ({"num_registers": 1}, r"num_registers=1 is not allowed"),
        ({"loss_exp": 0.0}, r"loss_exp=0\.0 is not allowed: > 0"),
        (
            {"patch_embed_init": "normal"},
            r"patch_embed_init='normal' is not allowed: expected one of",
        ),
        ({"ema_momentum": (0.99, 1.01)}, r"ema_momentum=\(0\.99, 1\.01\) is not allowed"),
        ({"img_size": 8}, r"the \(2, 1, 1\) tubelet grid does not fit V-JEPA 2's masks"),
    ],
)
def test_bad_configs_raise(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VJEPAModel({**VJEPAModel.tiny_preset, **overrides})


def test_wrong_video_shape_raises() -> None:
    model = _model()
    with pytest.raises(ValueError, match=r"video must be \(B, 3, 4, 32, 32\).*\(2, 3, 8, 32, 32\)"):
        model(torch.randn(2, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="video must be"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="masks must hold 2 TubeMasks"):
        model(_video(), _masks(model)[:1])


def _official_vit_parameters(dim: int, depth: int, patch_volume: int) -> int:
    """The official VisionTransformer's parameters (mlp_ratio 4, qkv bias, RoPE: no table)."""
    block = (
        2 * dim  # norm1
        + dim * 3 * dim + 3 * dim  # attn.qkv
        + dim * dim + dim  # attn.proj
        + 2 * dim  # norm2
        + dim * 4 * dim + 4 * dim  # mlp.fc1
        + 4 * dim * dim + dim  # mlp.fc2
    )  # fmt: skip
    return patch_volume * dim + dim + depth * block + 2 * dim


def test_official_size_on_the_meta_device() -> None:
    model = VJEPAModel(device="meta")
    config = model.config
    assert (config.img_size, config.num_frames, config.tubelet, config.patch_size) == (
        256,
        16,
        2,
        16,
    )
    assert config.grid() == (8, 16, 16)
    assert len(model.encoder.blocks) == 24 and model.encoder.blocks[0].attn.num_heads == 16
    assert model.predictor.predictor_blocks[0].attn.num_heads == 12

    def count(module):
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    encoder = _official_vit_parameters(1024, 24, 3 * 2 * 16 * 16)
    assert encoder == 303_885_312  # ViT-L/16 with a 2-frame tubelet embedding: ~304M
    assert count(model.encoder) == encoder
    blocks_and_norm = _official_vit_parameters(384, 12, 0) - 384
    official_predictor = (1024 * 384 + 384) + 10 * 384 + blocks_and_norm + (384 * 1024 + 1024)
    assert official_predictor == 22_086_016  # 10 mask tokens in the official checkpoint
    assert count(model.predictor) == official_predictor - 8 * 384  # one per generator here
    assert count(model.target_encoder) == 0
    assert sum(p.numel() for p in model.target_encoder.parameters()) == encoder
    assert all(p.is_meta for p in model.parameters())


def test_tiny_preset() -> None:
    config = VJEPAModel.preset("tiny")
    assert isinstance(config, VJEPAConfig)
    assert (config.img_size, config.patch_size, config.num_frames, config.tubelet) == (32, 8, 4, 2)
    assert (config.encoder_dim, config.encoder_depth, config.encoder_heads) == (64, 2, 4)
    assert (config.predictor_dim, config.predictor_depth, config.predictor_heads) == (32, 2, 4)
    assert VJEPAModel(config).encoder.config.pos_embed == "rope"


def test_meta_build_then_init_weights_trains() -> None:
    model = VJEPAModel(VJEPAModel.preset("tiny"), device="meta")
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    for (name, teacher), student in zip(
        model.target_encoder.named_parameters(), model.encoder.parameters()
    ):
        assert torch.equal(teacher, student), name
    assert not any(token.any() for token in model.predictor.mask_tokens)  # zero-initialised
    loss, _ = model(_video())
    assert torch.isfinite(loss)
    model.train()
    assert model.encoder.training and not model.target_encoder.training
