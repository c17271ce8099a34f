"""MAE, masked autoencoders (He et al., 2022; facebookresearch/mae models_mae.py).

    mask = random_mask(...)                       # keep int(L (1 - 0.75)) patches per image
    latent = encoder(visible patches)             # ViT with cls token, fixed 2D sin-cos
    pred = decoder(latent, mask token at removed positions)
    loss = mean over REMOVED patches of mean_pixels (pred - norm_pix(patch))^2

Only the visible patches are patchified and embedded (nexus_fast.ops.gather_patches inside the
ViT's patch embedding), the decoder unshuffles with nexus_fast.ops.scatter_tokens, and the loss
patchifies its target inside nexus_fast.ops.masked_patch_loss.

Video (num_frames > 1) is supported the same way, with tubelets of `tubelet` frames and 3D
sin-cos positions (V-JEPA's layout) in encoder and decoder; MAE-ST's separable space/time
position embeddings are not reproduced.

Deviations from the official code (neither changes what a training step computes):
- The random mask draws float64 noise and sorts stably (nexus_fast.masking.random_mask), so
  CPU and GPU agree; given the same noise the masks are the official ones.
- The patch embedding's bias starts at zero (the official keeps PyTorch's uniform conv bias).
"""

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ... import ops
from ...config import require
from ...masking import MaskedIndices, random_mask
from ..vit import VisionTransformer
from ._base import EncoderConfig, SSLModel
from ._decoders import MAEDecoder
from ._heads import pooled


@dataclass
class MAEConfig(EncoderConfig):
    """MAE's config: the encoder fields, then the decoder, mask and loss (official defaults:
    ViT-B/16 encoder, mae_vit_base_patch16_dec512d8b, --norm_pix_loss as the released models).

    Attributes:
        decoder_dim: the decoder's width.
        decoder_depth: its blocks.
        decoder_heads: its attention heads.
        mask_ratio: the removed fraction of patches; int(L (1 - mask_ratio)) >= 1 must stay.
        norm_pix_loss: standardise each target patch by its mean and unbiased variance.
        pool: the feature `encode` returns: "cls", the normalised cls token (the official linear
            probe, main_linprobe.py, defaults to it), or "mean", the mean of the normalised patch
            tokens (the official fine-tuning pools the pre-norm patch tokens under a freshly
            trained fc_norm instead; without one, the pretrained final norm stands in).
        num_frames: frames of a video input (1: images).
        tubelet: frames per patch of a video.
    """

    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    pool: Literal["cls", "mean"] = "cls"
    num_frames: int = 1
    tubelet: int = 1

    def validate(self) -> None:
        super().validate()
        require(self.decoder_dim > 0, "decoder_dim", self.decoder_dim, "a positive integer")
        require(self.decoder_depth > 0, "decoder_depth", self.decoder_depth, "a positive integer")
        require(
            self.decoder_heads > 0 and self.decoder_dim % self.decoder_heads == 0,
            "decoder_heads",
            self.decoder_heads,
            f"a positive divisor of decoder_dim {self.decoder_dim}",
        )
        require(0.0 <= self.mask_ratio < 1.0, "mask_ratio", self.mask_ratio, "in [0, 1)")
        num_patches = self.encoder_config().num_patches
        require(
            int(num_patches * (1 - self.mask_ratio)) >= 1,
            "mask_ratio",
            self.mask_ratio,
            f"a ratio that keeps at least one of the {num_patches} patches",
        )
        require(
            self.num_registers == 0,
            "num_registers",
            self.num_registers,
            "0 (MAE's decoder takes the cls token only)",
        )

    def encoder_config(self, **overrides):
        return super().encoder_config(
            num_frames=self.num_frames, tubelet=self.tubelet, cls_token=True, **overrides
        )


class MAE(SSLModel):
    """`loss, reconstructed, mask = model(images)`; `model.encode(images)` gives (B, D) features.

    `reconstructed` is the decoder's prediction (B, L, t*p*p*C) in the official patch order, so
    `nexus_fast.ops.unpatchify(reconstructed, patch_size)` rebuilds images (in the standardised
    pixel space of each patch when norm_pix_loss). `mask` is (B, L) float32, 1.0 where the patch
    was removed and 0.0 where it was kept, as the official returns it (so `images * (1 - mask)`
    style visualisation code runs unchanged).
    """

    config_class = MAEConfig
    tiny_preset: ClassVar[dict] = {
        **SSLModel.tiny_preset,
        "decoder_dim": 32,
        "decoder_depth": 2,
        "decoder_heads": 4,
    }

    def __init__(
        self, config: MAEConfig | dict | None = None, *, device: torch.device | str | None = None
    ) -> None:
        """Builds the model from a config (a dict or MAEConfig); device="meta" builds it without
        memory and uninitialised (then `to_empty(device=...)` and `init_weights()`)."""
        super().__init__(config)
        config = self.config
        encoder_config = config.encoder_config()
        self.encoder = VisionTransformer(encoder_config, device=device)
        self.decoder = MAEDecoder(
            config.encoder_dim,
            config.decoder_dim,
            config.decoder_depth,
            config.decoder_heads,
            config.mlp_ratio,
            encoder_config.grid,
            config.tubelet * config.patch_size**2 * config.in_chans,
            encoder_config.norm_eps,
            grad_checkpointing=config.grad_checkpointing,
            device=device,
        )
        if device is None or torch.device(device).type != "meta":
            self._init_as_official()  # the encoder initialised itself as timm's ViT

    def init_weights(self) -> None:
        """Initialises every parameter as the official code (e.g. after building on the meta
        device and `to_empty`)."""
        self.encoder.init_weights()
        self._init_as_official()

    @torch.no_grad()
    def _init_as_official(self) -> None:
        """Xavier-uniform for every linear layer of encoder and decoder, as MAE (after the JAX
        ViT) does, where timm's ViT draws a truncated normal; the decoder's own init."""
        for module in self.encoder.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.decoder.init_weights()

    def encode(self, images: Tensor) -> Tensor:
        """(B, D) features of all patches: the cls token or the patch mean (config.pool)."""
        return pooled(self.encoder.forward_features(images), self.config.pool)

    def forward(
        self, images: Tensor, *, masks: MaskedIndices | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One MAE step.

        Args:
            images: (B, C, H, W), or (B, C, T, H, W) for video.
            masks: precomputed masks (e.g. from a data-loader collator, or
                `random_mask(..., noise=...)` to replay the official noise); drawn here from
                torch's default generator when None.

        Returns:
            loss (0-dim float32), reconstructed (B, L, t*p*p*C), mask (B, L) float32 0/1.
        """
        config = self.config
        grid = self.encoder.grid_of(images)
        if masks is None:
            masks = random_mask(
                images.shape[0], math.prod(grid), config.mask_ratio, device=images.device
            )
        # The encoder embeds and processes the kept patches only.
        latent = self.encoder.forward_features(images, ids=masks.ids_keep).tokens  # (B, 1+K, D)
        reconstructed = self.decoder(latent, masks.ids_restore, grid)  # (B, L, t*p*p*C)
        loss = ops.masked_patch_loss(
            reconstructed,
            images,
            masks.mask,
            config.patch_size,
            config.norm_pix_loss,
            tubelet=config.tubelet,
        )
        return loss, reconstructed, masks.mask.float()
