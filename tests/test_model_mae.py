"""MAE (nexus_fast.models.ssl.mae): the seed's API, gradients, training, config validation, the
official sizes, and the whole forward against the official sequence (facebookresearch/mae
models_mae.py) written out below in plain torch on the same weights and the same noise."""

import math
import types

import pytest
import torch
import torch.nn.functional as F

import nexus_fast as nf
from nexus_fast.layers import sincos_pos_embed
from nexus_fast.masking import random_mask
from nexus_fast.models.ssl.mae import MAE, MAEConfig

BATCH = 3


def tiny(**overrides) -> MAE:
    torch.manual_seed(0)
    return MAE(MAE.preset("tiny", **overrides))


def images(batch: int = BATCH, size: int = 32, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, size, size, generator=generator, dtype=dtype)


# --- the official forward, written out ------------------------------------------------------


def official_block(block, x: torch.Tensor) -> torch.Tensor:
    """timm's pre-norm Block on the weights of one of our blocks, attention spelt out."""
    batch, length, dim = x.shape
    heads = block.attn.num_heads
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, block.norm1.eps)
    qkv = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias)
    q, k, v = qkv.reshape(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(batch, length, dim)
    x = x + F.linear(h, block.attn.proj.weight, block.attn.proj.bias)
    h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, block.norm2.eps)
    h = F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias))
    return x + F.linear(h, block.mlp.fc2.weight, block.mlp.fc2.bias)


def official_forward(model: MAE, imgs: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """models_mae.py forward_encoder (with random_masking), forward_decoder, forward_loss."""
    encoder, decoder, p = model.encoder, model.decoder, model.config.patch_size
    proj = encoder.patch_embed.proj
    x = F.conv2d(imgs, proj.weight, proj.bias, stride=p).flatten(2).transpose(1, 2)
    x = x + encoder.pos_embed[:, 1:, :]
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    x = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, dim))
    mask = torch.ones([n, length], dtype=imgs.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, dim=1, index=ids_restore)
    cls_token = encoder.cls_token + encoder.pos_embed[:, :1, :]
    x = torch.cat((cls_token.expand(n, -1, -1), x), dim=1)
    for block in encoder.blocks:
        x = official_block(block, x)
    x = F.layer_norm(x, (dim,), encoder.norm.weight, encoder.norm.bias, encoder.norm.eps)

    x = F.linear(x, decoder.embed.weight, decoder.embed.bias)
    mask_tokens = decoder.mask_token.repeat(n, ids_restore.shape[1] + 1 - x.shape[1], 1)
    x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
    x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
    x = torch.cat([x[:, :1, :], x_], dim=1) + decoder.pos_embed
    for block in decoder.blocks:
        x = official_block(block, x)
    norm = decoder.norm
    x = F.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, norm.eps)
    pred = F.linear(x, decoder.pred.weight, decoder.pred.bias)[:, 1:, :]

    h = w = imgs.shape[2] // p
    target = imgs.reshape(n, 3, h, p, w, p)
    target = torch.einsum("nchpwq->nhwpqc", target).reshape(n, h * w, p**2 * 3)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum(), pred, mask


# --- tests ----------------------------------------------------------------------------------


def test_forward_returns_the_seed_triple() -> None:
    model = tiny()
    x = images()
    loss, reconstructed, mask = model(x)
    num_patches, kept = 16, int(16 * (1 - 0.75))
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert reconstructed.shape == (BATCH, num_patches, 8 * 8 * 3)
    assert mask.shape == (BATCH, num_patches) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert (mask.sum(dim=1) == num_patches - kept).all()
    assert nf.ops.unpatchify(reconstructed, 8).shape == x.shape


def test_other_image_size_and_video() -> None:
    loss, reconstructed, mask = tiny()(images(size=48))  # positions resized to the 6x6 grid
    assert reconstructed.shape == (BATCH, 36, 192) and mask.shape == (BATCH, 36)
    assert torch.isfinite(loss)
    video = tiny(num_frames=4, tubelet=2)
    clip = torch.randn(2, 3, 4, 32, 32)
    loss, reconstructed, mask = video(clip)
    assert reconstructed.shape == (2, 2 * 16, 2 * 8 * 8 * 3) and mask.shape == (2, 32)
    assert torch.isfinite(loss)
    assert nf.ops.unpatchify(reconstructed, 8, (4, 32, 32), tubelet=2).shape == clip.shape
    assert video.encode(clip).shape == (2, 64)


