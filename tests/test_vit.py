"""The ViT layers and the VisionTransformer: patch embedding on gathered patches equals the
convolution, sin-cos and RoPE equal the official formulas, only the given tokens are processed,
padding and packing do not leak, presets have the official parameter counts, gradient
checkpointing changes nothing, the reference backends give the same output."""

import math

import numpy as np
import pytest
import torch

import nexus_fast as nf
from nexus_fast.layers import DropPath, PatchEmbed, RotaryEmbedding3D, sincos_pos_embed
from nexus_fast.models import PRESETS, VisionTransformer, vit_config


def _tiny(**overrides) -> VisionTransformer:
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    options.update(overrides)
    torch.manual_seed(0)
    return VisionTransformer(vit_config(**options)).eval()


@pytest.mark.parametrize("video", [False, True])
def test_patch_embedding_of_gathered_patches_equals_the_convolution(video: bool) -> None:
    torch.manual_seed(0)
    embed = PatchEmbed(4, 3, 16, tubelet=2 if video else 1, video=video)
    x = torch.randn(2, 3, 4, 8, 12) if video else torch.randn(2, 3, 8, 12)
    full = embed(x)  # the convolution over every patch
    ids = torch.tensor([[0, 5, 3], [2, 2, 1]])
    gathered = embed(x, ids)  # one linear layer on the gathered patches
    torch.testing.assert_close(gathered, full[torch.arange(2)[:, None], ids], atol=1e-5, rtol=1e-5)


