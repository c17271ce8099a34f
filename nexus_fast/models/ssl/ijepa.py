"""I-JEPA (Assran et al., 2023; facebookresearch/ijepa src/train.py): predict, in representation
space, the target encoder's features of a few image blocks from a context block.

One training step:
    1. masks: 4 target blocks (scale 0.15-0.2, aspect 0.75-1.5) and one context block (scale
       0.85-1.0) without the target patches (nexus_fast.masking.multiblock_mask);
    2. targets: the EMA target encoder on the whole image (no gradient);
    3. context: the encoder on the context patches only;
    4. predictor: context tokens + a mask token at each target patch -> predicted features,
       the 4 target blocks batched along the batch axis;
    5. loss: smooth L1 (beta 1) between the predictions and the layer-normed target features
       at the target patches (nexus_fast.ops.jepa_loss normalises and selects inside);
    6. after the optimizer step, the caller runs `update_teacher(momentum(step, total_steps))`:
       target = m * target + (1 - m) * encoder, m linear from 0.996 to 1.0 over training.

Differences from the official code, each on purpose:
    - Mask sizes are drawn per image and every mask keeps its own length (padded, with key
      padding masks in attention and weights in the loss); the official draws one size per batch
      and cuts every mask to the batch's shortest (ijepa issues #38, #60). `per_batch_sizes` and
      `truncate` restore both for parity; then the loss equals the official one exactly.
    - With variable lengths the loss is the mean over every valid target token of every block
      (one weighted reduction); with the official equal lengths that is the official mean over
      blocks.
    - The 4 target blocks are stacked image-major (image b's blocks are rows 4b .. 4b + 3), not
      block-major: the same numbers, and the predictions reshape to (B, 4 Nt, D) without a copy.
    - Masks are drawn and cut to the batch's longest row on the CPU, then copied to the device:
      no host synchronisation in the step, and no compute on padding beyond that row.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ... import ops
from ...config import require
from ...eval.collapse import embedding_std
from ...masking import MultiBlockMask, multiblock_mask
from ..vit import VisionTransformer
from ._base import EncoderConfig, SSLModel
from ._predictor import JEPAPredictor, JEPATeacherModel, check_momentum_range


@dataclass
class JEPAConfig(EncoderConfig):
    """I-JEPA's configuration; defaults are the official ViT-H/14 at 224 px (in1k_vith14_ep300).

    Attributes (besides EncoderConfig's):
        predictor_dim: the predictor's width (official 384).
        predictor_depth: its blocks (official 12).
        predictor_heads: its heads; None takes the encoder's (official).
        num_targets: target blocks per image (official 4).
        target_scale, target_aspect: range of a target block's share of the grid and of its
            height / width (official (0.15, 0.2) and (0.75, 1.5)).
        context_scale: range of the context block's share (official (0.85, 1.0), aspect 1).
        min_keep: the fewest patches of a context or target block (official 10).
        per_batch_sizes: one target size and one context size per batch (official quirk).
        truncate: cut every mask to the batch's shortest (official quirk).
        ema_momentum: (start, end) of the linear teacher momentum schedule (official
            (0.996, 1.0)).
        patch_embed_init: "official" (truncated normal 0.02, as every layer) or "xavier"
            (the ViT default, for patches of few inputs: see init_jepa_encoder_).
    """

    patch_size: int = 14
    encoder_dim: int = 1280
    predictor_dim: int = 384
    predictor_depth: int = 12
    predictor_heads: int | None = None
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    min_keep: int = 10
    per_batch_sizes: bool = False
    truncate: bool = False
    ema_momentum: tuple[float, float] = (0.996, 1.0)
    patch_embed_init: Literal["official", "xavier"] = "official"

    def validate(self) -> None:
        super().validate()
        require(self.predictor_depth > 0, "predictor_depth", self.predictor_depth, "> 0")
        heads = self.heads()
        require(
            self.predictor_dim > 0 and self.predictor_dim % 4 == 0,
            "predictor_dim",
            self.predictor_dim,
            "a positive multiple of 4 (its 2D sin-cos positions)",
        )
        require(
            heads > 0 and self.predictor_dim % heads == 0,
            "predictor_heads",
            self.predictor_heads,
            f"None (the encoder's {self.encoder_config().num_heads}) or a positive divisor of "
            f"predictor_dim {self.predictor_dim}",
        )
        check_momentum_range("ema_momentum", self.ema_momentum)
        # The generator's own checks (ranges, blocks smaller than min_keep, a context that can
        # never keep min_keep patches), on a private generator so no random state moves.
        try:
            self.masks(1, torch.Generator())
        except ValueError as error:
            raise ValueError(
                f"num_targets, target_scale, target_aspect, context_scale, min_keep: not "
                f"allowed on the {self.grid()} patch grid: {error}"
            ) from error

    def heads(self) -> int:
        """The predictor's attention heads."""
        if self.predictor_heads is not None:
            return self.predictor_heads
        return self.encoder_config().num_heads

    def grid(self) -> tuple[int, int]:
        side = self.img_size // self.patch_size
        return side, side

    def masks(self, batch_size: int, generator: torch.Generator | None = None) -> MultiBlockMask:
        """A batch's context and target blocks, drawn on the CPU."""
        return multiblock_mask(
            batch_size,
            self.grid(),
            num_targets=self.num_targets,
            target_scale=self.target_scale,
            target_aspect=self.target_aspect,
            context_scale=self.context_scale,
            min_keep=self.min_keep,
            per_batch_sizes=self.per_batch_sizes,
            truncate=self.truncate,
            generator=generator,
            device="cpu",
        )


class JEPAModel(JEPATeacherModel):
    """I-JEPA: `loss, metrics = model(images)`; `model.encode(images)` for evaluation.

    Args:
        config: a JEPAConfig or a dict of its fields (validated).
        device: where to build the parameters; "meta" builds the official sizes without memory.

    Metrics: loss, embedding_std (of the mean-pooled target features, what `encode` returns),
    context_size and target_size (mean patches per context and per target block).
    """

    config_class = JEPAConfig
    tiny_preset: ClassVar[dict] = {
        **SSLModel.tiny_preset,
        "predictor_dim": 32,
        "predictor_depth": 2,
        # Target blocks on the 4 x 4 grid can be a single patch.
        "min_keep": 1,
    }

    def __init__(self, config: JEPAConfig | dict | None = None, *, device=None) -> None:
        super().__init__(config)
        config = self.config
        self.encoder = VisionTransformer(
            config.encoder_config(cls_token=False, pos_embed="sincos"), device=device
        )
        self.predictor = JEPAPredictor(
            config.encoder_dim,
            config.grid(),
            dim=config.predictor_dim,
            depth=config.predictor_depth,
            num_heads=config.heads(),
            mlp_ratio=config.mlp_ratio,
            pos_embed="sincos",
            grad_checkpointing=config.grad_checkpointing,
            device=device,
        )
        self._attach_target_encoder(device)

    def sample_masks(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> MultiBlockMask:
        """Masks for one step: drawn on the CPU (torch's default generator), cut to the batch's
        longest context and target, then copied to `device` without blocking."""
        masks = self.config.masks(batch_size)
        masks = dataclasses.replace(
            masks, context=masks.context.trimmed(), targets=masks.targets.trimmed()
        )
        device = torch.device(device if device is not None else "cpu")
        if device.type == "cuda":
            masks = masks.pin_memory()
        return masks.to(device, non_blocking=True)

    def forward(
        self, images: Tensor, masks: MultiBlockMask | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One I-JEPA step's loss.

        Args:
            images: (B, C, H, W) at the configured size.
            masks: the step's masks (e.g. from a data-loader collator); drawn when None.

        Returns:
            The loss (0-dim float32) and the metrics.
        """
        self._check_images(images)
        if masks is None:
            masks = self.sample_masks(images.shape[0], images.device)
        context, targets = masks.context, masks.targets  # ids (B, Nc) and (B, 4, Nt)

        with torch.no_grad():
            target_tokens = self.target_encoder.forward_features(images).patch_tokens  # (B, L, D)
        context_tokens = self.encoder.forward_features(
            images, ids=context.ids, valid=context.valid
        ).patch_tokens  # (B, Nc, D)
        loss = self.prediction_loss(context_tokens, target_tokens, masks)
        metrics = {
            "loss": loss.detach(),
            "embedding_std": embedding_std(target_tokens.mean(dim=1)),
            "context_size": context.lengths.float().mean(),
            "target_size": targets.lengths.float().mean(),
        }
        return loss, metrics

    def prediction_loss(
        self, context_tokens: Tensor, target_tokens: Tensor, masks: MultiBlockMask
    ) -> Tensor:
        """The predictor's smooth-L1 loss against the layer-normed target tokens.

        Args:
            context_tokens: (B, Nc, D), the encoder's output on `masks.context`.
            target_tokens: (B, L, D), the target encoder's output on the whole image.
            masks: the step's masks.
        """
        context, targets = masks.context, masks.targets
        predictions = self.predictor(
            context_tokens,
            context.ids,
            targets.ids,
            context_valid=context.valid,
            target_valid=targets.valid,
        )  # (B, 4, Nt, D)
        return ops.jepa_loss(
            predictions.flatten(1, 2),
            target_tokens,
            targets.ids.flatten(1),
            valid=targets.valid.flatten(1),
            loss="smooth_l1",
        )

    def _check_images(self, images: Tensor) -> None:
        config = self.config
        expected = (config.in_chans, config.img_size, config.img_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be (B, {', '.join(map(str, expected))}) (the configured in_chans "
                f"and img_size), got {tuple(images.shape)}"
            )
