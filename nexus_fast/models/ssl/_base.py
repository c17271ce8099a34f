"""What the seven methods share: the encoder part of their configs, presets, `encode`, and the
EMA teacher update.

Configs are flat, as the seed passes them ({"img_size": 224, "patch_size": 16, "encoder_dim":
768, ...}). The encoder's depth and heads default to the standard ViT of that width (768 ->
ViT-B: 12 blocks, 12 heads); another width needs them spelt out.
"""

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ... import ops
from ...config import build_config, require
from ..vit import PRESETS, VisionTransformer, ViTConfig, vit_config

# The CPU preset's encoder: small enough that a test step takes milliseconds.
TINY_ENCODER = {
    "img_size": 32,
    "patch_size": 8,
    "encoder_dim": 64,
    "encoder_depth": 2,
    "encoder_heads": 4,
}


@dataclass
class EncoderConfig:
    """The encoder fields every method's config starts with."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    encoder_dim: int = 768
    encoder_depth: int | None = None  # default: the standard ViT of encoder_dim's width
    encoder_heads: int | None = None
    mlp_ratio: float = 4.0
    drop_path: float = 0.0
    layer_scale_init: float | None = None
    num_registers: int = 0
    grad_checkpointing: bool = False

    def validate(self) -> None:
        self._encoder_shape()  # raises for a width without a standard depth/heads
        self.encoder_config()  # every ViT rule (divisibility, ranges)

    def _encoder_shape(self) -> tuple[int, int]:
        if self.encoder_depth is not None and self.encoder_heads is not None:
            return self.encoder_depth, self.encoder_heads
        standard = {dim: (depth, heads) for dim, depth, heads in PRESETS.values()}
        require(
            self.encoder_dim in standard,
            "encoder_dim",
            self.encoder_dim,
            f"a standard ViT width ({', '.join(map(str, sorted(standard)))}) unless "
            "encoder_depth and encoder_heads are given",
        )
        depth, heads = standard[self.encoder_dim]
        return self.encoder_depth or depth, self.encoder_heads or heads

    def encoder_config(self, **overrides) -> ViTConfig:
        """The ViTConfig of this method's encoder (overrides: cls token, frames, ...)."""
        depth, heads = self._encoder_shape()
        fields = {
            "img_size": self.img_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "embed_dim": self.encoder_dim,
            "depth": depth,
            "num_heads": heads,
            "mlp_ratio": self.mlp_ratio,
            "drop_path": self.drop_path,
            "layer_scale_init": self.layer_scale_init,
            "num_registers": self.num_registers,
            "grad_checkpointing": self.grad_checkpointing,
        }
        fields.update(overrides)
        return vit_config(**fields)


class SSLModel(nn.Module):
    """Base of the seven methods.

    Subclasses set `config_class` (a dataclass deriving from EncoderConfig), build their modules
    from `self.config`, and implement `forward` and `encode`; `self.encoder` is the network
    that `encode` evaluates (the seed freezes and unfreezes it for linear probing and
    fine-tuning). Teacher methods list their (teacher, student) module pairs in `teacher_pairs`
    and their momentum schedule.
    """

    config_class: ClassVar[type] = EncoderConfig
    # The CPU preset's config, merged over the class defaults by `preset("tiny")`.
    tiny_preset: ClassVar[dict] = TINY_ENCODER

    def __init__(self, config=None) -> None:
        super().__init__()
        self.config = build_config(self.config_class, config)

    @classmethod
    def preset(cls, name: Literal["tiny", "official"] = "official", **overrides):
        """A validated config: the official sizes, or the CPU preset ("tiny"), then overrides."""
        if name not in ("tiny", "official"):
            raise ValueError(f"preset={name!r} is not allowed: 'tiny' or 'official'")
        values = dict(cls.tiny_preset) if name == "tiny" else {}
        values.update(overrides)
        return build_config(cls.config_class, values)

    def encode(self, x: Tensor) -> Tensor:
        """The features used for evaluation (kNN, linear probe): (B, D)."""
        raise NotImplementedError

    def evaluation_encoder(self) -> VisionTransformer:
        """The ViT whose features `encode` returns: what fine-tuning unfreezes (`encoder` by
        default; the EMA target encoder for the JEPAs)."""
        return self.encoder

    # --- EMA teacher (I-JEPA, V-JEPA 2, DINOv2, data2vec 2.0) ----------------------------------

    def teacher_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(teacher, student) module pairs the EMA updates; none for teacher-free methods."""
        return iter(())

    def momentum(self, step: int, total_steps: int) -> float:
        """The teacher momentum at an optimizer step (the method's official schedule)."""
        raise NotImplementedError(f"{type(self).__name__} has no teacher")

    @torch.no_grad()
    def update_teacher(self, momentum: float | Tensor) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, for every pair, through
        nexus_fast.ops.ema_update_ (one launch per dtype group)."""
        for teacher, student in self.teacher_pairs():
            ops.ema_update_(teacher, student, momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A teacher: a deep copy of the student that never requires grad (kept in float32)."""
    import copy

    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


def replace(config, **changes):
    """A copy of a config dataclass with some fields changed (validated again)."""
    return build_config(type(config), dataclasses.replace(config, **changes))


__all__ = [
    "TINY_ENCODER",
    "EncoderConfig",
    "SSLModel",
    "VisionTransformer",
    "frozen_copy",
    "replace",
]
