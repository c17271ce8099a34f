"""V-JEPA 2 (Assran et al., 2025; facebookresearch/vjepa2 app/vjepa/train.py): predict, in
representation space, the target encoder's features of masked spatio-temporal regions of a clip
from the visible rest.

One training step, for a video (B, C, T, H, W) cut in tubelets of 2 x 16 x 16:
    1. masks: two generators (nexus_fast.masking.vjepa2_tube_masks): short-range, the union of
       8 tubes of 15% of the frame area each, and long-range, the union of 2 tubes of 70%; both
       span every frame. The target is the union, the context everything else;
    2. targets: the EMA target encoder (ViT with 3D RoPE) on the whole clip (no gradient);
    3. for each generator: the encoder on its context tubelets only, then the predictor (12
       blocks of width 384, 3D RoPE over the token positions) with that generator's own mask
       token at every target tubelet;
    4. loss: mean |z - h|^p / p (p = 1) between predictions z and the layer-normed target
       features h at the target tubelets (nexus_fast.ops.jepa_loss), averaged over the two
       generators;
    5. after the optimizer step, the caller runs `update_teacher(momentum(step, total_steps))`:
       constant 0.99925 (V-JEPA 1: linear 0.998 -> 1.0, `ema_momentum=(0.998, 1.0)`).

Differences from the official code, each on purpose:
    - Masks keep their own lengths per clip (padded, with key padding masks in attention and
      weights in the loss); the official cuts every mask to the batch's shortest
      (`truncate=True` restores it). Block sizes are drawn once per batch, as the official.
    - The official predictor sorts context and mask tokens by position before its blocks and
      unsorts after; with full (non-causal) attention and RoPE positions carried by each token
      the order changes nothing, so no sort is done.
    - One mask token per generator (2, the official training code's default num_mask_tokens);
      the released checkpoints hold 10, of which pretraining trains the first 2.
    - Masks are drawn and cut to the batch's longest row on the CPU, then copied to the device:
      no host synchronisation in the step, and no compute on padding beyond that row.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ... import ops
from ...config import require
from ...eval.collapse import embedding_std
from ...masking import TubeMask, vjepa2_tube_masks
from ..vit import VisionTransformer
from ._base import EncoderConfig, SSLModel
from ._predictor import JEPAPredictor, JEPATeacherModel, check_momentum_range

# The mask generators, in the order vjepa2_tube_masks returns them; each has its mask token.
MASK_GENERATORS = ("short_range", "long_range")


@dataclass
class VJEPAConfig(EncoderConfig):
    """V-JEPA 2's configuration; defaults are the official ViT-L/16 on 16 frames of 256 px
    (configs/train/vitl16/pretrain-256px-16f.yaml).

    Attributes (besides EncoderConfig's):
        num_frames: frames per clip (official 16).
        tubelet: frames per tubelet (official 2).
        predictor_dim, predictor_depth, predictor_heads: the predictor's width, blocks and
            heads (official 384, 12, 12).
        loss_exp: p of the loss mean |z - h|^p / p (official 1).
        truncate: cut every mask to the batch's shortest (official quirk).
        ema_momentum: (start, end) of the linear teacher momentum schedule; official V-JEPA 2
            (0.99925, 0.99925), constant; V-JEPA 1 (0.998, 1.0), whose official schedule spans
            ipe_scale = 1.25 times the training steps (pass that as total_steps).
        patch_embed_init: "official" (truncated normal 0.02, as every layer) or "xavier"
            (the ViT default, for patches of few inputs: see init_jepa_encoder_).
    """

    img_size: int = 256
    patch_size: int = 16
    encoder_dim: int = 1024
    num_frames: int = 16
    tubelet: int = 2
    predictor_dim: int = 384
    predictor_depth: int = 12
    predictor_heads: int = 12
    loss_exp: float = 1.0
    truncate: bool = False
    ema_momentum: tuple[float, float] = (0.99925, 0.99925)
    patch_embed_init: Literal["official", "xavier"] = "official"

    def validate(self) -> None:
        require(self.num_registers == 0, "num_registers", self.num_registers, "0 (RoPE encoder)")
        super().validate()
        encoder = self.encoder_config()
        require(
            encoder.embed_dim // encoder.num_heads >= 6,
            "encoder_heads",
            encoder.num_heads,
            f"a divisor of encoder_dim {encoder.embed_dim} leaving a head width of at least 6 "
            "(3D RoPE rotates a pair of channels per axis)",
        )
        require(self.predictor_depth > 0, "predictor_depth", self.predictor_depth, "> 0")
        require(self.predictor_dim > 0, "predictor_dim", self.predictor_dim, "> 0")
        require(
            self.predictor_heads > 0
            and self.predictor_dim % self.predictor_heads == 0
            and self.predictor_dim // self.predictor_heads >= 6,
            "predictor_heads",
            self.predictor_heads,
            f"a positive divisor of predictor_dim {self.predictor_dim} leaving a head width of "
            "at least 6 (3D RoPE rotates a pair of channels per axis)",
        )
        require(self.loss_exp > 0, "loss_exp", self.loss_exp, "> 0")
        check_momentum_range("ema_momentum", self.ema_momentum)
        try:
            self.masks(1, torch.Generator())
        except ValueError as error:
            raise ValueError(
                f"img_size, patch_size, num_frames, tubelet: the {self.grid()} tubelet grid does "
                f"not fit V-JEPA 2's masks: {error}"
            ) from error

    def encoder_config(self, **overrides):
        """The encoder: a video ViT with 3D RoPE, no cls token."""
        fields = {
            "num_frames": self.num_frames,
            "tubelet": self.tubelet,
            "cls_token": False,
            "pos_embed": "rope",
        }
        return super().encoder_config(**{**fields, **overrides})

    def grid(self) -> tuple[int, int, int]:
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet, side, side

    def masks(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[TubeMask, TubeMask]:
        """A batch's (short-range, long-range) masks, drawn on the CPU."""
        return vjepa2_tube_masks(
            batch_size, self.grid(), truncate=self.truncate, generator=generator, device="cpu"
        )


class VJEPAModel(JEPATeacherModel):
    """V-JEPA 2: `loss, metrics = model(video)` for video (B, C, T, H, W); `model.encode(video)`.

    Args:
        config: a VJEPAConfig or a dict of its fields (validated).
        device: where to build the parameters; "meta" builds the official sizes without memory.

    Metrics: loss, loss_<generator>, context_size_<generator>, target_size_<generator> (mean
    tubelets per clip) for the short_range and long_range generators, and embedding_std (of the
    mean-pooled target features, what `encode` returns).
    """

    config_class = VJEPAConfig
    tiny_preset: ClassVar[dict] = {
        **SSLModel.tiny_preset,
        "num_frames": 4,
        "tubelet": 2,
        "predictor_dim": 32,
        "predictor_depth": 2,
        "predictor_heads": 4,
    }

    def __init__(self, config: VJEPAConfig | dict | None = None, *, device=None) -> None:
        super().__init__(config)
        config = self.config
        self.encoder = VisionTransformer(config.encoder_config(), device=device)
        self.predictor = JEPAPredictor(
            config.encoder_dim,
            config.grid(),
            dim=config.predictor_dim,
            depth=config.predictor_depth,
            num_heads=config.predictor_heads,
            mlp_ratio=config.mlp_ratio,
            pos_embed="rope",
            num_mask_tokens=len(MASK_GENERATORS),
            zero_init_mask_tokens=True,
            grad_checkpointing=config.grad_checkpointing,
            device=device,
        )
        self._attach_target_encoder(device)

    def sample_masks(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[TubeMask, ...]:
        """Masks for one step: drawn on the CPU (torch's default generator), each cut to the
        batch's longest context and target, then copied to `device` without blocking."""
        device = torch.device(device if device is not None else "cpu")
        masks = []
        for mask in self.config.masks(batch_size):
            mask = dataclasses.replace(
                mask, context=mask.context.trimmed(), target=mask.target.trimmed()
            )
            if device.type == "cuda":
                mask = mask.pin_memory()
            masks.append(mask.to(device, non_blocking=True))
        return tuple(masks)

    def forward(
        self, video: Tensor, masks: Sequence[TubeMask] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One V-JEPA 2 step's loss.

        Args:
            video: (B, C, T, H, W) at the configured size.
            masks: the step's (short-range, long-range) masks; drawn when None.

        Returns:
            The loss (0-dim float32) and the metrics.
        """
        self._check_video(video)
        if masks is None:
            masks = self.sample_masks(video.shape[0], video.device)
        if len(masks) != len(MASK_GENERATORS):
            raise ValueError(
                f"masks must hold {len(MASK_GENERATORS)} TubeMasks {MASK_GENERATORS}, got "
                f"{len(masks)}"
            )

        with torch.no_grad():
            target_tokens = self.target_encoder.forward_features(video).patch_tokens  # (B, L, D)
        losses, metrics = [], {}
        for index, (name, mask) in enumerate(zip(MASK_GENERATORS, masks)):
            context, target = mask.context, mask.target
            context_tokens = self.encoder.forward_features(
                video, ids=context.ids, valid=context.valid
            ).patch_tokens  # (B, Nc, D)
            predictions = self.predictor(
                context_tokens,
                context.ids,
                target.ids,
                context_valid=context.valid,
                target_valid=target.valid,
                mask_index=index,
            )  # (B, Nt, D)
            group_loss = ops.jepa_loss(
                predictions,
                target_tokens,
                target.ids,
                valid=target.valid,
                loss="power",
                loss_exp=self.config.loss_exp,
            )
            losses.append(group_loss)
            metrics[f"loss_{name}"] = group_loss.detach()
            metrics[f"context_size_{name}"] = context.lengths.float().mean()
            metrics[f"target_size_{name}"] = target.lengths.float().mean()
        loss = torch.stack(losses).mean()
        metrics["loss"] = loss.detach()
        metrics["embedding_std"] = embedding_std(target_tokens.mean(dim=1))
        return loss, metrics

    def _check_video(self, video: Tensor) -> None:
        config = self.config
        expected = (config.in_chans, config.num_frames, config.img_size, config.img_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video must be (B, {', '.join(map(str, expected))}) (the configured in_chans, "
                f"num_frames and img_size), got {tuple(video.shape)}"
            )