def _mae_2d_sincos(dim: int, size: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed, without the cls row."""

    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(size, dtype=np.float32)
    grid_w = np.arange(size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, size, size)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


def test_sincos_2d_is_maes() -> None:
    ours = sincos_pos_embed(64, (5, 5), cls_token=True)
    assert torch.equal(ours[0], torch.zeros(64))
    np.testing.assert_allclose(ours[1:].numpy(), _mae_2d_sincos(64, 5), rtol=1e-6, atol=1e-6)


def _official_rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """facebookresearch/vjepa2 rotate_queries_or_keys, for x (B, H, N, D) and pos (B, 1, N)."""
    d = x.size(-1)
    omega = torch.arange(d // 2, dtype=x.dtype) / (d / 2.0)
    omega = 1.0 / 10000**omega
    freq = pos.unsqueeze(-1) * omega
    emb_sin = freq.sin().repeat(1, 1, 1, 2)
    emb_cos = freq.cos().repeat(1, 1, 1, 2)
    y = x.unflatten(-1, (-1, 2))
    y1, y2 = y.unbind(dim=-1)
    y = torch.stack((-y2, y1), dim=-1).flatten(-2)
    return x * emb_cos + y * emb_sin


def test_rope_is_vjepa2s() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding3D(head_dim=20, grid=(2, 3, 4))
    x = torch.randn(2, 3, 7, 20)
    ids = torch.randint(0, 24, (2, 7))
    positions = rope.positions(ids)
    out = rope(x, positions)
    part = 6  # 2 * ((20 // 3) // 2)
    for axis in range(3):
        chunk = slice(axis * part, (axis + 1) * part)
        expected = _official_rope(x[..., chunk], positions[..., axis].unsqueeze(1).float())
        torch.testing.assert_close(out[..., chunk], expected)
    assert torch.equal(out[..., 18:], x[..., 18:]), "the remainder is not rotated"


def test_every_patch_in_order_equals_the_full_forward() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    all_ids = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(model(x, all_ids), model(x), atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_the_real_tokens() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[3, 7, 1, 0], [5, 2, 9, 12]])
    valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
    padded = model(x, ids, valid)
    alone = model(x[:1], ids[:1, :2])  # the first sample without its padding
    torch.testing.assert_close(padded[:1, :3], alone, atol=1e-5, rtol=1e-5)


def test_packed_crops_equal_separate_forwards() -> None:
    model = _tiny(pos_embed="learned", num_registers=2)
    globals_, locals_ = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 16, 16)
    packed = model.forward_packed([globals_, locals_])
    torch.testing.assert_close(packed[0], model(globals_), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[1], model(locals_), atol=1e-5, rtol=1e-5)
    assert packed[1].shape == (3, 1 + 2 + 4, 32), "local crops get resized position embeddings"


def test_intermediate_layers_follow_dinov2() -> None:
    model = _tiny()
    x = torch.randn(2, 3, 32, 32)
    last = model.get_intermediate_layers(x, n=1)[0]
    torch.testing.assert_close(last, model.forward_features(x).patch_tokens)
    both = model.get_intermediate_layers(x, n=[0, 1], reshape=True, return_class_token=True)
    assert both[0][0].shape == (2, 32, 4, 4) and both[0][1].shape == (2, 32)
    with pytest.raises(ValueError, match="outside"):
        model.get_intermediate_layers(x, n=[2])


def _vit_parameters(
    dim: int, depth: int, patch: int = 16, img: int = 224, swiglu: bool = False
) -> int:
    """Parameters of a ViT encoder by the formula (cls token, pos embed with cls slot, qkv bias)."""
    tokens = (img // patch) ** 2 + 1
    if swiglu:
        hidden = (int(dim * 4 * 2 / 3) + 7) // 8 * 8
        mlp = dim * 2 * hidden + 2 * hidden + hidden * dim + dim
    else:
        mlp = 8 * dim * dim + 5 * dim
    block = 4 * dim * dim + 4 * dim + mlp + 4 * dim
    return patch * patch * 3 * dim + dim + dim + tokens * dim + depth * block + 2 * dim


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_the_official_sizes_on_the_meta_device(name: str) -> None:
    dim, depth, heads = PRESETS[name]
    model = VisionTransformer(vit_config(name), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == _vit_parameters(dim, depth)
    assert model.blocks[0].attn.num_heads == heads


def test_vit_base_is_86m() -> None:
    model = VisionTransformer(vit_config("base"), device="meta")
    assert math.isclose(sum(p.numel() for p in model.parameters()) / 1e6, 85.8, abs_tol=0.1)


def test_meta_model_materialises_with_init_weights() -> None:
    model = VisionTransformer(vit_config("tiny", img_size=32, patch_size=8), device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    assert torch.allclose(model.pos_embed[0, 1:], sincos_pos_embed(192, (4, 4)))
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = _tiny(grad_checkpointing=checkpointing).train()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_drop_path_drops_whole_samples_in_training_only() -> None:
    drop = DropPath(0.5)
    x = torch.ones(1000, 3)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    kept = out[:, 0] != 0
    assert torch.equal(out[kept], torch.full_like(out[kept], 2.0)), "kept samples are rescaled"
    assert 350 < int(kept.sum()) < 650
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


def test_video_with_rope() -> None:
    model = _tiny(num_frames=4, tubelet=2, cls_token=False, pos_embed="rope")
    video = torch.randn(2, 3, 4, 32, 32)
    assert model(video).shape == (2, 2 * 16, 32)
    ids = torch.tensor([[0, 17, 31], [4, 5, 6]])
    assert model(video, ids).shape == (2, 3, 32)


def test_reference_backends_give_the_same_output(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny(num_registers=1)
    x = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[3, 7, 1], [5, 2, 9]])
    fused = model(x, ids)
    monkeypatch.setenv(nf.ops.BACKEND_ENV, "reference")
    torch.testing.assert_close(model(x, ids), fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"img_size": 30}, r"img_size=30 is not allowed: a multiple of patch_size 8"),
        ({"num_heads": 3}, "a positive divisor of embed_dim 32"),
        ({"pos_embed": "rope"}, "only without cls token and registers"),
        ({"drop_path": 1.0}, r"drop_path=1\.0"),
        ({"depht": 2}, r"unknown key\(s\) 'depht'"),
    ],
)
def test_bad_configs(overrides, message) -> None:
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    options.update(overrides)
    with pytest.raises(ValueError, match=message):
        vit_config(**options)
    with pytest.raises(ValueError, match="preset='huge2'"):
        vit_config("huge2")


def test_mask_token_replaces_masked_patches_before_the_positions() -> None:
    model = _tiny(mask_token=True, pos_embed="learned")
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 5]] = True
    tokens = model.embed(x, mask=mask)
    positions = model.pos_embed[:, 1:]
    expected = model.mask_token[0] + positions[0, 1]
    torch.testing.assert_close(tokens[0, 1 + 1], expected)
    torch.testing.assert_close(tokens[1], model.embed(x)[1]), "unmasked samples are unchanged"
    with pytest.raises(ValueError, match="needs mask_token=True"):
        _tiny().embed(x, mask=mask)


def test_uniform_drop_path() -> None:
    model = _tiny(drop_path=0.2, drop_path_uniform=True, depth=3)
    assert [block.drop_path.drop_prob for block in model.blocks] == [0.2, 0.2, 0.2]
    ramp = _tiny(drop_path=0.2, depth=3)
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in ramp.blocks] == pytest.approx(
        [0, 0.1, 0.2]
    )
