"""load_pretrained: our and timm's state dicts round-trip strictly; the official MAE, I-JEPA and
DINOv2 layouts load (prefixes, chunked blocks, registers, SwiGLU names); position embeddings are
resized; missing and unexpected keys are never silent."""

import pytest
import torch
from safetensors.torch import save_file

from nexus_fast.models import VisionTransformer, vit_config
from nexus_fast.models.checkpoints import load_pretrained


def _model(**overrides) -> VisionTransformer:
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    options.update(overrides)
    return VisionTransformer(vit_config(**options))


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, left), (_, right) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(left, right), name


def test_safetensors_round_trip_is_strict_and_exact(tmp_path) -> None:
    torch.manual_seed(0)
    source = _model(pos_embed="learned", num_registers=2, layer_scale_init=0.1)
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = _model(pos_embed="learned", num_registers=2, layer_scale_init=0.1)
    report = target.load_pretrained(path)
    assert report.missing == [] and report.unexpected == [] and report.dropped == {}
    _assert_same_weights(source, target)


def test_timm_names_load_and_the_classifier_head_is_reported() -> None:
    torch.manual_seed(1)
    source = _model()
    state = dict(source.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(10, 32), torch.randn(10)
    state["fc_norm.weight"] = torch.ones(32)
    target = _model()
    report = load_pretrained(target, state)
    assert set(report.dropped) == {"head.weight", "head.bias", "fc_norm.weight"}
    assert report.dropped["head.weight"] == "classifier head"
    _assert_same_weights(source, target)


def test_official_mae_layout() -> None:
    torch.manual_seed(2)
    source = _model()
    checkpoint = {
        "model": {
            **source.state_dict(),
            "mask_token": torch.zeros(1, 1, 16),
            "decoder_embed.weight": torch.zeros(16, 32),
            "decoder_blocks.0.attn.qkv.weight": torch.zeros(48, 16),
            "decoder_pred.weight": torch.zeros(192, 16),
        },
        "optimizer": {},
        "epoch": 799,
    }
    target = _model()
    report = load_pretrained(target, checkpoint)
    assert report.source_layout == "model"
    assert report.dropped["decoder_embed.weight"] == "MAE decoder"
    assert "mask_token" in report.dropped
    _assert_same_weights(source, target)


def test_official_ijepa_layout_prefers_the_target_encoder() -> None:
    torch.manual_seed(3)
    context, target_encoder = _model(cls_token=False), _model(cls_token=False)
    checkpoint = {
        "encoder": {f"module.{k}": v for k, v in context.state_dict().items()},
        "target_encoder": {f"module.{k}": v for k, v in target_encoder.state_dict().items()},
        "predictor": {"module.predictor_embed.weight": torch.zeros(4, 32)},
    }
    loaded = _model(cls_token=False)
    report = load_pretrained(loaded, checkpoint)
    assert report.source_layout == "target_encoder"
    assert report.renamed["module.norm.weight"] == "norm.weight"
    _assert_same_weights(target_encoder, loaded)
    load_pretrained(loaded, checkpoint, key="encoder")
    _assert_same_weights(context, loaded)


def test_official_dinov2_layout_with_chunks_registers_and_swiglu() -> None:
    torch.manual_seed(4)
    source = _model(mlp="swiglu", num_registers=4, pos_embed="learned", layer_scale_init=1e-5)
    official = {}
    for name, value in source.state_dict().items():
        name = name.replace("reg_token", "register_tokens")
        name = name.replace(".mlp.fc1.", ".mlp.w12.").replace(".mlp.fc2.", ".mlp.w3.")
        if name.startswith("blocks."):  # DINOv2's FSDP chunking: blocks.{chunk}.{index}
            name = "blocks.0." + name[len("blocks.") :]
        official[name] = value
    official["mask_token"] = torch.zeros(1, 32)
    target = _model(mlp="swiglu", num_registers=4, pos_embed="learned", layer_scale_init=1e-5)
    report = load_pretrained(target, {"teacher": {f"backbone.{k}": v for k, v in official.items()}})
    assert "backbone.mask_token" in report.dropped
    _assert_same_weights(source, target)


def test_position_embeddings_are_resized_to_the_model_grid() -> None:
    torch.manual_seed(5)
    source = _model(pos_embed="learned")  # 4x4 patches
    target = _model(pos_embed="learned", img_size=48)  # 6x6 patches
    report = load_pretrained(target, source.state_dict())
    assert report.resized == ["pos_embed"]
    assert target.pos_embed.shape == (1, 37, 32)
    assert torch.equal(target.pos_embed[:, 0], source.pos_embed[:, 0]), "the cls slot is kept"
    grid = source.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(
        grid, size=(6, 6), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(
        target.pos_embed[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 32)
    )


def test_missing_and_unexpected_keys_are_errors_when_strict() -> None:
    state = dict(_model().state_dict())
    del state["norm.weight"]
    state["blocks.9.attn.qkv.weight"] = torch.zeros(96, 32)
    with pytest.raises(
        RuntimeError, match=r"missing keys \['norm.weight'\], unexpected keys \['blocks.9"
    ):
        load_pretrained(_model(), state)
    with pytest.warns(UserWarning, match="missing keys"):
        report = load_pretrained(_model(), state, strict=False)
    assert report.missing == ["norm.weight"]


def test_shape_mismatch_is_an_error_naming_the_key() -> None:
    state = dict(_model().state_dict())
    with pytest.raises(
        RuntimeError, match=r"blocks.0.attn.qkv.weight: checkpoint \(96, 32\) vs model \(192, 64\)"
    ):
        load_pretrained(
            _model(embed_dim=64), {k: v for k, v in state.items() if "pos_embed" not in k}
        )


def test_a_mask_token_is_kept_when_the_model_has_one() -> None:
    source = _model(mask_token=True)
    with torch.no_grad():
        source.mask_token.fill_(0.5)
    target = _model(mask_token=True)
    report = load_pretrained(target, source.state_dict())
    assert "mask_token" not in report.dropped
    assert torch.equal(target.mask_token, source.mask_token)
