"""Loading encoder weights from nexus_fast, timm and the official MAE, I-JEPA and DINOv2 layouts.

`load_pretrained(model, source, strict=True)` reads a state dict (or a .safetensors / .pth file),
finds the encoder inside the official checkpoint layouts, renames keys to ours (timm's names),
resizes position embeddings to the model's patch grid, and loads. Nothing is dropped silently:
the parts that are known not to belong to an encoder (MAE's decoder, a classifier head, DINOv2's
iBOT mask token) are listed in the returned report, and any other missing or unexpected key is an
error when strict (ijepa #36, #50; dinov2 #41, #410: silent partial loads with strict=False).
"""

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..layers import interpolate_pos_embed

# Where the official checkpoints keep the encoder: I-JEPA saves "encoder" and "target_encoder"
# (the one to evaluate), MAE "model", DINOv2's training checkpoints "teacher" / "student".
ENCODER_KEYS = ("target_encoder", "encoder", "model", "teacher", "state_dict", "student")
# Prefixes wrapped around encoder keys: DistributedDataParallel, DINOv2's meta-arch.
PREFIXES = ("module.", "backbone.", "encoder.")
# Keys that are not part of an encoder, by the layout they come from.
NOT_ENCODER = (
    (re.compile(r"^decoder_|^decoder\."), "MAE decoder"),
    (re.compile(r"^mask_token$"), "mask token (MAE's decoder, DINOv2's iBOT)"),
    (re.compile(r"^head\.|^fc_norm\.|^head_drop\."), "classifier head"),
    (re.compile(r"^dino_head\.|^ibot_head\."), "DINOv2 heads"),
)


@dataclass
class LoadReport:
    """What load_pretrained did: dropped (non-encoder keys it set aside, with why), renamed keys,
    position embeddings resized, and the missing / unexpected keys left (empty when strict)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    resized: list[str] = field(default_factory=list)
    source_layout: str = "nexus_fast / timm"


def read_state_dict(source: str | Path | dict) -> dict:
    """A dict from a .safetensors or torch file (weights only: no code runs), or the dict."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _find_encoder(checkpoint: dict, key: str | None) -> tuple[dict, str]:
    if key is not None:
        if key not in checkpoint:
            raise KeyError(f"checkpoint has no {key!r}; its top-level keys: {sorted(checkpoint)}")
        return checkpoint[key], key
    if all(isinstance(value, Tensor) for value in checkpoint.values()):
        return checkpoint, "nexus_fast / timm"
    for candidate in ENCODER_KEYS:
        if isinstance(checkpoint.get(candidate), dict):
            return checkpoint[candidate], candidate
    raise ValueError(
        f"cannot find an encoder in a checkpoint with keys {sorted(checkpoint)}; pass key=..."
    )


def _rename(name: str) -> str:
    for prefix in PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix) :]
    name = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", name)  # DINOv2's chunked blocks
    name = re.sub(r"^register_tokens$", "reg_token", name)  # DINOv2's registers
    name = name.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")  # SwiGLU
    return name


def _resize_pos_embed(model, value: Tensor) -> Tensor:
    """The checkpoint's position embedding resized to the model's patch grid (prefix kept)."""
    target = model.pos_embed
    prefix = int(model.config.cls_token)
    if value.shape == target.shape:
        return value
    patches = value.shape[1] - prefix
    side = int(patches**0.5)
    if side * side != patches or len(model.config.grid) != 2:
        raise ValueError(
            f"pos_embed {tuple(value.shape)} cannot be resized to {tuple(target.shape)}"
        )
    resized = interpolate_pos_embed(value[:, prefix:], (side, side), model.config.grid)
    return torch.cat([value[:, :prefix], resized], dim=1)


def load_pretrained(
    model, source: str | Path | dict, strict: bool = True, key: str | None = None
) -> LoadReport:
    """Loads encoder weights into a VisionTransformer.

    Args:
        model: the VisionTransformer to fill.
        source: a state dict, or a .safetensors / .pth / .pt file (read with weights_only).
        strict: raise when a key of the model is missing or a key of the checkpoint is unknown.
            (Known non-encoder parts are dropped and reported either way.)
        key: which encoder of a multi-part checkpoint (I-JEPA: "target_encoder", the default,
            or "encoder").

    Returns:
        A LoadReport. With strict=False the missing and unexpected keys are also warned about.

    Raises:
        RuntimeError: strict and keys are missing or unexpected (all of them are listed).
    """
    checkpoint, layout = _find_encoder(read_state_dict(source), key)
    report = LoadReport(source_layout=layout)
    expected = model.state_dict()
    state = {}
    for name, value in checkpoint.items():
        renamed = _rename(name)
        if renamed != name:
            report.renamed[name] = renamed
        reason = next((why for pattern, why in NOT_ENCODER if pattern.search(renamed)), None)
        if reason is not None and renamed not in expected:
            report.dropped[name] = reason
            continue
        state[renamed] = value
    if "pos_embed" in state and model.pos_embed is not None:
        resized = _resize_pos_embed(model, state["pos_embed"])
        if resized is not state["pos_embed"]:
            report.resized.append("pos_embed")
        state["pos_embed"] = resized
    report.missing = sorted(set(expected) - set(state))
    report.unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected))
        if state[name].shape != expected[name].shape
    ]
    if mismatched:
        raise RuntimeError("shape mismatch when loading:\n  " + "\n  ".join(mismatched))
    if report.missing or report.unexpected:
        message = (
            f"loading a {layout} checkpoint: missing keys {report.missing}, unexpected keys "
            f"{report.unexpected}"
        )
        if strict:
            raise RuntimeError(message + " (pass strict=False to load the rest anyway)")
        warnings.warn(message, stacklevel=2)
    model.load_state_dict(
        {name: value for name, value in state.items() if name in expected}, strict=False
    )
    return report