def test_backward_reaches_every_trainable_parameter() -> None:
    model = tiny()
    loss, _, _ = model(images())
    loss.backward()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    # The fixed sin-cos position tables are the only parameters the optimizer must not move.
    assert frozen == {"encoder.pos_embed", "decoder.pos_embed"}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_loss_falls_over_twenty_steps() -> None:
    model = tiny()
    x = images(batch=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    losses = []
    for _ in range(20):
        loss, _, _ = model(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert sum(losses[-5:]) < sum(losses[:5]), losses


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encode(pool: str) -> None:
    model = tiny(pool=pool).eval()
    x = images()
    features = model.encode(x)
    assert features.shape == (BATCH, 64)
    tokens = model.encoder(x)  # (B, 1 + L, D), normalised
    expected = tokens[:, 0] if pool == "cls" else tokens[:, 1:].mean(dim=1)
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"mask_ratoi": 0.75}, "mask_ratoi"),
        ({"mask_ratio": "0.75"}, "mask_ratio"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": 0.95}, "mask_ratio"),  # keeps int(16 * 0.05) = 0 patches
        ({"img_size": 30}, "img_size"),
        ({"decoder_heads": 5}, "decoder_heads"),
        ({"decoder_depth": 0}, "decoder_depth"),
        ({"pool": "max"}, "pool"),
        ({"num_registers": 1}, "num_registers"),
        ({"norm_pix_loss": 1}, "norm_pix_loss"),
    ],
)
def test_config_errors_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        MAE({**MAE.tiny_preset, **change})


def test_official_size_parameter_count_on_meta() -> None:
    """mae_vit_base_patch16_dec512d8b, counted from the architecture's formulas."""
    model = MAE(
        {"img_size": 224, "patch_size": 16, "encoder_dim": 768, "decoder_dim": 512},
        device="meta",
    )
    assert all(p.is_meta for p in model.parameters())

    def block_params(width: int) -> int:  # a pre-norm block with MLP ratio 4
        norms = 2 * (2 * width)
        attention = (width * 3 * width + 3 * width) + (width * width + width)  # qkv, proj
        mlp = (width * 4 * width + 4 * width) + (4 * width * width + width)  # fc1, fc2
        return norms + attention + mlp

    dim, dec, patches, pixels = 768, 512, 196, 16 * 16 * 3
    encoder = (pixels * dim + dim) + dim + 12 * block_params(dim) + 2 * dim  # patch, cls, norm
    decoder = (dim * dec + dec) + dec + 8 * block_params(dec) + 2 * dec + (dec * pixels + pixels)
    fixed = (patches + 1) * dim + (patches + 1) * dec  # the two sin-cos tables
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert encoder == 85_647_360  # timm's vit_base_patch16_224 without head and pos_embed
    assert (trainable, frozen) == (encoder + decoder, fixed)
    assert trainable + frozen == 111_907_840  # the released MAE ViT-B checkpoint's size


def test_meta_build_then_init_weights() -> None:
    model = MAE(MAE.preset("tiny"), device="meta").to_empty(device="cpu")
    model.init_weights()
    expected = sincos_pos_embed(32, (4, 4), cls_token=True)
    torch.testing.assert_close(model.decoder.pos_embed[0], expected)
    loss, _, _ = model(images())
    assert torch.isfinite(loss)


def test_matches_the_official_forward_on_the_same_noise() -> None:
    model = tiny().double()
    x = images(dtype=torch.float64)
    noise = torch.rand(BATCH, 16, generator=torch.Generator().manual_seed(2))
    masks = random_mask(BATCH, 16, 0.75, noise=noise)
    loss, reconstructed, mask = model(x, masks=masks)
    expected_loss, expected_pred, expected_mask = official_forward(model, x, noise, 0.75)
    torch.testing.assert_close(mask, expected_mask.float(), rtol=0, atol=0)
    torch.testing.assert_close(reconstructed, expected_pred, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(loss.double(), expected_loss, rtol=1e-10, atol=1e-10)
    # and the gradients of both with respect to every parameter
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    official = torch.autograd.grad(
        expected_loss, [p for p in model.parameters() if p.requires_grad]
    )
    for ours, theirs in zip(grads, official):
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-10)


