"""data2vec 2.0 (nexus_fast.models.ssl.data2vec): outputs, gradients, training, the EMA teacher
and its schedule, config validation, the official sizes, and the step against the official
sequence (fairseq data2vec2.py, modalities/base.py and modules.py) written out below."""

import math

import pytest
import torch
import torch.nn.functional as F

from nexus_fast.masking import inverse_block_mask
from nexus_fast.models.ssl.data2vec import Data2VecConfig, Data2VecModel

BATCH, CLONES, PATCHES, DIM = 3, 2, 16, 64


def tiny(**overrides) -> Data2VecModel:
    torch.manual_seed(0)
    return Data2VecModel(Data2VecModel.preset("tiny", **overrides))


def images(batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny_masks(batch: int = BATCH, seed: int = 2):
    return inverse_block_mask(
        batch, (4, 4), num_clones=CLONES, generator=torch.Generator().manual_seed(seed)
    )


# --- the official step, written out ---------------------------------------------------------


def official_decoder(decoder, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """modules.py Decoder2d.forward on the weights of our decoder."""
    batch, length, channels = x.shape
    x = x.transpose(1, 2).reshape(batch, channels, *grid)
    residual = x
    for block in decoder.blocks:
        conv = block[0]
        x = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
        x = F.layer_norm(x.transpose(-3, -1), x.shape[1:2]).transpose(-3, -1)  # TransposeLast
        x = F.gelu(x)
        if residual.size(1) == x.size(1):  # DecoderBase.add_residual
            x = x + residual
        residual = x
    x = x.reshape(batch, -1, length).transpose(1, 2)
    return F.linear(x, decoder.proj.weight, decoder.proj.bias)


def official_loss(model: Data2VecModel, imgs: torch.Tensor, mask: torch.Tensor):
    """data2vec2.py forward (targets, clones, decoder_input with zero noise, d2v_loss, cls loss)
    as the criterion reduces it: every loss summed, then divided by the masked-token count.
    Returns the loss, the cls part and pred_var, and the unshuffle indices."""
    config, encoder = model.config, model.encoder
    clones, top_k = config.clone_batch, config.average_top_k_layers
    with torch.no_grad():
        ffn = model.teacher.forward_features(imgs, collect="ffn").layers
        layers = [layer[:, 1:] for layer in ffn][-top_k:]  # drop the extra (cls) token
        layers = [
            F.instance_norm(layer.transpose(1, 2).float()).transpose(1, 2) for layer in layers
        ]
        y = sum(layers[1:], layers[0].clone()) / len(layers)
        y = F.layer_norm(y, y.shape[-1:])

    # make_maskinfo: kept patches first; a stable argsort orders each group by position
    ids_shuffle = mask.to(torch.uint8).argsort(dim=1, stable=True)
    ids_restore = ids_shuffle.argsort(dim=1)
    len_keep = int(mask.shape[1] - mask[0].sum())
    ids_keep = ids_shuffle[:, :len_keep]

    x = encoder.patch_embed(imgs) + encoder.pos_embed[:, 1:]
    x = x.repeat_interleave(clones, 0)
    dim = x.shape[-1]
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    extra = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([extra, x], dim=1)
    for block in encoder.blocks:
        x = block(x)
    x = encoder.norm(x)

    num_masked = ids_restore.shape[1] - x.shape[1] + 1
    mask_tokens = x.new_zeros(x.size(0), num_masked, dim)  # N(0, mask_noise_std = 0)
    dx = torch.cat([x[:, 1:], mask_tokens], dim=1)
    dx = torch.gather(dx, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
    dx = official_decoder(model.decoder, dx, (4, 4))

    scale = 1 / math.sqrt(dim)
    masked = mask.bool()
    regression = F.mse_loss(
        dx[masked].float(), y.repeat_interleave(clones, 0)[masked], reduction="none"
    )
    sample_size = masked.sum()
    cls_target = y.mean(dim=1).repeat_interleave(clones, 0)
    cls = F.mse_loss(x[:, 0].float(), cls_target, reduction="none") * scale
    cls = cls * (config.cls_loss * sample_size)
    pred_var = torch.sqrt(dx[masked].float().var(dim=0) + 1e-6).mean()  # compute_var
    loss = (regression.sum() * scale + cls.sum()) / sample_size
    return loss, {"cls": cls.sum() / sample_size, "pred_var": pred_var}, ids_restore


# --- tests ----------------------------------------------------------------------------------


def test_forward_returns_loss_and_metrics() -> None:
    model = tiny()
    loss, metrics = model(images())
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert set(metrics) == {"regression", "cls", "pred_var", "target_var", "embedding_std"}
    for name, value in metrics.items():
        assert value.shape == () and not value.requires_grad and torch.isfinite(value), name
    torch.testing.assert_close(metrics["regression"] + metrics["cls"], loss.detach())
    assert metrics["target_var"] > 0.9  # layer-normed targets: unit variance per token
    assert metrics["embedding_std"] > 0.01


def test_matches_the_official_step() -> None:
    # decoder_dim 32 != encoder_dim 64: the first convolution block has no residual, as fairseq.
    model = tiny(mask_noise_std=0.0, decoder_dim=32)
    x, masks = images(), tiny_masks()
    loss, metrics = model(x, masks=masks)
    expected, expected_metrics, ids_restore = official_loss(model, x, masks.mask)
    assert torch.equal(masks.ids_restore, ids_restore)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for name, value in expected_metrics.items():
        torch.testing.assert_close(metrics[name], value.detach(), rtol=1e-5, atol=1e-6)
    parameters = [p for p in model.parameters() if p.requires_grad]
    for ours, theirs in zip(
        torch.autograd.grad(loss, parameters), torch.autograd.grad(expected, parameters)
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_decoder_input_is_noise_at_masked_positions_only() -> None:
    model = tiny()
    masks = tiny_masks(batch=64)
    kept = torch.randn(64 * CLONES, masks.ids_keep.shape[1], DIM)
    filled = model.decoder_input(kept, masks)
    expected_kept = torch.gather(filled, 1, masks.ids_keep.unsqueeze(-1).expand(-1, -1, DIM))
    torch.testing.assert_close(expected_kept, kept, rtol=0, atol=0)
    noise = filled[masks.mask]
    assert abs(noise.std().item() - 0.01) < 1e-3 and abs(noise.mean().item()) < 1e-3


def test_backward_reaches_every_trainable_parameter() -> None:
    model = tiny()
    loss, _ = model(images())
    loss.backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    teacher = {f"teacher.{name}" for name, _ in model.teacher.named_parameters()}
    # The teacher moves by EMA only; the student's sin-cos table is fixed.
    assert frozen == teacher | {"encoder.pos_embed"}
    assert all(p.grad is None for p in model.teacher.parameters())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_loss_falls_over_twenty_steps() -> None:
    model = tiny()
    x = images(batch=8)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.95))
    losses = []
    for step in range(20):
        loss, _ = model(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_teacher(model.momentum(step + 1, 20))
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    assert sum(losses[-5:]) < sum(losses[:5]), losses


def test_update_teacher_applies_the_ema_rule_to_every_tensor() -> None:
    model = tiny()
    with torch.no_grad():  # a student that has moved away from its teacher
        for parameter in model.encoder.parameters():
            parameter.add_(torch.randn_like(parameter))
    momentum = 0.9
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    assert teacher_before.keys() == student.keys()
    model.update_teacher(momentum)
    after = model.teacher.state_dict()
    for name, old in teacher_before.items():
        expected = momentum * old + (1 - momentum) * student[name]
        torch.testing.assert_close(after[name], expected, rtol=1e-6, atol=1e-6, msg=name)
        assert not torch.equal(after[name], old) or torch.equal(old, student[name]), name
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, student[name]), name


def test_momentum_schedule() -> None:
    model = tiny()
    total = 375_300  # the official base run's updates; the anneal ends at 100k regardless
    assert model.momentum(0, total) == pytest.approx(0.9998, abs=1e-12)
    assert model.momentum(25_000, total) == pytest.approx(0.9998 + 0.25 * 0.00019, abs=1e-12)
    assert model.momentum(50_000, total) == pytest.approx(0.999895, abs=1e-12)
    assert model.momentum(100_000, total) == 0.99999
    assert model.momentum(300_000, total) == 0.99999
    over_training = tiny(ema_anneal_end_step=None)
    assert over_training.momentum(5, 10) == pytest.approx(0.999895, abs=1e-12)
    assert over_training.momentum(10, 10) == 0.99999


def test_encode_is_the_student_patch_mean() -> None:
    model = tiny().eval()
    x = images()
    features = model.encode(x)
    assert features.shape == (BATCH, DIM)
    tokens = model.encoder(x)  # (B, 1 + L, D), normalised
    torch.testing.assert_close(features, tokens[:, 1:].mean(dim=1))


def test_teacher_stays_in_eval_mode() -> None:
    model = tiny()
    model.train()
    assert model.encoder.training and model.decoder.training and not model.teacher.training


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"clone_batchh": 2}, "clone_batchh"),
        ({"clone_batch": 2.0}, "clone_batch"),
        ({"clone_batch": 0}, "clone_batch"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": 0.95}, "mask_ratio"),  # keeps int(16 * 0.05) = 0 patches
        ({"img_size": 30}, "img_size"),
        ({"average_top_k_layers": 3}, "average_top_k_layers"),  # the tiny encoder has 2 blocks
        ({"decoder_groups": 5}, "decoder_groups"),
        ({"decoder_kernel": 4}, "decoder_kernel"),
        ({"ema_end_decay": 1.5}, "ema_end_decay"),
        ({"ema_anneal_end_step": 0}, "ema_anneal_end_step"),
    ],
)
def test_config_errors_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Data2VecModel({**Data2VecModel.tiny_preset, **change})


def test_official_size_parameter_count_on_meta() -> None:
    """data2vec 2.0 base (base_images_only_task.yaml), counted from the architecture: patch
    embedding, extra token, 2 + 10 blocks, one LayerNorm (fairseq: before the blocks; here:
    after them), the 6-layer grouped-conv decoder; the teacher copies the encoder."""
    model = Data2VecModel(device="meta")
    assert all(p.is_meta for p in model.parameters())
    dim, pixels, patches, groups, kernel = 768, 16 * 16 * 3, 196, 16, 3

    def block_params(width: int) -> int:  # norm1, qkv, proj, norm2, fc1, fc2 (MLP ratio 4)
        norms = 2 * (2 * width)
        attention = (width * 3 * width + 3 * width) + (width * width + width)
        mlp = (width * 4 * width + 4 * width) + (4 * width * width + width)
        return norms + attention + mlp

    encoder = (pixels * dim + dim) + dim + 2 * dim + 12 * block_params(dim)
    conv = dim * (dim // groups) * kernel * kernel + dim
    decoder = 6 * conv + (dim * dim + dim)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    teacher = sum(p.numel() for p in model.teacher.parameters())
    assert decoder == 2_585_856
    assert trainable == encoder + decoder == 88_233_216
    # Each encoder also holds its fixed sin-cos table: (1 + L) rows here, L in fairseq.
    assert teacher == encoder + (patches + 1) * dim
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_meta_build_then_init_weights() -> None:
    model = Data2VecModel(Data2VecModel.preset("tiny"), device="meta").to_empty(device="cpu")
    model.init_weights()
    for teacher, student in zip(model.teacher.parameters(), model.encoder.parameters()):
        assert torch.equal(teacher, student)
    loss, _ = model(images())
    assert torch.isfinite(loss)


def test_reference_backend_gives_the_same_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()
    x = images()
    torch.manual_seed(5)  # the masks and the decoder's noise
    loss, metrics = model(x)
    monkeypatch.setenv("NEXUS_FAST_BACKEND", "reference")
    torch.manual_seed(5)
    reference_loss, reference_metrics = model(x)
    torch.testing.assert_close(reference_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reference_metrics["cls"], metrics["cls"], rtol=1e-5, atol=1e-6)


def test_config_defaults_are_the_official_base() -> None:
    config = Data2VecConfig()
    official = {
        "mask_ratio": 0.8,
        "mask_block_size": 3,
        "mask_adjust": 0.07,
        "clone_batch": 16,
        "average_top_k_layers": 10,
        "decoder_dim": 768,
        "decoder_layers": 6,
        "decoder_kernel": 3,
        "decoder_groups": 16,
        "mask_noise_std": 0.01,
        "cls_loss": 0.01,
        "ema_decay": 0.9998,
        "ema_end_decay": 0.99999,
        "ema_anneal_end_step": 100_000,
    }
    assert {key: getattr(config, key) for key in official} == official