def test_reference_backend_gives_the_same_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()
    x = images()
    masks = random_mask(BATCH, 16, 0.75, generator=torch.Generator().manual_seed(3))
    loss, reconstructed, _ = model(x, masks=masks)
    monkeypatch.setenv("NEXUS_FAST_BACKEND", "reference")
    reference_loss, reference_pred, _ = model(x, masks=masks)
    torch.testing.assert_close(reference_pred, reconstructed, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference_loss, loss, rtol=1e-5, atol=1e-6)


# --- the seed document's MAE code blocks, at a small size -----------------------------------

# Copied from the seed (ssl_methods_README.md); the test swaps `nexus` for `nexus_fast`, the
# sizes for small ones and drops `.cuda()`. The basic usage block's import line also names
# JEPAModel and VICRegModel, which it does not use; they are imported by their own tests.
SEED_QUICK_START = """
import torch
from nexus.models.ssl import MAE

# Simple MAE pre-training
config = {
    "img_size": 224,
    "patch_size": 16,
    "encoder_dim": 768,
    "decoder_dim": 512,
    "mask_ratio": 0.75
}

model = MAE(config).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-4)

# Training loop
for images in train_loader:
    images = images.cuda()

    # Forward pass
    loss, reconstructed, mask = model(images)

    # Backward pass
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    print(f"Loss: {loss.item():.4f}")

# Extract features for downstream tasks
with torch.no_grad():
    features = model.encode(test_images)
"""

SEED_BASIC_USAGE = """
from nexus.models.ssl import MAE

# Configure model
config = {
    "img_size": 224,
    "patch_size": 16,
    "encoder_dim": 768,
    "mask_ratio": 0.75
}

# Initialize
model = MAE(config)

# Training loop
for images in dataloader:
    loss, reconstructed, mask = model(images)
    loss.backward()
    optimizer.step()

# Fine-tuning on downstream task
features = model.encode(images)  # Extract representations
"""


def _small(code: str) -> str:
    replacements = {
        "from nexus.": "from nexus_fast.",
        '"img_size": 224': '"img_size": 32',
        '"encoder_dim": 768': '"encoder_dim": 192',  # ViT-Ti: 12 blocks, 3 heads
        '"decoder_dim": 512': '"decoder_dim": 64',
        ".cuda()": "",
    }
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


def test_seed_quick_start_runs() -> None:
    torch.manual_seed(0)
    namespace = {"train_loader": [torch.randn(2, 3, 32, 32)], "test_images": images(2)}
    exec(compile(_small(SEED_QUICK_START), "<seed quick start>", "exec"), namespace)
    loss, reconstructed, mask = (namespace[name] for name in ("loss", "reconstructed", "mask"))
    assert torch.isfinite(loss) and reconstructed.shape == (2, 4, 16 * 16 * 3)
    assert mask.shape == (2, 4) and namespace["features"].shape == (2, 192)


def test_seed_basic_usage_runs() -> None:
    torch.manual_seed(0)
    namespace = {
        "dataloader": [torch.randn(2, 3, 32, 32)],
        "optimizer": types.SimpleNamespace(step=lambda: None),  # the block never builds one
    }
    exec(compile(_small(SEED_BASIC_USAGE), "<seed basic usage>", "exec"), namespace)
    model = namespace["model"]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert namespace["model"].config.decoder_dim == 512  # the official default
    assert namespace["features"].shape == (2, 192)


def test_config_dataclass_and_dict_agree() -> None:
    from_dict = MAE.preset("tiny")
    assert isinstance(from_dict, MAEConfig)
    assert MAE(from_dict).config == MAE(dict(MAE.tiny_preset)).config
    assert math.isclose(MAEConfig().mask_ratio, 0.75) and MAEConfig().norm_pix_loss
